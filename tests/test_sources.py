"""The one annotation loader and the flags that name its files."""
import argparse
import shutil

import pytest

from ssl_crops.sources import AnnotationSpec, add_annotation_args, load_index


def test_flags_read_back_into_a_spec(demo_root):
    p = argparse.ArgumentParser()
    add_annotation_args(p)
    add_annotation_args(p, prefix="test-", kinds=("labels", "coco"))
    args = p.parse_args(["--test-coco", str(demo_root / "annotations_test.json")])
    assert args.labels is args.boxes is args.coco is args.index is args.test_labels is None
    train = load_index(AnnotationSpec.from_args(args, demo_root / "images"))
    test = load_index(AnnotationSpec.from_args(args, demo_root / "images", prefix="test-", classes=train.classes))
    assert train.num_boxes > 0 and len(test) == 8 and test.classes == train.classes
    with pytest.raises(SystemExit):
        p.parse_args(["--test-index", "x.npz"])  # not declared for this parser


def test_test_split_finds_its_dict_or_says_what_is_missing(demo_root, tmp_path, monkeypatch):
    test = load_index(AnnotationSpec(demo_root / "images", split="test"))  # images_test.npy beside the folder
    assert len(test) == 8 and test.num_boxes == 0
    only_images = tmp_path / "imgs"
    shutil.copytree(demo_root / "images", only_images)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="images_test.npy: test labels dict not found"):
        load_index(AnnotationSpec(only_images, split="test"))
    assert load_index(AnnotationSpec(only_images)).num_boxes == 0  # a train split: the folder, no boxes


def test_from_path_tells_the_kind_by_suffix(demo_root, tmp_path):
    beside = load_index(demo_root / "images")
    beside.save(tmp_path / "index.npz")
    assert load_index(AnnotationSpec.from_path(tmp_path / "index.npz")).num_boxes == beside.num_boxes
    assert len(load_index(AnnotationSpec.from_path(demo_root / "annotations_test.json"))) == 8
    assert load_index(AnnotationSpec.from_path(demo_root / "images_selected_new.npy")).num_boxes == beside.num_boxes
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="x.txt: not an index"):
        AnnotationSpec.from_path(tmp_path / "x.txt")


def test_proposals_cli_is_torch_free():
    import subprocess
    import sys
    code = "import sys, ssl_crops.proposals, ssl_crops.proposals.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


def test_folder_match_lists_each_folder_once(tmp_path):
    from PIL import Image

    from ssl_crops.boxes import BoxIndex
    from ssl_crops.sources import folder_match

    for rel in ("a/1.jpg", "a/2.jpg", "b/3.png", "a/notes.txt"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        if rel.endswith(".txt"):
            (tmp_path / rel).write_text("x")
        else:
            Image.new("RGB", (4, 4)).save(tmp_path / rel, format="PNG")
    index = BoxIndex.from_folder(tmp_path).subset([0]).with_images(["a/9.jpg", "c/4.jpg"])
    present, unlisted = folder_match(index, tmp_path)
    assert [index.path(i) for i in range(len(index))] == ["a/1.jpg", "a/9.jpg", "c/4.jpg"]
    assert present.tolist() == [True, False, False] and unlisted == ["a/2.jpg"]  # b/ is named by no image
