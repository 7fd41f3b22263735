"""Memory of DataLoader workers over a full-size index: total RSS and PSS of the workers at start and end.

Generates an OpenImages-subset-sized BoxIndex (212,753 images, ~2.5M boxes) whose images are a
few small generated JPEGs reused (only the index is full size), then runs 8 workers of the
trainer's dataset (ObjectCropDataset + ObjectAwareCrop, shuffled over the whole index) for a
few thousand samples. Python objects touched in forked workers get copied page by page
(copy-on-read through reference counts); flat numpy arrays do not. Target: growth <= 10%.

    PYTHONPATH=. python benchmarks/dataloader_memory.py [--workers 8] [--samples 4000]
"""
import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_crops.data import ObjectCropDataset
from ssl_crops.demo import random_index
from ssl_crops.transforms import ObjectAwareCrop


def write_images(folder, n, rng):
    names = []
    for k in range(n):
        w, h = rng.integers(240, 400, 2)
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack([x * 255 / w, y * 255 / h, rng.uniform(0, 255, (h, w))], -1).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{k:03d}.jpg", quality=90)
        names.append(f"{k:03d}.jpg")
    return names


def worker_pids():
    pid = os.getpid()
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def memory_mb(pids):
    """Total RSS and PSS (MiB) of ``pids`` from /proc/<pid>/smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += int(line.split()[1])
            elif line.startswith("Pss:"):
                pss += int(line.split()[1])
    return rss / 1024, pss / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=212_753)
    p.add_argument("--boxes-per-image", type=float, default=11.75)
    p.add_argument("--classes", type=int, default=208)
    p.add_argument("--files", type=int, default=32, help="distinct generated JPEGs the index points to")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--samples", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=96, help="view size")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores, on purpose
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = write_images(root, a.files, np.random.default_rng(0))
        t = time.perf_counter()
        index = random_index(a.images, a.boxes_per_image, a.classes, files)
        print(f"index: {len(index):,} images, {index.num_boxes:,} boxes ({index.nbytes / 2**20:.0f} MiB arrays, "
              f"{time.perf_counter() - t:.1f} s); {a.files} image files reused")
        dataset = ObjectCropDataset(root, index, ObjectAwareCrop(size=a.size))
        sampler = torch.utils.data.RandomSampler(dataset, num_samples=a.samples, generator=torch.Generator().manual_seed(0))
        loader = torch.utils.data.DataLoader(dataset, batch_size=a.batch_size, sampler=sampler, num_workers=a.workers)
        it = iter(loader)
        next(it)
        pids = worker_pids()
        time.sleep(1.0)
        start = memory_mb(pids)
        t, n = time.perf_counter(), a.batch_size
        end = start
        for batch in it:
            n += len(batch[1])
            if n + a.batch_size * (a.workers + 1) >= a.samples:  # near the end, while every worker is alive
                end = max(end, memory_mb(pids))
        print(f"{len(pids)} workers, {n:,} samples in {time.perf_counter() - t:.1f} s")
        print(f"{'':10s} {'start MiB':>10s} {'end MiB':>10s} {'growth':>8s}")
        for name, s, e in (("RSS total", start[0], end[0]), ("PSS total", start[1], end[1])):
            print(f"{name:10s} {s:10.1f} {e:10.1f} {100 * (e - s) / s:7.1f}%")
        growth = (end[1] - start[1]) / start[1]
        print(f"target: PSS growth <= 10%: {'PASS' if growth <= 0.10 else 'FAIL'} ({100 * growth:.1f}%)")


if __name__ == "__main__":
    main()
