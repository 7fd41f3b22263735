"""BING proposals computed from pixels with ``--bing-topk K``: the top-k passed to the model (new)
against the model's full list sliced (old), and a proposal-identity check against another checkout.

    python benchmarks/bing_topk.py DATA [--model M.npz] [--top-k 10] [--repeats 5] [--compare-with DIR]

``DATA``: a folder with ``images/`` and a COCO ``instances.json`` (e.g. coco128-train). The
model: ``--model`` if it exists, else fitted on all of DATA's annotated images (seed 0, as
``--bing_crops`` fits) and saved there. One thread; images decoded once up front.

- ``proposals_for``: per repeat, every image through ``proposals_for(id, pixels)[:K]`` (old:
  the model's ``top_k`` list, then sliced) and ``proposals_for(id, pixels, top_k=K)`` (new),
  alternating; medians of the repeats' ms per image.
- dataset: ``ObjectCropDataset`` items (no boxes, so every item proposes; ``--bing-topk K``)
  with the model (new) and with a source that computes the full list and slices it (old).
- ``--compare-with DIR``: this script's ``--dump`` runs with ``PYTHONPATH=DIR`` (e.g. a
  pristine ``git worktree add /tmp/base 60ceead``) and here; ``propose(img, k,
  return_scores=True)`` for k in 10 and 1000 must give identical boxes and scores, and the new
  ``proposals_for(.., top_k=K)`` must equal the old ``proposals_for(..)[:K]``; a model fitted
  there (``--fit``, seed 0) must equal the one fitted here.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # numpy's BLAS: one thread
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

KS = (10, 1000)


def decode(paths):
    from PIL import Image
    return [np.asarray(Image.open(p).convert("RGB")) for p in paths]


def fit(data: Path, out: Path) -> None:
    """Fit on every annotated image of ``data`` (seed 0) and save to ``out``."""
    from ssl_crops.boxes import BoxIndex
    from ssl_crops.proposals import Bing
    coco = BoxIndex.from_coco(data / "instances.json")
    Bing.fit_index(coco, data / "images", range(len(coco)), seed=0).save(out)


def same_models(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return set(x.files) == set(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)


def dump(model_path: str, paths_file: str, out: str, top_k: int) -> None:
    """Proposals of every image with the code on ``sys.path`` (old or new API)."""
    import ssl_crops
    from ssl_crops.proposals import Bing
    model = Bing.load(model_path)
    arrays = {}
    images = list(enumerate(decode(Path(paths_file).read_text().split("\n"))))
    for i, img in images:
        for k in KS:
            arrays[f"boxes{k}_{i}"], arrays[f"scores{k}_{i}"] = model.propose(img, k, return_scores=True)
        arrays[f"for_{i}"] = model.proposals_for(str(i), img)[:top_k]          # the old dataset's call
    np.savez(out, **arrays)
    ms = per_image_ms(lambda x: model.proposals_for(str(x[0]), x[1])[:top_k], images, 3)
    print(f"  {Path(ssl_crops.__file__).parent}: proposals_for(..)[:{top_k}] {np.median(ms):.1f} ms/img "
          "(median of 3 passes)")


class FullList:
    """The old path: the model's whole ``top_k`` list, then sliced."""

    def __init__(self, model):
        self.model = model

    def proposals_for(self, image_id, image, top_k=None):
        return self.model.proposals_for(image_id, image)[:top_k]


def per_image_ms(fn, items, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for x in items:
            fn(x)
        times.append(1000 * (time.perf_counter() - t) / len(items))
    return times


def compare(args, model_path: Path, paths) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        listing, old, new = Path(tmp, "paths.txt"), Path(tmp, "old.npz"), Path(tmp, "new.npz")
        listing.write_text("\n".join(map(str, paths)))
        cmd = [sys.executable, __file__, "--dump", str(model_path), str(listing), str(old), str(args.top_k)]
        env = {**os.environ, "PYTHONPATH": str(Path(args.compare_with).resolve())}
        subprocess.run(cmd, env=env, check=True, cwd=tmp)                    # cwd: no local package shadows
        dump(str(model_path), str(listing), str(new), args.top_k)
        theirs, ours = Path(tmp, "theirs.npz"), Path(tmp, "ours.npz")
        subprocess.run([sys.executable, __file__, "--fit", str(args.data.resolve()), str(theirs)], env=env, check=True,
                       cwd=tmp)
        fit(args.data, ours)
        fitted_same = same_models(theirs, ours)
        from ssl_crops.proposals import Bing
        model = Bing.load(model_path)
        same = {f"propose top_k={k} {what}": 0 for k in KS for what in ("boxes", "scores")}
        same[f"proposals_for top_k={args.top_k}"] = 0
        with np.load(old) as a, np.load(new) as b:
            for i, img in enumerate(decode(paths)):
                for k in KS:
                    same[f"propose top_k={k} boxes"] += np.array_equal(a[f"boxes{k}_{i}"], b[f"boxes{k}_{i}"])
                    same[f"propose top_k={k} scores"] += np.array_equal(a[f"scores{k}_{i}"], b[f"scores{k}_{i}"])
                same[f"proposals_for top_k={args.top_k}"] += np.array_equal(
                    a[f"for_{i}"], model.proposals_for(str(i), img, top_k=args.top_k))
    print(f"identity against {args.compare_with} on {len(paths)} images:")
    print(f"  {'fitted model file (seed 0)':<32} {'identical' if fitted_same else 'DIFFERENT'}")
    for name, n in same.items():
        print(f"  {name:<32} {n}/{len(paths)} identical")
    return fitted_same and all(n == len(paths) for n in same.values())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path)
    p.add_argument("--model", type=Path, default=Path(tempfile.gettempdir()) / "bing_topk_coco.npz")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--compare-with", metavar="DIR", help="another checkout of ssl_crops (PYTHONPATH)")
    args = p.parse_args()
    args.data, args.model = args.data.resolve(), args.model.resolve()   # the --dump child runs elsewhere
    import cv2
    cv2.setNumThreads(1)
    from ssl_crops.boxes import BoxIndex
    from ssl_crops.proposals import Bing
    coco = BoxIndex.from_coco(args.data / "instances.json")
    paths = [args.data / "images" / coco.path(i) for i in range(len(coco))]
    if not args.model.exists():
        t = time.perf_counter()
        fit(args.data, args.model)
        print(f"fitted on {len(coco)} images in {time.perf_counter() - t:.0f} s -> {args.model}")
    model = Bing.load(args.model)
    print(f"{model!r}; top_k {model.top_k}, asked {args.top_k}; one thread; the machine may be shared")
    ok = compare(args, args.model, paths) if args.compare_with else True

    images = list(enumerate(decode(paths)))
    k = args.top_k
    old = lambda x: model.proposals_for(str(x[0]), x[1])[:k]          # noqa: E731
    new = lambda x: model.proposals_for(str(x[0]), x[1], top_k=k)     # noqa: E731
    t_old, t_new = [], []
    for _ in range(args.repeats):                                     # alternate, one pass each
        t_old += per_image_ms(old, images, 1)
        t_new += per_image_ms(new, images, 1)
    mo, mn = np.median(t_old), np.median(t_new)
    print(f"proposals_for, {len(images)} images x {args.repeats}: old (top {model.top_k}, sliced) {mo:.1f} ms/img, "
          f"new (top_k={k}) {mn:.1f} ms/img, speed-up {mo / mn:.2f}x")

    from ssl_crops.data import ObjectCropDataset
    from ssl_crops.transforms import ObjectAwareCrop
    folder = BoxIndex.from_folder(args.data / "images")
    crop = ObjectAwareCrop(size=96)
    sets = {name: ObjectCropDataset(args.data / "images", folder, crop, proposals=src, proposal_topk=k)
            for name, src in (("old", FullList(model)), ("new", model))}
    d_old, d_new = [], []
    items = range(len(folder))
    for _ in range(args.repeats):
        d_old += per_image_ms(sets["old"].__getitem__, items, 1)
        d_new += per_image_ms(sets["new"].__getitem__, items, 1)
    do, dn = np.median(d_old), np.median(d_new)
    print(f"ObjectCropDataset items (decode + proposals + 2 crops of 96 px), --bing-topk {k}: old {do:.1f} ms/item, "
          f"new {dn:.1f} ms/item, speed-up {do / dn:.2f}x")
    if not ok:
        sys.exit("proposals differ")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--dump":
        dump(*sys.argv[2:5], int(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--fit":
        fit(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
