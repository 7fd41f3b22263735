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
import sys

from .build import (BOXES_FILE, COLUMNS, LABELS_FILE, TEST_BOXES_FILE, TEST_LABELS_FILE, BoxCsv, Selection, build,
                    select)
from .download import DEFAULT_BASE_URL, default_report, download, read_ids

__all__ = ["BoxCsv", "Selection", "select", "build", "read_ids", "default_report", "download", "main",
           "COLUMNS", "DEFAULT_BASE_URL", "LABELS_FILE", "BOXES_FILE", "TEST_LABELS_FILE", "TEST_BOXES_FILE"]


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
