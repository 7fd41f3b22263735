"""Throughput and peak memory of the OpenImages subset builder on a generated 14M-row CSV.

The CSV has the official oidv6 layout (21 columns, rows grouped by image): ~1.74M images,
600 classes with a long-tailed (Zipf-like) frequency, 1-5 distinct classes per image, so the
paper's rules keep ~200 classes and ~220k images with ~12 boxes each. It is written once
(numpy, fixed-width fields) to the temp dir and reused. The build runs in a child process
that reports its own peak RSS (``VmHWM`` of ``/proc/self/status``; unlike
``getrusage(RUSAGE_CHILDREN)`` it excludes the pages inherited from this process before
``exec``). Reference: the raw ``csv.reader`` read rate of the same file.

    python benchmarks/openimages_build.py [--rows 14000000] [--csv PATH]
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HEADER = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
          "IsDepiction,IsInside,XClick1X,XClick2X,XClick3X,XClick4X,XClick1Y,XClick2Y,XClick3Y,XClick4Y\n")
NUM_CLASSES = 600
_CHILD = ("import sys; from ssl_crops.datasets.openimages import main; rc = main(sys.argv[1:]); "
          "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].strip()); sys.exit(rc)")


def _digits(value: np.ndarray, width: int, base: int, alphabet: bytes) -> np.ndarray:
    """(n, width) uint8 characters of ``value`` in ``base`` (most significant first)."""
    table = np.frombuffer(alphabet, np.uint8)
    powers = base ** np.arange(width - 1, -1, -1, dtype=np.uint64)
    return table[(value.astype(np.uint64)[:, None] // powers) % base]


def _fixed6(x: np.ndarray) -> np.ndarray:
    """(n, 8) characters of ``x`` in [0, 1] formatted as ``%.6f``."""
    v = np.rint(np.clip(x, 0, 1) * 1e6).astype(np.int64)
    out = np.empty((len(x), 8), np.uint8)
    out[:, 0] = ord("0") + v // 1_000_000
    out[:, 1] = ord(".")
    out[:, 2:] = _digits(v % 1_000_000, 6, 10, b"0123456789")
    return out


def generate(path: Path, rows: int, seed: int = 0) -> int:
    """Write a CSV of about ``rows`` rows in the official layout; returns the row count."""
    rng = np.random.default_rng(seed)
    images = int(rows / 8.1)
    weights = 1.0 / (np.arange(NUM_CLASSES) + 20.0) ** 2.0
    weights /= weights.sum()
    labels = np.concatenate([np.frombuffer(b"/m/0", np.uint8)[None].repeat(NUM_CLASSES, 0),
                             _digits(rng.choice(36 ** 5, NUM_CLASSES, replace=False), 5, 36,
                                     b"0123456789abcdefghijklmnopqrstuvwxyz")], 1)
    order = np.argsort([bytes(r) for r in labels])  # rows sorted by label within an image
    rank = np.empty(NUM_CLASSES, np.int64)
    rank[order] = np.arange(NUM_CLASSES)
    tmp, written = path.with_name(path.name + ".tmp"), 0
    with open(tmp, "wb") as f:
        f.write(HEADER.encode())
        for start in range(0, images, 100_000):
            n = min(100_000, images - start)
            k = rng.choice(5, size=n, p=[.86, .08, .035, .017, .008]) + 1
            img = np.repeat(np.arange(start, start + n), k)
            mean = np.where(k == 1, 7.6, 4.8)  # boxes per class: single-class images hold the crowds
            cls = rng.choice(NUM_CLASSES, size=len(img), p=weights)
            pairs = np.unique(img * NUM_CLASSES + rank[cls])
            img, cls = pairs // NUM_CLASSES, order[pairs % NUM_CLASSES]
            reps = np.minimum(rng.geometric(1 / mean[img - start]), 300)
            img, cls = np.repeat(img, reps), np.repeat(cls, reps)
            m = len(img)
            line = np.full((m, 154), ord(","), np.uint8)
            ids = img.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            line[:, 0:16] = _digits(ids, 16, 16, b"0123456789abcdef")
            line[:, 17:23] = np.frombuffer(b"xclick", np.uint8)
            line[:, 24:33] = labels[cls]
            line[:, 34] = ord("1")
            x0, y0 = rng.random(m) * 0.8, rng.random(m) * 0.8
            x1, y1 = x0 + (1 - x0) * rng.uniform(0.05, 1, m), y0 + (1 - y0) * rng.uniform(0.05, 1, m)
            for j, v in enumerate((x0, x1, y0, y1)):
                line[:, 36 + 9 * j:44 + 9 * j] = _fixed6(v)
            flags = (rng.random((m, 5)) < [0.4, 0.3, 0.05, 0.05, 0.01]).astype(np.uint8)
            line[:, 72:82:2] = ord("0") + flags
            for j, (a, b) in enumerate([(x0, x1)] * 4 + [(y0, y1)] * 4):
                line[:, 82 + 9 * j:90 + 9 * j] = _fixed6(a + (b - a) * rng.random(m))
            line[:, 153] = ord("\n")
            f.write(line.tobytes())
            written += m
    os.replace(tmp, path)
    return written


def csv_read_rate(path: Path) -> tuple[int, float]:
    t = time.perf_counter()
    with open(path, newline="", buffering=1 << 20) as f:
        n = sum(1 for _ in csv.reader(f)) - 1
    return n, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=14_000_000)
    p.add_argument("--csv", type=Path, help="CSV to use (default: generated under the temp dir)")
    a = p.parse_args()
    path = a.csv or Path(tempfile.gettempdir()) / f"ssl_crops_bench_oidv6_{a.rows}.csv"
    if not path.is_file():
        t = time.perf_counter()
        generate(path, a.rows)
        print(f"generated {path} ({path.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s")
    size = path.stat().st_size
    rows, t_csv = csv_read_rate(path)
    print(f"input: {path} ({size / 1e9:.2f} GB, {rows:,} rows)")
    print(f"reference csv.reader raw read (1 pass): {t_csv:.1f} s, {rows / t_csv:,.0f} rows/s")
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _CHILD, "build", "--boxes", str(path), "--out", out,
                               "--no-progress"], capture_output=True, text=True)
        t_build = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"build failed:\n{proc.stdout}{proc.stderr}")
        sizes = {f.name: f.stat().st_size for f in Path(out).iterdir()}
    out_lines = proc.stdout.strip().splitlines()
    peak = int(out_lines.pop().split()[1]) * 1024
    print("builder output:\n  " + "\n  ".join(out_lines))
    print("files: " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sorted(sizes.items())))
    print(f"build (2 passes + writing dicts and index.npz): {t_build:.1f} s, {rows / t_build:,.0f} rows/s "
          f"({t_csv / t_build:.2f}x the raw csv.reader single-pass rate)")
    print(f"build peak RSS: {peak / 2**20:,.0f} MiB ({'under' if peak < 1.5 * 2**30 else 'OVER'} the 1.5 GiB bound)")


if __name__ == "__main__":
    main()
