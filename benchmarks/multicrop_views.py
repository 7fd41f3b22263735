"""What multi-crop views hold on photos with annotation boxes: DINO's scene multi-crop vs ours.

    PYTHONPATH=. python benchmarks/multicrop_views.py DATA --coco JSON [--samples 20] [--seed 0]
        [--min-region 140 60] [--num-locals 8] [--json OUT.json]

Every policy samples ``--samples`` multi-crops per image with
``ObjectAwareMultiCrop.sample_regions`` (2 globals at scale 0.4-1, ``--num-locals`` locals at
0.05-0.4: ``main_dino.py``'s defaults). Per view kind: ``no_object``, the share of views no box
covers >= 10% of; ``same_instance``, the share of (global, local) pairs of one multi-crop whose
dominant objects (``view_pairs.view_contents``: the box with the largest intersection among
those covering >= 10% of the view) are the same box; ``median_side`` (px). Policies:
``dino_scene`` (every view a RandomResizedCrop of the scene, DINO's ``DataAugmentationDINO``),
``object_object`` (the default: globals in a box's context region, locals in its tight region,
one box per image), ``object_scene`` (scene globals, tight locals), ``object_each`` (as
object_object, a box drawn per view). ``--min-region G L``: the least side of the global and
the local views' object regions (the transform's default 224 96 on ~1024 px photos; 140 60 on
640 px COCO photos). Deterministic given ``--seed``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from ssl_crops.boxes import BoxIndex
from ssl_crops.transforms import ObjectAwareMultiCrop

_spec = importlib.util.spec_from_file_location("view_pairs", Path(__file__).with_name("view_pairs.py"))
view_pairs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(view_pairs)

POLICIES = {"dino_scene": dict(global_from="scene", local_from="scene"),
            "object_object": dict(global_from="context", local_from="tight"),
            "object_scene": dict(global_from="scene", local_from="tight"),
            "object_each": dict(global_from="context", local_from="tight", boxes="each")}


def measure(crop: ObjectAwareMultiCrop, sizes, gt, boxes, samples: int, seed: int) -> dict:
    """Shares over ``samples`` multi-crops of every image (see the module doc)."""
    g = torch.Generator().manual_seed(seed)
    n_g = crop.num_globals
    none = {"global": [], "local": []}
    same, sides = [], {"global": [], "local": []}
    for (w, h), b_px, b in zip(sizes, gt, boxes):
        for _ in range(samples):
            views = np.array(crop.sample_regions(w, h, b, g), np.float64)
            _, empty, dom = view_pairs.view_contents(views, b_px)
            for kind, part in (("global", slice(0, n_g)), ("local", slice(n_g, None))):
                none[kind].append(empty[part])
                v = views[part]
                sides[kind].append(np.minimum(v[:, 2] - v[:, 0], v[:, 3] - v[:, 1]))
            dg, dl = dom[:n_g, None], dom[None, n_g:]
            same.append(((dg >= 0) & (dg == dl)).ravel())
    out = {f"{k}_no_object": float(np.concatenate(v).mean()) for k, v in none.items()}
    out.update({f"{k}_median_side": float(np.median(np.concatenate(v))) for k, v in sides.items()})
    out["same_instance"] = float(np.concatenate(same).mean())
    out["scene_fallbacks"] = crop.scene_fallbacks
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="image folder")
    p.add_argument("--coco", type=Path, required=True, help="COCO json of the images")
    p.add_argument("--samples", type=int, default=20, help="multi-crops per image and policy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-region", type=int, nargs=2, default=(140, 60), metavar=("GLOBAL", "LOCAL"),
                   help="min_region of the global and local views' regions (px; 224 96 on ~1024 px photos)")
    p.add_argument("--num-locals", type=int, default=8)
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    a = p.parse_args(argv)
    if a.samples < 1 or min(a.min_region) < 1 or a.num_locals < 1:
        p.error("--samples, --min-region and --num-locals must be positive")
    try:
        index = BoxIndex.from_coco(a.coco)
    except (OSError, ValueError) as e:
        p.error(str(e))
    sizes = view_pairs.image_sizes(index, a.data)
    boxes = [index.boxes(i) for i in range(len(index))]
    gt = [b * np.array([w, h, w, h]) for b, (w, h) in zip(boxes, sizes)]
    out = {"images": len(index), "boxes": index.num_boxes, "min_region": list(a.min_region), "policies": {}}
    for name, kw in POLICIES.items():
        crop = ObjectAwareMultiCrop(num_locals=a.num_locals, min_region=tuple(a.min_region), augment=lambda v: v, **kw)
        out["policies"][name] = measure(crop, sizes, gt, boxes, a.samples, a.seed)
    print(f"{out['images']} images, {out['boxes']} boxes, min_region {a.min_region[0]} / {a.min_region[1]} px, {a.samples} multi-crops "
          f"(2 globals + {a.num_locals} locals) per image and policy")
    print("| policy | global views, no object | local views, no object | (global, local) pairs, same instance | "
          "median side global / local (px) |\n|---|---|---|---|---|")
    for name, r in out["policies"].items():
        print(f"| {name} | {r['global_no_object']:.1%} | {r['local_no_object']:.1%} | {r['same_instance']:.1%} | "
              f"{r['global_median_side']:.0f} / {r['local_median_side']:.0f} |")
    if a.json:
        a.json.write_text(json.dumps(out, indent=1, allow_nan=False))
    return out


if __name__ == "__main__":
    main()
