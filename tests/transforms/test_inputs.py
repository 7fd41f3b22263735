import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl_crops.transforms.inputs import (SharedCounter, View, as_views, image_size, pair_size, sample_parts,
                                         without_boxes)


def test_views_refuse_random_v2_transforms_and_take_the_deterministic_ones():
    a, b = as_views([torch.rand(3, 8, 8), torch.rand(3, 8, 8)])
    pil, = as_views([Image.new("RGB", (4, 4))])
    assert type(a) is View and isinstance(pil, Image.Image)
    for t in (v2.RandomGrayscale(p=1), v2.ColorJitter(0.4), v2.RandomHorizontalFlip(p=1), v2.RandomResizedCrop(4)):
        with pytest.raises(TypeError, match="augment="):
            t(a, b)
    out = v2.Normalize([0.5] * 3, [0.5] * 3)(v2.ToDtype(torch.float64)(a))
    assert out.dtype == torch.float64 and torch.allclose(out, (a.double() - 0.5) / 0.5)
    assert type(a + 1) is torch.Tensor and type(torch.stack([a, b])) is torch.Tensor


def test_shared_counter_counts_per_process():
    c = SharedCounter()
    c.add()
    c.add(2)
    assert c.value == 3 and c.local == 3


def test_sizes_and_samples():
    assert pair_size(5) == (5, 5) and pair_size((4, 6)) == (4, 6)
    with pytest.raises(ValueError):
        pair_size(0)
    with pytest.raises(TypeError, match="channels-last"):
        image_size(torch.zeros(8, 8, 3), "ObjectAwareMultiCrop")
    with pytest.raises(TypeError, match=r"ObjectAwareMultiCrop takes .*H, W, C array"):
        image_size(np.zeros((8, 8, 3)), "ObjectAwareMultiCrop")
    img = Image.new("RGB", (10, 6))
    bb = tv_tensors.BoundingBoxes([[1, 1, 5, 5]], format="XYXY", canvas_size=(6, 10))
    assert image_size(img) == (6, 10)
    assert sample_parts({"picture": img, "objects": bb, "id": 3}) == ("picture", "objects", bb)
    assert sample_parts({"image": img}) == ("image", None, None)
    assert without_boxes({"picture": img, "objects": bb, "id": 3}, "picture", [1], "objects") == {"picture": [1], "id": 3}
