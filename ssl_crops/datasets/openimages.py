"""OpenImages subset: build the paper's dicts from the official box CSVs, download the images.

``python -m ssl_crops.datasets.openimages build --boxes oidv6-train-annotations-bbox.csv
[--classes class-descriptions-boxable.csv] [--test-boxes validation-annotations-bbox.csv ...]
--out DIR`` streams the CSV twice in bounded memory and writes ``images_selected_new.npy``
(image id -> class ids) and ``images_selected_with_all_features.npy`` (image id ->
``{'data': rows}``, rows verbatim as lists of CSV strings) in the original pickled form, plus
a pickle-free ``index.npz``.

``python -m ssl_crops.datasets.openimages download --ids DICT_OR_TXT --out DIR`` fetches only
the listed images from the public bucket (parallel, retried, resumable, verified).
"""
from __future__ import annotations

import argparse
import csv
import gc
import gzip
import http.client
import io
import json
import os
import random
import re
import sys
import time
import urllib.error
import urllib.request
from array import array
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from operator import itemgetter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..files import atomic_write

__all__ = ["BoxCsv", "Selection", "select", "build", "read_ids", "default_report", "download", "main",
           "COLUMNS", "DEFAULT_BASE_URL", "LABELS_FILE", "BOXES_FILE"]

COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
           "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
DEFAULT_BASE_URL = "https://open-images-dataset.s3.amazonaws.com"
LABELS_FILE, BOXES_FILE = "images_selected_new.npy", "images_selected_with_all_features.npy"
TEST_LABELS_FILE, TEST_BOXES_FILE = "images_test.npy", "images_test_with_all_features.npy"


# --------------------------------------------------------------------------- reading
class BoxCsv:
    """One OpenImages box CSV: column positions from its header, rows in canonical order.

    Rows of files whose header starts with the official 13 columns are kept verbatim; other
    layouts are reordered to the official columns (missing ones empty) followed by the extra
    columns, so ``row[2]`` is always ``LabelName`` and ``row[4:8]`` the box.
    """

    def __init__(self, path, split: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: box CSV not found")
        self.split = split or _split_from_name(self.path) or "train"
        self.rows_read = 0
        f, raw = self._open()
        with f, raw:
            header = next(csv.reader([f.readline().decode("utf-8-sig")]), None)
        if not header:
            raise ValueError(f"{self.path}: empty file, expected a header with {', '.join(REQUIRED)}")
        header = [h.strip() for h in header]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ValueError(f"{self.path}: header lacks column(s) {', '.join(missing)}; found {header}")
        self.ncols = len(header)
        self.col = {name: header.index(name) for name in header}
        order = [self.col.get(c, self.ncols) for c in COLUMNS] + [
            j for j, name in enumerate(header) if name not in COLUMNS]
        self.canonical = order == list(range(self.ncols))
        self._reorder = itemgetter(*order)

    def _open(self):
        """(binary file, underlying raw file whose position tracks progress)."""
        raw = open(self.path, "rb", buffering=1 << 20)
        return (gzip.GzipFile(fileobj=raw) if self.path.suffix == ".gz" else raw), raw

    def rows(self, *, vocab=None, images=None, exclude_group_of=False, bad: Malformed | None = None,
             desc: str = "", progress: bool = True):
        """Yield ``(fields, line)`` of the well-formed rows passing the filters.

        Lines are bytes; ``fields`` is a list of bytes holding at least the columns up to
        the last one used here (ImageID, LabelName, the box, IsGroupOf). ``vocab``/``images``:
        sets of class ids / image ids (bytes) to keep, None for all. ``bad`` counts malformed
        rows (wrong number of fields, empty id, non-numeric box) by reason, with examples.
        """
        c = self.col
        ii, il, ix0, ix1, iy0, iy1 = (c[k] for k in REQUIRED)
        ig = c.get("IsGroupOf") if exclude_group_of else None
        last = max(ii, il, ix0, ix1, iy0, iy1, ig or 0)
        nsplit, commas, strip = last + 1, self.ncols - 1, last == self.ncols - 1
        prefilter = images is not None and ii == 0  # skip other images before splitting
        total = self.path.stat().st_size
        f, raw = self._open()
        with f, raw, tqdm(total=total, unit="B", unit_scale=True, desc=desc or self.path.name,
                          disable=not progress, mininterval=1.0) as bar:
            f.readline()
            lineno = 1
            for chunk in iter(lambda: f.readlines(1 << 20), []):
                for line in chunk:
                    if prefilter and line[:line.find(b",")] not in images:
                        continue
                    if b'"' in line:  # quoted fields: the official files have none
                        fields = [x.encode() for x in next(csv.reader([line.decode(errors="replace")]), [])]
                        ok = len(fields) == self.ncols
                    else:
                        ok = line.count(b",") == commas
                        fields = (line.rstrip(b"\r\n") if strip else line).split(b",", nsplit) if ok else ()
                    if not ok or not fields[ii] or not fields[il]:
                        if bad is not None and line.strip():  # blank lines are skipped silently
                            bad.add("missing fields", line, lambda: lineno + 1 + chunk.index(line))
                        continue
                    if images is not None and fields[ii] not in images:
                        continue
                    try:
                        float(fields[ix0]), float(fields[ix1]), float(fields[iy0]), float(fields[iy1])
                    except ValueError:
                        if bad is not None:
                            bad.add("non-numeric coordinates", line, lambda: lineno + 1 + chunk.index(line))
                        continue
                    if vocab is not None and fields[il] not in vocab:
                        continue
                    if ig is not None and fields[ig] == b"1":
                        continue
                    yield fields, line
                lineno += len(chunk)
                bar.update(max(0, min(raw.tell(), total) - bar.n))
            bar.update(total - bar.n)
        self.rows_read = lineno - 1

    def full_row(self, line: bytes, intern=sys.intern) -> list[str]:
        """All fields of ``line`` in the official column order, strings interned (shared)."""
        text = line.decode(errors="replace").rstrip("\r\n")
        row = next(csv.reader([text])) if '"' in text else text.split(",")
        if not self.canonical:
            row.append("")
            row = self._reorder(row)
        return list(tuple(map(intern, row)))  # via a tuple: a list of exact capacity


def _split_from_name(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in ("validation", "test", "train") if s in name), None)


def _test_csv(spec) -> BoxCsv:
    """A test-split CSV from ``SPLIT=PATH`` or a path whose name says validation or test."""
    split, sep, path = str(spec).partition("=")
    if not sep:
        split, path = _split_from_name(Path(spec)), spec
    if split not in ("validation", "test", "train"):
        raise ValueError(f"{spec}: cannot tell the bucket folder (validation, test) of this CSV; "
                         "pass it as SPLIT=PATH")
    return BoxCsv(path, split)


@dataclass
class Malformed:
    """Malformed rows by reason, with the first few as examples."""

    counts: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)

    def add(self, reason: str, line: bytes, lineno) -> None:
        self.counts[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {lineno()}: {reason}: {line.decode(errors='replace').strip()[:120]}")


def read_classes(path) -> dict[str, str]:
    """Class vocabulary: ``class-descriptions-boxable.csv`` (LabelName,DisplayName) or one id a line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: class list not found")
    names = {}
    with open(path, encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            if row and row[0].strip() and row[0].strip() != "LabelName":
                names[row[0].strip()] = row[1].strip() if len(row) > 1 else ""
    if not names:
        raise ValueError(f"{path}: no class ids found")
    return names


# --------------------------------------------------------------------------- selection
@dataclass
class Selection:
    """Result of :func:`select`: kept rows per image (first-seen order) and statistics."""

    rows: dict                      # image id -> list of canonical rows
    classes: list                   # kept class ids, sorted
    class_images: dict              # class id -> number of images (before the image rule)
    splits: dict                    # image id -> bucket folder (train / validation / test)
    rows_read: int = 0
    images_read: int = 0
    bad: Malformed = field(default_factory=Malformed)
    seconds: dict = field(default_factory=dict)

    @property
    def num_boxes(self) -> int:
        return sum(len(r) for r in self.rows.values())

    def labels(self) -> dict:
        """image id -> distinct class ids of its rows, in first-seen order."""
        return {k: list(dict.fromkeys(r[2] for r in rows)) for k, rows in self.rows.items()}

    def features(self) -> dict:
        return {k: {"data": rows} for k, rows in self.rows.items()}


def select(files, *, vocab=None, min_class_images=900, min_classes_per_image=2,
           exclude_group_of=False, progress=True) -> Selection:
    """Two streaming passes over ``files`` (BoxCsv): count, then collect the kept rows.

    Pass 1 keeps one (image, class) int32 pair per row; pass 2 keeps only the rows of the
    selected images and classes, with interned strings. Classes need ``min_class_images``
    images; images need ``min_classes_per_image`` distinct kept classes. ``vocab``: class
    ids to consider (None: all).
    """
    if min_classes_per_image < 1:
        raise ValueError("min_classes_per_image must be at least 1")
    vocab = {v.encode() for v in vocab} if vocab is not None else None
    t0 = time.perf_counter()
    ids, classes = {}, {}
    pair_img, pair_cls = array("i"), array("i")
    bad = Malformed()
    for bc in files:
        ii, il = bc.col["ImageID"], bc.col["LabelName"]
        last, idx = None, -1
        for fields, _ in bc.rows(vocab=vocab, exclude_group_of=exclude_group_of, bad=bad,
                                 desc=f"scan {bc.path.name}", progress=progress):
            img = fields[ii]
            if img != last:
                last = img
                idx = ids.setdefault(img, len(ids))
            lab = fields[il]
            c = classes.get(lab)
            if c is None:
                c = classes[lab] = len(classes)
            pair_img.append(idx)
            pair_cls.append(c)
    ncls = max(len(classes), 1)
    key = np.unique(np.frombuffer(pair_img, np.int32).astype(np.int64) * ncls
                    + np.frombuffer(pair_cls, np.int32))
    del pair_img, pair_cls
    img_of, cls_of = np.divmod(key, ncls)
    del key
    class_images = np.bincount(cls_of, minlength=ncls)
    keep_cls = class_images >= min_class_images
    per_image = np.bincount(img_of[keep_cls[cls_of]], minlength=len(ids))
    del img_of, cls_of
    names = list(classes)
    kept_classes = {names[c] for c in np.flatnonzero(keep_cls)}
    image_names = list(ids)
    images_read = len(ids)
    del ids
    kept_images = {image_names[i] for i in np.flatnonzero(per_image >= min_classes_per_image)}
    del image_names, per_image

    t1 = time.perf_counter()
    rows, splits = {}, {}
    for bc in files:
        ii = bc.col["ImageID"]
        last, cur = None, None
        for fields, line in bc.rows(vocab=kept_classes, images=kept_images, exclude_group_of=exclude_group_of,
                                    desc=f"collect {bc.path.name}", progress=progress):
            if fields[ii] != last:
                last = fields[ii]
                img = sys.intern(last.decode())
                cur = rows.get(img)
                if cur is None:
                    cur = rows[img] = []
                    splits[img] = bc.split
            cur.append(bc.full_row(line))
    return Selection(rows=rows, classes=sorted(c.decode() for c in kept_classes),
                     class_images={n.decode(): int(class_images[c]) for c, n in enumerate(names)},
                     splits=splits, rows_read=sum(bc.rows_read for bc in files),
                     images_read=images_read, bad=bad,
                     seconds={"scan": t1 - t0, "collect": time.perf_counter() - t1})


# --------------------------------------------------------------------------- build
def _save_npy(path: Path, obj) -> None:
    """``np.save(path, obj, allow_pickle=True)`` written atomically."""
    with atomic_write(path) as f:
        np.save(f, obj, allow_pickle=True)


def _summary(name: str, sel: Selection) -> dict:
    n, nb = len(sel.rows), sel.num_boxes
    return {"split": name, "images": n, "classes": len({r[2] for rows in sel.rows.values() for r in rows}),
            "boxes": nb, "boxes_per_image": round(nb / n, 2) if n else 0.0,
            "rows_read": sel.rows_read, "images_read": sel.images_read,
            "malformed_rows": dict(sel.bad.counts), "malformed_examples": sel.bad.examples}


def _print_summary(s: dict) -> None:
    print(f"{s['split']}: {s['images']:,} images, {s['classes']:,} classes, {s['boxes']:,} boxes, "
          f"{s['boxes_per_image']:.2f} boxes/image (read {s['rows_read']:,} rows of {s['images_read']:,} images)")
    bad = s["malformed_rows"]
    if bad:
        print(f"  skipped {sum(bad.values()):,} malformed rows: "
              + ", ".join(f"{v:,} {k}" for k, v in bad.items()), file=sys.stderr)
        for e in s["malformed_examples"]:
            print(f"    {e}", file=sys.stderr)


@contextmanager
def _no_gc():
    """Pause the cyclic garbage collector."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def build(boxes, out, *, classes=None, test_boxes=(), min_class_images=900, min_classes_per_image=2,
          test_min_classes=1, exclude_group_of=False, progress=True) -> dict:
    """Build the subset dicts (and ``index.npz``) in ``out``; returns the printed counts.

    ``boxes``: train box CSV(s); ``classes``: optional vocabulary file; ``test_boxes``: CSVs
    (``SPLIT=PATH`` or a path whose name says validation/test) for the test dicts, restricted
    to the kept training classes.
    """
    from ssl_crops.boxes import BoxIndex

    out = Path(out)
    train_files = [BoxCsv(p) for p in ([boxes] if isinstance(boxes, (str, os.PathLike)) else boxes)]
    test_files = [_test_csv(t) for t in test_boxes]
    names = read_classes(classes) if classes else None
    out.mkdir(parents=True, exist_ok=True)

    with _no_gc():  # millions of acyclic lists: full collections would only cost time
        sel = select(train_files, vocab=set(names) if names else None, min_class_images=min_class_images,
                     min_classes_per_image=min_classes_per_image, exclude_group_of=exclude_group_of,
                     progress=progress)
        report = {"rules": {"min_class_images": min_class_images, "min_classes_per_image": min_classes_per_image,
                            "exclude_group_of": exclude_group_of, "classes": str(classes) if classes else None},
                  "train": _summary("train", sel)}
        _print_summary(report["train"])
        kept = sel.classes
        with open(out / "classes.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["LabelName", "DisplayName", "TrainImages"])
            w.writerows([c, (names or {}).get(c, ""), sel.class_images[c]] for c in kept)
        t = time.perf_counter()
        labels = sel.labels()
        _save_npy(out / LABELS_FILE, labels)
        features = sel.features()
        _save_npy(out / BOXES_FILE, features)
        seconds = {**sel.seconds, "write": time.perf_counter() - t}
        t = time.perf_counter()
        BoxIndex.from_openimages(labels, features, classes=kept).save(out / "index.npz")
        seconds["index"] = time.perf_counter() - t
        report["train"]["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
        print("  time: " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
        del sel, labels, features

        if test_files:
            test = select(test_files, vocab=set(kept), min_class_images=1, min_classes_per_image=test_min_classes,
                          exclude_group_of=exclude_group_of, progress=progress)
            report["test"] = _summary("test", test)
            _print_summary(report["test"])
            labels, features = test.labels(), test.features()
            _save_npy(out / TEST_LABELS_FILE, labels)
            _save_npy(out / TEST_BOXES_FILE, features)
            BoxIndex.from_openimages(labels, features, classes=kept).save(out / "index_test.npz")
            (out / "images_test.txt").write_text("".join(f"{s}/{i}\n" for i, s in test.splits.items()))
        (out / "build_report.json").write_text(json.dumps(report, indent=1))
    return report


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
    report.write_text(json.dumps(result, indent=1))
    print(f"download: {len(items):,} requested, {counts['downloaded']:,} downloaded, "
          f"{counts['skipped']:,} already present, {len(failures):,} failed (report: {report})")
    for f in failures[:20]:
        print(f"  {f['split']}/{f['id']}: {f['status']} ({f['error']})", file=sys.stderr)
    if len(failures) > 20:
        print(f"  ... and {len(failures) - 20:,} more in {report}", file=sys.stderr)
    return result


# --------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssl_crops.datasets.openimages", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build the subset dicts from the official box CSVs")
    b.add_argument("--boxes", required=True, nargs="+", help="train box CSV(s), e.g. oidv6-train-annotations-bbox.csv")
    b.add_argument("--classes", help="class vocabulary: class-descriptions-boxable.csv or one id a line")
    b.add_argument("--test-boxes", nargs="*", default=[],
                   help="validation/test box CSVs for the test dicts ([SPLIT=]PATH; split from the name)")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--min-class-images", type=int, default=900, help="keep classes with at least this many images")
    b.add_argument("--min-classes-per-image", type=int, default=2,
                   help="keep images with objects of at least this many distinct kept classes")
    b.add_argument("--test-min-classes", type=int, default=1, help="the same rule for the test split")
    b.add_argument("--exclude-group-of", action="store_true", help="ignore IsGroupOf=1 boxes")
    b.add_argument("--no-progress", action="store_true")
    d = sub.add_parser("download", help="download the listed images")
    d.add_argument("--ids", required=True, help=".npy dict (its keys), official image list CSV (ImageID, Subset "
                                                "columns, e.g. train-images-boxable-with-rotation.csv) or text file "
                                                "of [SPLIT/]ID lines")
    d.add_argument("--out", required=True, help="image directory (files <id>.jpg)")
    d.add_argument("--base-url", default=DEFAULT_BASE_URL, help="bucket URL; files are BASE/SPLIT/ID.jpg")
    d.add_argument("--split", default="train", help="bucket folder for ids given without one")
    d.add_argument("--workers", type=int, default=16, help="parallel connections")
    d.add_argument("--retries", type=int, default=4)
    d.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds (doubles)")
    d.add_argument("--timeout", type=float, default=60.0)
    d.add_argument("--report", help="failure report json (default OUT/download_report_<IDS stem>.json)")
    d.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        if a.command == "build":
            build(a.boxes, a.out, classes=a.classes, test_boxes=a.test_boxes, min_class_images=a.min_class_images,
                  min_classes_per_image=a.min_classes_per_image, test_min_classes=a.test_min_classes,
                  exclude_group_of=a.exclude_group_of, progress=not a.no_progress)
            return 0
        r = download(a.ids, a.out, base_url=a.base_url, split=a.split, workers=a.workers, retries=a.retries,
                     backoff=a.backoff, timeout=a.timeout, report=a.report, progress=not a.no_progress)
        return 1 if r["failed"] else 0
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
