"""Cached linear probe vs the original MoCo linear protocol: wall time and test mAP on the same
data and backbone.

    python benchmarks/linear_eval.py                       # demo data, random-init resnet18
    python benchmarks/linear_eval.py --pretrained runs/demo/checkpoint_last.pth --epochs 100

Cached mode runs cold (empty cache: features extracted) with center crops only and with
``--train-crops N`` augmented views, then warm (cache hit); full mode runs once.
"""
import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="image folder with dicts beside it (default: make demo data in a temp dir)")
    p.add_argument("--num-train", type=int, default=400)
    p.add_argument("--num-test", type=int, default=200)
    p.add_argument("--pretrained", default="", help="checkpoint (default: random-init backbone)")
    p.add_argument("-a", "--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=100, help="epochs of the full protocol (original: 100)")
    p.add_argument("--train-crops", type=int, default=2, help="augmented views per train image (cached mode)")
    p.add_argument("-j", "--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fair on a shared machine)")
    p.add_argument("--verbose", action="store_true", help="show the output of each run")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(a.data) if a.data else make_demo(tmp / "demo", a.num_train, a.num_test) / "images"
        common = [str(data), "-a", a.arch, "--image-size", str(a.image_size), "-j", str(a.workers),
                  "--no-progress", "--device", "cpu"] + (["--pretrained", a.pretrained] if a.pretrained else [])
        runs = []
        for crops in (0, a.train_crops):
            cached = common + ["--train-crops", str(crops), "--cache-dir", str(tmp / f"cache{crops}"),
                               "--out-dir", str(tmp / f"cached{crops}")]
            runs.append(("cached, center crop, cold cache" if not crops else
                         f"cached, +{crops} aug. views, cold cache", *timed(cached, a.verbose)))
        runs.append((f"cached, +{a.train_crops} aug. views, warm cache", *timed(cached, a.verbose)))
        full, t_full = timed(common + ["--protocol", "moco", "--epochs", str(a.epochs),
                                       "--out-dir", str(tmp / "full")], a.verbose)
    r0 = runs[0][1]
    backbone = a.pretrained or f"random-init {a.arch}"
    print(f"data: {a.data or 'demo'} ({r0['num_train']} train / {r0['num_test']} test images, "
          f"{r0['num_classes']} classes), backbone: {backbone}, {a.image_size}px, CPU, {a.threads} thread(s)")
    print(f"{'mode':<40}{'wall s':>8}{'test mAP':>10}{'full/this':>11}{'mAP - full':>12}")
    for name, r, t in runs + [(f"full (moco, {a.epochs} epochs, lr 30)", full, t_full)]:
        gain = 100 * (r["map"] - full["map"])
        print(f"{name:<40}{t:>8.1f}{100 * r['map']:>10.2f}{t_full / t:>10.1f}x{gain:>+12.2f}")


if __name__ == "__main__":
    main()
