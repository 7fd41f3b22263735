"""Stage III of BING: re-scoring the best candidates with objectness cues, and edge snapping.

Stage I sees an 8x8 gradient window; the classic objectness cues (Alexe et al., PAMI 2012)
see the window against its surroundings. For the best ``top`` candidates of an image, the
edge cues are means over rectangles taken in O(1) from integral images of the gradient (RGB)
of the working image at half size (normed, ``|gx|`` and ``|gy|``):

- edge density inside the window, on a ring around it (the window grown by a quarter of its
  side on every side), in the window's border band (outside its central half) and in its
  core (the central half), and the log ratios window/ring and band/core;
- edge orientation along the window's border (after EdgeBoxes, Zitnick & Dollar 2014: an
  object's outline runs along a tight box, while edges that cross the box mean it cuts
  through something): in strips straddling each side (an eighth of the side inward and
  outward), the log ratio of the gradient parallel to that side (``|gx|`` on the left and
  right, ``|gy|`` on the top and bottom) to the gradient across it;
- placement and shape: horizontal distance of the centre to the image centre, vertical
  position (and its square), log area as a share of the image (and its square), log aspect
  (and its square), whether the window touches the image border.

With the calibrated stage-II score they feed one logistic model (:class:`Rescorer`), fitted
on the candidates of the training images: label "IoU >= 0.5 with a box"; every box spreads
a weight ``box_weight`` over the windows that hit it (negatives weigh 1), so that boxes hit
by a few windows count as much as boxes hit by many.

The integral images and border strips are :mod:`.edges`'; edge snapping (:mod:`.snapping`) uses
them too.
"""
from __future__ import annotations

import numpy as np

from .edges import border_sums, cue_integral, rect_sums
from .snapping import snap_edges  # noqa: F401  (its import path before it moved to .snapping)
from .solvers import logistic

__all__ = ["CUES", "Rescorer", "cue_integral", "cues", "snap_edges"]

CUES = ("score", "edge_in", "edge_ring", "edge_band", "edge_core", "edge_contrast", "edge_band_core", "centre_dx",
        "centre_y", "centre_y2", "log_area", "log_area2", "log_aspect", "log_aspect2", "at_border",
        "border_orientation")


def cues(integral: np.ndarray, factors, boxes: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``(n, len(CUES))`` float32 cues of ``boxes`` (xyxy, pixels of the image
    :func:`cue_integral` was given, which returned ``integral`` and ``factors``) with their
    stage-II ``score``."""
    integral, packed = integral
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    box = np.ascontiguousarray((np.asarray(boxes, np.float32) * np.tile(np.float32(factors), 2)).T)   # (4, n)
    x0, y0, x1, y1 = box
    q = np.maximum(box[2:] - box[:2], np.float32(1e-3)) / 4                          # quarter sides
    grow = np.concatenate([-q, q])
    s, area = rect_sums(integral, np.stack([box, box + grow, box - grow]))              # window, outer, core
    s, area = s.astype(np.float32), area.astype(np.float32)
    _, along, across, a = border_sums(packed, box, [0])
    a = a[:, 0].astype(np.float32)
    along, across = (along[:, 0] / a).sum(0), (across[:, 0] / a).sum(0)               # over the 4 sides
    x = np.empty((len(CUES), len(x0)), np.float32)
    x[0] = score
    x[1], x[4] = s[0] / area[0], s[2] / area[2]                                        # window, core
    x[2] = (s[1] - s[0]) / np.maximum(area[1] - area[0], 1)                            # ring
    x[3] = (s[0] - s[2]) / np.maximum(area[0] - area[2], 1)                            # band
    x[5] = np.log((x[1] + 1) / (x[2] + 1))
    x[6] = np.log((x[3] + 1) / (x[4] + 1))
    x[7] = np.abs((x0 + x1) / (2 * w) - 0.5)
    x[8] = (y0 + y1) / (2 * h)
    x[9] = np.square(x[8] - 0.5)
    x[10] = np.log(16 * q[0] * q[1] / (w * h))
    x[11] = np.square(x[10])
    x[12] = np.log(q[0] / q[1])
    x[13] = np.square(x[12])
    x[14] = (x0 <= 0.5) | (y0 <= 0.5) | (x1 >= w - 0.5) | (y1 >= h - 0.5)
    x[15] = np.log((along / 4 + 1) / (across / 4 + 1))
    return x.T


class Rescorer:
    """Logistic model over the first ``n`` of :data:`CUES` for the best ``top`` candidates of an
    image (``n = len(CUES)``; models saved before a cue was added use fewer).

    ``mean``, ``std``: the cues' standardization; ``weights``: ``n + 1`` logistic weights (the
    last is the bias). The new score is the logit. ``head``: the first ``head`` proposals keep
    their stage-II order (``Bing`` lifts their scores above the rest).
    """

    def __init__(self, mean, std, weights, top: int = 3000, head: int = 0):
        self.mean = np.asarray(mean, np.float64).reshape(-1)
        self.std = np.asarray(std, np.float64).reshape(-1)
        self.weights = np.asarray(weights, np.float64).reshape(-1)
        n = len(self.mean)
        if not (1 <= n <= len(CUES) and len(self.std) == n and len(self.weights) == n + 1):
            raise ValueError(f"a rescorer needs n <= {len(CUES)} means and stds and n + 1 weights, got "
                             f"{len(self.mean)}, {len(self.std)} and {len(self.weights)}")
        if int(top) < 1:
            raise ValueError(f"rescorer top must be at least 1, got {top}")
        if not 0 <= int(head) <= int(top):
            raise ValueError(f"rescorer head must be in 0..top ({top}), got {head}")
        self.top, self.head = int(top), int(head)
        self._w = (self.weights[:-1] / self.std).astype(np.float32)                # standardization folded in
        self._b = np.float32(self.weights[-1] - self._w @ self.mean)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Logits of cue rows ``x`` (float32)."""
        return x[:, :len(self._w)] @ self._w + self._b

    def rescore(self, work: np.ndarray, boxes: np.ndarray, score: np.ndarray, head: np.ndarray):
        """Stage III of candidates ``boxes`` (xyxy, pixels of uint8 RGB ``work``) with stage-II
        ``score``: their new scores, those of ``head`` (indices, best first) lifted above the
        rest in that order, and :func:`cue_integral` of ``work`` (edge snapping uses it too)."""
        integral = cue_integral(work)
        s = self.score(cues(*integral, boxes, score))
        s[head] = s.max() + np.arange(len(head), 0, -1, dtype=np.float32)       # first, in stage-II order
        return s, integral

    @property
    def array(self) -> np.ndarray:
        """``(3, n + 1)``: mean, std (padded with 0 and 1) and weights, as saved."""
        return np.stack([np.append(self.mean, 0.0), np.append(self.std, 1.0), self.weights])

    @classmethod
    def from_array(cls, a, top: int, head: int = 0) -> "Rescorer":
        a = np.asarray(a, np.float64)
        if a.ndim != 2 or a.shape[0] != 3 or not 2 <= a.shape[1] <= len(CUES) + 1:
            raise ValueError(f"expected a (3, n + 1) rescorer array with n <= {len(CUES)}, got {a.shape}")
        return cls(a[0, :-1], a[1, :-1], a[2], top, head)

    @classmethod
    def fit(cls, x: np.ndarray, iou: list, top: int = 3000, head: int = 0, box_weight: float = 30.0,
            ridge: float = 1e-3) -> "Rescorer":
        """Fit on cue rows ``x`` (all images stacked) and, per image, the IoU matrix of its
        candidates with its boxes (rows in the order of ``x``)."""
        hit, weight = [], []
        for m in iou:
            pos = m >= 0.5
            hit.append(pos.any(1))
            weight.append(np.where(hit[-1], box_weight * (pos / np.maximum(pos.sum(0), 1)).sum(1), 1.0))
        hit, weight = np.concatenate(hit), np.concatenate(weight)
        if len(x) != len(hit):
            raise ValueError(f"{len(x)} cue rows but {len(hit)} IoU rows")
        x = np.asarray(x, np.float64)
        mean, std = x.mean(0), x.std(0) + 1e-9
        return cls(mean, std, logistic((x - mean) / std, hit, weight, ridge), top, head)
