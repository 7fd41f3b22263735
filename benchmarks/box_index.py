"""Load time and memory of a full-size BoxIndex (.npz) against the original pickled dicts.

Generates an OpenImages-subset-sized index (212,753 images, ~12 boxes each, 208 classes),
saves it as ``.npz`` and as the original ``.npy`` dicts, then loads each in a fresh process
and prints wall time and resident-memory growth. Targets: ``.npz`` load < 2 s, < 150 MB.

    python benchmarks/box_index.py [--images 212753] [--boxes-per-image 12] [--workdir /tmp/ssl_crops_bench]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from ssl_crops.boxes import BoxIndex, load_npy_dict
kind, path = sys.argv[1], sys.argv[2]
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
before = rss_mb()
t = time.perf_counter()
if kind == "npz":
    obj = BoxIndex.load(path)
    n, boxes = len(obj), obj.num_boxes
    obj.boxes(n // 2), obj.labels(n // 2), obj.path(n // 2)
elif kind == "npy-safe":
    obj = load_npy_dict(path)
    n, boxes = len(obj), sum(len(v["data"]) for v in obj.values())
else:
    obj = np.load(path, allow_pickle=True).item()
    n, boxes = len(obj), sum(len(v["data"]) for v in obj.values())
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_mb": rss_mb() - before, "images": n, "boxes": boxes}))
"""


def generate(workdir: Path, num_images: int, boxes_per_image: float, num_classes: int, seed: int):
    from ssl_crops.demo import random_index

    index = random_index(num_images, boxes_per_image, num_classes, seed=seed)
    index.save(workdir / "index.npz")
    # The original form: id -> {'data': rows}, rows of the box CSV with parsed coordinates.
    original, classes = {}, np.asarray(index.classes)
    for i in range(len(index)):
        image_id, names = index.image_id(i), classes[index.box_labels(i)].tolist()
        original[image_id] = {"data": [[image_id, "xclick", name, "1", x0, x1, y0, y1]
                                       for name, (x0, y0, x1, y1) in zip(names, index.boxes(i).tolist())]}
    np.save(workdir / "images_selected_with_all_features.npy", original, allow_pickle=True)
    return index


def measure(kind: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=212_753)
    p.add_argument("--boxes-per-image", type=float, default=12.0)
    p.add_argument("--classes", type=int, default=208)
    p.add_argument("--workdir", default="/tmp/ssl_crops_bench")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    index = generate(workdir, a.images, a.boxes_per_image, a.classes, seed=0)
    print(f"generated {len(index):,} images / {index.num_boxes:,} boxes in {time.perf_counter() - t:.1f} s "
          f"(index arrays: {index.nbytes / 2**20:.1f} MiB, npz file: {(workdir / 'index.npz').stat().st_size / 2**20:.1f} MiB)")
    del index
    rows = []
    for label, kind, name in (("BoxIndex.load (.npz)", "npz", "index.npz"),
                              ("original dict, np.load(allow_pickle)", "npy", "images_selected_with_all_features.npy"),
                              ("original dict, load_npy_dict (restricted)", "npy-safe", "images_selected_with_all_features.npy")):
        runs = [measure(kind, workdir / name) for _ in range(a.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        rows.append((label, best["seconds"], max(r["rss_mb"] for r in runs), best["boxes"]))
    print(f"\n{'loader':<44} {'load s (best of ' + str(a.repeats) + ')':>20} {'RSS growth MB':>14} {'boxes':>11}")
    for label, s, mb, boxes in rows:
        print(f"{label:<44} {s:>20.3f} {mb:>14.1f} {boxes:>11,}")
    ours, base = rows[0], rows[1]
    print(f"\nratio vs original pickled dict: load time x{base[1] / ours[1]:.1f} faster, memory x{base[2] / max(ours[2], 1e-9):.1f} smaller")
    print(f"targets: load < 2 s: {'PASS' if ours[1] < 2 else 'FAIL'} ({ours[1]:.3f} s); "
          f"memory < 150 MB: {'PASS' if ours[2] < 150 else 'FAIL'} ({ours[2]:.1f} MB)")


if __name__ == "__main__":
    main()
