"""What a run reads: queue size, the resumable sample order, loader-worker tallies, the dataset the flags build."""
import json
import os
import sys
from argparse import Namespace

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_crops import train
from ssl_crops.data import load_index
from ssl_crops.train import worker


def test_queue_size():
    args = Namespace(moco_k=96)
    with pytest.raises(ValueError, match="not divisible"):
        train.queue_size(args, 1000, 64)
    with pytest.raises(ValueError, match="fewer than"):
        train.queue_size(args, 10, 64)
    with pytest.warns(UserWarning, match="whole dataset"):
        assert train.queue_size(Namespace(moco_k=65536), 160, 32) == 128
    with pytest.warns(UserWarning):
        assert train.queue_size(Namespace(moco_k=65536), 136, 128) == 128
    assert train.queue_size(Namespace(moco_k=128), 1000, 64) == 128


@pytest.mark.parametrize("world,resumed_world", [(2, 1), (2, 4), (3, 3), (1, 2)])
def test_mid_epoch_resume_with_another_number_of_processes_visits_the_rest(world, resumed_world):
    """A global batch of 12 over ``world`` ranks, stopped after 2 steps, resumed over
    ``resumed_world`` ranks: every item of the epoch is visited once, and the ranks' first
    steps are the uninterrupted epoch's steps (the same items, whatever the ranks)."""
    data, batch, done = range(100), 12, 2
    def steps(w, skip):
        shares = []
        for r in range(w):
            s = train.EpochSampler(data, w, r, seed=5)
            s.set_epoch(0, skip)
            assert len(s) == len(list(s))
            shares.append([i for _, i in s])
        b = batch // w
        return [sorted(i for sh in shares for i in sh[k * b:(k + 1) * b]) for k in range(len(shares[0]) // b)]
    whole = steps(world, 0)
    resumed = steps(resumed_world, done * batch)
    assert resumed == whole[done:done + len(resumed)] and len(resumed) >= len(whole) - done - 1
    seen = [i for step in whole[:done] + resumed for i in step]
    assert len(seen) == len(set(seen))


class _CountingCrop:
    """A box-aware transform that falls back to a scene crop for every third call (per process)."""
    uses_boxes = True

    def __init__(self):
        self.scene_fallbacks, self.calls = 0, 0

    def __call__(self, img, boxes):
        self.calls += 1
        self.scene_fallbacks += self.calls % 3 == 0
        return torch.zeros(1), torch.zeros(1)


def test_event_counts_from_loader_workers_add_up(bad_images):
    """Each item reports what it caused in the worker that loaded it; the sums over two workers
    are the totals of one process loading everything."""
    from torch.utils.data import DataLoader

    from ssl_crops.boxes import BoxIndex
    from ssl_crops.data import ObjectCropDataset

    dataset = ObjectCropDataset(bad_images.images, BoxIndex.from_coco(bad_images.coco), _CountingCrop())
    seeded = train.SeededDataset(dataset, seed=0)
    keys = [(0, i) for i in range(len(dataset))]
    with pytest.warns(RuntimeWarning):
        alone = [seeded[k] for k in keys]
    assert sum(item[2] for item in alone).tolist() == [4, 44 // 3, 0]
    fresh = ObjectCropDataset(bad_images.images, BoxIndex.from_coco(bad_images.coco), _CountingCrop())
    loader = DataLoader(train.SeededDataset(fresh, seed=0), batch_size=4, sampler=keys, num_workers=2)
    batches = list(loader)  # 11 batches: worker 0 loads 6 (24 items), worker 1 loads 5 (20 items)
    assert sum(b[2].sum(0) for b in batches).tolist() == [4, 24 // 3 + 20 // 3, 0]
    skipped = "".join("".join(b[3]) for b in batches)
    assert sorted(line.split("\t")[0] for line in skipped.splitlines()) == sorted(bad_images.unreadable)


def test_bing_crops_fit_proposals_for_images_without_boxes(tmp_path, demo_root):
    from ssl_crops.boxes import load_npy_dict
    from ssl_crops.proposals import Bing
    from ssl_crops.train import build_dataset, parse_args

    labels = load_npy_dict(demo_root / "images_selected_new.npy")
    boxes = load_npy_dict(demo_root / "images_selected_with_all_features.npy")
    unboxed = sorted(labels)[::2]
    for image_id in unboxed:
        del boxes[image_id]
    np.save(tmp_path / "labels.npy", labels, allow_pickle=True)
    np.save(tmp_path / "boxes.npy", boxes, allow_pickle=True)
    argv = [str(demo_root / "images"), "--bing_crops", "--labels", str(tmp_path / "labels.npy"),
            "--boxes", str(tmp_path / "boxes.npy"), "--image-size", "32", "--seed", "0"]
    # the original method (one item per box) never visits images without boxes: no BING model
    dataset, index = build_dataset(parse_args(argv), tmp_path / "run")
    assert dataset.sampling == "box" and dataset.proposals is None and not (tmp_path / "run").exists()
    assert len(dataset) == index.num_boxes
    args = parse_args(argv + ["--sampling", "image"])
    dataset, index = build_dataset(args, tmp_path / "run")
    assert isinstance(dataset.proposals, Bing) and (tmp_path / "run" / "bing.npz").is_file()
    i = next(j for j in range(len(index)) if index.image_id(j) in unboxed)
    assert index.boxes(i).shape[0] == 0
    (q, k), _ = dataset[i]
    assert q.shape == (3, 32, 32)
    img = Image.open(demo_root / "images" / index.path(i))
    props = dataset.proposals.proposals_for(index.image_id(i), img)
    assert props.shape[1] == 4 and len(props) >= args.bing_topk and (props >= 0).all() and (props <= 1).all()
    # a run without any boxes falls back to scene crops with a warning
    args = args.replace(labels=None, boxes=None, data=str(tmp_path / "flat"))
    (tmp_path / "flat").mkdir()
    img.save(tmp_path / "flat" / "a.jpg")
    with pytest.warns(UserWarning, match="no image .* has boxes"):
        flat, _ = build_dataset(args, tmp_path / "run2")
    assert flat.proposals is None


def test_bing_crops_alone_is_the_original_method(demo_root, tmp_path, capsys):
    from ssl_crops.train import build_dataset, parse_args

    dataset, index = build_dataset(parse_args([str(demo_root / "images"), "--bing_crops"]), tmp_path)
    crop = dataset.transform
    assert (crop.mode, crop.geometry, crop.dilation, crop.min_region, crop.anchor) == (
        "object-object", "original", 0.2, 224, False)
    assert (crop.scale, crop.object_scale, crop.size, crop.swap) == ((0.2, 1.0), (0.0, 1.0), (224, 224), True)
    assert dataset.sampling == "box" and len(dataset) == index.num_boxes > len(index)
    seen = np.concatenate([dataset._image_and_boxes(i)[1] for i in range(len(dataset))])  # one box per item
    np.testing.assert_array_equal(seen, index.flat_boxes)
    with pytest.warns(UserWarning, match="not used under --sampling box"):
        build_dataset(parse_args([str(demo_root / "images"), "--bing_crops", "--proposals", "p.npz"]), tmp_path)
    scene, _ = build_dataset(parse_args([str(demo_root / "images")]), tmp_path)
    assert scene.transform.mode == "scene" and scene.sampling == "image" and len(scene) == len(index)


def test_crop_flags_reach_the_transform(demo_root, tmp_path):
    from ssl_crops.train import build_dataset, parse_args

    args = parse_args([str(demo_root / "images"), "--bing_crops", "--crop-geometry", "relative", "--min-region", "96",
                       "--min-scale", "0.3", "--rescale_parameter", "0.1", "--dilation", "0.5", "--anchor",
                       "--sampling", "image", "--image-size", "48", "--crop-mode", "object-scene"])
    dataset, index = build_dataset(args, tmp_path)
    crop = dataset.transform
    assert (crop.mode, crop.geometry, crop.min_region, crop.scale, crop.object_scale, crop.dilation, crop.anchor,
            crop.size) == ("object-scene", "relative", 96, (0.3, 1.0), (0.1, 1.0), 0.5, True, (48, 48))
    assert dataset.sampling == "image" and len(dataset) == len(index) and not dataset.random_boxes
    moved, _ = build_dataset(parse_args([str(demo_root / "images"), "--bing_crops", "--random-boxes", "--seed", "5"]),
                             tmp_path)
    assert moved.random_boxes and moved.random_boxes_seed == 5
    assert not parse_args(["D", "--anchor", "--no-anchor"]).anchor
    with pytest.raises(SystemExit):
        parse_args(["D", "--crop-geometry", "paper"])


def test_knn_test_index_of_an_lvis_json_is_federated(demo_root, tmp_path):
    """The LVIS form: ``coco_url`` paths under the COCO folder, federated targets, training classes."""
    coco = json.loads((demo_root / "annotations_test.json").read_text())
    for im in coco["images"]:
        im["coco_url"] = f"http://images.cocodataset.org/images/{im.pop('file_name')}"
        im["neg_category_ids"], im["not_exhaustive_category_ids"] = [coco["categories"][0]["id"]], []
    for a in coco["annotations"]:
        a.pop("iscrowd", None)
    (tmp_path / "lvis.json").write_text(json.dumps(coco))
    args = train.parse_args([str(demo_root / "images"), "--knn-every", "1", "--test-coco", str(tmp_path / "lvis.json"),
                             "--test-images", str(demo_root)])
    index = load_index(demo_root / "images")
    test = train.knn_test_index(args, index)
    assert test.federated and test.classes == index.classes and len(test) == 8
    monitor = worker._knn_monitor(args, index, test)
    assert monitor.test.root == demo_root and (demo_root / test.path(0)).is_file()
    assert (monitor.test_targets == -1).any()
    with pytest.raises(ValueError, match="only one of"):
        train.knn_test_index(train.parse_args([*sys.argv[:0], str(demo_root / "images"), "--test-coco", "a.json",
                                               "--test-labels", "b.npy"]), index)


def test_every_run_says_where_its_boxes_come_from(demo_root, tmp_path, capsys):
    """Dicts found beside DIR are named (item 7), and what was dropped or left out with them."""
    train.build_dataset(train.parse_args([str(demo_root / "images"), "--bing_crops"]), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"boxes: {demo_root / 'images_selected_new.npy'} + {demo_root / 'images_selected_with_all_features.npy'}: " \
           f"24 images" in out


def test_bing_proposals_recipe_for_images_without_boxes(demo_root, tmp_path, capsys):
    """README's recipe: a BING model (fitted on any annotated images) and a folder without boxes;
    the run caches the folder's proposals once in <run>/proposals.npz and says so."""
    from ssl_crops.proposals import Bing, ProposalCache

    index = load_index(demo_root / "images")
    Bing.fit_index(index, demo_root / "images", range(8), seed=0).save(tmp_path / "bing.npz")
    (tmp_path / "photos").mkdir()
    for name in sorted(os.listdir(demo_root / "images"))[:6]:
        Image.open(demo_root / "images" / name).save(tmp_path / "photos" / name)
    argv = [str(tmp_path / "photos"), "--bing_crops", "--proposals", str(tmp_path / "bing.npz"), "--image-size", "32",
            "--seed", "0", "-j", "1"]
    dataset, _ = train.build_dataset(train.parse_args(argv), tmp_path / "run")
    out = capsys.readouterr().out
    assert isinstance(dataset.proposals, ProposalCache) and len(dataset.proposals) == 6
    assert "(image folder, no boxes): 6 images, 0 boxes" in out
    assert f"6 of 6 images have no boxes: object crops from their top 10 BING proposals from " \
           f"{tmp_path / 'run' / 'proposals.npz'} (model {tmp_path / 'bing.npz'})" in out
    (q, k), _ = dataset[0]
    assert q.shape == (3, 32, 32) and dataset.transform.scene_fallbacks == 0
    mtime = (tmp_path / "run" / "proposals.npz").stat().st_mtime_ns
    train.build_dataset(train.parse_args(argv), tmp_path / "run")  # a resumed run reuses the cache
    assert (tmp_path / "run" / "proposals.npz").stat().st_mtime_ns == mtime


def test_queue_kept_from_the_checkpoint_when_it_was_cut_or_asked():
    """The K a resumed run asked for (65536, cut to 128 by the data) or the cut K itself keeps the
    checkpoint's K on data of another size; another K is cut as for a new run."""
    assert train.queue_size(Namespace(moco_k=65536), 120, 32, saved=(128, 65536)) == 128
    assert train.queue_size(Namespace(moco_k=128), 120, 32, saved=(128, 65536)) == 128
    with pytest.warns(UserWarning, match="whole dataset"):
        assert train.queue_size(Namespace(moco_k=65536), 120, 32, saved=(128, 128)) == 96


def _coco_subset(demo_root, path, rename=0, drop=0):
    """The demo's train COCO json with its first ``rename`` file names changed (not in the folder)
    and its last ``drop`` images left out (in the folder, in no annotation file)."""
    coco = json.loads((demo_root / "annotations_train.json").read_text())
    coco["images"] = coco["images"][:len(coco["images"]) - drop]
    for im in coco["images"][:rename]:
        im["file_name"] = "gone_" + im["file_name"]
    path.write_text(json.dumps(coco))
    return path


def _inputs(demo_root, tmp_path, *flags):
    return train.check_inputs(train.parse_args([str(demo_root / "images"), "-b", "4", "--output-dir",
                                                str(tmp_path / "out"), *flags]))


def test_annotations_that_name_none_of_the_folder_stop_with_counts_and_names(demo_root, tmp_path):
    other = _coco_subset(demo_root, tmp_path / "other.json", rename=24)
    with pytest.raises(ValueError, match=r"none of the 24 images named by .*other.json is in .*images \(32 images "
                                         r"there\); first missing: gone_.*\.jpg, gone_.*\.jpg, gone_.*\.jpg, \.\.\."):
        _inputs(demo_root, tmp_path, "--coco", str(other))


def test_some_missing_images_are_counted_left_out_and_listed(demo_root, tmp_path, capsys):
    some = _coco_subset(demo_root, tmp_path / "some.json", rename=5)
    with pytest.warns(UserWarning, match=r"5 of the 24 images named by .*some.json are not in .*: using the other 19"):
        inputs = _inputs(demo_root, tmp_path, "--coco", str(some))
    assert len(inputs["index"]) == 19 and len(inputs["missing"]) == 5
    assert all(name.startswith("gone_") for name in inputs["missing"])
    # the 5 real files those names stand for are in no annotation file: said, and why they are unused
    assert "5 images of" in capsys.readouterr().out


def test_folder_images_without_annotations_are_said_and_used_on_request(demo_root, tmp_path, capsys):
    """The 8 test images share the folder with the train images: not counted as unlisted; 3 train
    images left out of the json are, unused under --sampling box, cropped from proposals under
    --sampling image."""
    fewer = _coco_subset(demo_root, tmp_path / "fewer.json", drop=3)
    inputs = _inputs(demo_root, tmp_path, "--coco", str(fewer), "--bing_crops")
    out = capsys.readouterr().out
    assert "3 images of" in out and "are in no annotation file" in out and "not used (--sampling box" in out
    assert len(inputs["index"]) == 21 and inputs["missing"] == []
    inputs = _inputs(demo_root, tmp_path, "--coco", str(fewer), "--bing_crops", "--sampling", "image")
    assert "training on them too, object crops from proposals" in capsys.readouterr().out
    index = inputs["index"]
    assert len(index) == 24 and index.num_boxes_per_image()[-3:].tolist() == [0, 0, 0]


def test_object_crops_without_boxes_or_proposals_are_an_error_unless_scene(demo_root, tmp_path):
    (tmp_path / "photos").mkdir()
    for k in range(6):
        Image.new("RGB", (40, 30), (k * 40, 90, 20)).save(tmp_path / "photos" / f"{k}.jpg")
    with pytest.raises(ValueError, match=r"no boxes and no --proposals.*python -m ssl_crops.proposals fit.*"
                                         r"--crop-mode scene"):
        train.check_inputs(train.parse_args([str(tmp_path / "photos"), "--bing_crops", "-b", "4"]))
    assert len(train.check_inputs(train.parse_args([str(tmp_path / "photos"), "--bing_crops", "--crop-mode",
                                                    "scene", "-b", "4"]))["index"]) == 6


def test_test_annotations_without_the_monitor_say_it_is_off(demo_root, tmp_path):
    with pytest.warns(UserWarning, match="--test-coco is read by the kNN monitor only, which is off"):
        _inputs(demo_root, tmp_path, "--test-coco", str(demo_root / "annotations_test.json"))


def test_missing_test_images_of_the_monitor_are_counted_and_named(demo_root, tmp_path):
    test = json.loads((demo_root / "annotations_test.json").read_text())
    test["images"][0]["file_name"] = "gone_" + test["images"][0]["file_name"]
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.warns(UserWarning, match=r"1 of the 8 test images \(kNN monitor\) named by .*test.json are not in "
                                         r".*images \(e.g. gone_.*\.jpg\): using the other 7"):
        inputs = _inputs(demo_root, tmp_path, "--knn-every", "1", "--test-coco", str(tmp_path / "test.json"))
    assert len(inputs["test_index"]) == 7
    for im in test["images"]:
        im["file_name"] = "gone_" + im["file_name"]
    (tmp_path / "test.json").write_text(json.dumps(test))
    with pytest.raises(ValueError, match=r"none of the 8 test images \(kNN monitor\) named by"):
        _inputs(demo_root, tmp_path, "--knn-every", "1", "--test-coco", str(tmp_path / "test.json"))
