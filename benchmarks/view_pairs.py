"""What the two views of a training pair hold, per crop policy, on photos with annotation boxes.

    PYTHONPATH=. python benchmarks/view_pairs.py --coco VAL.json --images DIR --fit-coco TRAIN.json \\
        --json OUT.json [--pairs 20] [--seed 0] [--min-region 224] [--scaled-min-region N]
    PYTHONPATH=. python benchmarks/view_pairs.py --coco ALL.json --images DIR --split --json OUT.json

BING (``ssl_crops.proposals.Bing.fit_index``) is fitted on ``--fit-coco`` and proposes on the
``--coco`` images; ``--split`` instead splits ``--coco`` into alternate halves by file name
(fit on the first, score the second). Every policy samples ``--pairs`` view pairs per scored
image with the package's own ``ObjectAwareCrop.sample_regions`` (a random box of the image per
pair, as ``ObjectCropDataset`` does); the annotation boxes are the ground truth. Per policy:

* ``object_view``: share of views where a single box covers >= 50% of the view, or >= 50% of
  the box is inside the view;
* ``no_object``: share of views no box covers >= 10% of;
* a view's dominant object: the box with the largest intersection among those covering >= 10%
  of the view. Pairs, in disjoint shares: ``same_instance`` (both views' dominant object is
  the same box), ``same_class`` (same class, another instance), ``different_class``; the rest
  have a view without a dominant object;
* ``disjoint``: share of pairs whose two views share no pixel;
* ``median_view_side`` (px of the photo, the view's shorter side), ``median_upscale``
  (``--size`` over that side: how much training magnifies the view), ``median_view_area``
  (view area over image area).

Policies: ``scene`` (MoCo-v2 RandomResizedCrop, scale 0.2-1), ``scene_object_scale`` (the
scale control: a random window of ``c`` of the image area, both views RandomResizedCrops of
scale 0.2-1 inside it, ``c`` calibrated by sampling so the median view area matches
``object_original``'s; the views stay together as object crops' do), ``object_original`` and ``object_relative``
(object-object crops of the annotation boxes, the two geometries), ``bing`` (object-object,
original geometry, on BING's top ``--topk`` proposals), ``random_boxes`` (the same, on boxes
of the sizes of BING's top proposals placed uniformly at random in the image),
``random_same_sizes`` (as ``object_original``, on boxes of each image's own annotation box
sizes placed uniformly: ``main_moco.py --random-boxes``) and ``object_scene`` (tight view of
an annotation box, scene view). Random boxes are drawn once per image. Also
``bing_precision_at_10``: the share of the top-10 proposals with IoU >= 0.5 to some
annotation box.

The object policies run twice: with ``--min-region`` (the original's 224 px, meant for
~1024 px OpenImages photos) and with ``--scaled-min-region`` (default: 224 x the median long
side / 1024). Deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_crops.boxes import BoxIndex, random_boxes_like
from ssl_crops.proposals import Bing, box_iou
from ssl_crops.transforms import ObjectAwareCrop
from ssl_crops.transforms.geometry import random_resized_crop

POLICIES = ("scene", "scene_object_scale", "object_original", "object_relative", "bing", "random_boxes",
            "random_same_sizes", "object_scene")
PAIR_KINDS = ("same_instance", "same_class", "different_class")
SCENE_SCALE = (0.2, 1.0)  # MoCo-v2's RandomResizedCrop


# --------------------------------------------------------------------------- what a view holds
def view_contents(views: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For pixel views ``(V, 4)`` and boxes ``(B, 4)`` (xyxy): ``(object_view, no_object,
    dominant)``, ``dominant`` the index of the dominant box or -1 (see the module doc)."""
    views, boxes = np.asarray(views, np.float64).reshape(-1, 4), np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        n = len(views)
        return np.zeros(n, bool), np.ones(n, bool), np.full(n, -1)
    iw = np.minimum(views[:, None, 2], boxes[None, :, 2]) - np.maximum(views[:, None, 0], boxes[None, :, 0])
    ih = np.minimum(views[:, None, 3], boxes[None, :, 3]) - np.maximum(views[:, None, 1], boxes[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    view_area = np.maximum((views[:, 2] - views[:, 0]) * (views[:, 3] - views[:, 1]), 1e-9)[:, None]
    box_area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)[None, :]
    of_view, of_box = inter / view_area, inter / box_area
    object_view = ((of_view >= 0.5) | (of_box >= 0.5)).any(1)
    present = of_view >= 0.1
    dominant = np.where(present.any(1), np.where(present, inter, -1.0).argmax(1), -1)
    return object_view, ~present.any(1), dominant


def pair_kinds(dom_q: np.ndarray, dom_k: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Disjoint pair kinds from the two views' dominant boxes (-1: none) and the box labels."""
    both = (dom_q >= 0) & (dom_k >= 0)
    same = both & (dom_q == dom_k)
    if len(labels) == 0:
        return {k: np.zeros(len(dom_q), bool) for k in PAIR_KINDS}
    lq, lk = labels[np.maximum(dom_q, 0)], labels[np.maximum(dom_k, 0)]
    return {"same_instance": same, "same_class": both & ~same & (lq == lk), "different_class": both & (lq != lk)}


# --------------------------------------------------------------------------- policies
def object_crop(mode: str, geometry: str = "original", min_region: int = 224, scale=SCENE_SCALE) -> ObjectAwareCrop:
    """The package's crop for a policy (no augmentation, fixed view order: only regions are drawn)."""
    crop = ObjectAwareCrop(mode=mode, geometry=geometry, min_region=min_region, swap=False)
    crop.scale = tuple(float(s) for s in scale)  # the scene views' RandomResizedCrop area range
    return crop


def object_scale_range(median_area: float) -> tuple[float, float]:
    """``(0.2 c, c)`` whose uniform median ``0.6 c`` is ``median_area`` (``c`` at most 1)."""
    c = min(1.0, median_area / 0.6)
    return (SCENE_SCALE[0] * c, c)


def median_area(crop, sizes: np.ndarray, boxes: list, pairs: int = 20, seed: int = 0) -> float:
    """Median view area (over the image area) of ``crop``'s views on these images."""
    regions = sample_pairs(crop, sizes, boxes, pairs, seed)
    areas = [(r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1]) / (w * h) for r, (w, h) in zip(regions, sizes)]
    return float(np.median(np.concatenate(areas).ravel()))


def matched_scene_scale(crop: ObjectAwareCrop, sizes: np.ndarray, boxes: list, pairs: int = 20,
                        seed: int = 0) -> tuple[float, float]:
    """The scale range of issue 20's (a') (independent scene views, ``reproduce.py``): its
    median view area is that of ``crop``'s views on these images (:func:`object_scale_range`)."""
    return object_scale_range(median_area(crop, sizes, boxes, pairs, seed))


def matched_window(target: float, sizes: np.ndarray, pairs: int = 20, seed: int = 0, steps: int = 3) -> float:
    """The window scale of :class:`WindowedScene` whose median view area (sampled on these
    images) is ``target``: ``target / 0.6`` corrected by sampling (views that do not fit the
    window's aspect fall back to smaller centre crops, so the median sits below 0.6 x the window)."""
    window = min(1.0, target / 0.6)
    for _ in range(steps):
        got = median_area(WindowedScene(window), sizes, [np.zeros((0, 4))] * len(sizes), pairs, seed)
        window = min(1.0, window * target / got)
    return window


class WindowedScene:
    """The scale control that keeps a pair together: a RandomResizedCrop window of
    ``window_scale`` of the image area (MoCo-v2's aspect range), and both views
    RandomResizedCrops of ``SCENE_SCALE`` inside it (as object crops' views share a box's
    region). Median view area: 0.6 x ``window_scale``. Takes ``sample_regions`` like
    ``ObjectAwareCrop`` (boxes ignored)."""

    scene_fallbacks = 0

    def __init__(self, window_scale: float):
        self.window = (float(window_scale), float(window_scale))

    def sample_regions(self, width: int, height: int, boxes=None, generator: torch.Generator | None = None):
        window = random_resized_crop((0, 0, int(width), int(height)), self.window, generator=generator)
        return (random_resized_crop(window, SCENE_SCALE, generator=generator),
                random_resized_crop(window, SCENE_SCALE, generator=generator))


def sample_pairs(crop: ObjectAwareCrop, sizes: np.ndarray, boxes: list, pairs: int, seed: int) -> list[np.ndarray]:
    """Per image, ``(pairs, 2, 4)`` pixel regions from ``crop.sample_regions`` over its normalized boxes."""
    g = torch.Generator().manual_seed(seed)
    return [np.array([crop.sample_regions(w, h, b, g) for _ in range(pairs)], np.float64).reshape(pairs, 2, 4)
            for (w, h), b in zip(sizes, boxes)]


def measure(regions: list, sizes: np.ndarray, gt: list, gt_labels: list, size: int) -> dict:
    """Shares and medians over the sampled pairs of every image (see the module doc)."""
    obj, none, kinds, sides, areas = [], [], {k: [] for k in PAIR_KINDS}, [], []
    for r, (w, h), b, lab in zip(regions, sizes, gt, gt_labels):
        views = r.reshape(-1, 4)
        o, n, dom = view_contents(views, b)
        obj.append(o), none.append(n)
        for k, v in pair_kinds(dom[0::2], dom[1::2], np.asarray(lab)).items():
            kinds[k].append(v)
        vw, vh = views[:, 2] - views[:, 0], views[:, 3] - views[:, 1]
        sides.append(np.minimum(vw, vh)), areas.append(vw * vh / (w * h))
    sides = np.concatenate(sides)
    disjoint = [shared_pixels(r[:, 0], r[:, 1]) == 0 for r in regions]
    out = {"object_view": float(np.concatenate(obj).mean()), "no_object": float(np.concatenate(none).mean()),
           "disjoint": float(np.concatenate(disjoint).mean())}
    out.update({k: float(np.concatenate(v).mean()) for k, v in kinds.items()})
    out.update(median_view_side=float(np.median(sides)), median_upscale=float(np.median(size / np.maximum(sides, 1))),
               median_view_area=float(np.median(np.concatenate(areas))))
    return out


def shared_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixels two sets of integer regions ``(N, 4)`` (exclusive ends) have in common, per row."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    return np.clip(iw, 0, None) * np.clip(ih, 0, None)


def run_policies(sizes, gt, gt_labels, bing_boxes, random_boxes, min_region: int, pairs: int, seed: int,
                 size: int) -> dict:
    """Every policy's figures at one ``min_region`` (shared sampling seed)."""
    ann = [b / np.array([w, h, w, h]) for b, (w, h) in zip(gt, sizes)]
    rng = np.random.default_rng(seed)
    same_sizes = [random_boxes_like(b, rng) for b in ann]
    crops = {"scene": (object_crop("scene"), ann),
             "object_original": (object_crop("object-object", "original", min_region), ann),
             "object_relative": (object_crop("object-object", "relative", min_region), ann),
             "bing": (object_crop("object-object", "original", min_region), bing_boxes),
             "random_boxes": (object_crop("object-object", "original", min_region), random_boxes),
             "random_same_sizes": (object_crop("object-object", "original", min_region), same_sizes),
             "object_scene": (object_crop("object-scene", "original", min_region), ann)}
    out = {}
    for name, (crop, boxes) in crops.items():
        out[name] = measure(sample_pairs(crop, sizes, boxes, pairs, seed), sizes, gt, gt_labels, size)
        out[name]["scene_fallbacks"] = crop.scene_fallbacks
    window = matched_window(out["object_original"]["median_view_area"], sizes, pairs, seed)
    crop = WindowedScene(window)
    out["scene_object_scale"] = {**measure(sample_pairs(crop, sizes, ann, pairs, seed), sizes, gt, gt_labels, size),
                                 "window_scale": window, "scene_fallbacks": 0}
    return {name: out[name] for name in POLICIES}


# --------------------------------------------------------------------------- data
def image_sizes(index: BoxIndex, root: Path) -> np.ndarray:
    out = np.zeros((len(index), 2), np.int64)
    for i in range(len(index)):
        path = root / index.path(i)
        try:
            with Image.open(path) as img:
                out[i] = img.size
        except OSError as e:
            raise SystemExit(f"error: {path}: cannot read the image ({e})") from None
    return out


def halves(index: BoxIndex) -> tuple[BoxIndex, BoxIndex]:
    """``(fit, score)``: alternate images by file name."""
    order = np.argsort([index.path(i) for i in range(len(index))], kind="stable")
    return index.subset(order[0::2]), index.subset(order[1::2])


def proposals(bing: Bing, index: BoxIndex, root: Path, sizes: np.ndarray, topk: int) -> list[np.ndarray]:
    """BING's top ``topk`` proposals of every image, pixel xyxy."""
    return [bing.propose(root / index.path(i), topk) for i in range(len(index))]


def precision_at(props: list, gt: list, k: int = 10) -> float:
    """Share of the top ``k`` proposals with IoU >= 0.5 to some box."""
    hits = [box_iou(p[:k], b).max(1) >= 0.5 if len(b) else np.zeros(len(p[:k]), bool) for p, b in zip(props, gt)]
    hits = np.concatenate(hits) if hits else np.zeros(0)
    return float(hits.mean()) if len(hits) else float("nan")


def table(policies: dict, min_region: int) -> str:
    lines = [f"| policy (min_region {min_region} px) | object view | no object | same instance | same class, "
             "other instance | different class | disjoint pairs | median view side (px) | median upscale | "
             "median view area |", "|---" * 10 + "|"]
    for name, r in policies.items():
        lines.append(f"| {name} | {r['object_view']:.1%} | {r['no_object']:.1%} | {r['same_instance']:.1%} | "
                     f"{r['same_class']:.1%} | {r['different_class']:.1%} | {r['disjoint']:.1%} | "
                     f"{r['median_view_side']:.0f} | "
                     f"{r['median_upscale']:.2f}x | {r['median_view_area']:.3f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--coco", type=Path, required=True, help="COCO json of the scored images (with --split: all)")
    p.add_argument("--images", type=Path, required=True, help="image folder of both jsons")
    p.add_argument("--fit-coco", type=Path, default=None, help="COCO json of the images BING is fitted on")
    p.add_argument("--split", action="store_true", help="fit on alternate images of --coco, score the others")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--pairs", type=int, default=20, help="view pairs per image and policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--topk", type=int, default=10, help="BING proposals per image (the paper's top 10)")
    p.add_argument("--size", type=int, default=224, help="view size the views are resized to in training")
    p.add_argument("--min-region", type=int, default=224, help="the original's min_region (px)")
    p.add_argument("--scaled-min-region", type=int, default=None,
                   help="second row set (default: min_region x median long side / 1024)")
    return p


def main(argv=None) -> dict:
    p = build_parser()
    a = p.parse_args(argv)
    if a.split == (a.fit_coco is not None):
        p.error("give --fit-coco (BING's training images) or --split, not both")
    if a.pairs < 1 or a.topk < 1 or a.size < 1 or a.min_region < 1:
        p.error("--pairs, --topk, --size and --min-region must be positive")
    t0 = time.perf_counter()
    try:
        if a.split:
            fit, scored = halves(BoxIndex.from_coco(a.coco))
        else:
            scored = BoxIndex.from_coco(a.coco)
            fit = BoxIndex.from_coco(a.fit_coco, classes=scored.classes)
    except (OSError, ValueError) as e:
        p.error(str(e))
    if len(scored) == 0 or len(fit) == 0:
        p.error(f"no images to {'score' if len(scored) == 0 else 'fit BING on'}")
    sizes = image_sizes(scored, a.images)
    image_sizes(fit, a.images)
    gt = [scored.boxes(i) * np.array([w, h, w, h]) for i, (w, h) in enumerate(sizes)]
    gt_labels = [scored.box_labels(i) for i in range(len(scored))]
    bing = Bing.fit_index(fit, a.images, range(len(fit)), seed=a.seed)
    props = proposals(bing, scored, a.images, sizes, max(a.topk, 10))
    bing_s = time.perf_counter() - t0
    rng = np.random.default_rng(a.seed)
    bing_boxes = [pr[:a.topk] / np.array([w, h, w, h], np.float32) for pr, (w, h) in zip(props, sizes)]
    bing_boxes = [np.clip(b.astype(np.float64), 0, 1) for b in bing_boxes]
    random_boxes = [random_boxes_like(b, rng) for b in bing_boxes]
    scaled = a.scaled_min_region or max(1, round(a.min_region * float(np.median(sizes.max(1))) / 1024))
    rows = {m: run_policies(sizes, gt, gt_labels, bing_boxes, random_boxes, m, a.pairs, a.seed, a.size)
            for m in (a.min_region, scaled)}
    out = {"policies": rows[a.min_region], "min_region": a.min_region,
           "policies_scaled_min_region": rows[scaled], "scaled_min_region": scaled,
           "bing_precision_at_10": precision_at(props, gt, 10),
           "images": len(scored), "boxes": scored.num_boxes, "images_without_boxes": int(sum(len(b) == 0 for b in gt)),
           "bing_fit_images": len(fit), "pairs_per_image": a.pairs, "seed": a.seed, "topk": a.topk, "size": a.size,
           "median_image_size": np.median(sizes, 0).tolist(), "bing_s": bing_s, "wall_s": time.perf_counter() - t0}
    print(f"{len(scored)} scored images ({scored.num_boxes} boxes, {out['images_without_boxes']} images without "
          f"boxes), BING fitted on {len(fit)}; {a.pairs} pairs per image, seed {a.seed}; BING precision@10 "
          f"{out['bing_precision_at_10']:.1%}; scene_object_scale window "
          f"{rows[a.min_region]['scene_object_scale']['window_scale']:.3f} / "
          f"{rows[scaled]['scene_object_scale']['window_scale']:.3f} of the image area\n")
    for m in (a.min_region, scaled):
        print(table(rows[m], m) + "\n")
    print(f"wall time {out['wall_s']:.1f} s (BING fit and proposals {bing_s:.1f} s)")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
