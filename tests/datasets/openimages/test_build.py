"""OpenImages subset builder, on hand-checked CSVs."""
import csv
import gzip
import json

import numpy as np
import pytest

from ssl_crops.boxes import BoxIndex, load_npy_dict
from ssl_crops.datasets import openimages as oi

V6 = list(oi.COLUMNS) + [f"XClick{i}{a}" for a in "XY" for i in range(1, 5)]


def row(image, label, box=("0.1", "0.5", "0.2", "0.6"), group="0", extra=()):
    return [image, "xclick", label, "1", *box, "0", "1", group, "0", "0", *extra]


# Classes A(4 images) B(3) C(2) D(3); with min 3 images A, B, D are kept. Images with >= 2
# distinct kept classes: i1 (A, B), i3 (B, D), i6 (B, A, D), whose rows are not contiguous.
ROWS = [row("i1", "A"), row("i1", "B", ("0.0", "1.0", "0.25", "0.75")), row("i1", "A", group="1"),
        row("i6", "B"), row("i2", "A"), row("i2", "C"), row("i3", "B"), row("i3", "C"), row("i3", "D"),
        row("i4", "A"), row("i5", "D"), row("i5", "D"), row("i6", "A"), row("i6", "D")]
BAD = [["i1", "xclick", "A"], row("i1", "B", ("0.1", "abc", "0.2", "0.6")), []]
EXPECTED_LABELS = {"i1": ["A", "B"], "i6": ["B", "A", "D"], "i3": ["B", "D"]}


def write_csv(path, rows, header=oi.COLUMNS):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture
def train_csv(tmp_path):
    return write_csv(tmp_path / "train-annotations-bbox.csv", ROWS[:5] + BAD + ROWS[5:])


def build(tmp_path, boxes, **kw):
    kw = {"min_class_images": 3, "min_classes_per_image": 2, "progress": False, **kw}
    return oi.build(boxes, tmp_path / "out", **kw), tmp_path / "out"


def test_build_rules_counts_and_verbatim_rows(tmp_path, train_csv):
    report, out = build(tmp_path, train_csv)
    labels = load_npy_dict(out / oi.LABELS_FILE)
    feats = load_npy_dict(out / oi.BOXES_FILE)
    assert labels == EXPECTED_LABELS and list(labels) == ["i1", "i6", "i3"]  # first-seen order
    assert np.load(out / oi.LABELS_FILE, allow_pickle=True).item() == labels  # the original form
    kept = [r for r in ROWS if r[0] in labels and r[2] != "C"]
    assert {k: v["data"] for k, v in feats.items()} == {k: [r for r in kept if r[0] == k] for k in labels}
    assert all(type(v) is str for rows in feats.values() for r in rows["data"] for v in r)
    t = report["train"]
    assert (t["images"], t["classes"], t["boxes"], t["boxes_per_image"]) == (3, 3, 8, 2.67)
    assert t["malformed_rows"] == {"missing fields": 1, "non-numeric coordinates": 1}
    assert t["rows_read"] == len(ROWS) + len(BAD) and t["images_read"] == 6
    index = BoxIndex.load(out / "index.npz")
    assert len(index) == 3 and index.num_boxes == 8 and index.classes == ["A", "B", "D"]
    np.testing.assert_allclose(index.boxes(0)[1], [0.0, 0.25, 1.0, 0.75])
    lines = (out / "classes.csv").read_text().splitlines()
    assert lines == ["LabelName,DisplayName,TrainImages", "A,,4", "B,,3", "D,,3"]


def test_build_flags_vocabulary_group_of_and_test_split(tmp_path, train_csv):
    (tmp_path / "classes.csv").write_text('A,Apple\nD,"Dog, hot"\nZ,Zebra\n')
    val = write_csv(tmp_path / "validation-annotations-bbox.csv",
                    [row("v1", "A"), row("v1", "C"), row("v2", "C"), row("v3", "B"), row("v3", "B")])
    report, out = build(tmp_path, train_csv, classes=tmp_path / "classes.csv", test_boxes=[val])
    assert load_npy_dict(out / oi.LABELS_FILE) == {"i6": ["A", "D"]}
    assert (out / "classes.csv").read_text().splitlines()[1:] == ["A,Apple,4", "D,\"Dog, hot\",3"]
    assert load_npy_dict(out / oi.TEST_LABELS_FILE) == {"v1": ["A"]}  # restricted to A, D
    assert (out / "images_test.txt").read_text() == "validation/v1\n"
    assert BoxIndex.load(out / "index_test.npz").classes == ["A", "D"]

    report, out = build(tmp_path, train_csv, exclude_group_of=True, test_boxes=[f"test={val}"])
    assert len(load_npy_dict(out / oi.BOXES_FILE)["i1"]["data"]) == 2  # the group-of A box is gone
    assert load_npy_dict(out / oi.TEST_LABELS_FILE) == {"v1": ["A"], "v3": ["B"]}
    assert (out / "images_test.txt").read_text() == "test/v1\ntest/v3\n"
    assert json.loads((out / "build_report.json").read_text())["test"]["boxes"] == 3


def test_build_header_driven_layouts(tmp_path):
    # official v6 layout: 21 columns, kept verbatim
    v6 = [row(r[0], r[2], extra=["-1"] * 8) for r in ROWS]
    _, out = build(tmp_path, write_csv(tmp_path / "v6.csv.gz", v6, V6))
    feats = load_npy_dict(out / oi.BOXES_FILE)
    assert feats["i1"]["data"][0] == v6[0]
    # another column order, some columns missing: rows come out in the official order
    header = ["LabelName", "XMax", "ImageID", "YMin", "XMin", "YMax", "Note"]
    shuffled = [[r[2], r[5], r[0], r[6], r[4], r[7], "n"] for r in ROWS]
    _, out = build(tmp_path, write_csv(tmp_path / "odd.csv", shuffled, header))
    assert load_npy_dict(out / oi.BOXES_FILE)["i1"]["data"][1] == ["i1", "", "B", "", "0.0", "1.0", "0.25",
                                                                  "0.75", "", "", "", "", "", "n"]


def test_build_errors_name_the_file(tmp_path, capsys):
    assert oi.main(["build", "--boxes", str(tmp_path / "nope.csv"), "--out", str(tmp_path)]) == 2
    assert "nope.csv: box CSV not found" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageID,LabelName,XMin\n")
    assert oi.main(["build", "--boxes", str(bad), "--out", str(tmp_path)]) == 2
    assert "bad.csv: header lacks column(s) XMax, YMin, YMax" in capsys.readouterr().err


def test_build_cli_prints_counts(tmp_path, train_csv, capsys):
    assert oi.main(["build", "--boxes", str(train_csv), "--out", str(tmp_path / "o"), "--min-class-images", "3",
                    "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "train: 3 images, 3 classes, 8 boxes, 2.67 boxes/image" in cap.out
    assert "1 missing fields, 1 non-numeric coordinates" in cap.err and "line 7" in cap.err
