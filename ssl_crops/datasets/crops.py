"""Object crops from a COCO (or LVIS) detection json, as in the MSCOCO-GLT generation.

``python -m ssl_crops.datasets.crops --coco ann.json --images DIR --out DIR [--style glt]``
writes one JPEG per object into ``OUT/<class>/`` (an ImageFolder layout, so
``BoxIndex.from_folder(OUT)`` or torchvision's ImageFolder read it for linear evaluation) and
``OUT/crops.csv`` with the crop file, class, source image, crop region and box.

Styles:

- ``glt`` (default), MSCOCO-GLT's rule: each side of the box grows by 0.2 x the box's
  width (height), or by 50 px when the width (height) is under 100 px; the region is
  clipped to the image, then padded with black to a centred square. Every object is kept.
- ``dilate``: each side grows by ``--dilation`` x the box's own size, clipped, no padding.

The output folder is written whole and then put in place: an existing non-empty folder is
refused unless ``--overwrite``, which replaces it only once the new crops are complete.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

from tqdm import tqdm

from ..boxes import coco_file_name
from ..images import load_image

__all__ = ["crop_box", "glt_crop_box", "square_padding", "class_folders", "export_crops", "main", "INDEX_FILE",
           "INDEX_COLUMNS", "STYLES"]

STYLES = ("glt", "dilate")

INDEX_FILE = "crops.csv"
INDEX_COLUMNS = ("file", "class", "category_id", "annotation_id", "image_id", "source",
                 "x0", "y0", "x1", "y1", "box_x", "box_y", "box_w", "box_h")


def crop_box(bbox, width: int, height: int, dilation: float = 0.1) -> tuple[int, int, int, int]:
    """Pixel crop ``(x0, y0, x1, y1)`` of a COCO ``[x, y, w, h]`` box grown by ``dilation`` x its
    own width/height on each side, rounded outwards and clipped to the image."""
    x, y, w, h = map(float, bbox)
    dx, dy = dilation * w, dilation * h
    return (max(0, math.floor(x - dx)), max(0, math.floor(y - dy)),
            min(width, math.ceil(x + w + dx)), min(height, math.ceil(y + h + dy)))


def glt_crop_box(bbox, width: int, height: int) -> tuple[int, int, int, int]:
    """MSCOCO-GLT's crop region ``(x0, y0, x1, y1)`` of a COCO ``[x, y, w, h]`` box: each side
    grows by 0.2 x the box's width (height), or by 50 px when that is under 100 px, clipped
    to the image and rounded as PIL's ``crop`` rounds."""
    x, y, w, h = map(float, bbox)
    dx = 50.0 if w < 100 else 0.2 * w
    dy = 50.0 if h < 100 else 0.2 * h
    return (round(max(x - dx, 0)), round(max(y - dy, 0)), round(min(x + w + dx, width)),
            round(min(y + h + dy, height)))


def square_padding(width: int, height: int) -> tuple[int, int, int, int]:
    """The box, relative to a ``width x height`` crop, that pads it to a centred square (PIL
    fills the part outside the crop with black)."""
    pad = abs(width - height) / 2
    if width > height:
        return 0, round(-pad), width, round(height + pad)
    return round(-pad), 0, round(width + pad), height


def class_folders(categories) -> dict[int, str]:
    """Category id -> folder name (the name made file-system safe, unique)."""
    folders, used = {}, set()
    for cat in sorted(categories, key=lambda c: c["id"]):
        name = re.sub(r"[^\w.+-]+", "_", str(cat.get("name", cat["id"]))).strip("._") or str(cat["id"])
        if name in used:
            name = f"{name}_{cat['id']}"
        used.add(name)
        folders[cat["id"]] = name
    return folders


def _crop_image(job):
    """Crop all objects of one image; returns index rows and per-reason skip counts."""
    src, stem, anns, out, style, dilation, min_size, quality = job
    rows, skipped = [], defaultdict(int)
    try:
        im = load_image(src)
        for a in anns:
            x, y, w, h = a["bbox"]
            if w < min_size or h < min_size:
                skipped["smaller than min-size"] += 1
                continue
            box = glt_crop_box(a["bbox"], im.width, im.height) if style == "glt" else \
                crop_box(a["bbox"], im.width, im.height, dilation)
            if box[2] <= box[0] or box[3] <= box[1]:
                skipped["outside the image"] += 1
                continue
            rel = f"{a['folder']}/{stem}_{a['id']}.jpg"
            (out / a["folder"]).mkdir(parents=True, exist_ok=True)  # only classes with crops
            crop = im.crop(box)
            if style == "glt":
                crop = crop.crop(square_padding(*crop.size))
            crop.save(out / rel, quality=quality)
            rows.append([rel, a["folder"], a["category_id"], a["id"], a["image_id"], src.name,
                         *box, x, y, w, h])
    except (OSError, ValueError) as e:
        skipped[f"unreadable image ({type(e).__name__})"] += len(anns)
        print(f"warning: {e if str(src) in str(e) else f'{src}: {e}'}", file=sys.stderr)
    return rows, dict(skipped)


def export_crops(coco, images, out, *, style="glt", dilation=0.1, min_size=0, include_crowd=False, quality=95,
                 workers=1, overwrite=False, progress=True) -> dict:
    """Write one crop per object of ``coco`` (json path) found in ``images`` into ``out``;
    returns counts. Crowd annotations are skipped unless ``include_crowd`` (the default of
    ``BoxIndex.from_coco`` too). A non-empty ``out`` raises ``FileExistsError`` unless
    ``overwrite``; the crops are written beside it and replace it only when complete."""
    coco, images, out = Path(coco), Path(images), Path(out)
    if style not in STYLES:
        raise ValueError(f"unknown crop style {style!r} (choose from {', '.join(STYLES)})")
    if not coco.is_file():
        raise FileNotFoundError(f"{coco}: COCO annotation file not found")
    if not images.is_dir():
        raise FileNotFoundError(f"{images}: image directory not found")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out}: folder is not empty ({sum(1 for _ in out.rglob('*.jpg')):,} JPEGs); "
                              f"pass --overwrite to replace it, or choose another --out")
    try:
        with open(coco, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{coco}: not a JSON file ({e})") from e
    folders = class_folders(data.get("categories", []))
    by_image = defaultdict(list)
    skipped = defaultdict(int)
    for a in data.get("annotations", []):
        if a.get("iscrowd") and not include_crowd:
            skipped["crowd"] += 1
        elif a.get("category_id") not in folders:
            skipped["unknown category id"] += 1
        else:
            by_image[a["image_id"]].append({**a, "folder": folders[a["category_id"]]})
    final, out = out, out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    jobs = []
    for img in data.get("images", []):
        anns = by_image.pop(img["id"], [])
        if not anns:
            continue
        name = coco_file_name(img)
        src = images / name
        if not src.is_file():
            skipped["missing image"] += len(anns)
            print(f"warning: {src}: image not found", file=sys.stderr)
            continue
        jobs.append((src, Path(name).stem, anns, out, style, dilation, min_size, quality))
    skipped["unknown image id"] += sum(map(len, by_image.values()))
    rows = []
    try:
        with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as ex:
            results = ex.map(_crop_image, jobs, chunksize=8) if ex else map(_crop_image, jobs)
            for r, s in tqdm(results, total=len(jobs), unit="img", desc="crops", disable=not progress):
                rows.extend(r)
                for k, v in s.items():
                    skipped[k] += v
        with open(out / INDEX_FILE, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(INDEX_COLUMNS)
            w.writerows(rows)
        _replace(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    out = final
    result = {"crops": len(rows), "images": len(jobs), "classes": len({r[1] for r in rows}),
              "skipped": {k: v for k, v in skipped.items() if v}}
    print(f"crops: {result['crops']:,} from {result['images']:,} images, {result['classes']} classes -> {out}"
          + (" (skipped: " + ", ".join(f"{v:,} {k}" for k, v in result["skipped"].items()) + ")"
             if result["skipped"] else ""))
    return result


def _replace(new: Path, out: Path) -> None:
    """Put the finished folder ``new`` at ``out``, removing what was there only afterwards."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        out.rename(old)
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssl_crops.datasets.crops", description=__doc__.split("\n")[0])
    p.add_argument("--coco", required=True, help="COCO detection json")
    p.add_argument("--images", required=True, help="directory of the json's file_name entries")
    p.add_argument("--out", required=True, help="output directory (class sub-folders + crops.csv)")
    p.add_argument("--style", choices=STYLES, default="glt",
                   help="glt: MSCOCO-GLT's crops (0.2 x size or 50 px per side, padded to a square); "
                        "dilate: --dilation x size per side, no padding")
    p.add_argument("--dilation", type=float, default=0.1,
                   help="--style dilate: grow boxes by this fraction of their size per side")
    p.add_argument("--min-size", type=float, default=0,
                   help="skip objects narrower or shorter than this (pixels; default 0: keep every object)")
    p.add_argument("--include-crowd", action="store_true",
                   help="also crop iscrowd annotations (skipped by default, as BoxIndex.from_coco does)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    try:
        export_crops(a.coco, a.images, a.out, style=a.style, dilation=a.dilation, min_size=a.min_size,
                     include_crowd=a.include_crowd, quality=a.quality, workers=a.workers, overwrite=a.overwrite,
                     progress=not a.no_progress)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
