"""Region geometry: the original code's regions (against a literal transcription), the relative
geometry, and torchvision-style random resized crops."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torchvision import tv_tensors

from ssl_crops.transforms.geometry import (clip_region, object_regions, original_regions, random_resized_crop,
                                           relative_regions, to_normalized_boxes)


def extract_bb_literal(W, H, XMin, YMin, XMax, YMax, d, small=224, pad=112):
    """The original code's region, transcribed literally from the issue (unclipped)."""
    x0 = int(XMin * W)
    x1 = int(XMax * W)
    y0 = int(YMin * H)
    y1 = int(YMax * H)
    x0 -= int(x0 * d)
    y0 -= int(y0 * d)
    x1 += int(x1 * d)
    y1 += int(y1 * d)
    if x1 - x0 < small:
        if x0 - pad > 0:
            x0 -= pad
        else:
            x0, x1 = 0, small
        if x1 + pad < W:
            x1 += pad
        else:
            x0 = x1 - small
    if y1 - y0 < small:
        if y0 - pad > 0:
            y0 -= pad
        else:
            y0, y1 = 0, small
        if y1 + pad < H:
            y1 += pad
        else:
            y0 = y1 - small
    return x0, y0, x1, y1


def _clipped(r, W, H):
    return max(r[0], 0), max(r[1], 0), min(r[2], W), min(r[3], H)


def _nonempty(r):
    """With a zero-width box and ``min_region // 2 == 0`` the literal formula gives an empty
    region; ours keeps one pixel there."""
    return r[0], r[1], max(r[2], r[0] + 1), max(r[3], r[1] + 1)


def _random_cases(rng, n):
    """Boxes at every border, tiny, image-sized and ordinary, on images from 1 px to 1600 px
    (many narrower than 336 px and than 224 px)."""
    for _ in range(n):
        W, H = (int(v) for v in rng.choice([rng.integers(1, 336), rng.integers(336, 1600)], 2))
        kind = rng.integers(6)
        x0, x1 = np.sort(rng.uniform(0, 1, 2))
        y0, y1 = np.sort(rng.uniform(0, 1, 2))
        if kind == 0:  # at a border (each side independently)
            x0, y0 = (0.0 if rng.random() < .5 else x0), (0.0 if rng.random() < .5 else y0)
            x1, y1 = (1.0 if rng.random() < .5 else x1), (1.0 if rng.random() < .5 else y1)
        elif kind == 1:  # tiny, anywhere including the corners
            x0, y0 = rng.choice([0.0, 1.0, rng.uniform()], 2)
            x1, y1 = min(1.0, x0 + rng.uniform(0, 3e-3)), min(1.0, y0 + rng.uniform(0, 3e-3))
        elif kind == 2:  # image-sized
            x0, y0, x1, y1 = 0.0, 0.0, 1.0, 1.0
        yield W, H, (float(x0), float(y0), float(x1), float(y1))


@pytest.mark.parametrize("d", [0.0, 0.1, 0.2, 0.5, 1.0])
def test_original_regions_equal_the_literal_formula(d):
    rng = np.random.default_rng(int(d * 10))
    for W, H, box in _random_cases(rng, 4000):
        tight, context = original_regions(W, H, box, dilation=d, min_region=224, clip=False)
        assert tight == extract_bb_literal(W, H, *box, 0.0)
        assert context == extract_bb_literal(W, H, *box, d)
        ctight, ccontext = original_regions(W, H, box, dilation=d)
        assert ctight == _clipped(tight, W, H) and ccontext == _clipped(context, W, H)
        for x0, y0, x1, y1 in (ctight, ccontext):  # never empty, always inside
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


@pytest.mark.parametrize("min_region", [1, 2, 33, 64, 100])
def test_original_regions_scale_with_min_region(min_region):
    rng = np.random.default_rng(min_region)
    for W, H, box in _random_cases(rng, 1500):
        lit = extract_bb_literal(W, H, *box, 0.2, small=min_region, pad=min_region // 2)
        assert original_regions(W, H, box, 0.2, min_region, clip=False)[1] == lit
        x0, y0, x1, y1 = original_regions(W, H, box, 0.2, min_region)[1]
        assert (x0, y0, x1, y1) == _nonempty(_clipped(lit, W, H)) and 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H


def test_original_regions_known_values():
    # a 64x96 px box on a 640x480 photo: both axes are short, 112 px are added on each side; the
    # context's y axis (192..403 after dilation) hits the bottom rule and keeps only 224 px
    assert original_regions(640, 480, (0.5, 0.5, 0.6, 0.7), 0.2) == ((208, 128, 496, 448), (144, 179, 572, 403))
    # coordinate-scaling dilation: the box's right edge at 0.9 moves by int(0.9 * W * d) px
    assert original_regions(1000, 1000, (0.1, 0.1, 0.9, 0.9), 0.2) == ((100, 100, 900, 900), (80, 80, 1000, 1000))
    assert original_regions(1000, 1000, (0.1, 0.1, 0.9, 0.9), 0.2, clip=False)[1] == (80, 80, 1080, 1080)
    # an image narrower than 224 px: the region is the whole width
    assert original_regions(100, 500, (0.4, 0.4, 0.5, 0.5), 0.0)[0] == (0, 88, 100, 362)


boxes_1 = st.tuples(st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1)).map(
    lambda b: (min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])))


@settings(max_examples=400, deadline=None)
@given(W=st.integers(1, 2000), H=st.integers(1, 2000), box=boxes_1, d=st.floats(0, 2), m=st.integers(1, 600))
def test_relative_regions_contain_the_box_and_meet_min_region(W, H, box, d, m):
    tight, context = relative_regions(W, H, box, d, m)
    bx0, by0, bx1, by1 = box[0] * W, box[1] * H, box[2] * W, box[3] * H
    for x0, y0, x1, y1 in (tight, context):
        assert all(isinstance(v, int) for v in (x0, y0, x1, y1))
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert x1 - x0 >= min(m, W) and y1 - y0 >= min(m, H)
        assert x0 <= math.floor(bx0) and math.ceil(bx1) <= x1 or x1 - x0 == min(m, W)
        cx, cy = (bx0 + bx1) / 2, (by0 + by1) / 2  # the box centre is inside both regions
        assert x0 <= cx <= x1 and y0 <= cy <= y1
    # the dilated region covers the box dilated by d x its size (clipped to the image)
    x0, y0, x1, y1 = context
    dx, dy = d * (bx1 - bx0), d * (by1 - by0)
    assert x0 <= max(0, bx0 - dx) + 1e-9 and x1 >= min(W, bx1 + dx) - 1e-9
    assert y0 <= max(0, by0 - dy) + 1e-9 and y1 >= min(H, by1 + dy) - 1e-9


def test_relative_regions_known_values():
    # a 100x50 px box, dilation 0.2: 20 / 10 px more per side; min_region 64 grows the short side
    assert relative_regions(1000, 1000, (0.1, 0.1, 0.2, 0.15), 0.2, 64) == ((100, 93, 200, 157), (80, 90, 220, 160))
    # a tiny box in the corner: grown to min_region and shifted inside
    assert relative_regions(300, 40, (0.999, 0.99, 1.0, 1.0), 0.0, 48)[0] == (252, 0, 300, 40)


def test_object_regions_dispatch_and_errors():
    box = (0.2, 0.2, 0.4, 0.5)
    assert object_regions(500, 400, box, "original") == original_regions(500, 400, box)
    assert object_regions(500, 400, box, "relative", 0.3, 50) == relative_regions(500, 400, box, 0.3, 50)
    with pytest.raises(ValueError, match="geometry"):
        object_regions(500, 400, box, "paper")


def test_clip_region_is_never_empty():
    assert clip_region((-5, -5, 50, 60), 40, 30) == (0, 0, 40, 30)
    assert clip_region((40, 30, 60, 80), 40, 30) == (39, 29, 40, 30)


@settings(max_examples=300, deadline=None)
@given(x0=st.integers(0, 500), y0=st.integers(0, 500), w=st.integers(1, 800), h=st.integers(1, 800),
       s=st.floats(0, 1), anchor=st.booleans(), seed=st.integers(0, 2**31))
def test_random_resized_crop_stays_in_region_and_holds_the_anchor(x0, y0, w, h, s, anchor, seed):
    region = (x0, y0, x0 + w, y0 + h)
    point = (x0 + w * 0.3, y0 + h * 0.9) if anchor else None
    cx0, cy0, cx1, cy1 = random_resized_crop(region, (s, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(seed),
                                             anchor=point)
    assert x0 <= cx0 < cx1 <= x0 + w and y0 <= cy0 < cy1 <= y0 + h
    if anchor:
        assert cx0 <= point[0] <= cx1 and cy0 <= point[1] <= cy1


def test_random_resized_crop_placement_is_uniform():
    g = torch.Generator().manual_seed(0)
    lefts = np.array([random_resized_crop((100, 0, 400, 300), (0.1, 0.1), (1, 1), g)[0] for _ in range(4000)])
    # scale 0.1 of 300x300 is a 95x95 crop: its left edge is uniform over 100..305
    assert lefts.min() == 100 and lefts.max() == 305
    counts = np.histogram(lefts, bins=4, range=(100, 306))[0]
    assert counts.min() > 0.85 * counts.mean()


def test_random_resized_crop_falls_back_to_the_centre_like_torchvision():
    # a 400x10 region cannot hold a crop of ratio 3/4..4/3 and scale >= 0.9: centred fallback, ratio 4/3
    assert random_resized_crop((0, 0, 400, 10), (0.9, 1.0), (3 / 4, 4 / 3)) == (193, 0, 206, 10)


def test_to_normalized_boxes_refuses_what_it_cannot_trust():
    with pytest.raises(ValueError, match=r"normalized to \[0, 1\].*12\..*tv_tensors.BoundingBoxes"):
        to_normalized_boxes([[12, 30, 80, 90]])
    with pytest.raises(ValueError, match=r"x1 < x0.*XYWH"):
        to_normalized_boxes([[0.1, 0.1, 0.5, 0.5], [0.5, 0.4, 0.2, 0.3]])  # the second row is x, y, w, h
    with pytest.raises(ValueError, match="non-finite"):
        to_normalized_boxes([[0.1, np.nan, 0.5, 0.5]])
    with pytest.raises(ValueError, match="shape"):
        to_normalized_boxes(np.zeros((2, 3)))
    with pytest.raises(TypeError, match="dict"):
        to_normalized_boxes({"boxes": 1})
    # float error at the edges is clipped; zero-width boxes are kept
    np.testing.assert_array_equal(to_normalized_boxes([[-1e-9, 0.2, 1 + 1e-9, 0.2]]), [[0.0, 0.2, 1.0, 0.2]])
    assert to_normalized_boxes(None).shape == (0, 4) and to_normalized_boxes([]).shape == (0, 4)


def test_bounding_boxes_are_converted_and_clamped_to_the_canvas():
    bb = tv_tensors.BoundingBoxes([[60, 20, 90, 80], [-10, 0, 400, 50]], format="XYWH", canvas_size=(200, 300))
    np.testing.assert_allclose(to_normalized_boxes(bb), [[0.2, 0.1, 0.5, 0.5], [0.0, 0.0, 1.0, 0.25]])
