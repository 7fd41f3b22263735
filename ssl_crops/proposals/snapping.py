"""Edge snapping of ranked BING proposals: every side moves onto a nearby outline, measured in
the border strips of :mod:`.edges` (window sizes are a factor 2 apart and positions an eighth of
a window, so many windows miss an object's outline)."""
from __future__ import annotations

import numpy as np

from .edges import border_sums
from .ranking import unique_snapped

__all__ = ["snap_edges", "snap"]


def snap_edges(packed: np.ndarray, factors, boxes: np.ndarray, step: float, size) -> np.ndarray:
    """``boxes`` (xyxy, pixels of the image of ``size = (w, h)`` that :func:`~.edges.cue_integral` was
    given) with every side moved by ``-step``, 0 or ``+step`` of the box's side to where the
    gradient runs along it most: the largest mean ``|g_along| - |g_across|`` in a strip of
    half-width ``edges.STRIP`` of the side centred on the edge (from ``packed``, the ``gy << 32 | gx``
    integral). Sides move independently; the box stays where nothing is better; result
    clipped to the image."""
    f = np.tile(np.float32(factors), 2)
    b = np.ascontiguousarray((np.asarray(boxes, np.float32) * f).T)                    # (4, n)
    edges, along, across, area = border_sums(packed, b, [0, -step, step])
    pick = ((along - across) / area).argmax(1)                                         # ties: no move
    new = np.take_along_axis(edges, pick[:, None], 1)[:, 0]
    out = new[[0, 2, 1, 3]].T / f
    w, h = size
    return np.clip(out, 0, np.array([w, h, w, h], np.float32))



def snap(boxes: np.ndarray, score: np.ndarray, integral, step: float, head: int, keep: int | None, size):
    """Snap ranked ``boxes`` (xyxy, pixels of the working image of ``size = (w, h)``, best first,
    no repeats) but the first ``head`` (:func:`snap_edges` with ``integral = (integrals, factors)``
    of :func:`~.edges.cue_integral`); a box snapped onto an earlier one stays put, one that still
    repeats an earlier one is dropped with its ``score`` (:func:`~.ranking.unique_snapped`).

    Returns the first ``keep`` (``None``: all) boxes and scores of that list, snapping only as
    many boxes as they need: a box's fate depends only on the boxes before it."""
    (_, packed), factors = integral
    keep = len(boxes) if keep is None else keep
    m = min(max(keep, head), len(boxes))
    while True:
        snapped = boxes[:m].copy()
        snapped[head:] = snap_edges(packed, factors, boxes[head:m], step, size)
        out, kept = unique_snapped(boxes[:m], snapped)
        if len(out) >= keep or m == len(boxes):
            return out[:keep], score[:m][kept][:keep]
        m = min(2 * m, len(boxes))                     # boxes were dropped: snap further down the list
