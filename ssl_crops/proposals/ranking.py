"""Ranking helpers of BING proposals: best-first selection, the fine-size rank pattern, and the
de-duplication of snapped boxes."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["top_per_group", "best", "first", "unique_snapped", "fine_slots", "nms"]


def top_per_group(groups: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores of every group, best first within each group."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order].astype(np.int16), kind="stable")]   # radix sort
    g = groups[order]
    starts = np.searchsorted(g, g, side="left")
    return order[np.arange(len(g)) - starts < n]


def best(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, best first (ties in index order)."""
    if n < len(score):
        part = np.argpartition(-score, n - 1)[:n]
        return part[np.lexsort((part, -score[part]))]
    return np.argsort(-score, kind="stable")


def first(boxes: np.ndarray) -> np.ndarray:
    """Mask of the rows of float32 ``boxes`` that no earlier row equals."""
    rows = np.ascontiguousarray(boxes).view(np.dtype((np.void, boxes.itemsize * boxes.shape[1]))).ravel()
    keep = np.zeros(len(rows), bool)
    keep[np.unique(rows, return_index=True)[1]] = True
    return keep


def unique_snapped(boxes: np.ndarray, snapped: np.ndarray):
    """``snapped`` with every box that repeats an earlier one put back unsnapped (``boxes`` has
    no repeats), and the boxes that still repeat an earlier one dropped: ``(boxes, kept mask)``.
    A box's fate depends only on the boxes before it, so shorter lists stay prefixes."""
    out, back = snapped, np.zeros(len(snapped), bool)
    while True:
        again = ~first(out)
        new = again & ~back
        if not new.any():
            return out[~again], ~again
        out = np.where(new[:, None], boxes, out)
        back |= new


@lru_cache(maxsize=8)
def fine_slots(n: int, fine_after: int, fine_share: float):
    """Ranks of fine sizes among the first ``n`` (``Bing._rank``) and every rank's place
    in its queue (coarse, fine)."""
    j = np.arange(n) - fine_after
    slot = (j >= 0) & (np.floor((j + 1) * fine_share) > np.floor(j * fine_share))
    out = slot, np.cumsum(~slot) - 1, np.cumsum(slot) - 1
    for a in out:
        a.flags.writeable = False                      # shared by the cache
    return out


def nms(boxes: np.ndarray, iou: float, top_k: int) -> np.ndarray:
    """Greedy box NMS of ``boxes`` sorted best first; kept indices, best first."""
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    rank = 1.0 - np.arange(len(boxes)) / len(boxes)           # NMSBoxes wants scores >= 0
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), rank.tolist(), 0.0, float(iou), top_k=top_k)
    return np.sort(np.asarray(keep, int).reshape(-1))
