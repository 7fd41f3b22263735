"""Generated multi-object scenes for ``benchmarks/reproduce.py`` (the method's premise at small scale).

Several small objects of different classes on gray-level clutter; 12 classes, each a shape
and a texture (6 shapes x 4 textures, neither alone names the class); long-tailed class
frequencies. Instances vary within a class: a two-colour palette per instance, texture angle
and period per instance, deformed outlines (per-vertex radial jitter, rotation, aspect), so
colour alone does not name an instance's class and two instances of a class differ in more
than colour (RESULTS.md, issue 20).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from ssl_crops.files import atomic_write

CLASSES = [("ellipse", "stripes"), ("ellipse", "checker"), ("rectangle", "spots"), ("rectangle", "stripes"),
           ("triangle", "checker"), ("triangle", "solid"), ("star", "spots"), ("star", "solid"),
           ("cross", "stripes"), ("cross", "checker"), ("ring", "spots"), ("ring", "solid")]
CLASS_NAMES = [f"{s}-{t}" for s, t in CLASSES]
TAIL_EXPONENT = 1.5
SPLITS = ("train", "val", "test", "bing_fit")


def class_weights() -> np.ndarray:
    """Draw weight of the class of rank r: (r + 1) ** -TAIL_EXPONENT, normalized."""
    w = (np.arange(len(CLASSES)) + 1.0) ** -TAIL_EXPONENT
    return w / w.sum()


# --------------------------------------------------------------------------- one instance
def _outline(rng, shape: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline (and hole) of a deformed ``shape`` in unit coordinates, before rotation."""
    def jitter(pts, amount):
        r = 1 + rng.uniform(-amount, amount, len(pts))
        return pts * r[:, None]

    t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    smooth = 1 + 0.1 * np.sin(2 * t + rng.uniform(0, 6)) + 0.06 * np.sin(3 * t + rng.uniform(0, 6))
    if shape == "ellipse":
        return circle * smooth[:, None], None
    if shape == "ring":
        return circle * smooth[:, None], circle * rng.uniform(0.35, 0.55)
    if shape == "rectangle":
        return jitter(np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), 0.15), None
    if shape == "triangle":
        return jitter(np.array([[0, -1], [1, 0.9], [-1, 0.9]], float), 0.15), None
    if shape == "star":
        a = np.linspace(-np.pi / 2, 1.5 * np.pi, 11)[:-1]
        r = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.55))
        return jitter(np.stack([r * np.cos(a), r * np.sin(a)], 1), 0.12), None
    if shape == "cross":
        h = rng.uniform(0.25, 0.4)  # half the arm width
        pts = np.array([[-h, -1], [h, -1], [h, -h], [1, -h], [1, h], [h, h], [h, 1], [-h, 1], [-h, h], [-1, h],
                        [-1, -h], [-h, -h]], float)
        return jitter(pts, 0.1), None
    raise ValueError(f"unknown shape {shape!r}")


def instance_mask(rng, shape: str, w: int, h: int) -> Image.Image:
    """A deformed, rotated ``shape`` filling a ``w x h`` mask (L mode)."""
    outer, hole = _outline(rng, shape)
    a = rng.uniform(-0.5, 0.5)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]).T
    outer = outer @ rot
    lo, scale = outer.min(0), np.array([w - 1, h - 1], float) / np.maximum(np.ptp(outer, 0), 1e-6)
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    d.polygon([tuple(p) for p in (outer - lo) * scale], fill=255)
    if hole is not None:
        d.polygon([tuple(p) for p in (hole @ rot - lo) * scale], fill=0)
    return m


def _luminance(c) -> float:
    return float(0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2])


def palette(rng) -> tuple[np.ndarray, np.ndarray]:
    """Two random colours at least 60 luminance levels apart."""
    c1 = rng.uniform(0, 255, 3)
    for _ in range(50):
        c2 = rng.uniform(0, 255, 3)
        if abs(_luminance(c1) - _luminance(c2)) >= 60:
            return c1, c2
    return c1, np.clip(c1 + (-90 if _luminance(c1) > 127 else 90), 0, 255)


def instance_texture(rng, kind: str, w: int, h: int) -> np.ndarray:
    """float ``(h, w, 3)`` texture of one instance: its palette, and for patterned kinds a
    pattern at a random angle with a period of 15-35% of the object's shorter side (>= 3 px)."""
    c1, c2 = palette(rng)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    a = rng.uniform(0, np.pi)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    period = max(3.0, min(w, h) * rng.uniform(0.15, 0.35))
    if kind == "stripes":
        second = (u % period) < period / 2
    elif kind == "checker":
        second = ((np.floor(u / (period / 2)) + np.floor(v / (period / 2))) % 2) == 0
    elif kind == "spots":
        du, dv = u % period - period / 2, v % period - period / 2
        second = du ** 2 + dv ** 2 < (period * rng.uniform(0.25, 0.38)) ** 2
    elif kind == "solid":  # one colour, shaded towards the second along a random direction
        s = (u - u.min()) / max(np.ptp(u), 1e-6)
        tex = c1 * (1 - 0.25 * s[..., None]) + c2 * 0.25 * s[..., None]
        return np.clip(tex + rng.normal(0, 6, tex.shape), 0, 255)
    else:
        raise ValueError(f"unknown texture {kind!r}")
    tex = np.where(second[..., None], c2, c1)
    return np.clip(tex + rng.normal(0, 6, tex.shape), 0, 255)


# --------------------------------------------------------------------------- scenes
def clutter(rng, size: int) -> np.ndarray:
    """Background: a smooth gray-level field with weak chroma, gray strokes and gray polygons
    that belong to no class (no per-scene colour identity: RESULTS.md)."""
    level = rng.uniform(60, 200, size=(5, 5, 1))
    grid = np.clip(level + rng.normal(0, 12, size=(5, 5, 3)), 0, 255).astype(np.uint8)
    img = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    img += rng.normal(0, 8, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(6, 13))):
        p = rng.integers(0, size, 4)
        v = int(rng.integers(0, 256))
        cv2.line(img, (int(p[0]), int(p[1])), (int(p[2]), int(p[3])), [v, v, v], int(rng.integers(1, 3)))
    for _ in range(int(rng.integers(2, 6))):  # irregular polygons
        c, r = rng.uniform(0, size, 2), size * rng.uniform(0.05, 0.12)
        t = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(5, 8))))
        pts = np.stack([c[0] + r * rng.uniform(0.5, 1.2, len(t)) * np.cos(t),
                        c[1] + r * rng.uniform(0.5, 1.2, len(t)) * np.sin(t)], 1).astype(np.int32)
        v = int(rng.integers(0, 256))
        cv2.fillPoly(img, [pts], [v, v, v])
    return img


def overlap(a, b) -> float:
    """Intersection over the smaller box."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def make_scene(rng, size: int, weights: np.ndarray, objects=(3, 6), side=(0.14, 0.26)):
    """One scene: ``(PIL RGB image, [(class, x0, y0, x1, y1), ...])`` with ``objects`` (min, max)
    objects of different classes, ``side`` (min, max) of the image side each, overlapping
    little (an object that finds no free place in 30 tries is left out)."""
    img = Image.fromarray(clutter(rng, size))
    n = int(rng.integers(objects[0], objects[1] + 1))
    classes = rng.choice(len(CLASSES), size=n, replace=False, p=weights)
    objects = []
    for c in classes:
        shape, texture = CLASSES[c]
        for _ in range(30):
            s = size * rng.uniform(*side)
            w = min(size - 1, max(6, int(s * rng.uniform(0.8, 1.25))))
            h = min(size - 1, max(6, int(s * rng.uniform(0.8, 1.25))))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(overlap((x0, y0, x0 + w, y0 + h), o[1:]) < 0.15 for o in objects):
                break
        else:
            continue
        mask = instance_mask(rng, shape, w, h)
        img.paste(Image.fromarray(instance_texture(rng, texture, w, h).astype(np.uint8)), (x0, y0), mask)
        bx0, by0, bx1, by1 = mask.getbbox()
        objects.append((int(c), x0 + bx0, y0 + by0, x0 + bx1, y0 + by1))
    return img, objects


def make_scenes(root, cfg: dict, seed: int) -> dict:
    """Write the train / val / test / BING-fit scenes of one seed (JPEG) and their COCO jsons
    under ``root``; returns the paths. Deterministic from ``seed``; reused when ``root``
    exists (written into a temporary folder and renamed, so processes sharing it are safe).
    ``cfg["objects_per_scene"]`` and ``cfg["object_side"]`` (default: issue 20's 3-6 objects
    of 14-26% of the side) go to :func:`make_scene`."""
    root = Path(root)
    paths = {"images": root / "images", **{split: root / f"coco_{split}.json" for split in SPLITS}}
    if root.is_dir():
        return paths
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    size, weights = cfg["image_size"], class_weights()
    for split in SPLITS:
        coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": name}
                                                                 for c, name in enumerate(CLASS_NAMES)]}
        for k in range(cfg[f"num_{split}"]):
            img, objects = make_scene(rng, size, weights, cfg.get("objects_per_scene", (3, 6)),
                                      cfg.get("object_side", (0.14, 0.26)))
            name = f"{split}_{k:05d}.jpg"
            img.save(tmp / "images" / name, quality=92)
            coco["images"].append({"id": k + 1, "file_name": name, "width": size, "height": size})
            for c, x0, y0, x1, y1 in objects:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k + 1,
                                            "category_id": c + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                            "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        with atomic_write(tmp / f"coco_{split}.json", "w") as f:
            json.dump(coco, f)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished the same scenes first
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
