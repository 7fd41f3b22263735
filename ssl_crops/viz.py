"""Pictures for looking at what the method does: the crops, the training curves, per-class AP.

    python -m ssl_crops.viz crops --index DATA/index.npz --images DATA/images --out crops.png
    python -m ssl_crops.viz log checkpoints/run1/log.jsonl --out curves.png
    python -m ssl_crops.viz per-class linear_eval_out/report.json --out per_class_ap.png

matplotlib is an optional extra (``pip install 'ssl-crops[viz]'``); only this module imports it.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .boxes import BoxIndex
from .cli import user_errors
from .files import atomic_write
from .images import load_image
from .sources import AnnotationSpec, load_index
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ObjectAwareCrop

__all__ = ["crops_figure", "log_figure", "per_class_ap_figure", "read_log", "open_index", "main"]

INSTALL_HINT = "matplotlib is needed for pictures: pip install 'ssl-crops[viz]' (or pip install matplotlib)"
COLOURS = {"box": "#ffffff", "tight": "#ffd400", "context": "#ff7f0e", "q": "#00e5ff", "k": "#ff2bd6"}


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display needed)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        fig.savefig(f, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    _pyplot().close(fig)
    return path


# --------------------------------------------------------------------------- crops
def open_index(spec) -> BoxIndex:
    """A ``BoxIndex`` from a saved ``.npz``, a COCO json, an OpenImages-subset labels dict
    (``.npy``, boxes dict beside it) or a folder (what :func:`ssl_crops.sources.load_index`
    finds there)."""
    return load_index(AnnotationSpec.from_path(spec))


def _display(view) -> np.ndarray:
    """An augmented view (normalized float tensor, uint8 tensor or PIL image) as an HxWx3 array in [0, 1]."""
    if isinstance(view, torch.Tensor):
        x = view.detach().cpu()
        if x.is_floating_point():
            x = x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        else:
            x = x.float() / 255
        return x.clamp(0, 1).permute(1, 2, 0).numpy()
    return np.asarray(view.convert("RGB"), np.float32) / 255


def _rect(ax, region, colour, style="-", width=1.5, label=None):
    from matplotlib.patches import Rectangle
    x0, y0, x1, y1 = region
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linestyle=style,
                           linewidth=width, label=label))


def crops_figure(index: BoxIndex, images_root, out, crop: ObjectAwareCrop, n: int = 8, seed: int = 0,
                 images=None, dpi: int = 110) -> Path:
    """One row per image: the image with all its boxes (white), the chosen box's tight (yellow)
    and context (orange, dashed) regions, the two sampled view rectangles (query cyan, key
    magenta), and the two augmented views beside it. ``images`` (indices) default to ``n``
    images drawn with ``seed``, preferring images with boxes. Writes ``out``."""
    plt = _pyplot()
    rng = np.random.default_rng(seed)
    if images is None:
        boxed = np.flatnonzero(index.num_boxes_per_image() > 0)
        pool = boxed if len(boxed) >= n or len(boxed) == len(index) else np.arange(len(index))
        images = np.sort(rng.choice(pool, size=min(n, len(pool)), replace=False))
    images = [int(i) for i in images]
    if not images:
        raise ValueError("no images to draw (empty index)")
    fig, axes = plt.subplots(len(images), 3, figsize=(9, 3 * len(images)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.6, 1, 1]})
    for row, i in enumerate(images):
        img = load_image(Path(images_root) / index.path(i))
        w, h = img.size
        boxes = index.boxes(i)
        g = torch.Generator().manual_seed(seed * 100003 + i)
        chosen = None
        if crop.mode != "scene" and len(boxes):
            chosen = boxes[int(torch.randint(len(boxes), (1,), generator=g))][None]
        regions = crop.sample_regions(w, h, chosen, g)
        torch.manual_seed(seed * 100003 + i)  # the augmentation draws from torch's global RNG
        views = crop.transform(img, {"regions": regions})
        ax = axes[row, 0]
        ax.imshow(img)
        names = index.classes
        for box, label in zip(boxes, index.box_labels(i)):
            px = box * np.array([w, h, w, h])
            _rect(ax, px, COLOURS["box"], width=0.8)
            ax.text(px[0], px[1], names[label], color="black", fontsize=6, va="bottom",
                    bbox={"facecolor": "white", "alpha": 0.6, "pad": 0.5, "linewidth": 0})
        if chosen is not None:
            tight, context = crop.object_regions(w, h, chosen)
            _rect(ax, tight, COLOURS["tight"], width=2, label="tight region")
            _rect(ax, context, COLOURS["context"], "--", width=2, label="context region")
        _rect(ax, regions[0], COLOURS["q"], width=2, label="view q")
        _rect(ax, regions[1], COLOURS["k"], width=2, label="view k")
        ax.set_title(f"{index.image_id(i)} ({w}x{h}, {len(boxes)} boxes)", fontsize=8)
        if row == 0:
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, 1.35), ncol=4, fontsize=7, frameon=False)
        for col, (view, key) in enumerate(zip(views, ("q", "k")), start=1):
            axes[row, col].imshow(_display(view))
            axes[row, col].set_title(f"view {key}", fontsize=8, color=COLOURS[key])
            for spine in axes[row, col].spines.values():
                spine.set_edgecolor(COLOURS[key]), spine.set_linewidth(3)
        for ax in axes[row]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"ObjectAwareCrop({crop.extra_repr()})", fontsize=8, y=1.0)
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- training log
def read_log(path) -> tuple[list[dict], list[dict]]:
    """``(step records, epoch records)`` of a ``log.jsonl``. Step records are those without
    ``"type"`` or with ``"type": "step"``; unreadable lines (a run killed mid-write) are
    skipped with a warning naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: training log not found")
    steps, epochs = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                warnings.warn(f"{path}:{n}: skipping unreadable log line ({e})")
                continue
            kind = rec.get("type", "step")
            if kind == "epoch":
                epochs.append(rec)
            elif kind == "step":
                steps.append(rec)
    if not steps and not epochs:
        raise ValueError(f"{path}: no step or epoch records")
    return steps, epochs


def _series(records, key):
    pts = [(r["step"], r[key]) for r in records if "step" in r and isinstance(r.get(key), (int, float))
           and math.isfinite(r[key])]
    return ([p[0] for p in pts], [p[1] for p in pts]) if pts else ([], [])


def log_figure(log_path, out, dpi: int = 110) -> Path:
    """Loss, learning rate, images/s and kNN metrics over steps from a ``log.jsonl``; writes ``out``."""
    plt = _pyplot()
    steps, epochs = read_log(log_path)
    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    panels = [("loss", axes[0, 0], "loss"), ("lr", axes[0, 1], "learning rate"),
              ("images_per_s", axes[1, 0], "images/s")]
    for key, ax, title in panels:
        x, y = _series(steps, key)
        if x:
            ax.plot(x, y, lw=0.8, color="tab:blue", label="steps")
        ex, ey = _series(epochs, key)
        if ex:
            ax.plot(ex, ey, "o-", ms=3, lw=1.2, color="tab:red", label="epoch")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if x or ex:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, f"no {key} records", ha="center", va="center", transform=ax.transAxes)
    ax = axes[1, 1]
    knn_keys = sorted({k for r in epochs for k in r if k.startswith("knn")})
    for key in knn_keys:
        x, y = _series(epochs, key)
        ax.plot(x, y, "o-", ms=3, label=key)
    ax.set_title("kNN monitor", fontsize=9)
    ax.set_xlabel("step", fontsize=8)
    if knn_keys:
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no kNN records\n(main_moco.py --knn-every N)", ha="center", va="center",
                transform=ax.transAxes)
    for a in axes.flat:
        a.grid(alpha=0.3), a.tick_params(labelsize=7)
    fig.suptitle(str(log_path), fontsize=8)
    fig.tight_layout()
    return _save(fig, out, dpi)


# --------------------------------------------------------------------------- per-class AP
def per_class_ap_figure(ap, class_names, train_counts, path, title: str | None = None, dpi: int = 110) -> Path:
    """Bar chart of AP per class, classes sorted by training frequency (most frequent first),
    with the training frequency on a log axis; classes without an AP are marked, as without a
    test positive or without a training image (not scored). ``ap`` in [0, 1] (NaN or None for undefined); writes ``path`` (e.g. per_class_ap.png)."""
    plt = _pyplot()
    ap = np.array([np.nan if v is None else v for v in ap], np.float64)
    counts = np.asarray(train_counts, np.float64)
    names = [str(c) for c in class_names]
    if not (len(ap) == len(counts) == len(names)):
        raise ValueError(f"per_class_ap_figure: {len(ap)} APs, {len(names)} class names, {len(counts)} counts")
    if len(ap) == 0:
        raise ValueError("per_class_ap_figure: no classes")
    order = np.argsort(-counts, kind="stable")
    ap, counts, names = ap[order], counts[order], [names[i] for i in order]
    x = np.arange(len(ap))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(ap) + 2), 4.2))
    defined = ~np.isnan(ap)
    ax.bar(x[defined], 100 * ap[defined], color="tab:blue", width=0.8, label="AP")
    for label, (missing, hatch) in _missing_ap(ap, counts).items():
        ax.bar(x[missing], np.full(missing.sum(), 100.0), color="none", edgecolor="0.6", hatch=hatch,
               width=0.8, label=label)
    if defined.any():
        ax.axhline(100 * ap[defined].mean(), color="tab:blue", ls="--", lw=1,
                   label=f"mAP {100 * ap[defined].mean():.1f}")
    ax.set_ylim(0, 100)
    ax.set_ylabel("AP (%)")
    ax.set_xlim(-0.6, len(ap) - 0.4)
    ax2 = ax.twinx()
    ax2.plot(x, np.maximum(counts, 0.5), color="tab:red", marker=".", lw=1, label="train images")
    ax2.set_yscale("log")
    ax2.set_ylabel("training images (log)", color="tab:red")
    if len(ap) <= 80:
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=90, fontsize=max(4, 8 - len(ap) // 20))
    else:
        ax.set_xlabel(f"{len(ap)} classes, most frequent first")
        ax.set_xticks([])
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=7, loc="upper right")
    ax.set_title(title or "AP per class, sorted by training frequency", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _missing_ap(ap, train_counts) -> dict:
    """``{legend label: (mask, hatch)}`` of the classes without an AP, by why they have none."""
    undefined, untrained = np.isnan(ap), np.asarray(train_counts) == 0
    groups = {"no training image (not scored)": (undefined & untrained, "xx"),
              "no test positive": (undefined & ~untrained, "//")}
    return {label: g for label, g in groups.items() if g[0].any()}


def _per_class_from_report(report_path, out) -> Path:
    """The per-class picture of a ``report.json`` of ``linear_eval.py``: AP and training images
    per class from its ``per_class_ap`` and ``per_class_train_images`` maps (reports without
    the latter: from ``per_class_ap.csv`` beside it)."""
    path = Path(report_path)
    try:
        report = json.loads(path.read_text())
        ap = report["per_class_ap"]
        counts = report.get("per_class_train_images")
        if counts is None:
            with open(path.with_name("per_class_ap.csv"), newline="") as f:
                counts = {r["class"]: int(r["train_images"]) for r in csv.DictReader(f)}
        names = list(ap)
        counts = [counts[c] for c in names]
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: report not found" if not path.is_file() else
                                f"{path}: no per-class training counts in it, and no {e.filename}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a linear_eval report.json with per-class AP ({type(e).__name__}: {e})") from e
    return per_class_ap_figure([ap[c] for c in names], names, counts, out,
                               title=f"{path}: AP per class, by training frequency")


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ssl_crops.viz", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("crops", help="images with their boxes, regions, sampled views and the augmented views")
    c.add_argument("--index", required=True,
                   help="BoxIndex .npz, COCO json, labels .npy (boxes dict beside it) or data folder")
    c.add_argument("--images", required=True, help="image folder")
    c.add_argument("--out", default="crops.png")
    c.add_argument("--mode", default="object-object", choices=["scene", "object-object", "object-scene"])
    c.add_argument("--geometry", default="original", choices=["original", "relative"])
    c.add_argument("--dilation", type=float, default=0.2)
    c.add_argument("--min-region", type=int, default=224, help="smallest region side in pixels (original: 224)")
    c.add_argument("--size", type=int, default=224, help="view size")
    c.add_argument("-n", type=int, default=8, help="number of images")
    c.add_argument("--seed", type=int, default=0)
    lg = sub.add_parser("log", help="loss, lr, images/s and kNN over steps from a run's log.jsonl")
    lg.add_argument("log", help="RUN/log.jsonl")
    lg.add_argument("--out", default="curves.png")
    pc = sub.add_parser("per-class", help="AP per class by training frequency from linear_eval's report.json")
    pc.add_argument("report", help="report.json of linear_eval.py")
    pc.add_argument("--out", default="per_class_ap.png")
    return p


def main(argv=None) -> Path:
    a = build_parser().parse_args(argv)
    try:
        _pyplot()
    except ImportError:
        sys.exit(INSTALL_HINT)
    with user_errors(FileNotFoundError, ValueError, pickle.UnpicklingError):
        if a.command == "crops":
            index = open_index(a.index)
            crop = ObjectAwareCrop(mode=a.mode, geometry=a.geometry, dilation=a.dilation, size=a.size,
                                   min_region=a.min_region)
            out = crops_figure(index, a.images, a.out, crop, n=a.n, seed=a.seed)
        elif a.command == "log":
            out = log_figure(a.log, a.out)
        else:
            out = _per_class_from_report(a.report, a.out)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
