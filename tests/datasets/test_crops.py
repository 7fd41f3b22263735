"""COCO object-crop exporter."""
import csv
import json

import numpy as np
import pytest
from PIL import Image

from ssl_crops.boxes import BoxIndex
from ssl_crops.datasets import crops


def read_index(out):
    with open(out / crops.INDEX_FILE, newline="") as f:
        return list(csv.DictReader(f))


def test_crop_box_dilates_by_own_size_and_clips():
    assert crops.crop_box([10, 20, 30, 40], 100, 100, dilation=0.1) == (7, 16, 43, 64)
    assert crops.crop_box([0, 90, 50, 10], 100, 100, dilation=0.5) == (0, 85, 75, 100)
    assert crops.crop_box([10.5, 10.5, 20, 20], 100, 100, dilation=0) == (10, 10, 31, 31)


def test_export_small_coco(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (w, h) in {"a.jpg": (120, 80), "b.png": (64, 96)}.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / name)
    anns = [(1, 1, [0, 0, 60, 40], 1, 0), (2, 1, [100, 60, 40, 40], 2, 0),  # the second runs off the image
            (3, 1, [5, 5, 10, 50], 1, 0),  # narrower than min-size
            (4, 1, [10, 10, 50, 50], 2, 1),  # crowd
            (5, 2, [2, 3, 40, 60], 2, 0), (6, 3, [0, 0, 40, 40], 1, 0)]  # image 3 has no file entry
    coco = {"images": [{"id": 1, "file_name": "a.jpg", "width": 120, "height": 80},
                       {"id": 2, "file_name": "b.png", "width": 64, "height": 96}],
            "categories": [{"id": 1, "name": "traffic light"}, {"id": 2, "name": "cat/dog"}, {"id": 3, "name": "x"}],
            "annotations": [{"id": i, "image_id": im, "bbox": b, "category_id": c, "iscrowd": cr,
                             "area": b[2] * b[3]} for i, im, b, c, cr in anns]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    out = tmp_path / "crops"
    assert crops.main(["--coco", str(tmp_path / "ann.json"), "--images", str(images), "--out", str(out),
                       "--min-size", "32", "--no-progress"]) == 0
    rows = read_index(out)
    assert [r["annotation_id"] for r in rows] == ["1", "2", "5"]
    assert [r["file"] for r in rows] == ["traffic_light/a_1.jpg", "cat_dog/a_2.jpg", "cat_dog/b_5.jpg"]
    boxes = [tuple(int(r[k]) for k in ("x0", "y0", "x1", "y1")) for r in rows]
    assert boxes == [(0, 0, 66, 44), (96, 56, 120, 80), (0, 0, 46, 69)]
    for r, (x0, y0, x1, y1) in zip(rows, boxes):
        with Image.open(out / r["file"]) as im:
            assert im.size == (x1 - x0, y1 - y0)
    assert not (out / "x").exists()  # no empty class folders (ImageFolder rejects them)
    index = BoxIndex.from_folder(out)
    assert len(index) == 3 and index.classes == ["cat_dog", "traffic_light"]


def test_export_demo_coco(tmp_path, demo_root):
    ann = json.loads((demo_root / "annotations_train.json").read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in ann["images"]}
    min_size = 24
    expected = [a for a in ann["annotations"] if min(a["bbox"][2:]) >= min_size and not a.get("iscrowd")]
    out = tmp_path / "crops"
    r = crops.export_crops(demo_root / "annotations_train.json", demo_root / "images", out,
                           dilation=0.1, min_size=min_size, workers=2, progress=False)
    rows = read_index(out)
    assert r["crops"] == len(rows) == len(expected) > 0
    for row in rows:
        w, h = sizes[int(row["image_id"]) if row["image_id"].isdigit() else row["image_id"]]
        x0, y0, x1, y1 = (int(row[k]) for k in ("x0", "y0", "x1", "y1"))
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert len(list(out.glob("*/*.jpg"))) == len(rows)
    assert len(BoxIndex.from_folder(out)) == len(rows)


def test_missing_inputs_are_named(tmp_path, capsys):
    assert crops.main(["--coco", str(tmp_path / "no.json"), "--images", str(tmp_path), "--out",
                       str(tmp_path / "o")]) == 2
    assert "no.json: COCO annotation file not found" in capsys.readouterr().err
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="nodir: image directory not found"):
        crops.export_crops(tmp_path / "a.json", tmp_path / "nodir", tmp_path / "o")
