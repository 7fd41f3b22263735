import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl_crops.images import EncodedImage
from ssl_crops.transforms import MoCoAugment, ObjectAwareMultiCrop
from ssl_crops.transforms.geometry import object_regions
from ssl_crops.transforms.inputs import View

BOXES = [[0.1, 0.2, 0.3, 0.5], [0.5, 0.4, 0.9, 0.9]]


def _photo(w=320, h=240, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _inside(r, region):
    return region[0] <= r[0] < r[2] <= region[2] and region[1] <= r[1] < r[3] <= region[3]


def test_counts_sizes_and_globals_first():
    crop = ObjectAwareMultiCrop(num_locals=3, global_size=(40, 48), local_size=16, min_region=32)
    views = crop(_photo(), BOXES)
    assert [tuple(v.shape) for v in views] == [(3, 40, 48)] * 2 + [(3, 16, 16)] * 3
    assert all(type(v) is View and v.dtype == torch.float32 for v in views)
    assert len(ObjectAwareMultiCrop()(_photo(), BOXES)) == 10  # main_dino.py's defaults: 2 + 8


@pytest.mark.parametrize("geometry", ["original", "relative"])
@pytest.mark.parametrize("global_from, local_from, boxes", [("context", "tight", "one"), ("scene", "tight", "each"),
                                                            ("context", "context", "each"), ("scene", "scene", "one")])
def test_regions_lie_in_the_image_and_in_their_object_regions(geometry, global_from, local_from, boxes):
    crop = ObjectAwareMultiCrop(num_locals=6, global_from=global_from, local_from=local_from, boxes=boxes,
                                geometry=geometry, min_region=40, dilation=0.3)
    w, h = 320, 240
    allowed = {"scene": [(0, 0, w, h)]}
    per_box = [object_regions(w, h, b, geometry, 0.3, 40) for b in BOXES]
    allowed["tight"], allowed["context"] = [r[0] for r in per_box], [r[1] for r in per_box]
    g = torch.Generator().manual_seed(0)
    used = set()
    for _ in range(50):
        regions = crop.sample_regions(w, h, BOXES, g)
        assert len(regions) == 8
        hits = []
        for i, r in enumerate(regions):
            place = global_from if i < 2 else local_from
            assert _inside(r, (0, 0, w, h))
            which = [k for k, region in enumerate(allowed[place]) if _inside(r, region)]
            assert which, (place, r)
            hits.append(which)
        if boxes == "one" and global_from != "scene":  # every object-placed view from the same box
            assert set.intersection(*map(set, hits))
        used |= {k for which in hits for k in which}
    assert used >= {0, 1} or global_from == local_from == "scene"


def test_scales_are_shares_of_the_placement_region():
    crop = ObjectAwareMultiCrop(num_locals=4, global_from="scene", local_from="scene", ratio=(1, 1))
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        regions = crop.sample_regions(400, 400, None, g)
        areas = [(r[2] - r[0]) * (r[3] - r[1]) / 400 ** 2 for r in regions]
        assert all(0.39 <= a <= 1.0 for a in areas[:2]) and all(0.045 <= a <= 0.41 for a in areas[2:])


def test_generator_reproduces_regions_and_views():
    crop = ObjectAwareMultiCrop(num_locals=4, min_region=32)
    a = crop.sample_regions(320, 240, BOXES, torch.Generator().manual_seed(5))
    b = crop.sample_regions(320, 240, BOXES, torch.Generator().manual_seed(5))
    c = crop.sample_regions(320, 240, BOXES, torch.Generator().manual_seed(6))
    assert a == b and a != c
    torch.manual_seed(0)
    v1 = crop(_photo(), BOXES, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    v2_ = crop(_photo(), BOXES, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(v1, v2_))


def test_boxless_images_get_scene_views_and_are_counted():
    crop = ObjectAwareMultiCrop(num_locals=2)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    scene = ObjectAwareMultiCrop(num_locals=2, global_from="scene", local_from="scene")
    assert crop.sample_regions(300, 200, np.zeros((0, 4)), g1) == scene.sample_regions(300, 200, None, g2)
    crop(_photo(), None)
    crop(_photo(), BOXES)
    assert crop.scene_fallbacks == 2 and crop.local_scene_fallbacks == 2 and scene.scene_fallbacks == 0


def _jpeg(img):
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_every_input_kind(tmp_path):
    img = _photo(640, 480)
    crop = ObjectAwareMultiCrop(num_locals=2, global_size=32, local_size=16, min_region=64)
    bb = tv_tensors.BoundingBoxes(np.array(BOXES) * [640, 480, 640, 480], format="XYXY", canvas_size=(480, 640))
    path = tmp_path / "a.jpg"
    path.write_bytes(_jpeg(img))
    inputs = [img, torch.from_numpy(np.array(img)).permute(2, 0, 1), tv_tensors.Image(np.array(img).transpose(2, 0, 1)),
              EncodedImage(path)]
    for x in inputs:
        for boxes in (BOXES, bb, torch.tensor(BOXES)):
            views = crop(x, boxes, generator=torch.Generator().manual_seed(0))
            assert [v.shape[-1] for v in views] == [32, 32, 16, 16]
    with pytest.raises(TypeError, match="ObjectAwareMultiCrop takes"):
        crop(np.array(img), BOXES)


def test_encoded_images_decode_where_every_view_keeps_its_pixels(tmp_path):
    img = _photo(1024, 768)
    path = tmp_path / "big.jpg"
    path.write_bytes(_jpeg(img))
    crop = ObjectAwareMultiCrop(num_locals=2, global_size=64, local_size=32, global_from="scene",
                                local_from="scene", augment=v2.PILToTensor())
    g = torch.Generator().manual_seed(0)
    regions = crop.sample_regions(1024, 768, None, torch.Generator().manual_seed(0))
    enc = EncodedImage(path)
    decoded, mapped = crop._decode(enc, regions)
    k = min(enc.scale_for(regions[:2], (64, 64)), enc.scale_for(regions[2:], (32, 32)))
    assert k > 1 and decoded.size == (1024 // k, 768 // k)
    for (x0, y0, x1, y1), (h, w) in zip(mapped, crop.sizes):  # no view upscaled by the reduced decode
        assert x1 - x0 >= w and y1 - y0 >= h
    assert np.allclose(np.array(mapped) * k, np.array(regions))
    views = crop(EncodedImage(path), None, generator=g)
    full = crop(img, None, generator=torch.Generator().manual_seed(0))
    for a, b in zip(views, full):  # the same regions, from fewer pixels
        assert a.shape == b.shape and (a.float() - b.float()).abs().mean() < 40


def test_bad_boxes_raise_as_in_the_two_view_crop():
    crop = ObjectAwareMultiCrop(num_locals=1)
    with pytest.raises(ValueError, match="normalized"):
        crop(_photo(), [[10, 20, 100, 200]])
    with pytest.raises(ValueError, match="x1 < x0"):
        crop(_photo(), [[0.5, 0.5, 0.2, 0.9]])
    with pytest.raises(ValueError, match="canvas_size"):
        crop(_photo(), tv_tensors.BoundingBoxes([[1, 2, 30, 40]], format="XYXY", canvas_size=(10, 10)))
    with pytest.raises(TypeError, match="boxes must be"):
        crop(_photo(), object())


def test_dict_samples_and_composition():
    img = _photo()
    bb = tv_tensors.BoundingBoxes([[30, 40, 200, 200]], format="XYXY", canvas_size=(240, 320))
    crop = ObjectAwareMultiCrop(num_locals=2, global_size=24, local_size=12, min_region=32, augment=v2.PILToTensor())
    out = v2.Compose([crop, v2.ToDtype(torch.float32, scale=True)])({"image": img, "boxes": bb, "label": 4})
    assert set(out) == {"image", "label"} and len(out["image"]) == 4 and out["image"][0].dtype == torch.float32
    with pytest.raises(TypeError, match="augment="):
        v2.Compose([crop, v2.RandomHorizontalFlip()])({"image": img, "boxes": bb})


def test_augment_choices_and_constructor_checks():
    crop = ObjectAwareMultiCrop(num_locals=2)
    specs = [a.spec for a in crop.augment]
    assert [s.blur_p for s in specs] == [1.0, 0.1, 0.5, 0.5] and [s.solarize_p for s in specs] == [0, 0.2, 0, 0]
    one = MoCoAugment()
    assert ObjectAwareMultiCrop(num_locals=2, augment=one).augment == [one] * 4
    with pytest.raises(ValueError, match="one callable per view"):
        ObjectAwareMultiCrop(num_locals=2, augment=[one])
    for bad in (dict(global_from="box"), dict(boxes="two"), dict(local_scale=(0, 0.4)), dict(num_globals=0),
                dict(geometry="square"), dict(ratio=(2, 1))):
        with pytest.raises(ValueError):
            ObjectAwareMultiCrop(**bad)
    assert "global_from='context'" in repr(crop) and crop.num_views == 4


def test_min_region_per_view_kind():
    crop = ObjectAwareMultiCrop(num_locals=4, min_region=(200, 20), global_from="tight", local_from="tight")
    box = [[0.45, 0.45, 0.5, 0.5]]  # 16 x 12 px in 320 x 240
    big = object_regions(320, 240, box[0], "original", 0.2, 200)[0]
    small = object_regions(320, 240, box[0], "original", 0.2, 20)[0]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        regions = crop.sample_regions(320, 240, box, g)
        assert all(_inside(r, big) for r in regions[:2]) and all(_inside(r, small) for r in regions[2:])
    assert ObjectAwareMultiCrop().min_region == (224, 96) and ObjectAwareMultiCrop(min_region=50).min_region == (50, 50)
    with pytest.raises(ValueError, match="min_region"):
        ObjectAwareMultiCrop(min_region=(10, 0))
