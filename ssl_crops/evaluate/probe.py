"""Linear probe on fixed features: many (lr, wd) heads trained at once, chosen on a held-out
part of train."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..metrics import map_details, topk_accuracy


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


def _widen(values, best) -> list:
    """Values to add to a sweep axis whose best value ``best`` sits on its edge: one step (the
    ratio of the two outermost values, else 10x) beyond it; none for a single-valued axis or
    below zero (a zero weight decay is a true bound)."""
    values = sorted(set(values))
    if len(values) < 2:
        return []
    out = []
    if best == values[-1] and best > 0:
        step = values[-1] / values[-2] if values[-2] > 0 else 10.0
        out.append(best * step)
    if best == values[0] and best > 0:
        step = values[1] / values[0]
        out.append(best / step)
    return out


def linear_probe(train_x, train_y, test_x, multilabel: bool, lrs=(1e-3, 1e-2), wds=(0.0, 1e-3, 1e-2, 1e-1),
                 val_fraction: float = 0.2, epochs: int = 100, batch_size: int = 1024, seed: int = 0,
                 device="cpu", train_groups=None, num_classes: int | None = None, widen: int = 3,
                 log=print) -> dict:
    """Linear probe on fixed features: choose ``(lr, wd)`` on a held-out ``val_fraction`` of the
    training images, retrain on all of train with it, and score ``test_x``.

    ``train_groups`` (int per training row) names the image of each row, so augmented copies
    of one image stay on one side of the split and validation uses rows flagged first. When
    the best setting lies on an edge of the grid, the grid grows one step past that edge (at
    most ``widen`` times; all heads see the same minibatches) and the widening is reported
    in ``notes``, as is a best setting still on an edge after that.
    Returns ``{"sweep": [...], "best": {...}, "notes": [...], "test_scores": (M, C) array}``.
    """
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    groups = np.arange(len(train_x)) if train_groups is None else np.asarray(train_groups)
    images = np.unique(groups)
    rng = np.random.default_rng(seed)
    val_images = rng.choice(images, size=max(1, int(round(val_fraction * len(images)))), replace=False)
    is_val = np.isin(groups, val_images)
    _, first = np.unique(groups, return_index=True)
    val_rows = np.intersect1d(first, np.flatnonzero(is_val))  # one row (the first) per val image
    lrs, wds = sorted(set(map(float, lrs))), sorted(set(map(float, wds)))
    configs = [(lr, wd) for lr in lrs for wd in wds]
    sweep, notes = [], []
    if len(configs) > 1:
        std = Standardizer(train_x[~is_val])
        fit_x, fit_y, val_x = std(train_x[~is_val]), train_y[~is_val], std(train_x[val_rows])
        key = "val_map" if multilabel else "val_top1"
        t = time.perf_counter()
        for round_ in range(widen + 1):
            heads = train_linear_heads(fit_x, fit_y, multilabel, configs, epochs, batch_size, seed, device,
                                       num_classes=num_classes)
            for (lr, wd), h in zip(configs, heads):
                res = score_predictions(predict(h, val_x, device), train_y[val_rows], multilabel)
                sweep.append({"lr": lr, "wd": wd, **{f"val_{k}": v for k, v in res.items()}})
            best = max(sweep, key=lambda r: -1.0 if np.isnan(r[key]) else r[key])
            new_lrs, new_wds = _widen(lrs, best["lr"]), _widen(wds, best["wd"])
            if not new_lrs and not new_wds:
                break
            edge = f"best lr {best['lr']:g}, wd {best['wd']:g} on the edge of the grid (lr {lrs}, wd {wds})"
            if round_ == widen:
                notes.append(f"{edge} after widening {widen} times: a wider sweep may do better")
                log(f"sweep: {notes[-1]}")
                break
            notes.append(f"{edge}: widened with lr {new_lrs or '-'}, wd {new_wds or '-'}")
            log(f"sweep: {notes[-1]}")
            lrs, wds = sorted(lrs + new_lrs), sorted(wds + new_wds)
            done = {(r["lr"], r["wd"]) for r in sweep}
            configs = [(lr, wd) for lr in lrs for wd in wds if (lr, wd) not in done]
        log(f"sweep: {len(sweep)} heads in {time.perf_counter() - t:.1f}s on {(~is_val).sum()} rows, "
            f"validated on {len(val_rows)} images")
    else:
        best = {"lr": configs[0][0], "wd": configs[0][1]}
    std = Standardizer(train_x)
    head = train_linear_heads(std(train_x), train_y, multilabel, [(best["lr"], best["wd"])],
                              epochs, batch_size, seed, device, num_classes=num_classes)[0]
    return {"sweep": sweep, "best": best, "notes": notes, "test_scores": predict(head, std(test_x), device)}
