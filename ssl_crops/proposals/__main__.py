"""BING proposals command line.

    python -m ssl_crops.proposals fit --images DIR [--labels L --boxes B | --coco J | --index I] --out model.npz
    python -m ssl_crops.proposals propose --images DIR --model M --out proposals.npz [--workers N]
    python -m ssl_crops.proposals evaluate --images DIR [annotations] (--model M | --proposals P)
    python -m ssl_crops.proposals --images DIR --model M --out proposals.npz     (= propose)

``M`` is a model written by ``fit`` or a folder with OpenCV contrib's ``ObjNessB2W8MAXBGR``
files. Annotations are read with ``ssl_crops.sources.load_index`` (the OpenImages-subset dicts
are found beside ``DIR`` when not given).
"""
from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path

import numpy as np

from ..cli import user_errors
from ..sources import AnnotationSpec, add_annotation_args, load_index
from .bing import Bing, ImageReadError, ModelFileError, as_rgb, evaluate_proposals, format_table
from .cache import ProposalCache, propose_folder

COMMANDS = ("fit", "propose", "evaluate")


def _annotations(p: argparse.ArgumentParser) -> None:
    add_annotation_args(p)
    p.add_argument("--max-images", type=int, default=None, help="use the first N images with boxes")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m ssl_crops.proposals", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="train a BING model on images with boxes")
    p.add_argument("--images", required=True, help="image folder")
    _annotations(p)
    p.add_argument("--out", required=True, help="model file to write (.npz)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-positives", type=int, default=10, help="drop window sizes with fewer boxes")
    p.add_argument("--per-size", type=int, default=None, help="cap on candidates per window size (default: none)")
    p.add_argument("--max-side", type=int, default=640, help="working size: long side in px (0: the images' own)")
    p.add_argument("--color", choices=("hsv", "rgb", "gray"), default="hsv", help="colour space of the gradient")
    p.add_argument("--rescore-top", type=int, default=3000,
                   help="candidates re-scored by stage III (objectness cues) per image (0: no stage III)")
    p.add_argument("--rescore-head", type=int, default=50,
                   help="first proposals left in stage-II order by stage III (at most 100, the 5x5-maxima head)")
    p.add_argument("--snap", type=float, default=0.12,
                   help="edge snapping of proposals after the head: step as a share of the box side (0: none)")
    p = sub.add_parser("propose", help="cache proposals for a folder (parallel, resumable)")
    p.add_argument("--images", required=True, help="image folder (searched recursively)")
    p.add_argument("--model", required=True, help="model .npz or OpenCV model folder")
    p.add_argument("--out", required=True, help="cache file to write (.npz)")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--nms", type=float, default=None, help="final box NMS IoU threshold (default: none)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--chunk-size", type=int, default=32, help="images per resumable shard")
    p.add_argument("--overwrite", action="store_true", help="discard an existing cache and its shards")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (none without a terminal)")
    p = sub.add_parser("evaluate", help="detection rate and mean best overlap against boxes")
    p.add_argument("--images", required=True, help="image folder")
    _annotations(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model .npz or OpenCV model folder (proposals computed now)")
    src.add_argument("--proposals", help="cache written by propose")
    p.add_argument("--top-k", type=int, default=1000)
    p.add_argument("--nms", type=float, default=None)
    return ap


def _index(args):
    with user_errors(ValueError, pickle.UnpicklingError):  # the annotation files, named in the message
        index = load_index(AnnotationSpec.from_args(args, args.images))
        print(f"boxes: {index.describe()}", flush=True)  # names the dicts when found beside the folder
        rows = [i for i in range(len(index)) if len(index.boxes(i))]
        if not rows:
            raise ValueError(f"no boxes found for the images in {args.images} (give --labels/--boxes/--coco)")
    return index, rows[:args.max_images]


def _load_model(path, nms=None) -> Bing:
    model = Bing.load(path)
    model.nms_iou = nms
    return model


def _pixel_boxes(index, i, size) -> np.ndarray:
    w, h = size
    return index.boxes(i) * np.array([w, h, w, h], np.float32)


def _bar() -> bool:
    """Progress bars only on a terminal: a piped log gets the summary lines, not ``\\r`` redraws."""
    return sys.stderr.isatty()


def cmd_fit(args) -> None:
    index, rows = _index(args)
    t = time.perf_counter()
    model = Bing.fit_index(index, args.images, rows, seed=args.seed, min_positives=args.min_positives,
                           per_size=args.per_size, max_side=args.max_side or None, color=args.color,
                           rescore_top=args.rescore_top or None, rescore_head=args.rescore_head,
                           snap=args.snap or None, progress=_bar())
    model.save(args.out)
    print(f"fitted {model} on {len(rows)} images ({sum(len(index.boxes(i)) for i in rows)} boxes) in "
          f"{time.perf_counter() - t:.1f} s; sizes (w, h): {model.sizes.tolist()}; wrote {args.out}")


def cmd_propose(args) -> None:
    model = _load_model(args.model, args.nms)
    t = time.perf_counter()
    cache = propose_folder(args.images, model, args.out, top_k=args.top_k, workers=args.workers,
                           chunk_size=args.chunk_size, progress=_bar() and not args.no_progress,
                           model_name=str(Path(args.model).resolve()), overwrite=args.overwrite)
    print(f"{cache} in {args.out} ({time.perf_counter() - t:.1f} s)")


def cmd_evaluate(args) -> None:
    from tqdm import tqdm

    index, rows = _index(args)
    root = Path(args.images)
    cache = ProposalCache.load(args.proposals) if args.proposals else None
    model = None if cache else _load_model(args.model, args.nms)
    props, gts, seconds, missing = [], [], 0.0, 0
    for i in tqdm(rows, desc="evaluate", unit="img", disable=not _bar()):
        image_id = index.image_id(i)
        if cache is not None:
            if image_id not in cache:
                missing += 1
                continue
            size, p = cache.size(image_id), cache.boxes(image_id)[:args.top_k]
        else:
            img = as_rgb(root / index.path(i))
            t = time.perf_counter()
            p = model.propose(img, args.top_k)
            seconds += time.perf_counter() - t
            size = (img.shape[1], img.shape[0])
        props.append(p)
        gts.append(_pixel_boxes(index, i, size))
    if missing:
        print(f"warning: {missing} images with boxes are not in {args.proposals}", file=sys.stderr)
    print(format_table(evaluate_proposals(props, gts), Path(args.proposals or args.model).name))
    if model is not None:
        print(f"{1000 * seconds / max(len(props), 1):.1f} ms per image")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv.insert(0, "propose")     # DESIGN.md form: python -m ssl_crops.proposals --images ...
    args = _parser().parse_args(argv)
    with user_errors(ModelFileError, ImageReadError, FileNotFoundError):
        {"fit": cmd_fit, "propose": cmd_propose, "evaluate": cmd_evaluate}[args.command](args)


if __name__ == "__main__":
    main()
