import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import (CorruptImageError, LabeledImageDataset, ObjectCropDataset, load_image,
                            load_index, open_image)
from ssl_crops.transforms import ObjectAwareCrop, TwoViews, eval_transform


class RecordingCrop:
    """Records the boxes the dataset hands to a box-aware transform."""

    uses_boxes = True

    def __init__(self):
        self.seen = []

    def __call__(self, img, boxes):
        self.seen.append(np.asarray(boxes))
        return img.size, len(boxes)


class FixedProposals:
    def __init__(self):
        self.asked = []

    def proposals_for(self, image_id, image, top_k=None):
        self.asked.append(image_id)
        return np.tile(np.array([[0.1, 0.1, 0.6, 0.6]], np.float32), (20, 1))[:top_k]


def test_image_sampling_returns_two_views_and_the_index(demo_root):
    index = load_index(demo_root / "images")
    ds = ObjectCropDataset(demo_root / "images", index, ObjectAwareCrop(size=32))
    assert len(ds) == len(index) == 24
    (q, k), i = ds[3]
    assert i == 3 and q.shape == k.shape == (3, 32, 32)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2)))
    assert batch[0][0].shape == (4, 3, 32, 32) and batch[1].tolist() == [0, 1, 2, 3]


def test_box_sampling_visits_every_box_once(demo_root):
    index = load_index(demo_root / "images")
    rec = RecordingCrop()
    ds = ObjectCropDataset(demo_root / "images", index, rec, sampling="box")
    assert len(ds) == index.num_boxes
    for j in range(len(ds)):
        ds[j]
    np.testing.assert_array_equal(np.concatenate(rec.seen), index.flat_boxes)


def test_images_without_boxes_use_top_k_proposals(demo_root):
    index = load_index(demo_root / "images", labels=demo_root / "images_selected_new.npy",
                       boxes=demo_root / "images_selected_with_all_features.npy")
    no_boxes = BoxIndex.from_openimages(demo_root / "images_selected_new.npy")  # labels only
    rec, props = RecordingCrop(), FixedProposals()
    ds = ObjectCropDataset(demo_root / "images", no_boxes, rec, proposals=props, proposal_topk=7)
    ds[0]
    assert props.asked == [no_boxes.image_id(0)] and rec.seen[0].shape == (7, 4)
    ds_boxes = ObjectCropDataset(demo_root / "images", index, rec, proposals=props)
    ds_boxes[0]
    assert len(props.asked) == 1  # annotated images never ask for proposals
    ds_scene = ObjectCropDataset(demo_root / "images", no_boxes, rec)
    ds_scene[0]
    assert rec.seen[-1].shape[0] == 0


def _sizes(b):
    return np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)


@pytest.mark.parametrize("sampling", ["image", "box"])
def test_random_boxes_keep_sizes_and_move_per_seed_and_epoch(demo_root, sampling):
    """--random-boxes: each image's boxes at random positions inside the image, their sizes kept;
    the same for a seed and epoch (and for every item of an image), new for another epoch or seed."""
    index = load_index(demo_root / "images")

    def boxes(seed, epoch):
        rec = RecordingCrop()
        ds = ObjectCropDataset(demo_root / "images", index, rec, sampling=sampling, random_boxes=True,
                               random_boxes_seed=seed)
        ds.set_epoch(epoch)
        for j in range(len(ds)):
            ds[j]
        return np.concatenate(rec.seen)

    first, flat = boxes(0, 0), index.flat_boxes
    assert first.shape == flat.shape
    np.testing.assert_allclose(_sizes(first), _sizes(flat), atol=1e-6)
    assert (first >= 0).all() and (first <= 1).all()
    assert np.abs(first - flat).max(1).min() > 1e-4  # every box moved
    np.testing.assert_array_equal(boxes(0, 0), first)
    assert not np.allclose(boxes(0, 1), first) and not np.allclose(boxes(1, 0), first)
    # one layout per image and epoch: a box's item sees the row of its image's drawing
    ds = ObjectCropDataset(demo_root / "images", index, RecordingCrop(), random_boxes=True)
    np.testing.assert_array_equal(first[:len(index.boxes(0))], ds.placed_boxes(0, index.boxes(0)))


def test_random_boxes_move_proposals_too(demo_root):
    no_boxes = BoxIndex.from_openimages(demo_root / "images_selected_new.npy")  # labels only
    rec = RecordingCrop()
    ds = ObjectCropDataset(demo_root / "images", no_boxes, rec, proposals=FixedProposals(), proposal_topk=5,
                           random_boxes=True, random_boxes_seed=2)
    ds[0]
    fixed = np.tile([[0.1, 0.1, 0.6, 0.6]], (5, 1))
    assert rec.seen[0].shape == (5, 4) and not np.allclose(rec.seen[0], fixed)
    np.testing.assert_allclose(_sizes(rec.seen[0]), _sizes(fixed), atol=1e-6)


def test_plain_two_view_transforms_get_only_the_image(demo_root):
    index = load_index(demo_root / "images")
    ds = ObjectCropDataset(demo_root / "images", index, TwoViews(eval_transform(16)))
    (q, k), _ = ds[0]
    assert torch.equal(q, k)


def test_corrupt_images_are_skipped_with_a_warning_or_raised(tmp_path, demo_root):
    root = tmp_path / "images"
    shutil.copytree(demo_root / "images", root)
    index = load_index(root, labels=demo_root / "images_selected_new.npy")
    bad = root / index.path(2)
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = ObjectCropDataset(root, index, ObjectAwareCrop(size=16))
    with pytest.warns(RuntimeWarning, match=index.path(2)):
        _, i = ds[2]
    assert i == 2  # the item keeps its index; its views come from the next image
    rec = RecordingCrop()
    per_box = ObjectCropDataset(root, index, rec, sampling="box")
    first_bad = int(np.flatnonzero(index.box_image == 2)[0])
    with pytest.warns(RuntimeWarning, match=index.path(2)):
        per_box[first_bad]
    np.testing.assert_array_equal(rec.seen[-1], index.flat_boxes[np.flatnonzero(index.box_image == 3)[:1]])
    strict = ObjectCropDataset(root, index, ObjectAwareCrop(size=16), on_corrupt="raise")
    with pytest.raises(CorruptImageError, match=index.path(2)):
        strict[2]
    with pytest.raises(CorruptImageError, match="not found"):
        load_image(root / "missing.jpg")


def test_load_index_finds_dicts_beside_the_folder_or_indexes_the_folder(tmp_path, demo_root, monkeypatch):
    beside = load_index(demo_root / "images")
    assert beside.num_boxes > 0 and len(beside) == 24
    only_images = tmp_path / "imgs"
    shutil.copytree(demo_root / "images", only_images)
    monkeypatch.chdir(tmp_path)
    folder = load_index(only_images)
    assert len(folder) == 32 and folder.num_boxes == 0  # train + test images, no boxes
    coco = load_index(only_images, coco=demo_root / "annotations_test.json")
    assert len(coco) == 8
    beside.save(tmp_path / "index.npz")
    assert load_index(only_images, index=tmp_path / "index.npz").num_boxes == beside.num_boxes
    with pytest.raises(FileNotFoundError, match="nope.npy"):
        load_index(only_images, labels=tmp_path / "nope.npy")


def test_labeled_dataset_targets_are_multi_hot(demo_root):
    index = load_index(demo_root / "images")
    ds = LabeledImageDataset(demo_root / "images", index, eval_transform(32))
    x, y = ds[1]
    assert x.shape == (3, 32, 32) and y.dtype == torch.float32
    assert set(np.flatnonzero(y.numpy())) == set(index.labels(1).tolist())


def _photo(path, w=800, h=600, marker=(500, 260, 540, 300), fmt="JPEG"):
    """A smooth colourful image with a white square marker; saved as JPEG (or PNG)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 60], -1)
    x0, y0, x1, y1 = marker
    img[y0:y1, x0:x1] = 255
    Image.fromarray(img.astype(np.uint8)).save(path, fmt, quality=95)
    return path


def _centroid(view: torch.Tensor):
    bright = (view.float().min(0).values > 235).float()
    ys, xs = torch.nonzero(bright, as_tuple=True)
    return xs.float().mean().item(), ys.float().mean().item()


@pytest.mark.parametrize("size", [32, 64, 100])
def test_reduced_decoding_keeps_regions_and_views(tmp_path, size):
    from torchvision.transforms import v2

    path = _photo(tmp_path / "a.jpg")
    crop = ObjectAwareCrop(size=size, augment=v2.PILToTensor(), swap=False)
    full = load_image(path)
    scales, marker_seen = set(), 0
    for seed in range(12):
        regions = crop.sample_regions(800, 600, [[0.3, 0.2, 0.8, 0.8]], torch.Generator().manual_seed(seed))
        enc = open_image(path)
        assert enc.size == (800, 600)
        img, mapped = enc.decode_regions(regions, size)
        k = enc.scale_for(regions, size)
        scales.add(k)
        assert img.size == (-(-800 // k), -(-600 // k))
        for r, m in zip(regions, mapped):
            np.testing.assert_allclose(np.array(m) * k, r, atol=1e-9)  # exact mapping of the regions
            if k > 1:  # never fewer pixels than the view needs
                assert (m[2] - m[0]) >= size and (m[3] - m[1]) >= size
        if k < 8:  # the coarsest scale that keeps them: one step coarser would not
            assert min(min(r[2] - r[0], r[3] - r[1]) for r in regions) < 2 * k * size
        for reduced_view, full_view, region in zip(crop.transform(open_image(path), {"regions": regions}),
                                                   crop.transform(full, {"regions": regions}), regions):
            assert reduced_view.shape == full_view.shape == (3, size, size)
            assert reduced_view.dtype == full_view.dtype == torch.uint8
            assert (reduced_view.float() - full_view.float()).abs().mean() < 6
            x0, y0, x1, y1 = region
            if x0 <= 500 and 540 <= x1 and y0 <= 260 and 300 <= y1:  # the marker in view: same place within a pixel
                assert np.allclose(_centroid(reduced_view), _centroid(full_view), atol=1.0)
                marker_seen += 1
    assert len(scales) > 1 and marker_seen > 3  # reduced and full decoding both met, the marker seen


def test_scale_choice_and_formats(tmp_path):
    enc = open_image(_photo(tmp_path / "a.jpg"))
    assert enc.scale_for([(0, 0, 800, 600), (0, 0, 800, 600)], 64) == 8
    assert enc.scale_for([(0, 0, 800, 600), (100, 100, 300, 400)], 64) == 2  # the smaller region decides
    assert enc.scale_for([(0, 0, 800, 600)], (200, 64)) == 4  # both axes keep the output's pixels
    assert enc.scale_for([(0, 0, 127, 600)], 64) == 1
    png = open_image(_photo(tmp_path / "a.png", fmt="PNG"))
    assert png.scale_for([(0, 0, 800, 600)], 32) == 1  # other formats decode fully
    img, regions = png.decode_regions([(0, 0, 800, 600)], 32)
    assert img.size == (800, 600) and regions == [(0.0, 0.0, 800.0, 600.0)]
    Image.open(tmp_path / "a.jpg").convert("L").save(tmp_path / "gray.jpg")
    gray, regions = open_image(tmp_path / "gray.jpg").decode_regions([(0, 0, 800, 600)], 64)
    assert gray.mode == "RGB" and gray.size == (100, 75) and regions == [(0.0, 0.0, 100.0, 75.0)]
    full = enc.decode()  # once decoded in full (e.g. for proposals), the full image is reused
    img, _ = enc.decode_regions([(0, 0, 800, 600)], 32)
    assert img is full


def test_truncated_jpeg_fails_in_reduced_decoding_with_the_file_name(tmp_path, demo_root):
    path = _photo(tmp_path / "t.jpg")
    path.write_bytes(path.read_bytes()[:2000])
    enc = open_image(path)  # the header is intact
    with pytest.raises(CorruptImageError, match="t.jpg"):
        enc.decode_regions([(0, 0, 800, 600)], 32)
    with pytest.raises(CorruptImageError, match="t.jpg"):
        open_image(path).decode()
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="junk.jpg"):
        open_image(tmp_path / "junk.jpg")


def test_proposal_sources_that_need_no_pixels_get_none(demo_root):
    class CachedProposals(FixedProposals):
        needs_image = False

        def proposals_for(self, image_id, image, top_k=None):
            assert image is None
            return super().proposals_for(image_id, image, top_k)

    no_boxes = BoxIndex.from_openimages(demo_root / "images_selected_new.npy")
    props = FixedProposals()
    seen = []
    props.proposals_for = lambda image_id, image, top_k: seen.append(image) or np.array([[0.1, 0.1, 0.6, 0.6]])
    ObjectCropDataset(demo_root / "images", no_boxes, ObjectAwareCrop(size=16), proposals=props)[0]
    assert isinstance(seen[0], Image.Image) and seen[0].size == open_image(demo_root / "images" / no_boxes.path(0)).size
    (q, _), _ = ObjectCropDataset(demo_root / "images", no_boxes, ObjectAwareCrop(size=16), proposals=CachedProposals())[0]
    assert q.shape == (3, 16, 16)


def test_seven_kinds_of_bad_image(bad_images):
    """Missing, truncated, empty and 20000x20000-header files are skipped, counted and named with a
    reason; a PNG named .jpg, a CMYK JPEG and a 1x1 image are valid images and are served as RGB."""
    import warnings

    images, unreadable = bad_images.images, bad_images.unreadable
    index = BoxIndex.from_coco(bad_images.coco)
    ds = ObjectCropDataset(images, index, ObjectAwareCrop(size=16))
    reasons = {}
    for i in range(len(ds)):
        name = index.path(i)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            (q, k), j = ds[i]
        assert j == i and q.shape == k.shape == (3, 16, 16)
        assert [n for n, _ in ds.last_skipped] == ([name] if name in unreadable else []), name
        assert sum("skipping unreadable image" in str(w.message) for w in caught) == (name in unreadable)
        reasons.update(ds.last_skipped)
    assert ds.bad_images == 4 and sorted(reasons) == sorted(unreadable)
    assert "not found" in reasons["missing.jpg"] and "truncated" in reasons["truncated.jpg"]
    assert reasons["empty.jpg"] == "empty file (0 bytes)" and "pixels" in reasons["huge.jpg"]
    for name in bad_images.valid:
        assert load_image(images / name).mode == "RGB"
    strict = ObjectCropDataset(images, index, ObjectAwareCrop(size=16), on_corrupt="raise")
    bad = next(i for i in range(len(index)) if index.path(i) == "truncated.jpg")
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        strict[bad]


def test_a_jpeg_without_its_end_marker_is_served_and_counted(tmp_path, demo_root):
    root = tmp_path / "images"
    shutil.copytree(demo_root / "images", root)
    index = load_index(root, labels=demo_root / "images_selected_new.npy")
    cut = root / index.path(1)
    cut.write_bytes(cut.read_bytes()[:-2])  # only the end marker missing
    ds = ObjectCropDataset(root, index, ObjectAwareCrop(size=16), on_corrupt="raise")
    (q, _), i = ds[1]
    assert i == 1 and q.shape == (3, 16, 16) and ds.truncated_images == 1 and ds.bad_images == 0
    ds[0]
    assert ds.truncated_images == 1
