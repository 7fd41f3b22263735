"""Build the paper's OpenImages-subset dicts from the official box CSVs, streaming them twice
in bounded memory: ``images_selected_new.npy``, ``images_selected_with_all_features.npy``
(rows verbatim as lists of CSV strings), the test dicts and a pickle-free ``index.npz``."""
from __future__ import annotations

import csv
import gc
import gzip
import os
import sys
import time
from array import array
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...files import atomic_write, json_text
from ...formats import SUBSET_FILES

COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax",
           "IsOccluded", "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside")
REQUIRED = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
LABELS_FILE, BOXES_FILE = SUBSET_FILES["labels"], SUBSET_FILES["boxes"]
TEST_LABELS_FILE, TEST_BOXES_FILE = SUBSET_FILES["test_labels"], SUBSET_FILES["test_boxes"]


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
        (out / "build_report.json").write_text(json_text(report, indent=1))
    return report
