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

:func:`snap_edges` moves the sides of the ranked proposals onto nearby outlines, with the
same border strips.
"""
from __future__ import annotations

import sys

import cv2
import numpy as np

from .features import gradients
from .solvers import logistic

__all__ = ["CUES", "Rescorer", "cue_integral", "cues", "snap_edges"]

CUES = ("score", "edge_in", "edge_ring", "edge_band", "edge_core", "edge_contrast", "edge_band_core", "centre_dx",
        "centre_y", "centre_y2", "log_area", "log_area2", "log_aspect", "log_aspect2", "at_border",
        "border_orientation")
STRIP = 1 / 8                    # half-width of the border strips, as a share of the side


def cue_integral(rgb: np.ndarray):
    """Integral images (``h+1 x w+1``) of the normed gradient (int32) and of ``max_c |gx|`` and
    ``max_c |gy|`` packed in one int64 (``gy << 32 | gx``: one look-up gives both sums) of uint8
    RGB ``rgb`` at half size (bilinear: area averaging is 4x slower at odd sizes, for the same
    held-out figures), and the ``(x, y)`` factors from ``rgb``'s pixels to them."""
    h, w = rgb.shape[:2]
    if min(h, w) >= 4:
        rgb = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_LINEAR)
    if min(rgb.shape[:2]) < 2:                       # too small for a gradient
        rgb = cv2.resize(rgb, (max(2, rgb.shape[1]), max(2, rgb.shape[0])), interpolation=cv2.INTER_NEAREST)
    gx, gy = gradients(rgb, np.array([0]), np.array([rgb.shape[1] - 1]))
    pair = [gx, gy] if sys.byteorder == "little" else [gy, gx]                     # gx in the low half
    packed = cv2.integral(cv2.merge(pair), sdepth=cv2.CV_32S).view(np.int64)[..., 0]    # int32 pairs, >= 0
    return (cv2.integral(cv2.add(gx, gy), sdepth=cv2.CV_32S), packed), (rgb.shape[1] / w, rgb.shape[0] / h)


def _sums(integral: np.ndarray, rects: np.ndarray):
    """Sums over rectangles ``rects`` (``(..., 4, n)`` pixel edges x0, y0, x1, y1; rounded,
    clipped to at least one pixel inside the image) of ``integral`` (``h+1 x w+1``): ``(..., n)``
    sums and pixel areas."""
    h, w = integral.shape[0] - 1, integral.shape[1] - 1
    r = np.rint(rects).astype(np.intp)
    a = np.clip(r[..., 0, :], 0, w - 1)
    b = np.clip(r[..., 1, :], 0, h - 1)
    c = np.clip(r[..., 2, :], a + 1, w)
    d = np.clip(r[..., 3, :], b + 1, h)
    top, bottom = b * (w + 1), d * (w + 1)
    v = integral.take(np.stack([bottom + c, top + c, bottom + a, top + a]))
    return v[0] - v[1] - v[2] + v[3], (c - a) * (d - b)


def _border(packed: np.ndarray, box: np.ndarray, shifts):
    """Gradient sums along and across the sides of ``box`` (``(4, n)`` xyxy in the integral's
    pixels) in strips of half-width ``STRIP`` of the side, centred on each side moved by each of
    ``shifts`` (shares of the side): ``(edges, along, across, area)``, each ``(4, len(shifts),
    n)``, sides left, right, top, bottom (float32 positions and sums, int areas). Along is
    ``|gx|`` on the left and right, ``|gy|`` on the top and bottom; ``packed`` is the
    ``gy << 32 | gx`` integral of :func:`cue_integral`."""
    x0, y0, x1, y1 = box
    wd, ht = np.maximum(x1 - x0, np.float32(1e-3)), np.maximum(y1 - y0, np.float32(1e-3))
    shift = np.asarray(shifts, np.float32)[:, None]
    ex = np.stack([x0 + shift * wd, x1 + shift * wd])                                  # (2, k, n): left, right
    ey = np.stack([y0 + shift * ht, y1 + shift * ht])                                  # (2, k, n): top, bottom
    dx, dy = wd * np.float32(STRIP), ht * np.float32(STRIP)
    y0, y1, x0, x1 = (np.broadcast_to(v, ex.shape) for v in (y0, y1, x0, x1))
    rects = np.concatenate([np.stack([ex - dx, y0, ex + dx, y1], axis=2),            # (4, k, 4, n)
                            np.stack([x0, ey - dy, x1, ey + dy], axis=2)])
    s, area = _sums(packed, rects)
    gx, gy = (s & 0xFFFFFFFF).astype(np.float32), (s >> 32).astype(np.float32)
    return (np.concatenate([ex, ey]), np.concatenate([gx[:2], gy[2:]]), np.concatenate([gy[:2], gx[2:]]), area)


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
    s, area = _sums(integral, np.stack([box, box + grow, box - grow]))              # window, outer, core
    s, area = s.astype(np.float32), area.astype(np.float32)
    _, along, across, a = _border(packed, box, [0])
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


def snap_edges(packed: np.ndarray, factors, boxes: np.ndarray, step: float, size) -> np.ndarray:
    """``boxes`` (xyxy, pixels of the image of ``size = (w, h)`` that :func:`cue_integral` was
    given) with every side moved by ``-step``, 0 or ``+step`` of the box's side to where the
    gradient runs along it most: the largest mean ``|g_along| - |g_across|`` in a strip of
    half-width ``STRIP`` of the side centred on the edge (from ``packed``, the ``gy << 32 | gx``
    integral). Sides move independently; the box stays where nothing is better; result
    clipped to the image."""
    f = np.tile(np.float32(factors), 2)
    b = np.ascontiguousarray((np.asarray(boxes, np.float32) * f).T)                    # (4, n)
    edges, along, across, area = _border(packed, b, [0, -step, step])
    pick = ((along - across) / area).argmax(1)                                         # ties: no move
    new = np.take_along_axis(edges, pick[:, None], 1)[:, 0]
    out = new[[0, 2, 1, 3]].T / f
    w, h = size
    return np.clip(out, 0, np.array([w, h, w, h], np.float32))


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
