import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from torchvision import tv_tensors

from ssl_crops.transforms import (MODES, MoCoV1Augment, ObjectAwareCrop, TwoViews, eval_transform,
                                  to_normalized_boxes)


@st.composite
def boxes_strategy(draw, max_boxes=4):
    n = draw(st.integers(1, max_boxes))
    out = []
    for _ in range(n):
        x0, x1 = sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1))))
        y0, y1 = sorted(draw(st.tuples(st.floats(0, 1), st.floats(0, 1))))
        if x1 - x0 < 1e-4 or y1 - y0 < 1e-4:
            x0, y0, x1, y1 = 0.2, 0.2, 0.6, 0.7
        out.append((x0, y0, x1, y1))
    return np.array(out)


crop_kwargs = st.fixed_dictionaries({
    "dilation": st.floats(0, 1.0),
    "min_scale": st.floats(0.05, 1.0),
    "object_min_scale": st.floats(0.0, 1.0),
    "min_box_pixels": st.integers(1, 96),
})
sizes = st.integers(4, 1200)


def _inside(region, w, h):
    x0, y0, x1, y1 = region
    return all(isinstance(v, int) for v in region) and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _contains(region, x, y):
    return region[0] <= x <= region[2] and region[1] <= y <= region[3]


def _box_region(crop, box, w, h):
    from ssl_crops.transforms.geometry import _pixel_region
    return _pixel_region(box, w, h, crop.min_box_pixels)


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from(MODES), w=sizes, h=sizes, boxes=boxes_strategy(), kw=crop_kwargs, seed=st.integers(0, 2**31))
def test_regions_lie_inside_the_image(mode, w, h, boxes, kw, seed):
    crop = ObjectAwareCrop(mode=mode, **kw)
    for region in crop.sample_regions(w, h, boxes, generator=torch.Generator().manual_seed(seed)):
        assert _inside(region, w, h)


@settings(max_examples=300, deadline=None)
@given(w=sizes, h=sizes, box=boxes_strategy(max_boxes=1), kw=crop_kwargs, seed=st.integers(0, 2**31))
def test_object_object_views_overlap_the_box_and_dilated_view_contains_its_centre(w, h, box, kw, seed):
    crop = ObjectAwareCrop(mode="object-object", swap=False, **kw)
    tight, dilated = crop.sample_regions(w, h, box, generator=torch.Generator().manual_seed(seed))
    region = _box_region(crop, box[0], w, h)
    cx, cy = (region[0] + region[2]) / 2, (region[1] + region[3]) / 2
    assert _contains(dilated, cx, cy)
    # the tight view lies in the (min-size) box region and holds its centre too
    assert region[0] <= tight[0] and tight[2] <= region[2] and region[1] <= tight[1] and tight[3] <= region[3]
    assert _contains(tight, cx, cy)
    # the dilated view stays inside the dilated box
    dx, dy = kw["dilation"] * (region[2] - region[0]), kw["dilation"] * (region[3] - region[1])
    assert dilated[0] >= math.floor(region[0] - dx) and dilated[2] <= math.ceil(region[2] + dx)
    assert dilated[1] >= math.floor(region[1] - dy) and dilated[3] <= math.ceil(region[3] + dy)


@settings(max_examples=200, deadline=None)
@given(w=sizes, h=sizes, box=boxes_strategy(max_boxes=1), kw=crop_kwargs, seed=st.integers(0, 2**31))
def test_object_scene_has_one_object_view(w, h, box, kw, seed):
    crop = ObjectAwareCrop(mode="object-scene", swap=False, **kw)
    obj, scene = crop.sample_regions(w, h, box, generator=torch.Generator().manual_seed(seed))
    region = _box_region(crop, box[0], w, h)
    assert _contains(obj, (region[0] + region[2]) / 2, (region[1] + region[3]) / 2)
    assert _inside(scene, w, h)


@settings(max_examples=300, deadline=None)
@given(w=st.integers(64, 1200), h=st.integers(64, 1200), min_scale=st.floats(0.05, 1.0), seed=st.integers(0, 2**31))
def test_scene_mode_matches_random_resized_crop_ranges(w, h, min_scale, seed):
    crop = ObjectAwareCrop(mode="scene", min_scale=min_scale)
    for x0, y0, x1, y1 in crop.sample_regions(w, h, None, generator=torch.Generator().manual_seed(seed)):
        cw, ch = x1 - x0, y1 - y0
        fallback = (cw == w or ch == h) and (cw, ch) in {(w, h), (w, max(1, round(w / 0.75))), (max(1, round(h * 4 / 3)), h)}
        if fallback:
            continue
        # RandomResizedCrop rounds width and height to pixels: allow half a pixel each way
        assert (cw + 0.5) * (ch + 0.5) >= min_scale * w * h
        assert (cw - 0.5) * (ch - 0.5) <= w * h
        assert (cw + 0.5) / (ch - 0.5) >= 3 / 4 and (cw - 0.5) / (ch + 0.5) <= 4 / 3


def test_scene_statistics_match_torchvision():
    from torchvision.transforms import v2

    torch.manual_seed(0)
    ours = ObjectAwareCrop(mode="scene", min_scale=0.2)
    g = torch.Generator().manual_seed(1)
    areas = [((r[2] - r[0]) * (r[3] - r[1])) / (400 * 300) for _ in range(2000) for r in ours.sample_regions(400, 300, None, g)]
    img = torch.zeros(3, 300, 400)
    ref = [h * w / (400 * 300) for _ in range(4000) for (_, _, h, w) in [v2.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))]]
    assert abs(np.mean(areas) - np.mean(ref)) < 0.02 and abs(np.median(areas) - np.median(ref)) < 0.03


def test_dilation_is_relative_to_box_size_and_clipped():
    from ssl_crops.transforms.geometry import _dilate

    assert _dilate((100, 100, 120, 140), 0.5, 1000, 1000) == (90, 80, 130, 160)
    assert _dilate((900, 900, 1000, 1000), 0.5, 1000, 1000) == (850, 850, 1000, 1000)


def test_empty_boxes_fall_back_to_scene():
    a = ObjectAwareCrop(mode="object-object").sample_regions(300, 200, np.zeros((0, 4)), torch.Generator().manual_seed(3))
    b = ObjectAwareCrop(mode="scene").sample_regions(300, 200, None, torch.Generator().manual_seed(3))
    assert a == b


def test_tiny_box_at_the_corner_gets_a_minimum_region_inside_the_image():
    crop = ObjectAwareCrop(min_box_pixels=48, object_min_scale=1.0, dilation=0.0, min_scale=1.0, swap=False)
    tight, other = crop.sample_regions(300, 40, [[0.999, 0.99, 1.0, 1.0]], torch.Generator().manual_seed(0))
    assert _inside(tight, 300, 40) and tight[2] - tight[0] == 48 and tight[3] - tight[1] == 40


def test_bounding_boxes_and_arrays_give_the_same_regions():
    bb = tv_tensors.BoundingBoxes([[60, 20, 90, 80]], format="XYWH", canvas_size=(200, 300))
    norm = np.array([[0.2, 0.1, 0.5, 0.5]])
    np.testing.assert_allclose(to_normalized_boxes(bb), norm)
    crop = ObjectAwareCrop()
    for boxes in (bb, torch.tensor(norm), norm.tolist(), norm[0]):
        assert crop.sample_regions(300, 200, boxes, torch.Generator().manual_seed(5)) == \
            crop.sample_regions(300, 200, norm, torch.Generator().manual_seed(5))
    with pytest.raises(ValueError, match="shape"):
        to_normalized_boxes(np.zeros((2, 3)))


@pytest.mark.parametrize("mode", MODES)
def test_views_are_float_tensors_of_the_requested_size(mode):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    crop = ObjectAwareCrop(mode=mode, size=48)
    q, k = crop(img, np.array([[0.1, 0.1, 0.4, 0.5]]))
    for v in (q, k):
        assert v.shape == (3, 48, 48) and v.dtype == torch.float32 and torch.isfinite(v).all()
    q2, _ = crop(torch.from_numpy(np.array(img)).permute(2, 0, 1), np.array([[0.1, 0.1, 0.4, 0.5]]))
    assert q2.shape == (3, 48, 48)


def test_seeded_runs_are_reproducible():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    crop = ObjectAwareCrop(size=32)
    boxes = np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.9]])
    torch.manual_seed(7)
    a = crop(img, boxes)
    torch.manual_seed(7)
    b = crop(img, boxes)
    torch.manual_seed(8)
    c = crop(img, boxes)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_swap_randomizes_query_order():
    crop = ObjectAwareCrop(mode="object-scene", object_min_scale=1.0, min_scale=1.0)
    g = torch.Generator().manual_seed(0)
    firsts = {crop.sample_regions(400, 400, [[0.1, 0.1, 0.3, 0.3]], g)[0] for _ in range(50)}
    assert len(firsts) == 2  # the box region and the whole image


def test_helpers():
    img = Image.new("RGB", (90, 60))
    assert eval_transform(32)(img).shape == (3, 32, 32)
    q, k = TwoViews(eval_transform(16))(img)
    assert torch.equal(q, k)
    assert MoCoV1Augment()(img).shape == (3, 60, 90)
    with pytest.raises(ValueError, match="mode"):
        ObjectAwareCrop(mode="obj")


def test_usable_inside_another_dataset():
    class MyDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.crop = ObjectAwareCrop(size=24)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            img = Image.new("RGB", (64, 48), (i * 40, 0, 0))
            return self.crop(img, [[0.25, 0.25, 0.75, 0.75]])

    q, k = next(iter(torch.utils.data.DataLoader(MyDataset(), batch_size=4, num_workers=0)))
    assert q.shape == k.shape == (4, 3, 24, 24)
