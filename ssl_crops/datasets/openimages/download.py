"""Download only the listed OpenImages images from the public bucket (parallel, retried,
resumable, every image checked to decode), with one failure report per id file."""
from __future__ import annotations

import csv
import http.client
import io
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from itertools import islice
from pathlib import Path

from tqdm import tqdm

from ...files import atomic_write, json_text

DEFAULT_BASE_URL = "https://open-images-dataset.s3.amazonaws.com"


# --------------------------------------------------------------------------- download
ID_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")  # official ids: 16 hex digits
SPLIT_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,64}")  # bucket folders: train, validation, test, ...


def read_ids(path, split: str = "train") -> list[tuple[str, str]]:
    """``(split, image_id)`` pairs, deduplicated, from:

    - a pickled ``.npy``/``.pkl`` dict (its keys);
    - a CSV whose header has ``ImageID`` (the official image lists such as
      ``train-images-boxable-with-rotation.csv``, or box CSVs): the split is its
      ``Subset`` column when present (``train``/``validation``/``test``), else ``split``;
    - a text file with one id a line (``<id>``, ``<split>/<id>`` or ``<split>/<id>.jpg``).

    Every id and split is checked (letters, digits, ``_``, ``-``): a file that yields
    anything else (a header, a URL, a path) raises ``ValueError`` naming the file and lines.
    """
    from ssl_crops.boxes import load_npy_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    if path.suffix in (".npy", ".pkl", ".pickle"):
        items = [(split, str(k), i + 1) for i, k in enumerate(load_npy_dict(path))]
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first = f.readline()
            f.seek(0)
            if first.startswith("ImageID"):
                reader = csv.DictReader(f)
                items = [(row.get("Subset") or split, row["ImageID"] or "", i + 2) for i, row in enumerate(reader)]
            else:
                items = []
                for i, line in enumerate(f, 1):
                    line = line.strip()
                    if not line or line.startswith("#"):
                        continue
                    s, _, image_id = line.rpartition("/")
                    image_id = image_id[:-4] if image_id.lower().endswith(".jpg") else image_id
                    items.append((s or split, image_id, i))
    bad = [(n, s, i) for s, i, n in items if not ID_PATTERN.fullmatch(i) or not SPLIT_PATTERN.fullmatch(s)]
    if bad:
        shown = "; ".join(f"line {n}: {s}/{i}"[:120] for n, s, i in bad[:3])
        raise ValueError(f"{path}: {len(bad):,} of {len(items):,} entries are not image ids ({shown}); expected "
                         f"[SPLIT/]ID lines, a CSV with an ImageID column, or a .npy dict")
    return list(dict.fromkeys((s, i) for s, i, _ in items))


def default_report(ids, out) -> Path:
    """Where :func:`download` writes its report unless told: ``OUT/download_report_<stem>.json``
    for an id file (so the train and test downloads into one folder keep separate reports),
    else ``OUT/download_report.json``."""
    if isinstance(ids, (str, os.PathLike)):
        return Path(out) / f"download_report_{Path(ids).stem}.json"
    return Path(out) / "download_report.json"


def check_image(source) -> str | None:
    """None if ``source`` (path or bytes) is a complete, decodable image, else the reason."""
    from PIL import Image

    try:
        for full in (False, True):
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
                if full:  # JPEG draft mode decodes at 1/8 scale: cheap, still catches truncation
                    im.draft("RGB", (64, 64))
                    im.load()
                else:
                    im.verify()
    except Exception as e:  # PIL raises many types for bad data
        return f"{type(e).__name__}: {e}"
    return None


def _retryable(code: int) -> bool:
    return code >= 500 or code in (408, 429)


def _fetch(url: str, dest: Path, retries: int, backoff: float, timeout: float) -> tuple[str, str, int]:
    """Download ``url`` to ``dest`` atomically; returns (status, error, attempts)."""
    error = ""
    for attempt in range(1, retries + 2):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "ssl-crops-downloader"})
            with urllib.request.urlopen(req, timeout=timeout) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            error = f"HTTP {e.code}"
            if not _retryable(e.code):
                return "missing" if e.code in (403, 404, 410) else "failed", error, attempt
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
        else:
            bad = check_image(data)
            if bad:
                return "corrupt", bad, attempt
            with atomic_write(dest) as f:
                f.write(data)
            return "downloaded", "", attempt
        if attempt <= retries:
            time.sleep(backoff * 2 ** (attempt - 1) * (0.5 + random.random()))
    return "failed", error, retries + 1


def download(ids, out, *, base_url=DEFAULT_BASE_URL, split="train", workers=16, retries=4,
             backoff=1.0, timeout=60.0, report=None, progress=True) -> dict:
    """Fetch ``{base_url}/{split}/{id}.jpg`` for every listed id into ``out/<id>.jpg``.

    ``ids``: a path (see :func:`read_ids`) or ``(split, id)`` pairs / bare ids (checked the
    same way). Files already present and decodable are skipped (resume). Returns and writes
    (``report``, default :func:`default_report`) the counts and the failures.
    """
    items = read_ids(ids, split) if isinstance(ids, (str, os.PathLike)) else [
        i if isinstance(i, tuple) else (split, str(i)) for i in ids]
    bad = [f"{s}/{i}" for s, i in items if not ID_PATTERN.fullmatch(i) or not SPLIT_PATTERN.fullmatch(s)]
    if bad:
        raise ValueError(f"{len(bad):,} entries are not image ids: {', '.join(bad[:3])}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_url.rstrip("/")

    def task(item):
        s, image_id = item
        dest, url = out / f"{image_id}.jpg", f"{base}/{s}/{image_id}.jpg"
        if dest.is_file():
            if check_image(dest) is None:
                return item, url, "skipped", "", 0
            dest.unlink()
        return (item, url, *_fetch(url, dest, retries, backoff, timeout))

    counts, failures = Counter(), []
    todo, pending = iter(items), set()
    with ThreadPoolExecutor(max(1, workers)) as ex, tqdm(total=len(items), unit="img", desc="download",
                                                         disable=not progress) as bar:
        while True:  # a bounded window of submitted tasks keeps memory flat for 200k+ ids
            pending.update(ex.submit(task, it) for it in islice(todo, 4 * max(1, workers) - len(pending)))
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                (s, image_id), url, status, error, attempts = fut.result()
                counts[status] += 1
                if status not in ("downloaded", "skipped"):
                    failures.append({"id": image_id, "split": s, "url": url, "status": status,
                                     "error": error, "attempts": attempts})
                bar.update()
            bar.set_postfix(failed=len(failures), refresh=False)
    failures.sort(key=lambda f: f["id"])
    result = {"requested": len(items), "downloaded": counts["downloaded"], "skipped": counts["skipped"],
              "failed": len(failures), "failures": failures}
    report = Path(report) if report else default_report(ids, out)
    report.write_text(json_text(result, indent=1))
    print(f"download: {len(items):,} requested, {counts['downloaded']:,} downloaded, "
          f"{counts['skipped']:,} already present, {len(failures):,} failed (report: {report})")
    for f in failures[:20]:
        print(f"  {f['split']}/{f['id']}: {f['status']} ({f['error']})", file=sys.stderr)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20:,} more in {report}", file=sys.stderr)
    return result
