import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from ssl_crops.transforms import MoCoV1Augment, ObjectAwareCrop, TwoViews, eval_transform
from ssl_crops.transforms.crop import MODES
from ssl_crops.transforms.geometry import to_normalized_boxes


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


sizes = st.integers(4, 1200)


def _inside(region, w, h):
    x0, y0, x1, y1 = region
    return all(isinstance(v, int) for v in region) and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h


def _contains(region, x, y):
    return region[0] <= x <= region[2] and region[1] <= y <= region[3]


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
    torch.manual_seed(0)
    ours = ObjectAwareCrop(mode="scene", min_scale=0.2)
    g = torch.Generator().manual_seed(1)
    areas = [((r[2] - r[0]) * (r[3] - r[1])) / (400 * 300) for _ in range(2000) for r in ours.sample_regions(400, 300, None, g)]
    img = torch.zeros(3, 300, 400)
    ref = [h * w / (400 * 300) for _ in range(4000) for (_, _, h, w) in [v2.RandomResizedCrop.get_params(img, (0.2, 1.0), (3 / 4, 4 / 3))]]
    assert abs(np.mean(areas) - np.mean(ref)) < 0.02 and abs(np.median(areas) - np.median(ref)) < 0.03


def test_bounding_boxes_and_arrays_give_the_same_regions():
    bb = tv_tensors.BoundingBoxes([[60, 20, 90, 80]], format="XYWH", canvas_size=(200, 300))
    norm = np.array([[0.2, 0.1, 0.5, 0.5]])
    np.testing.assert_allclose(to_normalized_boxes(bb), norm)
    crop = ObjectAwareCrop(geometry="relative", min_region=32)
    for boxes in (bb, torch.tensor(norm), norm.tolist(), norm[0]):
        assert crop.sample_regions(300, 200, boxes, torch.Generator().manual_seed(5)) == \
            crop.sample_regions(300, 200, norm, torch.Generator().manual_seed(5))


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


# --------------------------------------------------------------------------- object views: both geometries
geometries = st.sampled_from(["original", "relative"])


@settings(max_examples=300, deadline=None)
@given(geometry=geometries, w=sizes, h=sizes, box=boxes_strategy(max_boxes=1), d=st.floats(0, 1),
       min_scale=st.floats(0, 1), object_min_scale=st.floats(0, 1), min_region=st.integers(1, 400),
       anchor=st.booleans(), seed=st.integers(0, 2**31))
def test_object_object_views_lie_in_their_regions(geometry, w, h, box, d, min_scale, object_min_scale, min_region,
                                                  anchor, seed):
    crop = ObjectAwareCrop(geometry=geometry, dilation=d, min_scale=min_scale, object_min_scale=object_min_scale,
                           min_region=min_region, anchor=anchor, swap=False)
    tight_region, context_region = crop.object_regions(w, h, box[0])
    tight, context = crop.sample_regions(w, h, box, generator=torch.Generator().manual_seed(seed))
    for view, region in ((tight, tight_region), (context, context_region)):
        assert _inside(view, w, h)
        assert region[0] <= view[0] and view[2] <= region[2] and region[1] <= view[1] and view[3] <= region[3]
    if anchor:  # both views hold the box centre (clamped into the region)
        cx, cy = (box[0, 0] + box[0, 2]) / 2 * w, (box[0, 1] + box[0, 3]) / 2 * h
        for view, (x0, y0, x1, y1) in ((tight, tight_region), (context, context_region)):
            assert _contains(view, min(max(cx, x0), x1), min(max(cy, y0), y1))


@settings(max_examples=100, deadline=None)
@given(geometry=geometries, w=sizes, h=sizes, box=boxes_strategy(max_boxes=1), seed=st.integers(0, 2**31))
def test_object_scene_has_one_object_view(geometry, w, h, box, seed):
    crop = ObjectAwareCrop(mode="object-scene", geometry=geometry, swap=False)
    obj, scene = crop.sample_regions(w, h, box, generator=torch.Generator().manual_seed(seed))
    x0, y0, x1, y1 = crop.object_regions(w, h, box[0])[0]
    assert x0 <= obj[0] and obj[2] <= x1 and y0 <= obj[1] and obj[3] <= y1
    assert _inside(scene, w, h)


def test_original_geometry_is_the_default_and_places_views_uniformly():
    crop = ObjectAwareCrop(swap=False)
    assert (crop.geometry, crop.min_region, crop.dilation, crop.anchor) == ("original", 224, 0.2, False)
    box = [[0.3, 0.3, 0.45, 0.5]]
    tight_region, context_region = crop.object_regions(1024, 768, box)
    assert (tight_region, context_region) == ((195, 118, 572, 496), (246, 184, 552, 460))
    g = torch.Generator().manual_seed(0)
    pairs = [crop.sample_regions(1024, 768, box, g) for _ in range(2000)]
    disjoint = np.mean([q[2] <= k[0] or k[2] <= q[0] or q[3] <= k[1] or k[3] <= q[1] for q, k in pairs])
    assert 0.01 < disjoint < 0.3  # uniform placement: some pairs do not overlap at all
    anchored = ObjectAwareCrop(anchor=True, swap=False)
    pairs = [anchored.sample_regions(1024, 768, box, g) for _ in range(500)]
    assert not any(q[2] <= k[0] or k[2] <= q[0] or q[3] <= k[1] or k[3] <= q[1] for q, k in pairs)


def test_one_box_is_drawn_uniformly():
    crop = ObjectAwareCrop(geometry="relative", min_region=1, object_min_scale=1.0, min_scale=1.0, dilation=0.0,
                           swap=False)
    boxes = [[0.0, 0.0, 0.1, 0.1], [0.5, 0.5, 0.6, 0.6], [0.8, 0.1, 0.9, 0.2]]
    g = torch.Generator().manual_seed(0)
    firsts = [crop.sample_regions(100, 100, boxes, g)[0][0] for _ in range(900)]
    counts = np.unique(firsts, return_counts=True)
    assert list(counts[0]) == [0, 50, 80] and counts[1].min() > 250


def test_relative_tiny_box_at_the_corner_gets_a_minimum_region_inside_the_image():
    crop = ObjectAwareCrop(geometry="relative", min_region=48, object_min_scale=1.0, dilation=0.0, min_scale=1.0,
                           swap=False)
    tight, _ = crop.sample_regions(300, 40, [[0.999, 0.99, 1.0, 1.0]], torch.Generator().manual_seed(0))
    assert _inside(tight, 300, 40) and tight[3] - tight[1] == 40 and 30 <= tight[2] - tight[0] <= 48


# --------------------------------------------------------------------------- no silent traps
@pytest.mark.parametrize("bad, what", [
    ({"image": 1}, "got dict"),
    ((Image.new("RGB", (8, 8)),), "got tuple"),
    (np.zeros((40, 30, 3), np.uint8), r"ndarray of shape \(40, 30, 3\).*fromarray"),
    (torch.zeros(40, 30, 3), r"shape \(40, 30, 3\).*channels-last"),
    (None, "got NoneType"),
])
def test_unreadable_input_raises_type_error(bad, what):
    crop = ObjectAwareCrop(size=16)
    with pytest.raises(TypeError, match=rf"takes a PIL image or an image tensor.*{what}"):
        crop(bad, [[0.1, 0.1, 0.5, 0.5]])


def test_unreadable_input_in_a_dataloader_raises_instead_of_ending_the_epoch():
    class Bad(torch.utils.data.Dataset):
        crop = ObjectAwareCrop(size=16)

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return self.crop([Image.new("RGB", (32, 32))], None)

    with pytest.raises(TypeError, match="got list"):
        list(torch.utils.data.DataLoader(Bad(), batch_size=2))


def test_pixel_and_xywh_boxes_raise_with_the_values():
    img = Image.new("RGB", (200, 100))
    crop = ObjectAwareCrop(size=16)
    with pytest.raises(ValueError, match=r"row 0: \[ 20\.,  10\., 120\.,  90\.\].*BoundingBoxes"):
        crop(img, np.array([[20, 10, 120, 90]]))
    with pytest.raises(ValueError, match=r"x1 < x0.*row 1"):
        crop(img, np.array([[0.1, 0.1, 0.5, 0.5], [0.6, 0.2, 0.2, 0.3]]))
    bb = tv_tensors.BoundingBoxes([[20, 10, 120, 90]], format="XYXY", canvas_size=(50, 50))
    with pytest.raises(ValueError, match="canvas_size"):
        crop(img, bb)


def test_normalized_coordinates_in_bounding_boxes_get_a_warning():
    """BoundingBoxes are pixels: normalized values wrapped in them put every region in the top-left
    corner. All coordinates in [0, 1] on an image of more than a few pixels is that mistake."""
    img = Image.new("RGB", (200, 100))
    crop = ObjectAwareCrop(size=16)
    wrapped = tv_tensors.BoundingBoxes([[0.1, 0.2, 0.5, 0.9]], format="XYXY", canvas_size=(100, 200))
    with pytest.warns(UserWarning, match=r"all of these lie in \[0, 1\] on a 200x100 image: normalized coordinates "
                                         r"wrapped in BoundingBoxes\?"):
        crop(img, wrapped)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crop(img, wrapped)  # once per transform
        ObjectAwareCrop(size=16)(img, tv_tensors.BoundingBoxes([[20, 10, 120, 90]], format="XYXY",
                                                               canvas_size=(100, 200)))
        tiny = Image.new("RGB", (2, 2))  # a 2 px image: [0, 1] pixel boxes are plausible
        ObjectAwareCrop(size=16)(tiny, tv_tensors.BoundingBoxes([[0, 0, 1, 1]], format="XYXY", canvas_size=(2, 2)))


def test_v2_dict_sample_gives_back_a_dict():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8))
    bb = tv_tensors.BoundingBoxes([[60, 20, 150, 80]], format="XYXY", canvas_size=(100, 200))
    crop = ObjectAwareCrop(size=16, min_region=16)
    torch.manual_seed(0)
    out = crop({"image": img, "boxes": bb, "labels": torch.tensor([3])})
    assert set(out) == {"image", "labels"} and out["labels"].tolist() == [3]  # the image's boxes do not travel on
    q, k = out["image"]
    torch.manual_seed(0)
    q2, k2 = crop(img, bb)
    assert torch.equal(q, q2) and torch.equal(k, k2) and q.shape == (3, 16, 16)
    torch.manual_seed(0)
    composed = v2.Compose([crop])({"picture": img, "objects": bb})  # any keys: the image and the BoundingBoxes
    assert torch.equal(composed["picture"][0], q) and "objects" not in composed
    with pytest.raises(TypeError, match="'image' entry"):
        crop({"a": img, "b": img})


def test_scene_fallbacks_are_counted():
    crop = ObjectAwareCrop(size=16)
    img = Image.new("RGB", (64, 48))
    crop(img, [[0.1, 0.1, 0.5, 0.5]])
    assert crop.scene_fallbacks == 0
    crop(img, None)
    crop(img, np.zeros((0, 4)))
    crop.sample_regions(64, 48, [])
    assert crop.scene_fallbacks == 3
    scene = ObjectAwareCrop(mode="scene", size=16)
    scene(img, None)
    assert scene.scene_fallbacks == 0  # scene crops by choice are no fallback


def test_empty_boxes_fall_back_to_scene_crops():
    a = ObjectAwareCrop(mode="object-object").sample_regions(300, 200, np.zeros((0, 4)), torch.Generator().manual_seed(3))
    b = ObjectAwareCrop(mode="scene").sample_regions(300, 200, None, torch.Generator().manual_seed(3))
    assert a == b


def test_min_box_pixels_is_a_deprecated_alias_of_min_region():
    with pytest.warns(DeprecationWarning, match="min_region"):
        crop = ObjectAwareCrop(min_box_pixels=48)
    assert crop.min_region == 48
    with pytest.warns(DeprecationWarning):
        assert crop.min_box_pixels == 48


def test_constructor_checks():
    for kw, match in (({"geometry": "paper"}, "geometry"), ({"min_region": 0}, "min_region"),
                      ({"dilation": -1}, "dilation"), ({"min_scale": 2}, "min_scale"), ({"size": 0}, "size"),
                      ({"ratio": (2, 1)}, "ratio")):
        with pytest.raises(ValueError, match=match):
            ObjectAwareCrop(**kw)
    with pytest.raises(TypeError, match="size"):
        ObjectAwareCrop(size="big")


def test_size_takes_height_and_width_and_the_call_takes_a_generator():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    crop = ObjectAwareCrop(size=(24, 40), augment=to_float, min_region=32)
    boxes = [[0.1, 0.1, 0.4, 0.5], [0.5, 0.5, 0.9, 0.9]]
    q, k = crop(img, boxes, generator=torch.Generator().manual_seed(1))
    assert q.shape == k.shape == (3, 24, 40)
    q2, k2 = crop(img, boxes, generator=torch.Generator().manual_seed(1))
    assert torch.equal(q, q2) and torch.equal(k, k2)  # this augment is deterministic: same regions, same views
    assert "geometry='original'" in repr(crop) and "min_region=32" in repr(crop)


def test_make_params_serves_the_v2_split():
    crop = ObjectAwareCrop(size=16, min_region=16)
    img = Image.new("RGB", (64, 48))
    torch.manual_seed(0)
    params = crop.make_params([img, [[0.1, 0.1, 0.5, 0.5]]])
    torch.manual_seed(0)
    assert params["regions"] == crop.sample_regions(64, 48, [[0.1, 0.1, 0.5, 0.5]])
    assert [v.shape for v in crop.transform(img, params)] == [(3, 16, 16)] * 2


# --------------------------------------------------------------------------- fuzzing the whole transform
@settings(max_examples=120, deadline=None)
@given(geometry=geometries, mode=st.sampled_from(MODES), w=st.integers(1, 300), h=st.integers(1, 300),
       boxes=st.one_of(st.none(), boxes_strategy(max_boxes=5)), d=st.floats(0, 1.5), min_scale=st.floats(0, 1),
       object_min_scale=st.floats(0, 1), min_region=st.integers(1, 500), anchor=st.booleans(),
       size=st.one_of(st.integers(1, 24), st.tuples(st.integers(1, 24), st.integers(1, 24))),
       pil=st.booleans(), seed=st.integers(0, 2**31))
def test_whole_transform_fuzz(geometry, mode, w, h, boxes, d, min_scale, object_min_scale, min_region, anchor,
                              size, pil, seed):
    crop = ObjectAwareCrop(mode=mode, geometry=geometry, dilation=d, min_scale=min_scale,
                           object_min_scale=object_min_scale, min_region=min_region, anchor=anchor, size=size)
    pixels = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(pixels) if pil else torch.from_numpy(pixels).permute(2, 0, 1)
    torch.manual_seed(seed)
    q, k = crop(img, boxes, generator=torch.Generator().manual_seed(seed))
    hw = (size, size) if isinstance(size, int) else size
    for v in (q, k):
        assert v.shape == (3, *hw) and v.dtype == torch.float32 and torch.isfinite(v).all()
    assert crop.scene_fallbacks == int(mode != "scene" and boxes is None)


def test_v2_transforms_after_the_crop_act_on_every_view_or_point_to_augment():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8))
    bb = tv_tensors.BoundingBoxes([[60, 20, 150, 80]], format="XYXY", canvas_size=(100, 200))
    crop = ObjectAwareCrop(size=16, min_region=16, augment=v2.PILToTensor())
    for after in (v2.RandomGrayscale(p=1), v2.RandomHorizontalFlip(p=1), v2.RandomResizedCrop(8)):
        for sample in ((img, bb), ({"image": img, "boxes": bb},)):
            with pytest.raises(TypeError, match="augment="):  # never one view only, nor one draw for both
                v2.Compose([crop, after])(*sample)
    torch.manual_seed(0)
    out = v2.Compose([crop, v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])(
        {"image": img, "boxes": bb})
    torch.manual_seed(0)
    q, k = crop(img, bb)
    for view, raw in zip(out["image"], (q, k)):  # deterministic transforms: every view alike
        assert torch.allclose(view, (raw.float() / 255 - 0.5) / 0.25, atol=1e-6)
    grey = ObjectAwareCrop(size=16, min_region=16, augment=v2.Compose([v2.PILToTensor(), v2.RandomGrayscale(p=1)]))
    for view in grey(img, bb):  # per-view transforms go in augment=
        assert torch.equal(view[0], view[1]) and torch.equal(view[1], view[2])
    assert isinstance(torch.stack([q, k]) + 1, torch.Tensor)


class _Fallbacks(torch.utils.data.Dataset):
    def __init__(self, crop):
        self.crop = crop

    def __len__(self):
        return 6

    def __getitem__(self, i):
        return self.crop(Image.new("RGB", (32, 32)), None)[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_scene_fallbacks_add_up_over_dataloader_workers(context):
    crop = ObjectAwareCrop(size=8, augment=v2.PILToTensor())
    loader = torch.utils.data.DataLoader(_Fallbacks(crop), batch_size=2, num_workers=2, multiprocessing_context=context)
    assert sum(len(b) for b in loader) == 6
    assert crop.scene_fallbacks == 6 and crop.local_scene_fallbacks == 0
