"""A small, deterministic multi-object dataset in the OpenImages-subset form.

``python -m ssl_crops.demo DIR`` writes JPEG scenes (a few hundred pixels, 2-8 objects of
8 classes on textured backgrounds) and the same annotations three ways: the two pickled
``.npy`` dicts of the original code, a held-out test dict, and COCO json.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .boxes import BoxIndex
from .files import atomic_write, json_text
from .formats import SUBSET_FILES

__all__ = ["make_demo", "synthetic_scenes", "random_index", "DEMO_FILES", "DEMO_CLASSES"]

DEMO_FILES = SUBSET_FILES  # the demo writes the OpenImages-subset layout

# class id -> (shape, base RGB colour, texture)
DEMO_CLASSES = {
    "circle": ("ellipse", (215, 50, 45), "spots"),
    "square": ("rectangle", (40, 90, 210), "stripes"),
    "triangle": ("triangle", (40, 170, 70), "checker"),
    "star": ("star", (235, 200, 40), "solid"),
    "ring": ("ring", (150, 60, 190), "solid"),
    "cross": ("cross", (30, 190, 200), "stripes"),
    "diamond": ("diamond", (240, 130, 30), "checker"),
    "blob": ("blob", (235, 235, 235), "spots"),
}
_OI_SOURCE = "demo"


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency colour noise plus a faint oriented pattern."""
    grid = rng.uniform(40, 200, size=(4 + rng.integers(4), 4 + rng.integers(4), 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(grid).resize((w, h), Image.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    pattern = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    base += rng.uniform(5, 25) * pattern[..., None]
    base += rng.normal(0, 6, size=base.shape)
    return np.clip(base, 0, 255)


def _texture(rng: np.random.Generator, kind: str, colour, w: int, h: int) -> np.ndarray:
    col = np.clip(np.array(colour, np.float32) + rng.normal(0, 18, 3), 0, 255)
    tex = np.broadcast_to(col, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    cell = max(3, int(min(w, h) * rng.uniform(0.08, 0.16)))
    if kind == "stripes":
        tex[((xx + yy) // cell) % 2 == 0] *= 0.55
    elif kind == "checker":
        tex[((xx // cell) + (yy // cell)) % 2 == 0] *= 0.5
    elif kind == "spots":
        tex[((xx % cell) - cell / 2) ** 2 + ((yy % cell) - cell / 2) ** 2 < (cell / 3.5) ** 2] *= 0.45
    shade = 0.8 + 0.4 * (yy / max(h - 1, 1))[..., None]  # simple lighting
    return np.clip(tex * shade + rng.normal(0, 5, tex.shape), 0, 255)


def _mask(rng: np.random.Generator, shape: str, w: int, h: int) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if shape == "ellipse":
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif shape == "rectangle":
        d.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif shape == "triangle":
        d.polygon([(w / 2, 0), (w - 1, h - 1), (0, h - 1)], fill=255)
    elif shape == "diamond":
        d.polygon([(w / 2, 0), (w - 1, h / 2), (w / 2, h - 1), (0, h / 2)], fill=255)
    elif shape == "star":
        t = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        d.polygon(list(zip(w / 2 + r * np.cos(t) * (w - 1) / 2, h / 2 + r * np.sin(t) * (h - 1) / 2)), fill=255)
    elif shape == "ring":
        d.ellipse([0, 0, w - 1, h - 1], fill=255)
        d.ellipse([w * 0.3, h * 0.3, w * 0.7, h * 0.7], fill=0)
    elif shape == "cross":
        d.rectangle([w * 0.35, 0, w * 0.65, h - 1], fill=255)
        d.rectangle([0, h * 0.35, w - 1, h * 0.65], fill=255)
    else:  # blob: a smooth random closed curve
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        r = 0.75 + 0.25 * np.sin(3 * t + rng.uniform(0, 6)) * rng.uniform(0.3, 1)
        d.polygon(list(zip(w / 2 + r * np.cos(t) * (w - 1) / 2, h / 2 + r * np.sin(t) * (h - 1) / 2)), fill=255)
    return m


def _scene(rng: np.random.Generator, min_size: int, max_size: int):
    """One image and its objects as ``(class id, x0, y0, x1, y1)`` pixel boxes."""
    w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    canvas = Image.fromarray(_background(rng, w, h).astype(np.uint8))
    names = list(DEMO_CLASSES)
    classes = rng.choice(names, size=int(rng.integers(2, 5)), replace=False)
    objects = []
    for k in range(int(rng.integers(2, 9))):
        name = str(classes[k % len(classes)]) if k < len(classes) else str(rng.choice(classes))
        shape, colour, texture = DEMO_CLASSES[name]
        side = min(w, h) * rng.uniform(0.15, 0.45)
        ow = max(12, int(side * rng.uniform(0.75, 1.33)))
        oh = max(12, int(side * rng.uniform(0.75, 1.33)))
        ow, oh = min(ow, w - 1), min(oh, h - 1)
        x0, y0 = int(rng.integers(0, w - ow)), int(rng.integers(0, h - oh))
        mask = _mask(rng, shape, ow, oh)
        tex = Image.fromarray(_texture(rng, texture, colour, ow, oh).astype(np.uint8))
        canvas.paste(tex, (x0, y0), mask.filter(ImageFilter.GaussianBlur(0.7)))
        bx0, by0, bx1, by1 = mask.getbbox()
        objects.append((name, x0 + bx0, y0 + by0, x0 + bx1, y0 + by1))
    return canvas, objects


def _oi_row(image_id: str, name: str, box, w: int, h: int, as_text: bool) -> list:
    """A row of the OpenImages box CSV: ImageID, Source, LabelName, Confidence, XMin, XMax,
    YMin, YMax, IsOccluded, IsTruncated, IsGroupOf, IsDepiction, IsInside."""
    x0, y0, x1, y1 = box
    values = [x0 / w, x1 / w, y0 / h, y1 / h]
    coords = [f"{v:.6f}" for v in values] if as_text else [round(v, 6) for v in values]
    flags = ["0"] * 5 if as_text else [0] * 5
    return [image_id, _OI_SOURCE, name, "1" if as_text else 1, *coords, *flags]


def _coco(records, names) -> dict:
    cat_ids = {n: i + 1 for i, n in enumerate(names)}
    images, anns = [], []
    for k, (image_id, w, h, objects) in enumerate(records):
        images.append({"id": k + 1, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        for name, x0, y0, x1, y1 in objects:
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": cat_ids[name],
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    return {"images": images, "annotations": anns,
            "categories": [{"id": i, "name": n} for n, i in cat_ids.items()]}


def make_demo(root, num_train: int = 160, num_test: int = 64, seed: int = 0,
              min_size: int = 256, max_size: int = 448, quality: int = 90) -> Path:
    """Write the demo dataset into ``root`` (see ``DEMO_FILES``) and return ``root``.

    Deterministic from ``seed``. Train boxes use the ``{'data': rows}`` form with string
    coordinates (as read from the CSV); test boxes use bare lists of numeric rows, so both
    forms the original dicts come in are exercised.
    """
    root = Path(root)
    images_dir = root / DEMO_FILES["images"]
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {"train": [], "test": []}
    used = set()
    for split, count in (("train", num_train), ("test", num_test)):
        for _ in range(count):
            image_id = f"{int(rng.integers(2**62)):016x}"
            while image_id in used:
                image_id = f"{int(rng.integers(2**62)):016x}"
            used.add(image_id)
            img, objects = _scene(rng, min_size, max_size)
            with atomic_write(images_dir / f"{image_id}.jpg") as f:
                img.save(f, format="JPEG", quality=quality)
            splits[split].append((image_id, img.width, img.height, objects))

    names = sorted(DEMO_CLASSES)
    for split, labels_key, boxes_key, as_text in (("train", "labels", "boxes", True),
                                                   ("test", "test_labels", "test_boxes", False)):
        labels, boxes = {}, {}
        for image_id, w, h, objects in splits[split]:
            labels[image_id] = list(dict.fromkeys(o[0] for o in objects))
            rows = [_oi_row(image_id, o[0], o[1:], w, h, as_text) for o in objects]
            boxes[image_id] = {"data": rows} if as_text else rows
        np.save(root / DEMO_FILES[labels_key], labels, allow_pickle=True)
        np.save(root / DEMO_FILES[boxes_key], boxes, allow_pickle=True)
        with open(root / DEMO_FILES[f"coco_{split}"], "w") as f:
            f.write(json_text(_coco(splits[split], names)))
    return root


def synthetic_scenes(n: int, width: int = 640, height: int = 480, seed: int = 0,
                     objects: tuple[int, int] = (1, 6)):
    """``n`` generated scenes for tests and benchmarks: ``(uint8 RGB image, pixel xyxy boxes)``.

    Solid or striped rectangles, ellipses and triangles of many sizes and aspect ratios on a
    smooth, noisy background with thin clutter lines; objects mostly hidden by later ones
    are left out of the boxes.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        bg = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (width, height),
                        interpolation=cv2.INTER_CUBIC)
        img = cv2.add(bg, rng.integers(0, 12, bg.shape, dtype=np.uint8))
        for _ in range(rng.integers(3, 8)):      # clutter: thin lines
            p = rng.integers(0, [width, height, width, height])
            cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), _colour(rng), 1)
        boxes, owner = [], np.full((height, width), -1, np.int16)
        for k in range(rng.integers(objects[0], objects[1] + 1)):
            bw = int(np.exp(rng.uniform(np.log(16), np.log(width * 0.8))))
            bh = int(np.clip(bw * np.exp(rng.uniform(-1.0, 1.0)), 12, height * 0.9))
            x0, y0 = int(rng.integers(0, width - bw + 1)), int(rng.integers(0, height - bh + 1))
            mask = np.zeros((bh, bw), np.uint8)
            shape = rng.integers(3)
            if shape == 0:
                mask[:] = 1
            elif shape == 1:
                cv2.ellipse(mask, (bw // 2, bh // 2), (bw // 2, bh // 2), 0, 0, 360, 1, -1)
            else:
                cv2.fillPoly(mask, [np.array([[bw // 2, 0], [0, bh - 1], [bw - 1, bh - 1]], np.int32)], 1)
            paint = np.empty((bh, bw, 3), np.uint8)
            paint[:] = _colour(rng)
            if rng.random() < 0.3:               # stripes
                paint[::4] = 255 - paint[0, 0]
            m = mask > 0
            img[y0:y0 + bh, x0:x0 + bw][m] = paint[m]
            owner[y0:y0 + bh, x0:x0 + bw][m] = k
            boxes.append([x0, y0, x0 + bw, y0 + bh])
        visible = [k for k, b in enumerate(boxes) if (owner[b[1]:b[3], b[0]:b[2]] == k).mean() > 0.4]
        out.append((img, np.array([boxes[k] for k in visible], np.float32).reshape(-1, 4)))
    return out


def random_index(num_images: int, boxes_per_image: float = 12.0, num_classes: int = 208, files=None,
                 seed: int = 0) -> BoxIndex:
    """A random :class:`BoxIndex` at any scale (the OpenImages subset: 212,753 images, about 12
    boxes each, 208 classes) for benchmarks: 1-60 boxes per image (Poisson), sides of 2-20% of
    the image, Zipf-distributed labels; image ``i`` is ``files[i % len(files)]`` (default
    ``<id>.jpg``)."""
    rng = np.random.default_rng(seed)
    counts = np.clip(rng.poisson(boxes_per_image - 1, num_images) + 1, 1, 60)
    total = int(counts.sum())
    x0, y0 = rng.uniform(0, 0.8, total), rng.uniform(0, 0.8, total)
    boxes = np.stack([x0, y0, x0 + rng.uniform(0.02, 0.2, total), y0 + rng.uniform(0.02, 0.2, total)], 1)
    box_labels = rng.zipf(1.6, total) % num_classes
    offsets = np.concatenate([[0], np.cumsum(counts)])
    ids = np.array([f"{v:016x}" for v in rng.integers(0, 2**62, num_images)])
    label_lists = [np.unique(box_labels[offsets[i]:offsets[i + 1]]) for i in range(num_images)]
    files = np.char.add(ids, ".jpg") if files is None else np.asarray(files)[np.arange(num_images) % len(files)]
    return BoxIndex(ids=ids, files=files, classes=np.array([f"/m/{c:05d}" for c in range(num_classes)]),
                    label_offsets=np.concatenate([[0], np.cumsum([len(v) for v in label_lists])]),
                    label_values=np.concatenate(label_lists), box_offsets=offsets, boxes=boxes,
                    box_labels=box_labels)


def _colour(rng) -> tuple:
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m ssl_crops.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder")
    p.add_argument("--num-train", type=int, default=160)
    p.add_argument("--num-test", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    root = make_demo(a.out, a.num_train, a.num_test, a.seed)
    print(f"demo data: {a.num_train} train + {a.num_test} test images in {root.resolve()}")


if __name__ == "__main__":
    main()
