"""Cached linear probe vs the original MoCo linear protocol: wall time and test mAP on the same
data and backbone.

    python benchmarks/linear_eval.py                       # demo data, random-init resnet18
    python benchmarks/linear_eval.py ../shared/data/coco128-train --image-size 128   # real photos
    python benchmarks/linear_eval.py --pretrained runs/demo/checkpoint_last.pth --epochs 100

A COCO folder (``images/`` and ``instances.json``) is split into train and test halves by
image (alternating, so both halves see the same kinds of photos), each written as a COCO
json and passed as ``--coco/--test-coco``. Cached mode runs cold (empty cache: features
extracted) with center crops only and with ``--train-crops N`` augmented views, then warm
(cache hit); full mode runs once. ``--seeds`` repeats everything with other seeds (the
probe split, augmentation and head initialization change) and reports the mean gap.
"""
import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision  # noqa: F401  (imported here so that its import time is in no timing)

from ssl_crops.demo import make_demo
from ssl_crops.evaluate import main as linear_eval


def timed(argv, verbose):
    buf = io.StringIO()
    t = time.perf_counter()
    with contextlib.redirect_stdout(buf) if not verbose else contextlib.nullcontext():
        report = linear_eval(argv)
    return report, time.perf_counter() - t


def split_coco(folder: Path, out: Path) -> list[str]:
    """Write ``train.json`` / ``test.json`` halves of ``folder/instances.json`` (alternating
    images) into ``out``; returns the linear_eval arguments that read them."""
    coco = json.loads((folder / "instances.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["id"])
    args = [str(folder / "images")]
    for name, part in (("train", images[0::2]), ("test", images[1::2])):
        ids = {im["id"] for im in part}
        half = {**coco, "images": part, "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}
        (out / f"{name}.json").write_text(json.dumps(half))
        args += ["--coco" if name == "train" else "--test-coco", str(out / f"{name}.json")]
    return args


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", nargs="?", help="COCO folder (images/ + instances.json), split into train/test halves "
                                             "(default: generated demo data)")
    p.add_argument("--data", help="image folder with the OpenImages-subset dicts beside it")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--pretrained", default="", help="checkpoint (default: random-init backbone)")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100, help="epochs of the full protocol (original: 100)")
    p.add_argument("--train-crops", type=int, default=2, help="augmented views per train image (cached mode)")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1")
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fair on a shared machine)")
    p.add_argument("--verbose", action="store_true", help="show the output of each run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    results = {}  # mode -> list of (report, seconds)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.folder:
            data = split_coco(Path(a.folder), tmp)
        else:
            data = [str(Path(a.data) if a.data else make_demo(tmp / "demo", a.num_train, a.num_test) / "images")]
        for seed in range(a.seeds):
            common = data + ["-a", a.arch, "--image-size", str(a.image_size), "-j", str(a.workers), "--no-progress",
                             "--device", "cpu", "--seed", str(seed)] + \
                (["--pretrained", a.pretrained] if a.pretrained else [])
            for crops in (0, a.train_crops):
                cached = common + ["--train-crops", str(crops), "--cache-dir", str(tmp / f"cache{seed}_{crops}"),
                                   "--out-dir", str(tmp / f"cached{crops}")]
                name = "cached, center crop, cold cache" if not crops else f"cached, +{crops} aug. views, cold cache"
                results.setdefault(name, []).append(timed(cached, a.verbose))
            results.setdefault(f"cached, +{a.train_crops} aug. views, warm cache", []).append(timed(cached, a.verbose))
            full = f"full (moco, {a.epochs} epochs, lr 30)"
            results.setdefault(full, []).append(timed(common + ["--protocol", "moco", "--epochs", str(a.epochs),
                                                                "--out-dir", str(tmp / "full")], a.verbose))
    r0 = results[next(iter(results))][0][0]
    backbone = a.pretrained or f"random-init {a.arch}"
    print(f"data: {a.folder or a.data or 'demo'} ({r0['num_train']} train / {r0['num_test']} test images, "
          f"{r0['num_classes']} classes, {r0['classes_evaluated']} with a test positive), backbone: {backbone}, "
          f"{a.image_size}px, CPU, {a.threads} thread(s), {a.seeds} seed(s); means over seeds")
    print(f"{'mode':<40}{'wall s':>8}{'test mAP':>10}{'batch-mean':>12}{'full/this':>11}{'mAP - full':>12}")
    full_maps = np.array([r["map"] for r, _ in results[full]])
    t_full = np.mean([t for _, t in results[full]])
    for name, runs in results.items():
        maps = np.array([r["map"] for r, _ in runs])
        gap = 100 * (maps - full_maps)
        t = np.mean([s for _, s in runs])
        spread = f" (sd {gap.std(ddof=1):.2f})" if len(gap) > 1 and name != full else ""
        print(f"{name:<40}{t:>8.1f}{100 * maps.mean():>10.2f}{100 * np.mean([r['map_batch_mean'] for r, _ in runs]):>12.2f}"
              f"{t_full / t:>10.1f}x{gap.mean():>+12.2f}{spread}")
    best = [r["best_epoch"]["value"] for r, _ in results[full] if r.get("best_epoch")]
    if best:
        print(f"full protocol, best epoch on test, batch-mean mAP (the original's figure, comparable with the "
              f"paper only): {100 * np.mean(best):.2f}")


if __name__ == "__main__":
    main()
