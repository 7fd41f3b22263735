"""Feature extraction of a frozen backbone (one process or distributed, multi-view) and an
on-disk feature cache keyed by checkpoint, transform and labels."""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ..config import AMP_DTYPES
from ..distributed import all_gather_cat, rank_and_world
from ..files import atomic_write, json_text
from ..run import ignore_stop_signals, stop_workers



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


def feature_loader(dataset, batch_size: int = 256, workers: int = 4, distributed: bool | None = None,
                   seed: int = 0) -> DataLoader:
    """Loader for :func:`extract_features`: items carry their index; when distributed, each
    rank reads a shard (``DistributedSampler`` without shuffling; its padding is removed again
    when gathering). ``seed`` fixes the random augmentation of the pass."""
    rank, world = rank_and_world()
    sampler = (DistributedSampler(dataset, world, rank, shuffle=False)
               if (distributed if distributed is not None else world > 1) else None)
    return DataLoader(IndexedDataset(dataset), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=ignore_stop_signals)


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
    rank, world = rank_and_world()
    distributed = world > 1 if distributed is None else distributed
    feats, targets, indices, indexed = _run_backbone(backbone, loader, device, amp, channels_last, progress)
    if distributed and world > 1:
        if not indexed:
            raise ValueError("distributed extraction needs indexed batches: use feature_loader()")
        feats, targets, indices = all_gather_cat(feats), all_gather_cat(targets), all_gather_cat(indices)
    indices, first = np.unique(indices.cpu().numpy(), return_index=True)  # drops sampler padding
    return feats.cpu().numpy()[first], targets.cpu().numpy()[first]


@torch.no_grad()
def extract_shard(backbone: nn.Module, loader, device, amp: str = "off", progress: bool = False):
    """This rank's part of :func:`extract_features` over a :func:`feature_loader`, not gathered:
    ``(features, targets, dataset indices)`` as numpy, each item on exactly one rank (the
    ``DistributedSampler``'s padding, repeated items, left out), so memory stays per shard."""
    rank, world = rank_and_world()
    feats, targets, indices, _ = _run_backbone(backbone, loader, device, amp, False, progress)
    indices = indices.cpu().numpy()
    own = indices % world == rank  # unpadded, the unshuffled sampler deals item i to rank i % world
    return feats.cpu().numpy()[own], targets.cpu().numpy()[own], indices[own]


def _run_backbone(backbone, loader, device, amp, channels_last, progress):
    """``(features, targets, indices, indexed)`` tensors of the loader's batches, in its order."""
    device = torch.device(device)
    rank = rank_and_world()[0]
    was_training = backbone.training
    backbone.eval()
    if channels_last:
        backbone.to(memory_format=torch.channels_last)
    feats, targets, indices = [], [], []
    seen, indexed = 0, True
    batches = iter(loader)  # its workers are shut down even if a batch raises
    bar = tqdm(batches, total=len(loader) if hasattr(loader, "__len__") else None, desc="features", unit="batch",
               disable=not progress or rank != 0, dynamic_ncols=True, leave=False)
    try:
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
    finally:
        stop_workers(batches)
    backbone.train(was_training)
    return torch.cat(feats), torch.cat(targets), torch.cat(indices).long(), indexed


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
        p.with_suffix(".json").write_text(json_text(key, indent=1, sort_keys=True))
        return p



def is_multilabel(index) -> bool:
    """Single-label only for class-folder data: no boxes and exactly one label per image."""
    return index.num_boxes > 0 or len(index) == 0 or \
        any(len(index.labels(i)) != 1 for i in range(len(index)))

