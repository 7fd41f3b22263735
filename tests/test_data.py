import shutil

import numpy as np
import pytest
import torch

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import (CorruptImageError, LabeledImageDataset, ObjectCropDataset, load_image,
                            load_index)
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

    def proposals_for(self, image_id, image):
        self.asked.append(image_id)
        return np.tile(np.array([[0.1, 0.1, 0.6, 0.6]], np.float32), (20, 1))


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
    assert "cannot" in reasons["empty.jpg"] and "pixels" in reasons["huge.jpg"]
    for name in bad_images.valid:
        assert load_image(images / name).mode == "RGB"
    strict = ObjectCropDataset(images, index, ObjectAwareCrop(size=16), on_corrupt="raise")
    bad = next(i for i in range(len(index)) if index.path(i) == "truncated.jpg")
    with pytest.raises(CorruptImageError, match="truncated.jpg"):
        strict[bad]
