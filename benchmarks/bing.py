"""BING proposals on real photos: ours (2-fold fitted) against OpenCV contrib's ObjectnessBING.

    python benchmarks/bing.py DATA [--opencv-model DIR] [--repeats 7] [--scenes 100] [--rescore-top N]
                                   [--split alternate|halves|random] [--seed S]

``DATA`` is a folder with ``images/`` and a COCO ``instances.json`` (e.g. coco128-train).
Headline: 2-fold on the photos (fit on one half, score the other, both ways; the halves
alternate by file name, ``--split`` for others), working size
640 px (long side); detection rate at 1/10/100/1000 proposals for IoU 0.5 and 0.7; ms per
image on one thread (numpy/OpenCV pinned to 1 thread, decoding excluded). OpenCV contrib
(``opencv-contrib-python-headless``, whose ``cv2`` clashes with ours) runs in a venv that
this script makes (``--venv``, reused when present) and is called in a subprocess; its VOC
model comes from ``--opencv-model``. Timings of ours and OpenCV's alternate ``--repeats``
times in the same run, medians reported. Also: the photos upscaled 2x (same model, boxes
scaled), the same models without edge snapping, a 4000x3000 vs a 640x480 photo, and
generated scenes as a secondary line.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's BLAS: one thread
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "shared" / "opencv_bing_model"
DEFAULT_VENV = Path.home() / ".cache" / "ssl_crops" / "opencv-contrib-venv"
KS = (1, 10, 100, 1000)
SPLITS = ("alternate", "halves", "random")


# --------------------------------------------------------------------------- OpenCV contrib side
def opencv_worker(model_dir: str) -> None:
    """Runs inside the contrib venv: reads JSON requests on stdin, answers on stdout.

    ``{"paths": [...]}`` loads images (BGR); ``{"op": "boxes"}`` returns no timing but writes
    every image's boxes (xyxy, its own order) to ``{"out": file}``; ``{"op": "time"}`` returns
    per-image ms. OpenCV prints per call: its stdout/stderr go to /dev/null.
    """
    import cv2
    cv2.setNumThreads(1)
    reply = os.fdopen(os.dup(1), "w")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1), os.dup2(null, 2)
    bing = cv2.saliency.ObjectnessBING_create()
    bing.setTrainingPath(model_dir)
    bing.setBBResDir(tempfile.mkdtemp())            # it writes a result file per call
    images = []
    for line in sys.stdin:
        req = json.loads(line)
        if "paths" in req:
            images = [cv2.imread(p, cv2.IMREAD_COLOR) for p in req["paths"]]
            out = {"n": len(images)}
        elif req["op"] == "boxes":
            boxes = []
            for img in images:
                ok, b = bing.computeSaliency(img)
                boxes.append(np.asarray(b, np.float32).reshape(-1, 4) - np.array([1, 1, 0, 0], np.float32))
            np.savez(req["out"], *boxes)                 # 1-based corners -> xyxy
            out = {"n": len(boxes)}
        else:
            bing.computeSaliency(images[0])
            ms = []
            for img in images:
                t = time.perf_counter()
                bing.computeSaliency(img)
                ms.append(1000 * (time.perf_counter() - t))
            out = {"ms": ms}
        reply.write(json.dumps(out) + "\n")
        reply.flush()


class OpenCVContrib:
    """ObjectnessBING in a subprocess of the contrib venv."""

    def __init__(self, venv: Path, model_dir: Path):
        python = venv / "bin" / "python"
        if not python.exists():
            print(f"making {venv} with opencv-contrib-python-headless ...", flush=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "opencv-contrib-python-headless", "numpy"],
                           check=True)
        self.proc = subprocess.Popen([str(python), __file__, "--opencv-worker", str(model_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.version = subprocess.run([str(python), "-c", "import cv2; print(cv2.__version__)"],
                                      capture_output=True, text=True).stdout.strip()

    def ask(self, **req) -> dict:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("OpenCV contrib worker died")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# --------------------------------------------------------------------------- ours
def load_coco(root: Path):
    """``(paths, pixel xyxy boxes)`` of the images of ``root/instances.json`` (sorted by file)."""
    js = json.loads((root / "instances.json").read_text())
    boxes = {im["id"]: [] for im in js["images"]}
    for a in js["annotations"]:
        if not a.get("iscrowd", 0):
            x, y, w, h = a["bbox"]
            boxes[a["image_id"]].append([x, y, x + w, y + h])
    ims = sorted(js["images"], key=lambda im: im["file_name"])
    return ([root / "images" / im["file_name"] for im in ims],
            [np.array(boxes[im["id"]], np.float32).reshape(-1, 4) for im in ims])


def halves(n: int, split: str, seed: int) -> list:
    """The two folds of ``n`` photos (sorted by file): ``alternate`` (even / odd positions, the
    headline), ``halves`` (first / second half) or ``random`` (a permutation drawn with ``seed``)."""
    if split == "alternate":
        return [np.arange(0, n, 2), np.arange(1, n, 2)]
    order = np.arange(n) if split == "halves" else np.random.default_rng(seed).permutation(n)
    return [np.sort(h) for h in np.array_split(order, 2)]


def time_ours(models, folds, images):
    """Per-image ms of ``models[f].propose`` over the images of fold ``f`` (warm-up first)."""
    ms = []
    for model, test in zip(models, folds):
        model.propose(images[test[0]])
        for i in test:
            t = time.perf_counter()
            model.propose(images[i], 1000)
            ms.append(1000 * (time.perf_counter() - t))
    return ms


def paired_median_ms(fn, a, b, n=15):
    """Median ms of ``fn(a)`` and of ``fn(b)``, calls alternating (a shared machine drifts)."""
    fn(a), fn(b)
    ta, tb = [], []
    for _ in range(n):
        for img, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            fn(img)
            out.append(1000 * (time.perf_counter() - t))
    return float(np.median(ta)), float(np.median(tb))


def row(name, result, ms=None):
    dr = result["detection_rate"]
    cells = "".join(f"{v:7.3f}" for v in dr[0.5]) + " |" + "".join(f"{v:7.3f}" for v in dr[0.7])
    return f"{name:<34}{cells} | " + (f"{ms:7.1f}" if ms is not None else "      -")


def header():
    ks = "".join(f"{'@' + str(k):>7}" for k in KS)
    return f"{'':<34}{ks} |{ks} | ms/img\n{'DR at IoU:':<34}{'0.5':>7}{'':>21} |{'0.7':>7}{'':>21} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path, help="folder with images/ and instances.json (COCO)")
    ap.add_argument("--opencv-model", type=Path, default=DEFAULT_MODEL, help="OpenCV contrib's BING model folder")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="venv for opencv-contrib (made if missing)")
    ap.add_argument("--no-opencv", action="store_true", help="skip OpenCV contrib")
    ap.add_argument("--max-side", type=int, default=640, help="working size (long side)")
    ap.add_argument("--repeats", type=int, default=7, help="interleaved timing rounds")
    ap.add_argument("--scenes", type=int, default=100, help="generated scenes to fit on (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rescore-top", type=int, default=None, help="stage-III candidates (default: Bing.fit's)")
    ap.add_argument("--split", choices=SPLITS, default="alternate",
                    help="the two halves: photos (sorted by file) alternating, first/second half, or random (--seed)")
    args = ap.parse_args()

    import cv2

    from ssl_crops.proposals import Bing, evaluate_proposals
    from ssl_crops.proposals.bing import read_image
    cv2.setNumThreads(1)

    paths, gts = load_coco(args.data)
    images = [read_image(p) for p in paths]
    folds = halves(len(paths), args.split, args.seed)
    print(f"{len(paths)} photos, {sum(map(len, gts))} boxes; 2-fold ({args.split}; fit on {len(folds[0])}/"
          f"{len(folds[1])}, score the other); working size {args.max_side} px; one thread; the machine may be shared")
    t = time.perf_counter()
    top = {} if args.rescore_top is None else {"rescore_top": args.rescore_top}
    models = [Bing.fit([images[i] for i in fit], [gts[i] for i in fit], seed=args.seed, max_side=args.max_side, **top)
              for fit in folds]
    print(f"fit: {models[0]} / {len(models[1].sizes)} sizes, {(time.perf_counter() - t) / 2:.1f} s per fold")
    tests = [folds[1], folds[0]]
    order = np.concatenate(tests)
    props = [models[f].propose(images[i], 1000) for f, test in enumerate(tests) for i in test]
    ours = evaluate_proposals(props, [gts[i] for i in order], ks=KS)

    contrib = None
    if not args.no_opencv and not (args.opencv_model / "ObjNessB2W8MAXBGR.wS1.yml.gz").exists():
        print(f"no OpenCV model in {args.opencv_model}: OpenCV contrib skipped (--opencv-model)")
    elif not args.no_opencv:
        try:
            contrib = OpenCVContrib(args.venv, args.opencv_model)
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"error: cannot set up opencv-contrib in {args.venv} ({e}); "
                             "pass --no-opencv to skip it") from e
    if contrib is not None:
        contrib.ask(paths=[str(paths[i]) for i in order])
        with tempfile.TemporaryDirectory() as d:
            contrib.ask(op="boxes", out=f"{d}/boxes.npz")
            with np.load(f"{d}/boxes.npz") as z:
                cv_props = [z[f"arr_{k}"][:1000] for k in range(len(order))]
        theirs = evaluate_proposals(cv_props, [gts[i] for i in order], ks=KS)
    voc = (Bing.from_opencv(args.opencv_model, max_side=args.max_side)
           if (args.opencv_model / "ObjNessB2W8MAXBGR.wS1.yml.gz").exists() else None)

    ours_ms, cv_ms, ratios = [], [], []              # interleaved rounds
    for _ in range(args.repeats):
        a = float(np.mean(time_ours(models, tests, images)))
        ours_ms.append(a)
        if contrib is not None:
            b = float(np.mean(contrib.ask(op="time")["ms"]))
            cv_ms.append(b)
            ratios.append(b / a)
    print("\n" + header())
    print(row("ours (fitted, held-out half)", ours, float(np.median(ours_ms))))
    if contrib is not None:
        print(row(f"OpenCV contrib {contrib.version} (VOC)", theirs, float(np.median(cv_ms))))
        contrib.close()
    for m in models:                                 # the same models without edge snapping
        m.snap, snap = None, m.snap
    plain = [models[f].propose(images[i], 1000) for f, test in enumerate(tests) for i in test]
    for m in models:
        m.snap = snap
    print(row("ours without edge snapping", evaluate_proposals(plain, [gts[i] for i in order], ks=KS)))
    if voc is not None:
        vp = [voc.propose(images[i], 1000) for i in order]
        print(row("ours with OpenCV's VOC model", evaluate_proposals(vp, [gts[i] for i in order], ks=KS)))
    if ratios:
        print(f"speed: OpenCV contrib / ours = {np.median(ratios):.1f}x (median of {len(ratios)} interleaved "
              f"rounds: {', '.join(f'{r:.1f}' for r in ratios)}); ours {', '.join(f'{m:.1f}' for m in ours_ms)} ms")

    # robustness: photos upscaled 2x, and a 4000x3000 photo against 640x480
    up = [models[f].propose(cv2.resize(images[i], None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR), 1000)
          for f, test in enumerate(tests) for i in test]
    print(row("ours, photos upscaled 2x", evaluate_proposals(up, [gts[i] * 2 for i in order], ks=KS)))
    photo = images[order[0]]
    small = cv2.resize(photo, (640, 480), interpolation=cv2.INTER_AREA)
    big = cv2.resize(photo, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    ms_small, ms_big = paired_median_ms(lambda im: models[0].propose(im, 1000), small, big)
    print(f"one photo, median of 15 alternating calls: 640x480 {ms_small:.1f} ms, "
          f"4000x3000 {ms_big:.1f} ms ({ms_big / ms_small:.2f}x)")

    if args.scenes:
        from ssl_crops.demo import synthetic_scenes
        train = synthetic_scenes(args.scenes, 640, 480, seed=args.seed)
        test = synthetic_scenes(max(args.scenes // 4, 1), 640, 480, seed=args.seed + 1)
        scene_model = Bing.fit([im for im, _ in train], [b for _, b in train], seed=args.seed)
        sp = [scene_model.propose(im, 1000) for im, _ in test]
        print(row(f"secondary: generated scenes ({len(train)}/{len(test)})",
                  evaluate_proposals(sp, [b for _, b in test], ks=KS)))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--opencv-worker":
        opencv_worker(sys.argv[2])
    else:
        main()
