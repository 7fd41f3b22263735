"""Ranking of BING proposals: best-first selection, the order of the list (``rank``: 5x5
maxima first, the fine-size rank pattern), the stage-II head, box NMS, and the de-duplication
of snapped boxes."""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = ["top_per_group", "best", "rank_coarse", "rank", "head", "first", "unique_snapped", "fine_slots", "nms"]


def top_per_group(groups: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores of every group, best first within each group."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order].astype(np.int16), kind="stable")]   # radix sort
    g = groups[order]
    starts = np.searchsorted(g, g, side="left")
    return order[np.arange(len(g)) - starts < n]


def best(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores, best first (ties in index order)."""
    if n <= 0:
        return np.zeros(0, np.int64)
    if n < len(score):
        part = np.argpartition(-score, n - 1)[:n]
        kth = score[part].min()                               # the n-th best score
        if np.count_nonzero(score == kth) > np.count_nonzero(score[part] == kth):   # ties cut at n:
            above = np.flatnonzero(score > kth)                                        # the first of them
            part = np.concatenate([above, np.flatnonzero(score == kth)[:n - len(above)]])
        return part[np.lexsort((part, -score[part]))]
    return np.argsort(-score, kind="stable")


def rank_coarse(score: np.ndarray, sparse: np.ndarray, n: int, sparse_top: int) -> np.ndarray:
    """Order of the first ``n``, best first: the best ``sparse_top`` of the ``sparse`` (5x5 maxima)
    candidates, then the best of the rest."""
    top = np.flatnonzero(sparse)
    top = top[best(score.take(top), min(sparse_top, n, len(top)))]
    rest = np.ones(len(score), bool)
    rest[top] = False
    rest = np.flatnonzero(rest)
    rest = rest[best(score.take(rest), min(n - len(top), len(rest)))]
    return np.concatenate([top, rest])


def rank(score: np.ndarray, sparse: np.ndarray, fine: np.ndarray, n: int, sparse_top: int, fine_after: int,
         fine_share: float) -> np.ndarray:
    """Order of the first ``n`` proposals. Coarse candidates (power-of-two sides; ``fine`` false)
    are ranked by :func:`rank_coarse`, fine ones (a sqrt(2) step between) by score. After the
    first ``fine_after`` ranks, fine sizes take a fixed share ``q = fine_share`` of the list
    (rank ``i`` is fine when ``floor((j + 1) q) > floor(j q)``, ``j = i - fine_after``): a fixed
    pattern, so that the list for ``n = 10`` is the first 10 of the list for 1000. A queue that
    runs out leaves its slots to the other."""
    a, b = np.flatnonzero(~fine), np.flatnonzero(fine)
    ra = a[rank_coarse(score.take(a), sparse.take(a), min(n, len(a)), sparse_top)]
    rb = b[best(score.take(b), min(n, len(b)))]
    slot, ia, ib = fine_slots(n, fine_after, fine_share)
    ok = np.where(slot, ib < len(rb), ia < len(ra))
    merged = np.where(slot, rb[np.minimum(ib, max(len(rb) - 1, 0))] if len(rb) else -1,
                      ra[np.minimum(ia, max(len(ra) - 1, 0))] if len(ra) else -1)[ok]
    used_a, used_b = int((ok & ~slot).sum()), int((ok & slot).sum())
    return np.concatenate([merged, ra[used_a:], rb[used_b:]])[:n].astype(np.intp)


def head(score: np.ndarray, sparse: np.ndarray, fine: np.ndarray, n: int) -> np.ndarray:
    """The best ``n`` coarse 5x5 maxima, best first: the first ``n`` of :func:`rank` when ``n``
    is at most ``sparse_top`` and ``fine_after`` (fewer when there are fewer)."""
    top = np.flatnonzero(sparse & ~fine)
    return top[best(score[top], min(n, len(top)))]


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
    """Ranks of fine sizes among the first ``n`` (:func:`rank`) and every rank's place
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
