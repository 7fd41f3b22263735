"""Object-aware crops against scene crops at small scale: MoCo-v2 pretraining on generated
multi-object scenes, then a linear probe and kNN on frozen features.

    PYTHONPATH=. python benchmarks/reproduce.py --preset smoke      # plumbing, <= 3 min
    PYTHONPATH=. python benchmarks/reproduce.py --preset cpu        # the CPU table, <= 60 min on 2 cores
    PYTHONPATH=. python benchmarks/reproduce.py --preset gpu        # one GPU, about an hour

Settings, all with the same budget (network, epochs, batch, queue, augmentation, split BN):
  (a) scene        MoCo-v2 random resized crops of the whole image
  (b) obj-orig     object-object crops + dilation, "original" geometry, annotation boxes
  (c) obj-rel      object-object crops + dilation, "relative" geometry, annotation boxes
  (d) bing         as (b), but boxes are BING proposals (no annotation box used in pretraining;
                   BING is fitted on a separate set of generated images, as the paper's BING
                   was trained on other data)
  (e) random-init  the same network untrained: the floor

The scenes follow the method's premise: several small objects of different classes on a
cluttered gray-level background (strokes and untextured distractor polygons; no per-scene
colour identity), classes told apart only by shape and texture (colours are random per
object, as colour jitter removes colour), long-tailed class frequencies (draw weight of the
class of rank r: (r + 1) ** -1.5). Colour jitter has SimCLR's strength (0.8/0.8/0.8/0.2)
in every setting: at MoCo-v2's 0.4, scene-crop MoCo learned scene colours (RESULTS.md).

Evaluation per run, on frozen features: the primary probe is kNN (k=20) mAP on object crops
(each box dilated by 10%, at the training view size), also a linear probe on the same
crops, a linear probe on whole scenes (multi-label) and kNN mAP on whole scenes; each mAP
also over the head / medium / tail third of the classes by training frequency. Runs are
saved one by one to ``<out>/results.json``; a rerun with the same ``--out`` skips finished
runs. The table gives mean +- std over seeds and the paired difference to (a) per seed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import Dataset
from torchvision.models.resnet import BasicBlock, conv1x1
from torchvision.transforms import v2

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import ObjectCropDataset, load_image
from ssl_crops.demo import _mask
from ssl_crops.distributed import DistInfo
from ssl_crops.evaluate import extract_features, feature_loader, knn_classify, knn_scores, linear_probe
from ssl_crops.files import atomic_write
from ssl_crops.metrics import frequency_groups, group_map, map_details
from ssl_crops.moco import MoCo
from ssl_crops.proposals import Bing, ProposalCache
from ssl_crops.train import adjust_learning_rate, build_loader, train_step
from ssl_crops.transforms import IMAGENET_MEAN, IMAGENET_STD, MoCoV2Augment, ObjectAwareCrop

# --------------------------------------------------------------------------- presets
PRESETS = {
    # plumbing only: every setting, two seeds, tiny everything
    "smoke": dict(image_size=64, num_train=128, num_test=64, num_bing_fit=32, view_size=32, probe_size=48,
                  arch="small", width=8, epochs=2, batch_size=32, moco_k=64, seeds=(0, 1), workers=0),
    # 2 CPU cores: a small ResNet whose stem keeps the resolution, 32 px views, 30 epochs (60 were
    # worse for scene crops: benchmarks/RESULTS.md)
    "cpu": dict(image_size=96, num_train=1500, num_test=500, num_bing_fit=200, view_size=32, probe_size=64,
                arch="small", width=16, epochs=30, batch_size=128, moco_k=512, seeds=(0, 1, 2), workers=1),
    # one GPU, about an hour: ResNet-18, 128 px views of 320 px scenes
    "gpu": dict(image_size=320, num_train=12000, num_test=3000, num_bing_fit=500, view_size=128, probe_size=160,
                arch="resnet18", width=64, epochs=50, batch_size=256, moco_k=4096, seeds=(0, 1, 2), workers=8,
                amp="bf16"),
}
COMMON = dict(lr=0.06, momentum=0.9, weight_decay=5e-4, moco_dim=128, moco_m=0.99, moco_t=0.2, mlp=True,
              jitter=(0.8, 0.8, 0.8, 0.2),
              bn_splits=8, dilation=0.2, min_region_frac=224 / 1024, bing_topk=10, knn_k=20, amp="off")
MAX_OBJECT_CROPS = 20000  # object crops per split for the kNN (decoded into memory once)
SETTINGS = {  # name -> (crop mode, geometry, boxes)
    "a_scene": ("scene", None, "none"),
    "b_obj_orig": ("object-object", "original", "annotations"),
    "c_obj_rel": ("object-object", "relative", "annotations"),
    "d_bing": ("object-object", "original", "bing"),
    "e_random_init": (None, None, None),
}
LABELS = {"a_scene": "(a) scene crops", "b_obj_orig": "(b) obj-obj + dilation, original",
          "c_obj_rel": "(c) obj-obj + dilation, relative", "d_bing": "(d) as (b), BING boxes",
          "e_random_init": "(e) random-init backbone"}

# --------------------------------------------------------------------------- scenes
# 12 classes: 6 shapes x 4 textures, each shape in 2 textures and each texture on 3 shapes, so
# neither the shape nor the texture alone names the class
CLASSES = [("ellipse", "stripes"), ("ellipse", "checker"), ("rectangle", "spots"), ("rectangle", "stripes"),
           ("triangle", "checker"), ("triangle", "solid"), ("star", "spots"), ("star", "solid"),
           ("cross", "stripes"), ("cross", "checker"), ("ring", "spots"), ("ring", "solid")]
CLASS_NAMES = [f"{s}-{t}" for s, t in CLASSES]
TAIL_EXPONENT = 1.5


def _texture(rng, kind: str, w: int, h: int) -> np.ndarray:
    """A random-colour texture: a colour and a darker pattern of it (survives grayscale)."""
    col = rng.uniform(60, 255, 3)
    tex = np.broadcast_to(col, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    cell = max(2, int(round(min(w, h) * rng.uniform(0.18, 0.28))))
    if kind == "stripes":
        tex[((xx + yy) // cell) % 2 == 0] *= 0.4
    elif kind == "checker":
        tex[((xx // cell) + (yy // cell)) % 2 == 0] *= 0.4
    elif kind == "spots":
        r = (xx % cell - cell / 2) ** 2 + (yy % cell - cell / 2) ** 2
        tex[r < (cell / 3) ** 2] *= 0.35
    return np.clip(tex + rng.normal(0, 6, tex.shape), 0, 255)


def _clutter(rng, size: int) -> np.ndarray:
    """Background: a smooth gray-level field with weak chroma, gray strokes and gray
    polygons that belong to no class. No per-scene colour identity: a random colour field per
    scene let scene-crop MoCo tell scenes apart by their background colours (RESULTS.md)."""
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


def make_scene(rng, size: int, weights: np.ndarray):
    """One scene: ``(uint8 RGB image, [(class, x0, y0, x1, y1), ...])`` with 3-6 objects of
    different classes, 14-26% of the side each, overlapping little."""
    img = Image.fromarray(_clutter(rng, size))
    n = int(rng.integers(3, 7))
    classes = rng.choice(len(CLASSES), size=n, replace=False, p=weights)
    objects = []
    for c in classes:
        shape, texture = CLASSES[c]
        for _ in range(30):
            side = size * rng.uniform(0.14, 0.26)
            w = max(6, int(side * rng.uniform(0.8, 1.25)))
            h = max(6, int(side * rng.uniform(0.8, 1.25)))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(_overlap((x0, y0, x0 + w, y0 + h), o[1:]) < 0.15 for o in objects):
                break
        else:
            continue
        mask = _mask(rng, shape, w, h)
        img.paste(Image.fromarray(_texture(rng, texture, w, h).astype(np.uint8)), (x0, y0), mask)
        bx0, by0, bx1, by1 = mask.getbbox()
        objects.append((int(c), x0 + bx0, y0 + by0, x0 + bx1, y0 + by1))
    return img, objects


def _overlap(a, b) -> float:
    """Intersection over the smaller box."""
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def make_scenes(root, cfg: dict, seed: int = 0) -> dict:
    """Write train / test / BING-fit scenes (JPEG) and their COCO jsons under ``root``; returns
    the paths. Deterministic from ``seed``; reused when ``root`` already holds them."""
    root = Path(root)
    paths = {split: root / f"coco_{split}.json" for split in ("train", "test", "bing_fit")}
    images = root / "images"
    if all(p.is_file() for p in paths.values()):
        return {"images": images, **paths}
    images.mkdir(parents=True, exist_ok=True)
    weights = (np.arange(len(CLASSES)) + 1.0) ** -TAIL_EXPONENT
    weights /= weights.sum()
    rng = np.random.default_rng(seed)
    size = cfg["image_size"]
    for split, n in (("train", cfg["num_train"]), ("test", cfg["num_test"]), ("bing_fit", cfg["num_bing_fit"])):
        coco = {"images": [], "annotations": [], "categories": [{"id": c + 1, "name": name}
                                                                 for c, name in enumerate(CLASS_NAMES)]}
        for k in range(n):
            img, objects = make_scene(rng, size, weights)
            name = f"{split}_{k:05d}.jpg"
            img.save(images / name, quality=92)
            coco["images"].append({"id": k + 1, "file_name": name, "width": size, "height": size})
            for c, x0, y0, x1, y1 in objects:
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": k + 1,
                                            "category_id": c + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                            "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
        with atomic_write(paths[split], "w") as f:
            json.dump(coco, f)
    return {"images": images, **paths}


def without_boxes(index: BoxIndex) -> BoxIndex:
    """The same images and image labels, no boxes (for proposals instead of annotations)."""
    n = len(index)
    labels = [index.labels(i) for i in range(n)]
    return BoxIndex(ids=[index.image_id(i) for i in range(n)], files=[index.path(i) for i in range(n)],
                    classes=index.classes, label_offsets=np.concatenate([[0], np.cumsum([len(x) for x in labels])]),
                    label_values=np.concatenate(labels) if n else np.zeros(0), box_offsets=np.zeros(n + 1),
                    boxes=np.zeros((0, 4)), box_labels=np.zeros(0))


def bing_proposals(data: dict, train: BoxIndex, topk: int) -> tuple[ProposalCache, float]:
    """Fit BING on the separate BING-fit scenes and cache the top proposals of every train image."""
    fit = BoxIndex.from_coco(data["bing_fit"], classes=train.classes)
    t = time.perf_counter()
    bing = Bing.fit_index(fit, data["images"], range(len(fit)), seed=0)
    records = []
    for i in range(len(train)):
        img = np.asarray(load_image(data["images"] / train.path(i)))
        boxes, scores = bing.propose(img, topk, return_scores=True)
        records.append((train.image_id(i), boxes, scores, (img.shape[1], img.shape[0])))
    return ProposalCache.from_records(records, {"top_k": topk}), time.perf_counter() - t


# --------------------------------------------------------------------------- network
class SmallResNet(nn.Module):
    """A narrow ResNet for small images: a 3x3 stride-1 stem (no 4x downsampling at once),
    four stages of torchvision ``BasicBlock`` (widths w, 2w, 4w, 8w; strides 1, 2, 2, 2),
    global average pooling and ``fc``; takes ``num_classes`` like torchvision's models."""

    def __init__(self, num_classes: int = 1000, width: int = 16, blocks=(1, 1, 1, 1)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout, stride = width * 2 ** i, 1 if i == 0 else 2
            down = None if stride == 1 and cin == cout else nn.Sequential(conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))
            layers += [BasicBlock(cin, cout, stride, down)] + [BasicBlock(cout, cout) for _ in range(n - 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def encoder_factory(cfg: dict):
    if cfg["arch"] == "small":
        return lambda num_classes: SmallResNet(num_classes, cfg["width"])
    return getattr(torchvision.models, cfg["arch"])


# --------------------------------------------------------------------------- pretraining
def make_crop(setting: str, cfg: dict) -> ObjectAwareCrop:
    mode, geometry, _ = SETTINGS[setting]
    kw = dict(mode=mode, size=cfg["view_size"],
              augment=MoCoV2Augment(jitter=cfg["jitter"], blur_sigma=cfg["blur_sigma"]))
    if mode != "scene":
        kw.update(geometry=geometry, dilation=cfg["dilation"],
                  min_region=max(1, round(cfg["min_region_frac"] * cfg["image_size"])))
    return ObjectAwareCrop(**kw)


def pretrain(setting: str, seed: int, cfg: dict, data: dict, device, log=print) -> tuple[nn.Module, dict]:
    """MoCo-v2 on the train scenes with the crops of ``setting``; returns the query encoder
    (``fc`` replaced by identity) and ``{"loss": [per-epoch mean], "train_s"}``."""
    torch.manual_seed(seed), np.random.seed(seed)
    boxes = SETTINGS[setting][2]
    index = data["train_index"] if boxes != "bing" else without_boxes(data["train_index"])
    proposals = data["proposals"] if boxes == "bing" else None
    dataset = ObjectCropDataset(data["images"], index, make_crop(setting, cfg), proposals=proposals,
                                proposal_topk=cfg["bing_topk"])
    args = Namespace(seed=seed, lr=cfg["lr"], cos=True, epochs=cfg["epochs"], schedule=[])
    loader = build_loader(dataset, args, DistInfo(device=device), cfg["batch_size"], cfg["workers"])
    model = MoCo(encoder_factory(cfg), cfg["moco_dim"], cfg["moco_k"], cfg["moco_m"], cfg["moco_t"], cfg["mlp"],
                 bn_splits=cfg["bn_splits"]).to(device)
    optimizer = torch.optim.SGD(model.parameters(), cfg["lr"], momentum=cfg["momentum"],
                                weight_decay=cfg["weight_decay"])
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
    losses, t = [], time.perf_counter()
    model.train()
    for epoch in range(cfg["epochs"]):
        loader.sampler.set_epoch(epoch)
        adjust_learning_rate(optimizer, epoch, args)
        total = torch.zeros((), device=device)
        for (im_q, im_k), *_ in loader:  # (views, index, tallies of the sample)
            loss, _ = train_step(model, im_q, im_k, optimizer, scaler, amp)
            total += loss
        losses.append(total.item() / len(loader))
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"{setting} seed {seed}: loss {losses[-1]} in epoch {epoch}")
        log(f"  {setting} seed {seed} epoch {epoch + 1}/{cfg['epochs']} loss {losses[-1]:.3f} "
            f"({time.perf_counter() - t:.0f} s)")
    encoder = model.encoder_q
    encoder.fc = nn.Identity()
    return encoder, {"loss": losses, "train_s": time.perf_counter() - t}


def random_encoder(seed: int, cfg: dict) -> nn.Module:
    torch.manual_seed(seed)
    encoder = encoder_factory(cfg)(num_classes=cfg["moco_dim"])
    encoder.fc = nn.Identity()
    return encoder


# --------------------------------------------------------------------------- evaluation
class Preloaded(Dataset):
    """Evaluation inputs decoded once: uint8 ``(N, 3, S, S)`` images and their targets; items
    are ``(normalized float image, target)``."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray):
        self.images, self.targets = images, targets
        self.norm = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.norm(self.images[i]), self.targets[i]


def _resized(img: Image.Image, size: int, region=None) -> torch.Tensor:
    x = v2.functional.pil_to_tensor(img.crop(region) if region is not None else img)
    return v2.functional.resize(x, [size, size], antialias=True)


def preload_scenes(root, index: BoxIndex, size: int) -> Preloaded:
    """Whole scenes (no crop) resized to ``size`` x ``size``, with multi-hot image labels."""
    images = torch.stack([_resized(load_image(Path(root) / index.path(i)), size) for i in range(len(index))])
    return Preloaded(images, index.label_matrix())


def preload_objects(root, index: BoxIndex, size: int, dilation: float = 0.1, limit: int | None = None) -> Preloaded:
    """Every box (or a fixed random ``limit`` of them) as an image of its own: the box dilated
    by ``dilation`` x its size on each side (clipped), resized to ``size``; one-hot targets."""
    keep = np.ones(index.num_boxes, bool)
    if limit is not None and limit < index.num_boxes:
        keep[:] = False
        keep[np.random.default_rng(0).choice(index.num_boxes, limit, replace=False)] = True
    crops, labels = [], []
    for i in range(len(index)):
        first = index.box_image.searchsorted(i)
        chosen = keep[first:first + len(index.boxes(i))]
        if not chosen.any():
            continue
        img = load_image(Path(root) / index.path(i))
        w, h = img.size
        for box, label in zip(index.boxes(i)[chosen], index.box_labels(i)[chosen]):
            x0, y0, x1, y1 = box * np.array([w, h, w, h])
            dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
            region = (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)),
                      min(w, math.ceil(x1 + dx)), min(h, math.ceil(y1 + dy)))
            crops.append(_resized(img, size, region))
            labels.append(label)
    return Preloaded(torch.stack(crops), np.eye(index.num_classes, dtype=np.float32)[np.asarray(labels, np.int64)])


def evaluate(encoder: nn.Module, seed: int, cfg: dict, data: dict, device) -> dict:
    """kNN and linear probe on object crops, linear probe and kNN on whole scenes (fractions;
    mAP of all classes and of the head / medium / tail third by training frequency)."""
    t = time.perf_counter()

    def feats(ds):
        return extract_features(encoder, feature_loader(ds, 256, 0), device, cfg["amp"], progress=False)

    counts = data["train_index"].class_counts()
    ranked = np.sort(counts)[::-1]
    third = len(counts) // 3
    thirds = frequency_groups(counts, head_min=ranked[third], tail_max=ranked[-third - 1])

    def scored(name, scores, targets):
        res = map_details(scores, targets)
        return {name: res.map, **{f"{name}_{g}": v["map"] for g, v in group_map(res.ap, thirds).items()}}

    k = cfg["knn_k"]
    (otr, ctr), (ote, cte) = feats(data["eval"]["train_objects"]), feats(data["eval"]["test_objects"])
    (knn,) = knn_scores(otr, ctr, ote, k).values()           # k capped at the training set size
    out = scored("knn_object_map", knn, cte)
    probe = linear_probe(otr, ctr.argmax(1), ote, multilabel=False, seed=seed, device=device,
                         num_classes=len(counts), log=lambda *a: None)
    out.update(scored("linear_object_map", probe["test_scores"], cte))
    (xtr, ytr), (xte, yte) = feats(data["eval"]["train_scenes"]), feats(data["eval"]["test_scenes"])
    probe = linear_probe(xtr, ytr, xte, multilabel=True, seed=seed, device=device, log=lambda *a: None)
    out.update(scored("linear_map", probe["test_scores"], yte))
    (out["knn_scene_map"],) = knn_classify(xtr, ytr, xte, yte, k=k).values()
    out["eval_s"] = time.perf_counter() - t
    return out


# --------------------------------------------------------------------------- table
def summarize(results: dict, settings, seeds) -> str:
    """Markdown table: mean +- std over seeds (percent), and paired differences to (a)."""
    metrics = [("knn_object_map", "kNN object mAP"), ("knn_object_map_head", "head"),
               ("knn_object_map_medium", "medium"), ("knn_object_map_tail", "tail"),
               ("linear_object_map", "linear object mAP"), ("linear_map", "linear scene mAP"),
               ("linear_map_head", "head"), ("linear_map_medium", "medium"), ("linear_map_tail", "tail"),
               ("knn_scene_map", "kNN scene mAP")]
    lines = ["| setting | " + " | ".join(m[1] for m in metrics) + " | final loss | wall time / run |",
             "|---" * (len(metrics) + 3) + "|"]
    for s in settings:
        runs = [results[f"{s}/{seed}"] for seed in seeds if f"{s}/{seed}" in results]
        if not runs:
            continue
        cells = [_pm([100 * r[m] for r in runs if r[m] is not None]) for m, _ in metrics]
        loss = _pm([r["loss"][-1] for r in runs], "{:.2f}") if "loss" in runs[0] else "-"
        wall = _pm([(r.get("train_s", 0) + r["eval_s"]) / 60 for r in runs], "{:.1f}") + " min"
        lines.append(f"| {LABELS[s]} | " + " | ".join(cells) + f" | {loss} | {wall} |")
    base = [seed for seed in seeds if f"a_scene/{seed}" in results]
    diffs = []
    for s in settings:
        if s == "a_scene":
            continue
        paired = [seed for seed in base if f"{s}/{seed}" in results]
        if not paired:
            continue
        for m, name in (("knn_object_map", "kNN object mAP"), ("linear_object_map", "linear object mAP"),
                        ("linear_map", "linear scene mAP")):
            d = [100 * (results[f"{s}/{seed}"][m] - results[f"a_scene/{seed}"][m]) for seed in paired]
            per_seed = ", ".join(f"{v:+.1f}" for v in d)
            diffs.append(f"| {LABELS[s][:3]} - (a) | {name} | {per_seed} | {_pm(d, '{:+.1f}')} |")
    if diffs:
        lines += ["", "| paired difference | metric | per seed | mean +- std |", "|---|---|---|---|", *diffs]
    return "\n".join(lines)


def _pm(values, fmt="{:.1f}") -> str:
    if not values:
        return "-"
    v = np.asarray(values, np.float64)
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{fmt.format(v.mean())} +- {std:.1f}"


# --------------------------------------------------------------------------- main
def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def load_runs(path, cfg: dict) -> dict:
    """Finished runs in ``path`` made with the same configuration (else none)."""
    saved = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    return saved.get("runs", {}) if saved.get("config") == cfg else {}


def save_run(path, cfg: dict, key: str, rec: dict) -> None:
    """Add one run to ``path`` (re-read first, so processes sharing ``--out`` keep each other's runs)."""
    runs = {**load_runs(path, cfg), key: rec}
    with atomic_write(path, "w") as f:
        json.dump({"config": cfg, "runs": runs}, f, indent=1)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=list(PRESETS), default="cpu")
    p.add_argument("--out", default=None, help="data, results.json and table.md (default: runs/reproduce-<preset>)")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated scenes")
    p.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: OMP_NUM_THREADS, else all of the process's cores; "
                        "use 1 on a shared machine: oversubscribed threads made epochs 3.4x slower)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    return p


def main(argv=None) -> dict:
    a = build_parser().parse_args(argv)
    cfg = {**COMMON, **PRESETS[a.preset]}
    if a.epochs is not None:
        cfg["epochs"] = a.epochs
    # MoCo-v2's blur (sigma 0.1-2 px) is meant for 224 px views: scaled with the view size like
    # min_region, or it wipes out the textures that tell the classes apart at small sizes
    cfg["blur_sigma"] = [round(v * cfg["view_size"] / 224, 4) for v in (0.1, 2.0)]
    cfg = json.loads(json.dumps(cfg))  # as saved in results.json
    seeds = a.seeds or cfg["seeds"]
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and (a.threads or "OMP_NUM_THREADS" not in os.environ):
        torch.set_num_threads(a.threads or len(os.sched_getaffinity(0)))  # shared machine: --threads 1
    out = Path(a.out or f"runs/reproduce-{a.preset}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)

    data = make_scenes(out / "data", cfg, a.data_seed)
    data["train_index"] = BoxIndex.from_coco(data["train"], classes=CLASS_NAMES)
    data["test_index"] = BoxIndex.from_coco(data["test"], classes=CLASS_NAMES)
    log(f"scenes: {len(data['train_index'])} train ({data['train_index'].num_boxes} objects), "
        f"{len(data['test_index'])} test; images per class {data['train_index'].class_counts().tolist()}")
    data["eval"] = {f"{split}_scenes": preload_scenes(data["images"], data[f"{split}_index"], cfg["probe_size"])
                    for split in ("train", "test")}
    data["eval"].update({f"{split}_objects": preload_objects(data["images"], data[f"{split}_index"], cfg["view_size"],
                                                             limit=MAX_OBJECT_CROPS)
                         for split in ("train", "test")})
    log(f"evaluation inputs decoded: {len(data['eval']['train_objects'])} train and "
        f"{len(data['eval']['test_objects'])} test object crops")
    if "d_bing" in a.settings:
        data["proposals"], bing_s = bing_proposals(data, data["train_index"], cfg["bing_topk"])
        log(f"BING fitted on {cfg['num_bing_fit']} separate scenes, proposals for the train scenes: {bing_s:.0f} s")

    results_path = out / "results.json"
    results = load_runs(results_path, cfg)
    for seed in seeds:
        for s in a.settings:
            key = f"{s}/{seed}"
            if key in results:
                continue
            log(f"{LABELS[s]}, seed {seed}")
            if s == "e_random_init":
                encoder, rec = random_encoder(seed, cfg).to(device), {}
            else:
                encoder, rec = pretrain(s, seed, cfg, data, device, log)
            rec.update(evaluate(encoder, seed, cfg, data, device))
            results[key] = rec
            log(f"{key}: kNN object mAP {100 * rec['knn_object_map']:.1f}, linear object mAP "
                f"{100 * rec['linear_object_map']:.1f}, linear scene mAP {100 * rec['linear_map']:.1f}")
            save_run(results_path, cfg, key, rec)
    results = {**load_runs(results_path, cfg), **results}  # with runs of processes sharing --out
    table = summarize(results, a.settings, seeds)
    total = time.perf_counter() - start
    header = (f"preset {a.preset}, commit {_commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.machine()} {torch.get_num_threads()} threads on {device.type}, "
              f"total wall time {total / 60:.1f} min")
    with atomic_write(out / "table.md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(header + "\n\n" + table, flush=True)
    return {"config": cfg, "runs": results, "table": table, "wall_s": total}


if __name__ == "__main__":
    main()
