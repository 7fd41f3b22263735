"""Ranking metrics over a whole evaluation set: average precision, mAP, top-k accuracy; the
original code's per-batch mean mAP (for comparison with the paper only), LVIS's federated
targets, and class-frequency groups.

Average precision is non-interpolated: the mean, over the positives of a class, of the
precision at the positive's rank. Ties are handled deterministically, as scikit-learn does:
samples with equal scores form one group and every positive of a group gets the precision
measured at the end of the group (so the order of tied samples never matters). Targets
equal to ``ignore_index`` (e.g. -1 for "difficult") are left out of that class's ranking.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["average_precision", "mean_average_precision", "map_details", "MAPResult",
           "batch_mean_average_precision", "federated_targets", "federated_average_precision",
           "topk_accuracy", "frequency_groups", "tertile_groups", "group_map", "GROUPS", "TERTILES"]

GROUPS = ("head", "medium", "tail")
TERTILES = ("frequent third", "middle third", "rare third")


def _as_2d(scores, targets):
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim == 1:
        scores, targets = scores[:, None], targets.reshape(-1, 1)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} must be equal (N, C)")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    return scores, targets


def average_precision(scores, targets, ignore_index: int | None = -1, chunk: int = 64) -> np.ndarray:
    """Per-class AP of ``(N, C)`` scores against ``(N, C)`` targets (1 positive, 0 negative).

    Returns float64 ``(C,)``; NaN for classes without a positive. 1-D inputs give a
    one-element array. Classes are processed ``chunk`` columns at a time to bound memory.
    """
    scores, targets = _as_2d(scores, targets)
    n, c = scores.shape
    ap = np.full(c, np.nan)
    if n == 0:
        return ap
    for lo in range(0, c, chunk):
        s, t = scores[:, lo:lo + chunk], targets[:, lo:lo + chunk]
        valid = t != ignore_index if ignore_index is not None else np.ones(t.shape, bool)
        pos = (t > 0) & valid
        order = np.argsort(-s, axis=0, kind="stable")
        s_sorted = np.take_along_axis(s, order, 0)
        pos_sorted = np.take_along_axis(pos, order, 0)
        tp = np.cumsum(pos_sorted, 0)
        seen = np.cumsum(np.take_along_axis(valid, order, 0), 0)
        # index of the last row of each row's tie group, per column
        last = np.ones_like(s_sorted, dtype=bool)
        last[:-1] = s_sorted[:-1] != s_sorted[1:]
        end = np.where(last, np.arange(n)[:, None], n)
        end = np.minimum.accumulate(end[::-1], axis=0)[::-1]
        precision = np.take_along_axis(tp, end, 0) / np.maximum(np.take_along_axis(seen, end, 0), 1)
        npos = tp[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[lo:lo + chunk] = np.where(npos > 0, (precision * pos_sorted).sum(0) / npos, np.nan)
    return ap


@dataclass
class MAPResult:
    """mAP and its parts: ``ap`` per class (NaN where skipped), ``skipped`` class indices
    without a positive, ``num_positives`` per class."""
    map: float
    ap: np.ndarray
    skipped: np.ndarray
    num_positives: np.ndarray = field(repr=False)


def map_details(scores, targets, ignore_index: int | None = -1) -> MAPResult:
    """mAP over classes with at least one positive, with per-class AP and skipped classes."""
    scores, targets = _as_2d(scores, targets)
    ap = average_precision(scores, targets, ignore_index)
    npos = (targets > 0).sum(0)
    skipped = np.flatnonzero(npos == 0)
    return MAPResult(float(np.nanmean(ap)) if len(skipped) < ap.size else float("nan"),
                     ap, skipped, npos)


def mean_average_precision(scores, targets, ignore_index: int | None = -1) -> float:
    """mAP over classes with at least one positive (NaN if none has one).

    Computed over the whole set; use :func:`map_details` to see which classes were skipped.
    """
    return map_details(scores, targets, ignore_index).map


def batch_mean_average_precision(scores, targets, batch_size: int = 256,
                                 ignore_index: int | None = -1) -> float:
    """The original ``main_lincls.py`` figure: mAP of each consecutive test batch of
    ``batch_size`` rows (over the classes with a positive in that batch), averaged over
    batches weighted by their size. It depends on the batch size and the test order, and
    is higher than the whole-set mAP; use it only to compare with the paper's table."""
    scores, targets = _as_2d(scores, targets)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    total = weight = 0.0
    for lo in range(0, len(scores), batch_size):
        m = map_details(scores[lo:lo + batch_size], targets[lo:lo + batch_size], ignore_index).map
        if not np.isnan(m):  # a batch without any positive has no mAP (the original gets NaN)
            n = min(batch_size, len(scores) - lo)
            total, weight = total + m * n, weight + n
    return total / weight if weight else float("nan")


def federated_targets(positives, negatives, not_exhaustive) -> np.ndarray:
    """LVIS's federated rule as an ``(N, C)`` target matrix for :func:`average_precision`:
    1 where the class is labelled in the image, 0 only where it is a verified negative
    (``neg_category_ids``), -1 (not scored) elsewhere and wherever the class is in the
    image's ``not_exhaustive_category_ids``. Inputs: ``(N, C)`` boolean matrices."""
    pos, neg, nex = (np.asarray(a, dtype=bool) for a in (positives, negatives, not_exhaustive))
    if not pos.shape == neg.shape == nex.shape:
        raise ValueError(f"federated targets: shapes {pos.shape}, {neg.shape}, {nex.shape} differ")
    out = np.full(pos.shape, -1, np.int8)
    out[neg] = 0
    out[pos] = 1
    out[nex] = -1
    return out


def federated_average_precision(scores, positives, negatives, not_exhaustive) -> np.ndarray:
    """Per-class AP under LVIS's federated rule (see :func:`federated_targets`)."""
    return average_precision(scores, federated_targets(positives, negatives, not_exhaustive), ignore_index=-1)


def topk_accuracy(scores, labels, ks=(1, 5)) -> dict[int, float]:
    """Single-label top-k accuracy (fractions) of ``(N, C)`` scores for int ``labels (N,)``.

    Ties are broken by class index (stable sort), k is capped at C.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    order = np.argsort(-scores, axis=1, kind="stable")
    hit = order == labels[:, None]
    return {k: float(hit[:, :min(k, scores.shape[1])].any(1).mean()) for k in ks}


def frequency_groups(train_counts, head_min: int = 100, tail_max: int = 20) -> np.ndarray:
    """Label each class "head" (> head_min train images), "tail" (< tail_max) or "medium"."""
    counts = np.asarray(train_counts)
    return np.where(counts > head_min, "head", np.where(counts < tail_max, "tail", "medium"))


def tertile_groups(train_counts) -> np.ndarray:
    """Label each class by the third of the classes, ranked by training frequency, it falls in
    (``TERTILES``: most frequent first; ties keep class order). Unlike fixed thresholds this
    splits any dataset into three groups of (nearly) equal size."""
    counts = np.asarray(train_counts)
    order = np.argsort(-counts, kind="stable")
    out = np.empty(len(counts), dtype=object)
    for name, part in zip(TERTILES, np.array_split(order, 3)):
        out[part] = name
    return out.astype(str)


def group_map(ap, groups, names=GROUPS, train_counts=None) -> dict[str, dict]:
    """mAP (over classes with a defined AP) and class count per group; with ``train_counts``
    also the range of training images of each group's classes."""
    ap, groups = np.asarray(ap, dtype=np.float64), np.asarray(groups)
    out = {}
    for g in names:
        sel = ap[(groups == g) & ~np.isnan(ap)]
        out[g] = {"map": float(sel.mean()) if sel.size else None,
                  "classes": int((groups == g).sum()), "evaluated": int(sel.size)}
        if train_counts is not None:
            c = np.asarray(train_counts)[groups == g]
            out[g]["train_images"] = [int(c.min()), int(c.max())] if c.size else None
    return out
