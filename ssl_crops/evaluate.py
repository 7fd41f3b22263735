"""Evaluation of frozen backbones: checkpoint loading, distributed feature extraction with an
on-disk cache, a linear probe on cached features (lr/wd sweep), the original MoCo linear
protocol, weighted kNN with faiss (also as an online monitor), and reports.

The command line lives in :func:`main` (``linear_eval.py`` at the repository root).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import pickle
import time
import warnings
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .files import atomic_write
from .metrics import frequency_groups, group_map, map_details, topk_accuracy
from .transforms import eval_transform, linear_train_transform

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
ARCH_CANDIDATES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                   "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")


# ---------------------------------------------------------------------------- checkpoints
class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold a complete backbone."""


def read_checkpoint(path) -> dict:
    """``torch.load`` on CPU without executing pickled code; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: checkpoint holds objects other than tensors and plain "
                              f"data, refusing to unpickle them: {e}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def backbone_state_dict(ckpt: dict) -> tuple[dict, str | None]:
    """Backbone weights (torchvision keys, ``fc.*`` dropped) and the arch named in ``ckpt``.

    Reads ``main_moco.py`` checkpoints (``encoder_q.*``), the original MoCo ones
    (``module.encoder_q.*``) and plain (optionally ``module.``-prefixed) state dicts.
    """
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), str) else None
    sd = ckpt
    for key in ("state_dict", "model"):
        if isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()
          if isinstance(v, torch.Tensor)}
    if any(k.startswith("encoder_q.") for k in sd):
        sd = {k[len("encoder_q."):]: v for k, v in sd.items() if k.startswith("encoder_q.")}
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}, arch


def infer_arch(state_dict: dict) -> str | None:
    """The torchvision ResNet whose parameter names and shapes match ``state_dict``."""
    import torchvision
    for name in ARCH_CANDIDATES:
        with torch.device("meta"):
            ref = getattr(torchvision.models, name)().state_dict()
        ref = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
        if ref.keys() == state_dict.keys() and all(state_dict[k].shape == s for k, s in ref.items()):
            return name
    return None


def build_backbone(arch: str) -> nn.Module:
    """Random-init torchvision model with ``fc`` replaced by identity (``.num_features`` set)."""
    import torchvision
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision architecture {arch!r}")
    model = getattr(torchvision.models, arch)()
    model.arch, model.num_features = arch, model.fc.in_features
    model.fc = nn.Identity()
    return model


def load_backbone(checkpoint_path, arch: str | None = None) -> nn.Module:
    """Backbone of a checkpoint as a torchvision model with ``fc = nn.Identity()``, in eval mode.

    ``arch`` defaults to the checkpoint's ``arch`` entry, else it is inferred from the
    weights. Every backbone weight must be present (only ``fc`` may be missing).
    """
    return backbone_from_checkpoint(read_checkpoint(checkpoint_path), arch, checkpoint_path)


def backbone_from_checkpoint(ckpt: dict, arch: str | None = None, source="checkpoint") -> nn.Module:
    """:func:`load_backbone` on a checkpoint already read by :func:`read_checkpoint`."""
    sd, ckpt_arch = backbone_state_dict(ckpt)
    if not sd:
        raise CheckpointError(f"{source}: no backbone weights found")
    arch = arch or ckpt_arch or infer_arch(sd)
    if arch is None:
        raise CheckpointError(f"{source}: cannot infer the architecture, pass -a/--arch")
    model = build_backbone(arch)
    expected = model.state_dict()
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    wrong = [k for k in expected.keys() & sd.keys() if expected[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: weights do not match {arch}: {len(missing)} missing "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} with other shapes {wrong[:5]}")
    model.load_state_dict(sd)
    return model.eval()


def checkpoint_fingerprint(path) -> dict:
    """Identity of a checkpoint file for cache keys: absolute path, size, mtime."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


# ---------------------------------------------------------------------------- data
class MultiView:
    """Transform: one decoded image -> stacked views ``(V, 3, H, W)``, one per transform."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        return torch.stack([t(img) for t in self.transforms])


class IndexedDataset(Dataset):
    """``dataset[i] + (i,)`` so gathered features can be put back in order."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (*self.dataset[i], i)


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def feature_loader(dataset, batch_size: int = 256, workers: int = 4, distributed: bool | None = None,
                   seed: int = 0) -> DataLoader:
    """Loader for :func:`extract_features`: items carry their index; when distributed, each
    rank reads a shard (``DistributedSampler`` without shuffling; its padding is removed again
    when gathering). ``seed`` fixes the random augmentation of the pass."""
    rank, world = _world()
    sampler = (DistributedSampler(dataset, world, rank, shuffle=False)
               if (distributed if distributed is not None else world > 1) else None)
    return DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed))


def autocast(device: torch.device, amp: str):
    if AMP_DTYPES[amp] is None:
        return nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AMP_DTYPES[amp])


@torch.no_grad()
def extract_features(backbone: nn.Module, loader, device, amp: str = "off", channels_last: bool = False,
                     progress: bool = True, distributed: bool | None = None):
    """Run ``backbone`` over ``loader``: ``(features float32 (N, D), targets (N, ...))`` as numpy,
    in dataset order; ``(N, V, D)`` features when items are ``V`` stacked views (:class:`MultiView`).

    Batches are ``(images, targets)`` or ``(images, targets, indices)`` (see
    :func:`feature_loader`). With ``distributed`` (default: a process group of more than one
    rank exists) each rank runs its shard and all ranks receive the gathered, de-duplicated
    result. ``amp`` is ``"off"``, ``"bf16"`` or ``"fp16"``.
    """
    device = torch.device(device)
    rank, world = _world()
    distributed = world > 1 if distributed is None else distributed
    was_training = backbone.training
    backbone.eval()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    feats, targets, indices = [], [], []
    seen, indexed = 0, True
    bar = tqdm(loader, desc="features", unit="batch", disable=not progress or rank != 0,
               dynamic_ncols=True, leave=False)
    for batch in bar:
        images, target = batch[0], batch[1]
        indexed = len(batch) > 2
        idx = batch[2] if indexed else torch.arange(seen, seen + len(images))
        seen += len(images)
        images = images.to(device, non_blocking=True)
        shape = images.shape[:-3]  # (B,) or (B, V) for MultiView batches
        images = images.flatten(0, -4)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp):
            out = backbone(images)
        feats.append(out.float().reshape(*shape, -1))
        targets.append(torch.as_tensor(target))
        indices.append(torch.as_tensor(idx))
    backbone.train(was_training)
    feats = torch.cat(feats)
    targets, indices = torch.cat(targets), torch.cat(indices).long()
    if distributed and world > 1:
        if not indexed:
            raise ValueError("distributed extraction needs indexed batches: use feature_loader()")
        from .distributed import all_gather_cat
        feats = all_gather_cat(feats.to(device))
        targets = all_gather_cat(targets.to(device))
        indices = all_gather_cat(indices.to(device))
    indices, first = np.unique(indices.cpu().numpy(), return_index=True)  # drops sampler padding
    return feats.cpu().numpy()[first], targets.cpu().numpy()[first]


# ---------------------------------------------------------------------------- feature cache
def default_cache_dir() -> Path:
    if os.environ.get("SSL_CROPS_CACHE"):
        return Path(os.environ["SSL_CROPS_CACHE"]) / "features"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ssl_crops" / "features"


def index_digest(index) -> dict:
    """Hashes of an index's image files and of its classes and labels, for feature-cache keys
    (cached targets are label matrices)."""
    labels = hashlib.sha1(json.dumps(index.classes).encode())
    for i in range(len(index)):
        lab = index.labels(i)
        labels.update(np.int64(len(lab)).tobytes() + lab.tobytes())
    return {"images": hashlib.sha1("\n".join(index.path(i) for i in range(len(index))).encode()).hexdigest(),
            "labels": labels.hexdigest()}


class FeatureCache:
    """Features on disk as ``.npz`` (no pickle), keyed by a hash of a JSON-able key."""

    def __init__(self, root):
        self.root = Path(root)

    def path(self, key: dict) -> Path:
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
        return self.root / f"{key.get('split', 'features')}-{digest}.npz"

    def load(self, key: dict):
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                return z["features"], z["targets"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None  # unreadable entry: recompute and overwrite

    def save(self, key: dict, features, targets) -> Path:
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(p) as f:
            np.savez(f, features=features, targets=targets)
        p.with_suffix(".json").write_text(json.dumps(key, indent=1, sort_keys=True))
        return p


# ---------------------------------------------------------------------------- linear probe
def train_linear_heads(x, y, multilabel: bool, configs, epochs: int = 100, batch_size: int = 1024,
                       seed: int = 0, device="cpu", min_steps: int = 300,
                       num_classes: int | None = None) -> list[nn.Linear]:
    """Train one zero-initialized linear head per ``(lr, wd)`` in ``configs`` on the same
    minibatches: Adam with L2 penalty ``wd`` and cosine decay, all heads in one matmul; at
    least ``min_steps`` steps, so sets that fit one batch still converge. ``x`` should be
    standardized; ``y`` is multi-hot ``(N, C)`` or int labels ``(N,)`` (``num_classes`` default:
    ``max(y) + 1``)."""
    x = torch.as_tensor(x, dtype=torch.float32, device=device)
    y = torch.as_tensor(y, dtype=torch.float32 if multilabel else torch.long, device=device)
    n, d = x.shape
    c = y.shape[1] if multilabel else num_classes or int(y.max()) + 1
    g_ = len(configs)
    w = torch.zeros(d, g_, c, device=device, requires_grad=True)
    b = torch.zeros(1, g_, c, device=device, requires_grad=True)
    lr = torch.tensor([float(cfg[0]) for cfg in configs], device=device).view(1, g_, 1)
    wd = torch.tensor([float(cfg[1]) for cfg in configs], device=device).view(1, g_, 1)
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in (w, b)]
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    batch_size = min(batch_size, n)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(epochs, math.ceil(min_steps / steps_per_epoch)) * steps_per_epoch
    gen = torch.Generator().manual_seed(seed)
    step = 0
    while step < total:
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            idx = idx.to(device)
            xb, yb = x[idx], y[idx]
            logits = (xb @ w.view(d, -1)).view(-1, g_, c) + b  # (B, heads, C)
            if multilabel:  # BCE summed over classes, averaged over samples, per head
                loss = F.binary_cross_entropy_with_logits(logits, yb[:, None].expand_as(logits),
                                                          reduction="sum") / len(idx)
            else:
                loss = F.cross_entropy(logits.permute(0, 2, 1), yb[:, None].expand(-1, g_),
                                       reduction="sum") / len(idx)
            gw, gb = torch.autograd.grad(loss, (w, b))
            step += 1
            scale = lr * 0.5 * (1 + math.cos(math.pi * (step - 1) / total))
            with torch.no_grad():
                for p, grad, (m, v) in ((w, gw + wd * w, state[0]), (b, gb, state[1])):
                    m.mul_(beta1).add_(grad, alpha=1 - beta1)
                    v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                    denom = (v / (1 - beta2 ** step)).sqrt_().add_(eps)
                    p.sub_(scale * (m / (1 - beta1 ** step)) / denom)
    heads = []
    for i in range(g_):
        h = nn.Linear(d, c).to(device)
        with torch.no_grad():
            h.weight.copy_(w[:, i].T), h.bias.copy_(b[0, i])
        heads.append(h.eval())
    return heads


@torch.no_grad()
def predict(head: nn.Linear, x, device="cpu", chunk: int = 65536) -> np.ndarray:
    x = torch.as_tensor(x, dtype=torch.float32)
    return torch.cat([head(c.to(device)).cpu() for c in x.split(chunk)]).numpy() if len(x) else \
        np.zeros((0, head.out_features), np.float32)


def score_predictions(scores, targets, multilabel: bool) -> dict:
    """``{"map": ...}`` for multi-label; ``{"top1", "top5", "map"}`` for single-label (``targets``
    int labels). Fractions, not percent."""
    if multilabel:
        return {"map": map_details(scores, targets).map}
    onehot = np.eye(scores.shape[1], dtype=np.int8)[targets]
    acc = topk_accuracy(scores, targets, (1, 5))
    return {"top1": acc[1], "top5": acc[5], "map": map_details(scores, onehot).map}


class Standardizer:
    """Per-dimension standardization with statistics of the training features."""

    def __init__(self, x, chunk: int = 65536):
        s = s2 = 0.0
        for lo in range(0, len(x), chunk):  # float64 sums without a float64 copy of x
            b = np.asarray(x[lo:lo + chunk], dtype=np.float64)
            s, s2 = s + b.sum(0), s2 + (b * b).sum(0)
        self.mean = s / len(x)
        self.std = np.sqrt(np.maximum(s2 / len(x) - self.mean ** 2, 0.0)) + 1e-6

    def __call__(self, x):
        return ((np.asarray(x) - self.mean) / self.std).astype(np.float32)


def linear_probe(train_x, train_y, test_x, multilabel: bool, lrs=(1e-3, 1e-2), wds=(0.0, 1e-3, 1e-2, 1e-1),
                 val_fraction: float = 0.2, epochs: int = 100, batch_size: int = 1024, seed: int = 0,
                 device="cpu", train_groups=None, num_classes: int | None = None, log=print) -> dict:
    """Linear probe on fixed features: choose ``(lr, wd)`` on a held-out ``val_fraction`` of the
    training images, retrain on all of train with it, and score ``test_x``.

    ``train_groups`` (int per training row) names the image of each row, so augmented copies
    of one image stay on one side of the split and validation uses rows flagged first.
    Returns ``{"sweep": [...], "best": {...}, "test_scores": (M, C) array}``.
    """
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    groups = np.arange(len(train_x)) if train_groups is None else np.asarray(train_groups)
    images = np.unique(groups)
    rng = np.random.default_rng(seed)
    val_images = rng.choice(images, size=max(1, int(round(val_fraction * len(images)))), replace=False)
    is_val = np.isin(groups, val_images)
    _, first = np.unique(groups, return_index=True)
    val_rows = np.intersect1d(first, np.flatnonzero(is_val))  # one row (the first) per val image
    configs = [(lr, wd) for lr in lrs for wd in wds]
    sweep = []
    if len(configs) > 1:
        std = Standardizer(train_x[~is_val])
        t = time.perf_counter()
        heads = train_linear_heads(std(train_x[~is_val]), train_y[~is_val], multilabel, configs,
                                   epochs, batch_size, seed, device, num_classes=num_classes)
        for (lr, wd), h in zip(configs, heads):
            res = score_predictions(predict(h, std(train_x[val_rows]), device), train_y[val_rows], multilabel)
            sweep.append({"lr": lr, "wd": wd, **{f"val_{k}": v for k, v in res.items()}})
        log(f"sweep: {len(configs)} heads in {time.perf_counter() - t:.1f}s on {(~is_val).sum()} rows, "
            f"validated on {len(val_rows)} images")
        key = "val_map" if multilabel else "val_top1"
        best = max(sweep, key=lambda r: -1.0 if np.isnan(r[key]) else r[key])
    else:
        best = {"lr": configs[0][0], "wd": configs[0][1]}
    std = Standardizer(train_x)
    head = train_linear_heads(std(train_x), train_y, multilabel, [(best["lr"], best["wd"])],
                              epochs, batch_size, seed, device, num_classes=num_classes)[0]
    return {"sweep": sweep, "best": best, "test_scores": predict(head, std(test_x), device)}


# ---------------------------------------------------------------------------- kNN
def knn_scores(train_feats, train_targets, test_feats, k: int = 200, temperature: float = 0.07,
               chunk: int = 512) -> dict[int, np.ndarray]:
    """Weighted kNN vote scores (cosine similarity via faiss ``IndexFlatIP`` on L2-normalized
    features, weights ``exp(sim / T)``) for every ``k`` in ``k`` (int or tuple):
    ``{k: (M, C) scores}``, normalized by the summed weights. ``train_targets`` multi-hot."""
    import faiss
    ks = (k,) if isinstance(k, int) else tuple(k)
    train = np.array(train_feats, dtype=np.float32, order="C")  # copies: normalized in place below
    test = np.array(test_feats, dtype=np.float32, order="C")
    faiss.normalize_L2(train), faiss.normalize_L2(test)
    index = faiss.IndexFlatIP(train.shape[1])
    index.add(train)
    kmax = min(max(ks), len(train))
    sims, nbrs = index.search(test, kmax)
    targets = torch.as_tensor(np.asarray(train_targets, dtype=np.float32))
    out = {kk: np.zeros((len(test), targets.shape[1]), np.float32) for kk in ks}
    for lo in range(0, len(test), chunk):
        s = torch.from_numpy(sims[lo:lo + chunk])
        w = torch.exp((s - s[:, :1]) / temperature)  # shifted by the top similarity: no overflow
        votes = w.unsqueeze(2) * targets[torch.from_numpy(nbrs[lo:lo + chunk])]  # (m, kmax, C)
        for kk in ks:
            kk_ = min(kk, kmax)
            out[kk][lo:lo + chunk] = (votes[:, :kk_].sum(1) / w[:, :kk_].sum(1, keepdim=True)).numpy()
    return out


def knn_classify(train_feats, train_targets, test_feats, test_targets, k=(20, 200), temperature: float = 0.07,
                 multilabel: bool = True) -> dict:
    """kNN evaluation: ``knn{k}_map`` (multi-label, mAP of vote scores) or ``knn{k}_top1``
    (single-label; targets int labels or one-hot). Values are fractions."""
    train_targets, test_targets = np.asarray(train_targets), np.asarray(test_targets)
    if not multilabel:
        if train_targets.ndim == 2:
            train_targets, test_targets = train_targets.argmax(1), test_targets.argmax(1)
        c = int(max(train_targets.max(), test_targets.max())) + 1
        train_targets = np.eye(c, dtype=np.float32)[train_targets]
    scores = knn_scores(train_feats, train_targets, test_feats, k, temperature)
    if multilabel:
        return {f"knn{kk}_map": map_details(s, test_targets).map for kk, s in scores.items()}
    return {f"knn{kk}_top1": topk_accuracy(s, test_targets, (1,))[1] for kk, s in scores.items()}


def is_multilabel(index) -> bool:
    """Single-label only for class-folder data: no boxes and exactly one label per image."""
    return index.num_boxes > 0 or len(index) == 0 or \
        any(len(index.labels(i)) != 1 for i in range(len(index)))


class KNNMonitor:
    """Online kNN evaluation for ``main_moco.py --knn-every N``.

    ``monitor(encoder)`` extracts features before ``encoder.fc`` (swapped for identity while
    extracting) on the encoder's device and returns ``knn_classify`` metrics on rank 0, ``{}``
    on other ranks. With a process group it must be called on every rank: each extracts its
    shard (``batch_size`` images per batch and rank) and rank 0 runs the kNN. The encoder's
    train/eval mode and ``fc`` are restored afterwards.
    """

    def __init__(self, root, train_index, test_index, image_size: int = 224, batch_size: int = 256,
                 workers: int = 4, k=(20, 200), temperature: float = 0.07, amp: str = "off",
                 multilabel: bool | None = None, progress: bool = False):
        from .data import LabeledImageDataset
        tf = eval_transform(image_size)
        self.train = LabeledImageDataset(root, train_index, tf)
        self.test = LabeledImageDataset(root, test_index, tf)
        self.batch_size, self.workers, self.k, self.temperature = batch_size, workers, k, temperature
        self.amp, self.progress = amp, progress
        self.multilabel = is_multilabel(train_index) if multilabel is None else multilabel

    def __call__(self, encoder: nn.Module) -> dict:
        encoder = getattr(encoder, "module", encoder)
        device = next(encoder.parameters()).device
        fc, encoder.fc = encoder.fc, nn.Identity()
        try:
            tr, te = [extract_features(encoder, feature_loader(ds, self.batch_size, self.workers), device,
                                       self.amp, progress=self.progress) for ds in (self.train, self.test)]
        finally:
            encoder.fc = fc
        if _world()[0] != 0:
            return {}
        return knn_classify(*tr, *te, k=self.k, temperature=self.temperature, multilabel=self.multilabel)


# ---------------------------------------------------------------------------- reports
def build_report(scores, targets, train_counts, classes, multilabel: bool, head_min: int = 100,
                 tail_max: int = 20, **extra) -> dict:
    """Overall and per-class AP, head/medium/tail mAP by training frequency (+ top-1/5 when
    single-label). ``targets`` multi-hot, or int labels when single-label."""
    targets = np.asarray(targets)
    onehot = targets if multilabel else np.eye(len(classes), dtype=np.int8)[targets]
    res = map_details(scores, onehot)
    groups = frequency_groups(train_counts, head_min, tail_max)
    report = {**extra, "task": "multilabel" if multilabel else "singlelabel",
              "num_test": int(len(targets)), "num_classes": len(classes),
              "map": res.map, "classes_evaluated": int(len(classes) - len(res.skipped)),
              "classes_skipped": [classes[i] for i in res.skipped],
              "thresholds": {"head_min": head_min, "tail_max": tail_max},
              "groups": group_map(res.ap, groups)}
    if not multilabel:
        acc = topk_accuracy(scores, targets, (1, 5))
        report.update(top1=acc[1], top5=acc[5])
    report["per_class"] = [
        {"class_index": i, "class": c, "train_images": int(train_counts[i]),
         "test_positives": int(res.num_positives[i]), "group": str(groups[i]),
         "ap": None if np.isnan(res.ap[i]) else float(res.ap[i])} for i, c in enumerate(classes)]
    return report


def write_report(report: dict, out_dir) -> tuple[Path, Path]:
    """``report.json`` (without the per-class rows) and ``per_class_ap.csv`` in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, cs = out_dir / "report.json", out_dir / "per_class_ap.csv"
    js.write_text(json.dumps({k: v for k, v in report.items() if k != "per_class"}, indent=2))
    with open(cs, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(report["per_class"][0]))
        w.writeheader()
        w.writerows(report["per_class"])
    return js, cs


def format_table(report: dict) -> str:
    """Plain-text summary: overall and per-group mAP (percent), top-1/5, kNN."""
    pct = lambda v: "   n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:6.2f}"
    t = report["thresholds"]
    rows = [f"{'subset':<28}{'classes':>8}{'mAP':>8}",
            f"{'all':<28}{report['classes_evaluated']:>8}{pct(report['map']):>8}"]
    labels = {"head": f"head (>{t['head_min']} train imgs)", "medium": f"medium ({t['tail_max']}-{t['head_min']})",
              "tail": f"tail (<{t['tail_max']})"}
    for g, r in report["groups"].items():
        rows.append(f"{labels[g]:<28}{r['evaluated']:>8}{pct(r['map']):>8}")
    if report["classes_skipped"]:
        rows.append(f"skipped (no test positive): {len(report['classes_skipped'])} classes")
    for key in ("top1", "top5"):
        if key in report:
            rows.append(f"{key:<28}{'':>8}{pct(report[key]):>8}")
    if report.get("sweep"):
        best = report["best"]
        val = ", ".join(f"{k} {100 * v:.2f}" for k, v in best.items() if k.startswith("val_"))
        rows.append(f"probe: lr {best['lr']:g}, wd {best['wd']:g} chosen from {len(report['sweep'])} ({val})")
    for key, v in report.get("knn", {}).items():
        rows.append(f"{key:<28}{'':>8}{pct(v):>8}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Linear evaluation of a frozen backbone (cached features by default, "
                                            "or the original MoCo protocol with --protocol moco)")
    p.add_argument("data", metavar="DATA", help="image folder (OpenImages-subset dicts beside it), or a folder "
                                                "with train/ and val/ class sub-folders")
    p.add_argument("--pretrained", default="", help="checkpoint (main_moco.py, original MoCo, or a torchvision "
                                                    "state dict); empty: random-init backbone")
    p.add_argument("-a", "--arch", default=None, help="torchvision arch (default: from the checkpoint, else resnet50)")
    p.add_argument("--labels", help="train labels dict (default: images_selected_new.npy beside DATA)")
    p.add_argument("--boxes", help="train boxes dict (default: images_selected_with_all_features.npy beside DATA)")
    p.add_argument("--test-labels", help="test labels dict (default: images_test.npy beside DATA)")
    p.add_argument("--task", choices=("auto", "multilabel", "singlelabel"), default="auto")
    p.add_argument("--protocol", choices=("cached", "moco"), default="cached")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop size (default: the checkpoint's pretraining --image-size, else 224)")
    p.add_argument("-j", "--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images per batch, total over all processes")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default=None, help="single process only (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="report folder (default: linear_eval/ beside the checkpoint)")
    p.add_argument("--head-min", type=int, default=100, help="head classes: more train images than this")
    p.add_argument("--tail-max", type=int, default=20, help="tail classes: fewer train images than this")
    p.add_argument("--no-progress", action="store_true")
    c = p.add_argument_group("cached protocol")
    c.add_argument("--cache-dir", default=None, help=f"feature cache (default {default_cache_dir()})")
    c.add_argument("--no-cache", action="store_true")
    c.add_argument("--train-crops", type=int, default=2,
                   help="augmented views (RandomResizedCrop + flip) per train image, added to the center "
                        "crops; decoded once with them (0: center crops only)")
    c.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    c.add_argument("--wds", type=float, nargs="+", default=[0.0, 1e-3, 1e-2, 1e-1])
    c.add_argument("--val-fraction", type=float, default=0.2)
    c.add_argument("--probe-epochs", type=int, default=100)
    c.add_argument("--probe-batch-size", type=int, default=1024)
    c.add_argument("--knn", action="store_true", help="also report kNN (k=20, 200) on the cached features")
    m = p.add_argument_group("moco protocol (original main_lincls.py settings)")
    m.add_argument("--epochs", type=int, default=100)
    m.add_argument("--lr", type=float, default=30.0)
    m.add_argument("--schedule", type=int, nargs="*", default=None,
                   help="epochs at which lr drops 10x (default: 60%% and 80%% of --epochs)")
    m.add_argument("--momentum", type=float, default=0.9)
    m.add_argument("--wd", "--weight-decay", type=float, default=0.0, dest="weight_decay")
    m.add_argument("--resume", default="", help="linear head checkpoint to continue from, or 'auto' "
                   "(linear_last.pth in the out dir, if readable)")
    d = p.add_argument_group("distributed (as main_moco.py)")
    d.add_argument("--world-size", type=int, default=-1)
    d.add_argument("--rank", type=int, default=-1)
    d.add_argument("--dist-url", default="tcp://localhost:10005")
    d.add_argument("--dist-backend", default=None)
    d.add_argument("--gpu", type=int, default=None)
    d.add_argument("--multiprocessing-distributed", action="store_true")
    return p


def load_splits(args):
    """``(train_root, train_index, test_root, test_index)`` from the arguments."""
    from .boxes import BoxIndex
    from .data import find_annotation, load_index
    from .formats import SUBSET_FILES
    data = Path(args.data)
    if (data / "train").is_dir() and (data / "val").is_dir() and not args.labels:
        train = BoxIndex.from_folder(data / "train")
        return data / "train", train, data / "val", BoxIndex.from_folder(data / "val", classes=train.classes)
    if args.test_labels and not Path(args.test_labels).is_file():
        raise FileNotFoundError(f"{args.test_labels}: test labels dict not found")
    test_labels = find_annotation(args.test_labels or SUBSET_FILES["test_labels"], data)
    if test_labels is None:
        raise FileNotFoundError(f"no test labels: pass --test-labels or put images_test.npy in {data} or "
                                f"{data.parent}, or use a folder with train/ and val/")
    train = load_index(data, labels=args.labels, boxes=args.boxes)
    return data, train, data, BoxIndex.from_openimages(test_labels, classes=train.classes)


def _setup(args, info):
    device = torch.device(args.device if args.device and not info.distributed else info.device)
    torch.manual_seed(args.seed)
    if args.pretrained:
        ckpt = read_checkpoint(args.pretrained)
        if args.image_size is None:  # evaluate at the pretraining resolution
            args.image_size = int((ckpt.get("args") or {}).get("image_size") or 224)
        backbone = backbone_from_checkpoint(ckpt, args.arch, args.pretrained)
        ident = checkpoint_fingerprint(args.pretrained)
    else:
        backbone = build_backbone(args.arch or "resnet50")
        ident = {"random_init": args.arch or "resnet50", "seed": args.seed}
    args.arch = backbone.arch
    args.image_size = args.image_size or 224
    for prm in backbone.parameters():
        prm.requires_grad_(False)
    backbone.to(device).eval()
    return backbone, ident, device


def _per_process_batch(batch_size: int, world: int) -> int:
    """``-b/--batch-size`` is the total over all processes (as in ``main_moco.py``)."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


def _targets(y, multilabel: bool):
    return y.astype(np.float32) if multilabel else y.argmax(1)


def _out_dir(args) -> Path:
    if args.out_dir:
        return Path(args.out_dir)
    base = Path(args.pretrained).parent if args.pretrained else Path("linear_eval_runs")
    name = Path(args.pretrained).stem if args.pretrained else f"random_{args.arch or 'resnet50'}"
    return base / "linear_eval" / f"{name}_{args.protocol}"


def _log(*a):
    if _world()[0] == 0:
        print(*a, flush=True)


def run_cached(info, args) -> dict | None:
    """Cached protocol (one process or each rank of a distributed launch); report on rank 0."""
    from .data import LabeledImageDataset
    rank, world = _world()
    batch_size = _per_process_batch(args.batch_size, world)
    train_root, train_index, test_root, test_index = load_splits(args)
    multilabel = is_multilabel(train_index) if args.task == "auto" else args.task == "multilabel"
    backbone, ident, device = _setup(args, info)
    cache = None if args.no_cache else FeatureCache(args.cache_dir or default_cache_dir())
    timing = {}

    def features(root, index, entries, seed=0):
        """``entries``: name -> (transform, views, key); returns name -> (features (N, views, D),
        targets), from the cache, or from one pass over the images for all missing entries."""
        base = {"checkpoint": ident, "arch": args.arch, "amp": args.amp, "root": str(Path(root).resolve()),
                **index_digest(index)}
        keys = {name: {**base, "split": name, "transform": key} for name, (_, _, key) in entries.items()}
        # rank 0 decides hit or miss for all ranks (a node-local cache may differ between nodes)
        out = {name: cache.load(keys[name]) if cache and rank == 0 else None for name in entries}
        todo = [name for name, hit in out.items() if hit is None]
        if cache and world > 1:
            shared = [todo]
            torch.distributed.broadcast_object_list(shared, src=0)
            todo = shared[0]
        for name in (n for n in entries if n not in todo):
            _log(f"{name}: cached features {cache.path(keys[name])}")
        if not todo:
            return out
        tfs = [tf for name in todo for tf in [entries[name][0]] * entries[name][1]]
        t = time.perf_counter()
        torch.manual_seed(seed)  # augmentation in the main process (workers=0) is reproducible too
        loader = feature_loader(LabeledImageDataset(root, index, MultiView(tfs)),
                                max(1, batch_size // len(tfs)), args.workers, seed=seed)
        feats, targets = extract_features(backbone, loader, device, args.amp, args.channels_last,
                                          not args.no_progress)
        timing[f"extract_{'+'.join(todo)}_s"] = round(time.perf_counter() - t, 2)
        _log(f"{'+'.join(todo)}: extracted {feats.shape[0]} images x {feats.shape[1]} views, "
             f"{feats.shape[2]}-d, in {time.perf_counter() - t:.2f}s")
        start = 0
        for name in todo:
            out[name] = feats[:, start:start + entries[name][1]], targets
            start += entries[name][1]
            if cache and rank == 0:
                cache.save(keys[name], *out[name])
        return out

    center = (eval_transform(args.image_size), 1, {"kind": "center", "size": args.image_size})
    train = {"train": center}
    if args.train_crops:
        train["train-crops"] = (linear_train_transform(args.image_size), args.train_crops,
                                {"kind": "rrc-flip", "size": args.image_size, "views": args.train_crops,
                                 "seed": args.seed})
    train = features(train_root, train_index, train, seed=args.seed + 1)
    test_x, test_y = features(test_root, test_index, {"test": center})["test"]
    if rank != 0:  # other ranks only helped extracting (and lack the cache hits)
        return None
    train_x, train_y = train["train"][0][:, 0], train["train"][1]
    test_x = test_x[:, 0]
    rows = [train_x] + ([*train["train-crops"][0].transpose(1, 0, 2)] if args.train_crops else [])
    groups = np.tile(np.arange(len(train_x)), len(rows))
    train_y, test_y = _targets(train_y, multilabel), _targets(test_y, multilabel)
    t = time.perf_counter()
    probe = linear_probe(np.concatenate(rows), np.concatenate([train_y] * len(rows)), test_x, multilabel,
                         args.lrs, args.wds, args.val_fraction, args.probe_epochs, args.probe_batch_size,
                         args.seed, device, train_groups=groups, num_classes=train_index.num_classes, log=_log)
    timing["probe_s"] = round(time.perf_counter() - t, 2)
    extra = {}
    if args.knn:
        extra["knn"] = knn_classify(train_x, train_y, test_x, test_y, multilabel=multilabel)
    return _finish(args, train_index, test_y, probe["test_scores"], multilabel, ident,
                   sweep=probe["sweep"], best=probe["best"], timing=timing, num_train=len(train_index), **extra)


def _finish(args, train_index, test_y, scores, multilabel, ident, **extra) -> dict:
    report = build_report(scores, test_y, train_index.class_counts(), train_index.classes, multilabel,
                          args.head_min, args.tail_max, protocol=args.protocol, checkpoint=ident,
                          arch=args.arch, image_size=args.image_size, **extra)
    js, cs = write_report(report, _out_dir(args))
    print(format_table(report))
    print(f"report: {js}\nper-class AP: {cs}", flush=True)
    return report


def find_linear_resume(resume: str, out_dir) -> dict | None:
    """The linear-head checkpoint named by ``--resume``: a path, or ``"auto"`` for
    ``out_dir/linear_last.pth`` when it is readable (``None`` if missing; skipped with a
    warning if unreadable, e.g. truncated)."""
    if resume != "auto":
        return read_checkpoint(resume)
    path = Path(out_dir) / "linear_last.pth"
    if not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        warnings.warn(f"skipping unreadable linear head checkpoint {path}, starting afresh: {e}")
        return None


def run_moco(info, args) -> dict | None:
    """The original MoCo linear protocol: frozen backbone (BN in eval mode), a linear layer
    trained with SGD on augmented images every epoch, step schedule; report on rank 0."""
    from torch.nn.parallel import DistributedDataParallel

    from .data import LabeledImageDataset
    rank, world = _world()
    batch_size = _per_process_batch(args.batch_size, world)
    train_root, train_index, test_root, test_index = load_splits(args)
    multilabel = is_multilabel(train_index) if args.task == "auto" else args.task == "multilabel"
    backbone, ident, device = _setup(args, info)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    fc = nn.Linear(backbone.num_features, train_index.num_classes).to(device)
    nn.init.normal_(fc.weight, 0.0, 0.01), nn.init.zeros_(fc.bias)
    head = DistributedDataParallel(fc, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else fc
    opt = torch.optim.SGD(fc.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = args.schedule if args.schedule is not None else [int(0.6 * args.epochs), int(0.8 * args.epochs)]
    out_dir = _out_dir(args)
    start = 0
    auto = args.resume == "auto"
    state = find_linear_resume(args.resume, out_dir) if args.resume and (rank == 0 or not auto) else None
    if auto and world > 1:  # rank 0's choice for all ranks (the out dir may be node-local)
        shared = [state]
        torch.distributed.broadcast_object_list(shared, src=0)
        state = shared[0]
    if state is not None:
        fc.load_state_dict(state["fc"]), opt.load_state_dict(state["optimizer"])
        start = state["epoch"]
        _log(f"resumed the linear head at epoch {start}")
    dataset = LabeledImageDataset(train_root, train_index, linear_train_transform(args.image_size))
    sampler = DistributedSampler(dataset, seed=args.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    for epoch in range(start, args.epochs):
        lr = args.lr * 0.1 ** sum(epoch >= m for m in schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, n = 0.0, 0
        for i, (images, target) in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False,
                                                   disable=args.no_progress or rank != 0)):
            images = images.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = target.to(device)
            with torch.no_grad(), autocast(device, args.amp):
                f = backbone(images)
            logits = head(f.float())
            loss = F.binary_cross_entropy_with_logits(logits, target) if multilabel \
                else F.cross_entropy(logits, target.argmax(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(images), n + len(images)
        _log(f"epoch {epoch + 1}/{args.epochs} lr {lr:g} loss {total / max(n, 1):.4f}")
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            with atomic_write(out_dir / "linear_last.pth") as f:
                torch.save({"epoch": epoch + 1, "fc": fc.state_dict(), "optimizer": opt.state_dict(),
                            "arch": args.arch}, f)
    train_s = time.perf_counter() - t0
    model = nn.Sequential(backbone, fc).eval()
    test = LabeledImageDataset(test_root, test_index, eval_transform(args.image_size))
    scores, test_y = extract_features(model, feature_loader(test, batch_size, args.workers), device,
                                      args.amp, args.channels_last, not args.no_progress)
    if rank != 0:
        return None
    return _finish(args, train_index, _targets(test_y, multilabel), scores, multilabel, ident,
                   num_train=len(train_index), epochs=args.epochs, lr=args.lr, schedule=schedule,
                   timing={"train_s": round(train_s, 2)})


def _worker(info, args):
    result = (run_moco if args.protocol == "moco" else run_cached)(info, args)
    if result is not None and getattr(args, "_result", None) is not None:
        args._result.append(result)


def main(argv=None) -> dict | None:
    """CLI entry: parse, launch (single process, torchrun, or legacy multiprocessing) and
    return the report of rank 0 (``None`` in spawned workers)."""
    args = build_parser().parse_args(argv)
    from .distributed import launch
    args._result = []
    launch(_worker, args)
    return args._result[0] if args._result else None
