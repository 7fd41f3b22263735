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
                       "--style", "dilate", "--min-size", "32", "--no-progress"]) == 0
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
    r = crops.export_crops(demo_root / "annotations_train.json", demo_root / "images", out, style="dilate",
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


def test_glt_crop_box_follows_the_mscoco_glt_rule():
    # sides of 100 px or more grow by 0.2 x the side; shorter sides by 50 px; clipped to the image
    assert crops.glt_crop_box([100, 100, 200, 150], 1000, 1000) == (60, 70, 340, 280)
    assert crops.glt_crop_box([100, 100, 99, 40], 1000, 1000) == (50, 50, 249, 190)
    assert crops.glt_crop_box([10, 20, 300, 30], 320, 1000) == (0, 0, 320, 100)
    assert crops.square_padding(40, 40) == (0, 0, 40, 40)
    assert crops.square_padding(100, 60) == (0, -20, 100, 80)
    assert crops.square_padding(60, 101) == (-20, 0, 80, 101)  # PIL rounds 20.5 and 80.5 to even


def _scene(tmp_path, anns, size=(300, 200)):
    images = tmp_path / "imgs"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(images / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": size[0], "height": size[1]}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": i, "image_id": 1, "bbox": b, "category_id": 1, "iscrowd": 0}
                            for i, b in enumerate(anns, 1)]}
    (tmp_path / "ann.json").write_text(json.dumps(coco))
    return tmp_path / "ann.json", images


def test_glt_style_is_the_default_keeps_every_object_and_pads_to_squares(tmp_path):
    ann, images = _scene(tmp_path, [[10, 10, 4, 4], [100, 50, 150, 120], [290, 190, 10, 10]])
    r = crops.export_crops(ann, images, tmp_path / "out", progress=False)
    assert r["crops"] == 3 and not r["skipped"]  # a 4x4 px object is kept (--min-size 32 used to drop it)
    rows = read_index(tmp_path / "out")
    boxes = [tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")) for row in rows]
    assert boxes == [(0, 0, 64, 64), (70, 26, 280, 194), (240, 140, 300, 200)]
    for row, (x0, y0, x1, y1) in zip(rows, boxes):
        with Image.open(tmp_path / "out" / row["file"]) as im:
            side = max(x1 - x0, y1 - y0)
            assert im.size == (side, side)
    # the 210 x 168 region of the second object gets 21 px black bars above and below
    with Image.open(tmp_path / "out" / rows[1]["file"]) as im:
        arr = np.asarray(im.convert("L"), dtype=int)
        assert im.size == (210, 210) and arr[:19].max() < 20 and arr[-19:].max() < 20 and arr[23:187].min() > 150


def test_rerun_into_a_non_empty_folder_is_refused_or_replaced_cleanly(tmp_path, capsys):
    ann, images = _scene(tmp_path, [[10, 10, 40, 40], [100, 50, 150, 120]])
    out = tmp_path / "out"
    args = ["--coco", str(ann), "--images", str(images), "--out", str(out), "--no-progress"]
    assert crops.main(args) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert crops.main(args) == 2
    assert "out: folder is not empty (2 JPEGs); pass --overwrite" in capsys.readouterr().err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    (out / "thing" / "stale_99.jpg").write_bytes((out / "thing" / "a_1.jpg").read_bytes())  # a crop of an old run
    ann, _ = _scene(tmp_path, [[100, 50, 150, 120]])
    assert crops.main(args + ["--overwrite"]) == 0
    assert sorted(p.name for p in out.rglob("*.jpg")) == ["a_1.jpg"]  # the old crops are gone
    assert len(read_index(out)) == 1 and len(BoxIndex.from_folder(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "imgs", "out"]  # no leftovers


def test_a_failed_overwrite_keeps_the_old_crops(tmp_path, monkeypatch):
    ann, images = _scene(tmp_path, [[10, 10, 40, 40]])
    out = tmp_path / "out"
    crops.export_crops(ann, images, out, progress=False)

    def broken(job):
        raise RuntimeError("disk full")
    monkeypatch.setattr(crops, "_crop_image", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        crops.export_crops(ann, images, out, overwrite=True, progress=False)
    assert [p.name for p in out.rglob("*.jpg")] == ["a_1.jpg"] and len(read_index(out)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "imgs", "out"]


def test_crowd_and_unknown_categories_are_reported_as_such(tmp_path):
    ann, images = _scene(tmp_path, [[10, 10, 40, 40]])
    coco = json.loads(ann.read_text())
    coco["annotations"] += [{"id": 7, "image_id": 1, "bbox": [5, 5, 20, 20], "category_id": 1, "iscrowd": 1},
                            {"id": 8, "image_id": 1, "bbox": [5, 5, 20, 20], "category_id": 42, "iscrowd": 0}]
    ann.write_text(json.dumps(coco))
    r = crops.export_crops(ann, images, tmp_path / "out", progress=False)
    assert r["crops"] == 1 and r["skipped"] == {"crowd": 1, "unknown category id": 1}
    index = BoxIndex.from_coco(ann)  # the same default: crowd boxes left out, counted apart from dropped
    assert index.num_boxes == 1 and index.dropped == 0 and index.skipped == {"crowd": 1, "unknown category id": 1}
    r = crops.export_crops(ann, images, tmp_path / "out2", include_crowd=True, progress=False)
    assert r["crops"] == 2 and BoxIndex.from_coco(ann, include_crowd=True).num_boxes == 2
