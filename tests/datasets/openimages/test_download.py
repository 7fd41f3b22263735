"""OpenImages downloader and create_data.sh, against a local http.server only."""
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

from ssl_crops.boxes import load_npy_dict
from ssl_crops.datasets import openimages as oi

from .test_build import row, write_csv

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
SCRIPT = Path(__file__).resolve().parents[3] / "create_data.sh"


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
