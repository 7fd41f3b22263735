"""OpenImages subset builder (hand-checked CSV) and downloader (local http.server only)."""
import csv
import gzip
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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


# --------------------------------------------------------------------------- download
def jpeg(seed, size=48):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        if "flaky" in self.path and self.server.requests.count(self.path) == 1:
            return self.send_error(503)
        return super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "bucket"
    (root / "train").mkdir(parents=True)
    (root / "validation").mkdir()
    for i in ("a1", "a2", "flaky"):
        (root / "train" / f"{i}.jpg").write_bytes(jpeg(len(i)))
    (root / "validation" / "v1.jpg").write_bytes(jpeg(7))
    (root / "train" / "corrupt.jpg").write_bytes(jpeg(8)[:300])  # truncated
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    httpd.requests = []
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_download_resume_and_failure_report(tmp_path, server, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("train/a1\na2\nflaky.jpg\nvalidation/v1.jpg\n\nmissing\ntrain/corrupt\na1\n")
    out = tmp_path / "images"
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kw = {"base_url": url, "workers": 3, "retries": 2, "backoff": 0.01, "progress": False}
    r = oi.download(ids, out, **kw)
    assert (r["requested"], r["downloaded"], r["skipped"], r["failed"]) == (6, 4, 0, 2)
    assert {(f["id"], f["status"]) for f in r["failures"]} == {("missing", "missing"), ("corrupt", "corrupt")}
    assert json.loads((out / "download_report_ids.json").read_text())["failed"] == 2
    assert server.requests.count("/train/missing.jpg") == 1  # 404 is not retried
    assert server.requests.count("/train/flaky.jpg") == 2  # 503 is
    assert sorted(p.name for p in out.iterdir()) == ["a1.jpg", "a2.jpg", "download_report_ids.json",
                                                     "flaky.jpg", "v1.jpg"]  # no partial files
    assert (out / "v1.jpg").read_bytes() == jpeg(7)
    assert "2 failed" in capsys.readouterr().out

    server.requests.clear()
    (out / "a2.jpg").write_bytes(jpeg(2)[:200])  # a broken local file is fetched again
    assert oi.main(["download", "--ids", str(ids), "--out", str(out), "--base-url", url, "--retries", "0",
                    "--no-progress"]) == 1
    r = json.loads((out / "download_report_ids.json").read_text())
    assert (r["downloaded"], r["skipped"], r["failed"]) == (1, 3, 2)
    assert sorted(server.requests) == ["/train/a2.jpg", "/train/corrupt.jpg", "/train/missing.jpg"]
    server.requests.clear()
    (out / "a2.jpg").write_bytes(jpeg(2))
    r = oi.download(ids, out, **kw)
    assert (r["downloaded"], r["skipped"]) == (0, 4) and "/train/a1.jpg" not in server.requests


def test_read_ids_from_npy_dict(tmp_path):
    np.save(tmp_path / "d.npy", {"x1": ["A"], "x2": ["B"]}, allow_pickle=True)
    assert oi.read_ids(tmp_path / "d.npy") == [("train", "x1"), ("train", "x2")]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        oi.read_ids(tmp_path / "nope.txt")


OFFICIAL_LIST = (
    "ImageID,Subset,OriginalURL,OriginalLandingURL,License,AuthorProfileURL,Author,Title,OriginalSize,"
    "OriginalMD5,Thumbnail300KURL,Rotation\n"
    "000002b66c9c498e,train,https://farm3.staticflickr.com/2861/9438458394_1fd5ecea35_o.jpg,"
    "https://www.flickr.com/photos/x/9438458394,https://creativecommons.org/licenses/by/2.0/,"
    "https://www.flickr.com/people/x/,\"Some One, Jr.\",\"A title, with commas\",2424573,"
    "8Zj6GLKxaQuyBnaLbxMqzQ==,https://c2.staticflickr.com/3/2861/9438458394_1fd5ecea35_z.jpg?zz=1,0.0\n"
    "000002b97e5471a0,validation,https://farm5.staticflickr.com/4/5_o.jpg,https://www.flickr.com/photos/y/5,"
    "https://creativecommons.org/licenses/by/2.0/,https://www.flickr.com/people/y/,Other,Title,1,"
    "abc==,https://c1.staticflickr.com/4/5_z.jpg,\n")


def test_read_ids_from_the_official_image_list(tmp_path):
    (tmp_path / "train-images-boxable-with-rotation.csv").write_text(OFFICIAL_LIST)
    assert oi.read_ids(tmp_path / "train-images-boxable-with-rotation.csv") == [
        ("train", "000002b66c9c498e"), ("validation", "000002b97e5471a0")]  # not the header or URL pieces


def test_ids_are_validated_with_the_lines_named(tmp_path, server):
    bad = tmp_path / "list.txt"  # the image list read as lines of ids: header and URL fragments
    bad.write_text(OFFICIAL_LIST.replace("ImageID,", "Image ID,"))
    with pytest.raises(ValueError, match=r"list.txt: 3 of 3 entries are not image ids \(line 1: "):
        oi.read_ids(bad)
    (tmp_path / "ok.txt").write_text("train/a1\n../../etc/passwd\nhttps://x.org/a.jpg\n")
    with pytest.raises(ValueError, match=r"2 of 3 entries .*line 2: \.\./\.\./etc/passwd; line 3: "):
        oi.read_ids(tmp_path / "ok.txt")
    assert oi.main(["download", "--ids", str(bad), "--out", str(tmp_path / "o"), "--no-progress",
                    "--base-url", f"http://127.0.0.1:{server.server_address[1]}"]) == 2
    assert server.requests == [] and not (tmp_path / "o").exists()  # nothing fetched, nothing written
    with pytest.raises(ValueError, match="not image ids: train/a b"):
        oi.download([("train", "a b")], tmp_path / "o", progress=False)


def test_train_and_test_downloads_keep_separate_reports(tmp_path, server):
    (tmp_path / "images_selected_new.txt").write_text("a1\nmissing\n")
    (tmp_path / "images_test.txt").write_text("validation/v1\n")
    url = f"http://127.0.0.1:{server.server_address[1]}"
    out = tmp_path / "images"
    for ids in ("images_selected_new.txt", "images_test.txt"):
        oi.download(tmp_path / ids, out, base_url=url, retries=0, progress=False)
    train = json.loads((out / "download_report_images_selected_new.json").read_text())
    test = json.loads((out / "download_report_images_test.json").read_text())
    assert (train["requested"], train["failed"], test["requested"], test["failed"]) == (2, 1, 1, 0)


# --------------------------------------------------------------------------- create_data.sh
SCRIPT = Path(__file__).resolve().parents[2] / "create_data.sh"


def test_create_data_help():
    out = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "oidv6-train-annotations-bbox.csv" in out and "Disk needed" in out and "--no-download-csv" in out


def test_create_data_end_to_end(tmp_path, server):
    csvs = tmp_path / "csv"
    csvs.mkdir()
    write_csv(csvs / "oidv6-train-annotations-bbox.csv", [row("a1", "A"), row("a1", "B"), row("a2", "A"),
                                                          row("a2", "B"), row("x9", "A")])
    write_csv(csvs / "validation-annotations-bbox.csv", [row("v1", "B")])
    write_csv(csvs / "test-annotations-bbox.csv", [row("t7", "C")])
    (csvs / "class-descriptions-boxable.csv").write_text("A,Apple\nB,Ball\nC,Cat\n")
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent)}
    proc = subprocess.run(["bash", str(SCRIPT), "--data", str(data), "--csv-dir", str(csvs), "--no-download-csv",
                           "--min-class-images", "2", "--workers", "2", "--python", sys.executable,
                           "--base-url", f"http://127.0.0.1:{server.server_address[1]}"],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "train: 2 images, 2 classes, 4 boxes" in proc.stdout
    assert sorted(p.name for p in (data / "images").glob("*.jpg")) == ["a1.jpg", "a2.jpg", "v1.jpg"]
    assert load_npy_dict(data / oi.TEST_LABELS_FILE) == {"v1": ["B"]}
