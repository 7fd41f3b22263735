"""Object-region statistics of the crop geometries on real photos, one item per box (the original's epoch).

    PYTHONPATH=. python benchmarks/crop_geometry.py ../shared/data/coco128-train
    PYTHONPATH=. python benchmarks/crop_geometry.py path/to/instances.json --images path/to/images

The argument is a COCO json, or a folder holding one (images in ``<folder>/images`` or beside
it) or the OpenImages-subset dicts. The photos are measured at their native size and
re-encoded (into a temporary folder) at ``--long-side`` px on the long side, about the size
of the OpenImages photos the original ran on. Settings:

* ``original as it ran``: the original code's regions unclipped (PIL pads with black past the
  image edge), views placed uniformly inside them;
* ``original`` (ours, default): the same regions clipped to the image;
* ``relative``: ``dilation`` x the box size, regions grown to ``min_region`` about the centre;
* ``before issue 9``: the previous default (relative, 32 px minimum, both views on the centre).

Figures: median shorter side of the tight / context region and of the views, share of views
whose shorter side is under ``size / 2`` (upscaled more than 2x to ``size``), share of view
pairs that do not overlap, share of context views reaching past the image (black padding).
"""
import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import load_index
from ssl_crops.transforms import ObjectAwareCrop
from ssl_crops.transforms.geometry import original_regions, random_resized_crop


def open_index(path: Path, images: str | None) -> tuple[BoxIndex, Path]:
    """``(index, image folder)`` of a COCO json, a folder with one, or a folder with the dicts."""
    if path.is_dir():
        jsons = sorted(path.glob("*.json"))
        if len(jsons) > 1:
            raise SystemExit(f"{path}: several json files ({', '.join(j.name for j in jsons)}): pass one")
        if not jsons:
            root = Path(images) if images else path
            index = load_index(root)
            if index.num_boxes == 0:
                raise SystemExit(f"{path}: no boxes found (no COCO json, no OpenImages-subset dicts)")
            return index, root
        path = jsons[0]
    root = Path(images) if images else (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    return BoxIndex.from_coco(path), root


def reencode(index: BoxIndex, root: Path, out: Path, long_side: int) -> Path:
    """JPEG copies of the images scaled to ``long_side`` px on the long side (quality 90)."""
    for i in range(len(index)):
        dst = out / index.path(i)
        dst.parent.mkdir(parents=True, exist_ok=True)
        with Image.open(root / index.path(i)) as img:
            img = img.convert("RGB")
            s = long_side / max(img.size)
            img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC).save(dst, quality=90)
    return out


def sizes(index: BoxIndex, root: Path) -> np.ndarray:
    out = np.zeros((len(index), 2), np.int64)
    for i in range(len(index)):
        with Image.open(root / index.path(i)) as img:
            out[i] = img.size
    return out


def as_it_ran(width, height, box, g, dilation, min_region, tight_scale, context_scale, ratio):
    """Regions and views of the original code: unclipped regions, uniform views inside them."""
    tight, context = original_regions(width, height, box, dilation, min_region, clip=False)
    return (tight, context), (random_resized_crop(tight, tight_scale, ratio, g),
                              random_resized_crop(context, context_scale, ratio, g))


def ours(crop: ObjectAwareCrop):
    def sample(width, height, box, g, *_):
        return crop.object_regions(width, height, box), crop.sample_regions(width, height, box[None], g)
    return sample


def measure(sample, index: BoxIndex, wh: np.ndarray, draws: int, size: int, args, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    short = lambda r: min(r[2] - r[0], r[3] - r[1])  # noqa: E731
    regions, views, disjoint, padded = [], [], [], []
    for b, box in enumerate(index.flat_boxes.astype(np.float64)):
        width, height = (int(v) for v in wh[index.box_image[b]])
        for _ in range(draws):
            (tight, context), (q, k) = sample(width, height, box, g, args.dilation, args.min_region, (0.0, 1.0),
                                              (0.2, 1.0), (3 / 4, 4 / 3))
            regions.append((short(tight), short(context)))
            views.append((short(q), short(k)))
            disjoint.append(q[2] <= k[0] or k[2] <= q[0] or q[3] <= k[1] or k[3] <= q[1])
            padded.append(k[0] < 0 or k[1] < 0 or k[2] > width or k[3] > height)
    regions, views = np.array(regions), np.array(views)
    return {"tight_region": float(np.median(regions[:, 0])), "context_region": float(np.median(regions[:, 1])),
            "tight_view": float(np.median(views[:, 0])), "context_view": float(np.median(views[:, 1])),
            "tight_upscaled_2x": float(np.mean(views[:, 0] < size / 2)),
            "context_upscaled_2x": float(np.mean(views[:, 1] < size / 2)),
            "disjoint": float(np.mean(disjoint)), "padded_context": float(np.mean(padded))}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="COCO json, or a folder with one (or with the OpenImages-subset dicts)")
    p.add_argument("--images", default=None, help="image folder (default: <json folder>/images or beside the json)")
    p.add_argument("--long-side", type=int, default=1024, help="long side of the re-encoded copies")
    p.add_argument("--draws", type=int, default=20, help="view pairs drawn per box")
    p.add_argument("--size", type=int, default=224, help="view size the crops are resized to")
    p.add_argument("--dilation", type=float, default=0.2)
    p.add_argument("--min-region", type=int, default=224)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this json file")
    args = p.parse_args()

    index, root = open_index(args.data, args.images)
    kw = dict(dilation=args.dilation, min_region=args.min_region, swap=False)
    settings = {
        "original as it ran (unclipped, black padding)": as_it_ran,
        "original (ours, clipped; default)": ours(ObjectAwareCrop(geometry="original", **kw)),
        "relative": ours(ObjectAwareCrop(geometry="relative", **kw)),
        "relative, --anchor": ours(ObjectAwareCrop(geometry="relative", anchor=True, **kw)),
        "before issue 9 (relative, 32 px minimum, anchored)": ours(ObjectAwareCrop(
            geometry="relative", dilation=args.dilation, min_region=32, anchor=True, swap=False)),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"native": sizes(index, root)}
        big = reencode(index, root, Path(tmp), args.long_side)
        variants[f"{args.long_side} px long side"] = sizes(index, big)
        print(f"{len(index)} images, {index.num_boxes} boxes, {args.draws} view pairs per box; "
              f"native median size {np.median(variants['native'], 0).astype(int).tolist()} px (W, H)\n")
        print("| photos | setting | median region side, tight / context (px) | median view side, tight / context "
              f"(px) | views upscaled > 2x to {args.size} px, tight / context | disjoint view pairs | context views "
              "with black padding |")
        print("|---|---|---|---|---|---|---|")
        for variant, wh in variants.items():
            for name, sample in settings.items():
                r = measure(sample, index, wh, args.draws, args.size, args)
                results[f"{variant} / {name}"] = r
                print(f"| {variant} | {name} | {r['tight_region']:.0f} / {r['context_region']:.0f} | "
                      f"{r['tight_view']:.0f} / {r['context_view']:.0f} | {r['tight_upscaled_2x']:.0%} / "
                      f"{r['context_upscaled_2x']:.0%} | {r['disjoint']:.1%} | {r['padded_context']:.0%} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
