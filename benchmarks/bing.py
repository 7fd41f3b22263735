"""BING proposals: speed and detection rate, ours against OpenCV contrib's ObjectnessBING.

    python benchmarks/bing.py [--train 200] [--test 50] [--opencv-model DIR]

Generated 640x480 scenes (``synthetic_scenes``): our model is fitted on training scenes and
evaluated on others; OpenCV's published VOC model is run through our implementation
(``Bing.from_opencv``) and, when ``cv2.saliency`` is importable (opencv-contrib, which
conflicts with opencv-python-headless: use a separate venv with PYTHONPATH pointing to the
repository), through OpenCV contrib itself. Everything runs on one thread; times are
per image (wall and process CPU), excluding image decoding.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's BLAS: one thread too
    os.environ.setdefault(_var, "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from ssl_crops.demo import synthetic_scenes  # noqa: E402
from ssl_crops.proposals import Bing, evaluate_proposals, format_table  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "opencv_bing_model"


@contextlib.contextmanager
def quiet():
    """Silence C-level stdout/stderr (OpenCV contrib prints per call)."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1), os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        for fd in saved + [null]:
            os.close(fd)


def timed(fn, images):
    """Proposals of every image, wall and CPU ms per image (one warm-up call first)."""
    fn(images[0])
    out, wall, cpu = [], 0.0, 0.0
    for img in images:
        t, c = time.perf_counter(), time.process_time()
        out.append(fn(img))
        wall += time.perf_counter() - t
        cpu += time.process_time() - c
    return out, 1000 * wall / len(images), 1000 * cpu / len(images)


def opencv_contrib(model_dir: Path):
    """OpenCV contrib's ObjectnessBING as a ``img -> pixel xyxy`` function (its own order)."""
    bing = cv2.saliency.ObjectnessBING_create()
    bing.setTrainingPath(str(model_dir))
    bing.setBBResDir(tempfile.mkdtemp())        # it writes a result file per call

    def propose(img):
        with quiet():
            ok, boxes = bing.computeSaliency(np.ascontiguousarray(img[:, :, ::-1]))
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        return boxes - np.array([1, 1, 0, 0], np.float32)      # 1-based corners -> xyxy
    return propose


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=200)
    ap.add_argument("--test", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top-k", type=int, default=1000)
    ap.add_argument("--opencv-model", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args()
    cv2.setNumThreads(1)
    t = time.perf_counter()
    train = synthetic_scenes(args.train, 640, 480, seed=args.seed)
    test = synthetic_scenes(args.test, 640, 480, seed=args.seed + 1)
    print(f"scenes: {len(train)} train, {len(test)} test, 640x480 "
          f"({sum(len(b) for _, b in test)} test boxes; made in {time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    ours = Bing.fit([im for im, _ in train], [b for _, b in train], seed=args.seed)
    print(f"fit: {ours} in {time.perf_counter() - t:.1f} s")

    runs = {"ours (fitted)": lambda im: ours.propose(im, args.top_k)}
    if (args.opencv_model / "ObjNessB2W8MAXBGR.wS1.yml.gz").exists():
        voc = Bing.from_opencv(args.opencv_model)
        runs["ours (OpenCV VOC model)"] = lambda im: voc.propose(im, args.top_k)
        if hasattr(cv2, "saliency"):
            contrib = opencv_contrib(args.opencv_model)
            runs["OpenCV contrib"] = lambda im: contrib(im)[:args.top_k]
        else:
            print("cv2.saliency not importable (opencv-contrib not installed): OpenCV contrib skipped")
    images, gts = [im for im, _ in test], [b for _, b in test]
    speed, cpu_speed = {}, {}
    for name, fn in runs.items():
        props, wall, cpu = timed(fn, images)
        speed[name], cpu_speed[name] = wall, cpu
        print(f"\n{name}: {wall:.1f} ms/image wall, {cpu:.1f} ms/image CPU (1 thread), "
              f"{np.mean([len(p) for p in props]):.0f} proposals/image")
        print(format_table(evaluate_proposals(props, gts), name))
    if "OpenCV contrib" in speed:
        ratio = [d["OpenCV contrib"] / d["ours (fitted)"] for d in (speed, cpu_speed)]
        print(f"\nspeed ratio OpenCV contrib / ours (fitted): {ratio[0]:.1f}x wall, {ratio[1]:.1f}x CPU")


if __name__ == "__main__":
    main()
