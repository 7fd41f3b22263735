"""Unit tests of ssl_crops.evaluate.splits: train/test splits, what is left out and the notes."""
import json

import numpy as np
import pytest
from PIL import Image

from ssl_crops.evaluate import build_parser, load_splits
from ssl_crops.evaluate.splits import Splits, leave_out_unreadable, unseen_notes


def _jpeg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _class_folders(root, counts):
    for name, n in counts.items():
        for k in range(n):
            _jpeg(root / name / f"{name}{k}.jpg", seed=k)
    return root


def _coco(path, images):
    """A COCO json: ``images`` maps file name -> class names of its boxes (one box each)."""
    names = sorted({c for cs in images.values() for c in cs})
    coco = {"categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)], "images": [], "annotations": []}
    for i, (file, classes) in enumerate(images.items()):
        coco["images"].append({"id": i, "file_name": file, "width": 100, "height": 100})
        for c in classes:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": i,
                                        "category_id": names.index(c) + 1, "bbox": [10, 10, 50, 50]})
    path.write_text(json.dumps(coco))
    return path


def _args(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def _paths(index):
    return [index.path(i) for i in range(len(index))]


def test_class_folders_leave_out_test_images_of_unseen_classes(tmp_path):
    data = tmp_path / "data"
    _class_folders(data / "train", {"cat": 2, "dog": 2})
    _class_folders(data / "val", {"cat": 1, "dog": 2, "bird": 2})
    splits = load_splits(_args(data))
    assert isinstance(splits, Splits)
    assert (splits.train_root, splits.test_root) == (data / "train", data / "val")
    assert splits.train.classes == ["cat", "dog"] and len(splits.train) == 4
    assert splits.test.classes == ["cat", "dog"] and _paths(splits.test) == ["cat/cat0.jpg", "dog/dog0.jpg",
                                                                             "dog/dog1.jpg"]
    assert [splits.test.labels(i).tolist() for i in range(3)] == [[0], [1], [1]]
    assert splits.notes == {"test_unseen_classes": {"bird": 2}, "test_images_left_out": 2}
    assert unseen_notes(splits.notes) == [
        "1 test classes have no training image and are not scored: bird (2 images)",
        "2 test images left out of the single-label scoring"]
    # another test folder instead of DATA/val
    other = _class_folders(tmp_path / "other", {"dog": 1})
    splits = load_splits(_args(data, "--test-images", other))
    assert splits.test_root == other and _paths(splits.test) == ["dog/dog0.jpg"] and splits.notes == {}


def test_coco_multilabel_keeps_images_of_unseen_classes_but_notes_them(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    train = _coco(tmp_path / "train.json", {"a.jpg": ["cat", "dog"], "b.jpg": ["cat"]})
    test = _coco(tmp_path / "test.json", {"c.jpg": ["cat", "dog"], "d.jpg": ["bird"], "e.jpg": ["dog"],
                                          "f.jpg": ["bird", "fish"]})
    splits = load_splits(_args(data, "--coco", train, "--test-coco", test))
    assert splits.train_root == splits.test_root == data and splits.train.num_boxes == 3
    assert splits.test.classes == ["cat", "dog"] and len(splits.test) == 4
    assert [splits.test.labels(i).tolist() for i in range(4)] == [[0, 1], [], [1], []]
    assert splits.notes == {"test_unseen_classes": {"bird": 2, "fish": 1}}
    assert unseen_notes(splits.notes) == [
        "2 test classes have no training image and are not scored: bird (2 images), fish (1 images)"]
    # forced single-label: only test images with exactly one label, of a trained class, are scored
    single = load_splits(_args(data, "--coco", train, "--test-coco", test), multilabel=False)
    assert _paths(single.test) == ["e.jpg"] and single.test.labels(0).tolist() == [1]
    assert single.notes == {"test_unseen_classes": {"bird": 2, "fish": 1}, "test_images_left_out": 3,
                            "test_images_without_one_label": 2}
    assert unseen_notes(single.notes)[1] == \
        "3 test images left out of the single-label scoring (2 without exactly one label)"
    # forced multi-label on class folders: nothing is left out
    folders = tmp_path / "folders"
    _class_folders(folders / "train", {"cat": 1})
    _class_folders(folders / "val", {"cat": 1, "bird": 1})
    multi = load_splits(_args(folders), multilabel=True)
    assert len(multi.test) == 2 and multi.notes == {"test_unseen_classes": {"bird": 1}}


def test_openimages_dicts_are_found_beside_the_image_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / "images"
    images.mkdir()
    rows = [["a", "xclick", "/m/cat", "1", "0.1", "0.5", "0.1", "0.5"],
            ["a", "xclick", "/m/dog", "1", "0.5", "0.9", "0.5", "0.9"]]
    np.save(tmp_path / "images_selected_new.npy", {"a": ["/m/cat", "/m/dog"], "b": ["/m/cat"]}, allow_pickle=True)
    np.save(tmp_path / "images_selected_with_all_features.npy",
            {"a": {"data": rows}, "b": [["b", "xclick", "/m/cat", "1", 0.0, 1.0, 0.0, 1.0]]}, allow_pickle=True)
    np.save(tmp_path / "images_test.npy", {"c": ["/m/dog"], "d": ["/m/fish"]}, allow_pickle=True)
    splits = load_splits(_args(images))
    assert splits.train_root == splits.test_root == images
    assert splits.train.num_boxes == 3 and splits.test.num_boxes == 0 and _paths(splits.test) == ["c.jpg", "d.jpg"]
    assert splits.notes == {"test_unseen_classes": {"/m/fish": 1}}
    single = load_splits(_args(images), multilabel=False)
    assert _paths(single.test) == ["c.jpg"] and single.notes["test_images_left_out"] == 1
    assert "test_images_without_one_label" not in single.notes


def test_bad_arguments_stop_with_one_clear_error(tmp_path):
    data = tmp_path / "images"
    data.mkdir()
    train = _coco(tmp_path / "train.json", {"a.jpg": ["cat"]})
    test = _coco(tmp_path / "test.json", {"b.jpg": ["cat"]})
    with pytest.raises(FileNotFoundError, match="missing: image folder not found"):
        load_splits(_args(tmp_path / "missing", "--coco", train, "--test-coco", test))
    with pytest.raises(ValueError, match="train annotations: give only one of --coco, --index"):
        load_splits(_args(data, "--coco", train, "--index", tmp_path / "i.npz", "--test-coco", test))
    with pytest.raises(ValueError, match="test annotations: give only one of --test-coco, --test-labels"):
        load_splits(_args(data, "--coco", train, "--test-coco", test, "--test-labels", tmp_path / "t.npy"))
    with pytest.raises(FileNotFoundError, match="nope.json: --test-coco file not found"):
        load_splits(_args(data, "--coco", train, "--test-coco", tmp_path / "nope.json"))
    with pytest.raises(ValueError, match=r"train.json: a JSON file given to --labels .*pass COCO/LVIS json as --coco$"):
        load_splits(_args(data, "--labels", train, "--test-coco", test))
    with pytest.raises(ValueError, match=r"a JSON file given to --test-labels .*as --test-coco$"):
        load_splits(_args(data, "--coco", train, "--test-labels", test))
    with pytest.raises(FileNotFoundError, match="elsewhere: test image folder not found"):
        load_splits(_args(data, "--coco", train, "--test-coco", test, "--test-images", tmp_path / "elsewhere"))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                                 "categories": []}))
    with pytest.raises(ValueError, match="images: no labelled training images"):
        load_splits(_args(data, "--coco", empty, "--test-coco", test))
    folders = tmp_path / "folders"
    _class_folders(folders / "train", {"cat": 1})
    _class_folders(folders / "val", {"bird": 2})
    with pytest.raises(ValueError, match="val: no test image with a training class left to score"):
        load_splits(_args(folders))


def test_unseen_notes_in_order_and_unreadable_images_cut_after_five():
    assert unseen_notes({}) == [] and unseen_notes({"test_unseen_classes": {}, "test_images_left_out": 0}) == []
    bad = {f"x{k}.jpg": "cannot decode image" for k in range(7)}
    notes = {"test_unreadable_images": {"t.jpg": "image file not found"}, "train_unreadable_images": bad,
             "test_images_left_out": 4, "test_unseen_classes": {"zebra": 1, "ant": 3}}
    lines = unseen_notes(notes)
    assert lines[:2] == ["2 test classes have no training image and are not scored: ant (3 images), zebra (1 images)",
                         "4 test images left out of the single-label scoring"]
    assert lines[2] == ("7 unreadable train images left out (--bad-image skip): "
                        + "; ".join(f"x{k}.jpg: cannot decode image" for k in range(5))
                        + "; ... (all 7 in report.json)")
    assert lines[3] == "1 unreadable test images left out (--bad-image skip): t.jpg: image file not found"
    assert len(lines) == 4


def test_leave_out_unreadable_names_each_image_and_its_reason(tmp_path, capsys):
    data = tmp_path / "data"
    _class_folders(data / "train", {"cat": 3, "dog": 2})
    (data / "train" / "cat" / "empty.jpg").write_bytes(b"")
    good = (data / "train" / "dog" / "dog0.jpg").read_bytes()
    (data / "train" / "dog" / "trunc.jpg").write_bytes(good[: len(good) // 2])
    _class_folders(data / "val", {"cat": 1, "dog": 1})
    splits = load_splits(_args(data))
    paths = _paths(splits.train)
    (data / "train" / "cat" / "cat2.jpg").unlink()   # gone after indexing
    bad = ["cat/cat2.jpg", "cat/empty.jpg", "cat/cat0.jpg", "dog/trunc.jpg"]   # cat0: failed only in a worker
    targets = np.zeros((len(paths), 2), np.float32)
    targets[[paths.index(p) for p in bad], 1] = np.nan
    keep = leave_out_unreadable(splits, "train", targets)
    assert keep.tolist() == [p not in bad for p in paths]
    assert _paths(splits.train) == [p for p in paths if p not in bad] and len(splits.test) == 2
    reasons = splits.notes["train_unreadable_images"]
    assert sorted(reasons) == sorted(bad) and reasons["cat/cat0.jpg"] == "unreadable in a loader worker"
    assert reasons["cat/cat2.jpg"] == "image file not found"
    assert reasons["cat/empty.jpg"] == "empty file (0 bytes)"
    assert reasons["dog/trunc.jpg"].startswith("cannot decode image")
    out = capsys.readouterr().out
    assert out.startswith("warning: 4 unreadable train images left out (--bad-image skip): ") and out.count("\n") == 1
    assert "cat/cat2.jpg: image file not found" in out and str(data) not in out
    # all readable: nothing changes, nothing is said
    test = splits.test
    keep = leave_out_unreadable(splits, "test", np.array([0.0, 1.0]))
    assert keep.tolist() == [True, True] and splits.test is test
    assert "test_unreadable_images" not in splits.notes and capsys.readouterr().out == ""
    # test targets as single labels: one NaN row
    keep = leave_out_unreadable(splits, "test", np.array([np.nan, 1.0]))
    assert keep.tolist() == [False, True] and _paths(splits.test) == ["dog/dog0.jpg"]
    assert splits.notes["test_unreadable_images"] == {"cat/cat0.jpg": "unreadable in a loader worker"}


def test_splits_have_their_own_notes(tmp_path):
    a, b = Splits(tmp_path, None, tmp_path, None), Splits(tmp_path, None, tmp_path, None)
    a.notes["x"] = 1
    assert b.notes == {}


def test_single_label_leaves_out_an_image_of_a_trained_and_an_unseen_class(tmp_path):
    """Forced single-label: "cat + bird" (bird unseen) is left out, not scored as a plain cat."""
    for name in "abcde":
        _jpeg(tmp_path / "images" / f"{name}.jpg")
    train = _coco(tmp_path / "train.json", {"a.jpg": ["cat"], "b.jpg": ["dog"]})
    test = _coco(tmp_path / "test.json", {"c.jpg": ["cat", "bird"], "d.jpg": ["dog"], "e.jpg": ["bird"]})
    splits = load_splits(_args(tmp_path / "images", "--coco", train, "--test-coco", test), multilabel=False)
    assert _paths(splits.test) == ["d.jpg"]
    assert splits.notes == {"test_unseen_classes": {"bird": 2}, "test_images_left_out": 2,
                            "test_images_without_one_label": 1}
