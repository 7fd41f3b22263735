"""Probes of ``benchmarks/reproduce.py`` on frozen features (fixed in RESULTS.md before the runs).

* kNN (k=20) mAP on object crops at about 1.4x magnification (every box dilated by 10% per
  side, resized to the view size): the primary probe;
* kNN mAP on object crops at 0.5x (a square of twice the view size centred on the box,
  shifted inside the image, resized to the view size);
* a whole-image multi-label linear probe on max-pooled features (lr/wd on 20% of train).

The kNN runs in torch (no faiss): the weighted vote of :func:`ssl_crops.evaluate.knn_scores`.
With it, the colour-shortcut diagnostic of the primary probe (:func:`neighbour_shares`).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import load_image
from ssl_crops.evaluate import extract_features, feature_loader, linear_probe
from ssl_crops.metrics import frequency_groups, group_map, map_details
from ssl_crops.transforms import IMAGENET_MEAN, IMAGENET_STD

PROBES = ("knn_object_map", "knn_object05_map", "linear_scene_max_map")


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


def dilated_region(box, w: int, h: int, dilation: float) -> tuple:
    """Pixel box dilated by ``dilation`` x its size per side, clipped to the image."""
    x0, y0, x1, y1 = box
    dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
    return (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)), min(w, math.ceil(x1 + dx)),
            min(h, math.ceil(y1 + dy)))


def centred_square(box, w: int, h: int, side: int) -> tuple:
    """A ``side`` px square (at most the image) centred on the box, shifted inside the image."""
    sw, sh = min(side, w), min(side, h)
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    x0 = min(max(int(round(cx - sw / 2)), 0), w - sw)
    y0 = min(max(int(round(cy - sh / 2)), 0), h - sh)
    return (x0, y0, x0 + sw, y0 + sh)


def preload_objects(root, index: BoxIndex, size: int, dilation: float = 0.1, limit: int | None = None,
                    square: int | None = None) -> Preloaded:
    """Every box (or a fixed random ``limit`` of them) as an image of its own, one-hot targets:
    the box dilated by ``dilation`` x its size per side, or with ``square`` a square of that
    many px centred on it; resized to ``size``."""
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
            px = box * np.array([w, h, w, h])
            region = dilated_region(px, w, h, dilation) if square is None else centred_square(px, w, h, square)
            crops.append(_resized(img, size, region))
            labels.append(label)
    return Preloaded(torch.stack(crops), np.eye(index.num_classes, dtype=np.float32)[np.asarray(labels, np.int64)])


def knn_vote(train_feats, train_targets, test_feats, k: int = 20, temperature: float = 0.07,
             chunk: int = 1024) -> np.ndarray:
    """Weighted kNN vote scores ``(M, C)``: cosine similarity, the ``k`` nearest (capped at the
    training set), weights ``exp(sim / T)``, normalized by their sum."""
    train = F.normalize(torch.as_tensor(np.asarray(train_feats), dtype=torch.float32), dim=1)
    test = F.normalize(torch.as_tensor(np.asarray(test_feats), dtype=torch.float32), dim=1)
    targets = torch.as_tensor(np.asarray(train_targets), dtype=torch.float32)
    k = min(int(k), len(train))
    out = []
    for lo in range(0, len(test), chunk):
        s, idx = (test[lo:lo + chunk] @ train.T).topk(k, dim=1)
        w = torch.exp((s - s[:, :1]) / temperature)
        out.append((w.unsqueeze(2) * targets[idx]).sum(1) / w.sum(1, keepdim=True))
    return torch.cat(out).numpy() if out else np.zeros((0, targets.shape[1]), np.float32)


def neighbour_shares(train_feats, train_targets, train_colours, test_feats, test_targets, test_colours,
                     k: int = 20, chunk: int = 1024) -> tuple[float, float]:
    """The colour-shortcut diagnostic: over the ``k`` nearest training crops (cosine) of every
    test crop, ``(share of the same class, share nearer in colour than the median)``; "nearer
    in colour": the neighbour's mean RGB is closer to the test crop's than the median training
    crop's is (0.5 for features blind to colour, towards 1 for features that match colour)."""
    train = F.normalize(torch.as_tensor(np.asarray(train_feats), dtype=torch.float32), dim=1)
    test = F.normalize(torch.as_tensor(np.asarray(test_feats), dtype=torch.float32), dim=1)
    ytr = torch.as_tensor(np.asarray(train_targets)).argmax(1)
    yte = torch.as_tensor(np.asarray(test_targets)).argmax(1)
    ctr, cte = (torch.as_tensor(np.asarray(c), dtype=torch.float32) for c in (train_colours, test_colours))
    k = min(int(k), len(train))
    same, near = [], []
    for lo in range(0, len(test), chunk):
        idx = (test[lo:lo + chunk] @ train.T).topk(k, dim=1).indices
        same.append((ytr[idx] == yte[lo:lo + chunk, None]).float())
        dist = torch.cdist(cte[lo:lo + chunk], ctr)
        near.append((dist.gather(1, idx) < dist.median(1, keepdim=True).values).float())
    if not same:
        return float("nan"), float("nan")
    return float(torch.cat(same).mean()), float(torch.cat(near).mean())


def mean_colours(ds: "Preloaded") -> np.ndarray:
    """Mean RGB ``(N, 3)`` of preloaded uint8 crops."""
    return ds.images.float().mean((2, 3)).numpy()


class MaxPooled(nn.Module):
    """An encoder's last feature map, max-pooled over space (SmallResNet or torchvision ResNet)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    def forward(self, x):
        e = self.encoder
        if hasattr(e, "stem"):
            x = e.layers(e.stem(x))
        else:
            x = e.maxpool(e.relu(e.bn1(e.conv1(x))))
            x = e.layer4(e.layer3(e.layer2(e.layer1(x))))
        return torch.amax(x, dim=(2, 3))


def prepare(images, indices: dict, cfg: dict, limit: int) -> dict:
    """Decoded probe inputs of every split in ``indices`` (``{split: BoxIndex}``)."""
    out = {}
    for split, index in indices.items():
        out[f"{split}_scenes"] = preload_scenes(images, index, cfg["probe_size"])
        out[f"{split}_objects"] = preload_objects(images, index, cfg["view_size"], limit=limit)
        out[f"{split}_objects05"] = preload_objects(images, index, cfg["view_size"], limit=limit,
                                                    square=2 * cfg["view_size"])
    return out


def evaluate(encoder: nn.Module, seed: int, cfg: dict, inputs: dict, counts: np.ndarray, device,
             splits=("val", "test")) -> dict:
    """The three probes on ``splits`` (``val_`` keys for val); mAP as fractions, also over the
    head / medium / tail third of the classes by training frequency (``counts``); the primary
    probe's colour-shortcut diagnostic (``nn_same_class``, ``nn_colour_near``)."""
    t = time.perf_counter()
    encoder.eval()

    def feats(model, ds):
        return extract_features(model, feature_loader(ds, 256, 0), device, cfg["amp"], progress=False)

    ranked = np.sort(counts)[::-1]
    third = len(counts) // 3
    thirds = frequency_groups(counts, head_min=ranked[third], tail_max=ranked[-third - 1])
    out = {}

    def scored(name, scores, targets):
        res = map_details(scores, targets)
        out.update({name: res.map, **{f"{name}_{g}": v["map"] for g, v in group_map(res.ap, thirds).items()}})

    prefixes = {"val": "val_", "test": ""}
    for key, probe in (("knn_object_map", "objects"), ("knn_object05_map", "objects05")):
        xtr, ytr = feats(encoder, inputs[f"train_{probe}"])
        for split in splits:
            xte, yte = feats(encoder, inputs[f"{split}_{probe}"])
            scored(prefixes[split] + key, knn_vote(xtr, ytr, xte, cfg["knn_k"]), yte)
            if probe == "objects":
                shares = neighbour_shares(xtr, ytr, mean_colours(inputs["train_objects"]), xte, yte,
                                          mean_colours(inputs[f"{split}_objects"]), cfg["knn_k"])
                out.update(zip((prefixes[split] + "nn_same_class", prefixes[split] + "nn_colour_near"), shares))
    pooled = MaxPooled(encoder)
    xtr, ytr = feats(pooled, inputs["train_scenes"])
    held = [feats(pooled, inputs[f"{s}_scenes"]) for s in splits]
    probe = linear_probe(xtr, ytr, np.concatenate([x for x, _ in held]), multilabel=True, seed=seed, device=device,
                         log=lambda *a: None)
    lo = 0
    for split, (x, y) in zip(splits, held):
        scored(prefixes[split] + "linear_scene_max_map", probe["test_scores"][lo:lo + len(x)], y)
        lo += len(x)
    out["eval_s"] = time.perf_counter() - t
    return out
