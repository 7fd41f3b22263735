"""BING features: colour spaces, normed gradients, the packed multi-size layout, the candidates
of stages I and II, and non-maximum suppression on score maps."""
from __future__ import annotations

import cv2
import numpy as np

from .images import as_rgb

__all__ = ["W8", "SIDES", "COLORS", "convert_color", "normed_gradient", "Layout", "Candidates", "local_maxima"]

W8 = 8                                                    # feature window side
SIDES = np.rint(8 * 2 ** (np.arange(14) / 2)).astype(np.int64)   # window sides 8, 11, 16, ..., 724 (sqrt 2 steps)
COLORS = ("rgb", "hsv", "gray")


def convert_color(img: np.ndarray, color: str) -> np.ndarray:
    """uint8 RGB ``img`` in the colour space the gradient is taken in (3 channels, uint8)."""
    if color == "rgb":
        return img
    if color == "hsv":                                    # hue over the full 0..255 range
        return cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    if color == "gray":
        return np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    raise ValueError(f"unknown colour space {color!r}; expected one of {COLORS}")


def _maxdiff(p, q, out=None) -> np.ndarray:
    """Per-pixel max over channels of ``|p_c - q_c|`` for lists of uint8 planes ``p``, ``q``
    (written to ``out`` when given)."""
    return cv2.max(cv2.max(cv2.absdiff(p[0], q[0]), cv2.absdiff(p[1], q[1])), cv2.absdiff(p[2], q[2]), dst=out)


def _one_sided(p, starts: np.ndarray, ends: np.ndarray, axis: int) -> np.ndarray:
    """Twice the one-sided ``max_c |difference|`` of planes ``p`` along ``axis`` at the first
    (``starts``) and last (``ends``) indices of packed images, in that order (uint8, saturated)."""
    a, b = np.concatenate([starts + 1, ends]), np.concatenate([starts, ends - 1])
    d = _maxdiff([c.take(a, axis) for c in p], [c.take(b, axis) for c in p])
    return cv2.add(d, d)


def gradients(a: np.ndarray, col_starts: np.ndarray, col_ends: np.ndarray, row_starts=None, row_ends=None):
    """``max_c |gx|`` and ``max_c |gy|`` (uint8, saturated) of an ``H x W x 3`` canvas of images
    packed side by side (and one above the other).

    ``col_starts``/``col_ends`` are the first/last column of every packed image, ``row_starts``/
    ``row_ends`` its first/last row (default: the canvas's): there the central difference is
    replaced by twice the one-sided one, as OpenCV does on image borders, so packed images do
    not see each other.
    """
    h, w = a.shape[:2]
    if row_starts is None:
        row_starts, row_ends = np.array([0]), np.array([h - 1])
    p = cv2.split(a)                          # contiguous planes: faster than strided channels
    gx, gy = np.empty((h, w), np.uint8), np.empty((h, w), np.uint8)
    if w > 2:
        _maxdiff([c[:, 2:] for c in p], [c[:, :-2] for c in p], gx[:, 1:-1])
    gx[:, np.concatenate([col_starts, col_ends])] = _one_sided(p, col_starts, col_ends, 1)
    if h > 2:
        _maxdiff([c[2:] for c in p], [c[:-2] for c in p], gy[1:-1])
    gy[np.concatenate([row_starts, row_ends])] = _one_sided(p, row_starts, row_ends, 0)
    return gx, gy


def gradient(a: np.ndarray, col_starts: np.ndarray, col_ends: np.ndarray) -> np.ndarray:
    """Normed gradient ``min(255, max_c |gx| + max_c |gy|)`` of a packed canvas (:func:`gradients`)."""
    return cv2.add(*gradients(a, col_starts, col_ends))


def normed_gradient(img, color: str = "rgb") -> np.ndarray:
    """BING normed gradient of one image (uint8 ``H x W``) in colour space ``color``."""
    a = convert_color(as_rgb(img), color)
    if min(a.shape[:2]) < 2:
        raise ValueError("normed_gradient needs an image at least 2x2")
    h, w = a.shape[:2]
    return gradient(a, np.array([0]), np.array([w - 1]))


def _means(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``(a + b + 1) >> 1`` of uint8 arrays into ``out``: what OpenCV's bilinear resizing (11-bit
    fixed point) gives halfway between two pixels (in float32 every term is exact)."""
    return cv2.addWeighted(a, 0.5, b, 0.5, 0.25, dst=out)


class Layout:
    """Where every window size's resized image sits, for one image size.

    A window of ``w x h`` pixels (clipped to the image) is one 8x8 window of the image resized
    to ``rw x rh = round(8 W / w) x round(8 H / h)``. Sizes more than twice the image are
    skipped; sizes that clip to the same resized extent are kept once (the smallest). All
    widths are packed side by side in one horizontal strip (one resize each); every height is
    a band, the strip's columns of the widths it needs resized vertically to ``rh`` (resizes by
    integer factors take source lines directly, as OpenCV's bilinear resizing would). Global
    score-map coordinates: row ``y0[band] + y``, column in strip coordinates.
    """

    def __init__(self, width: int, height: int, sizes: np.ndarray):
        self.width, self.height = width, height
        cw, ch = np.minimum(sizes[:, 0], width), np.minimum(sizes[:, 1], height)
        rw = np.maximum(np.rint(W8 * width / cw), W8).astype(int)
        rh = np.maximum(np.rint(W8 * height / ch), W8).astype(int)
        ok = (sizes[:, 0] <= 2 * width) & (sizes[:, 1] <= 2 * height) & (width >= W8) & (height >= W8)
        rw, rh = np.minimum(rw, max(width, W8)), np.minimum(rh, max(height, W8))
        # one model size per resized extent: the smallest (ties of clipping)
        order = np.lexsort((sizes[:, 1], sizes[:, 0], rh, rw))
        self.active = np.zeros(len(sizes), bool)
        seen = set()
        for k in order:
            if ok[k] and (rw[k], rh[k]) not in seen:
                seen.add((rw[k], rh[k]))
                self.active[k] = True
        ks = np.flatnonzero(self.active)
        self.rw, self.rh = np.unique(rw[ks]), np.unique(rh[ks])          # parts (widths), bands (heights)
        self.x0 = np.concatenate([[0], np.cumsum(self.rw)[:-1]]).astype(int)
        self.y0 = np.concatenate([[0], np.cumsum(self.rh)[:-1]]).astype(int)
        self.cw, self.ch = int(self.rw.sum()), int(self.rh.sum())
        self.part = np.full(len(sizes), -1)
        self.band = np.full(len(sizes), -1)
        self.part[ks] = np.searchsorted(self.rw, rw[ks])
        self.band[ks] = np.searchsorted(self.rh, rh[ks])
        self.table = np.full((len(self.rh), len(self.rw)), -1)       # band, part -> model size or -1
        self.table[self.band[ks], self.part[ks]] = ks
        self.col_part = np.full(max(self.cw, 0), -1)                  # window start column -> part
        for i in range(len(self.rw)):
            self.col_part[self.x0[i]:self.x0[i] + self.rw[i] - W8 + 1] = i
        self.row_band = np.repeat(np.arange(len(self.rh)), self.rh)
        self.sx, self.sy = width / self.rw, height / self.rh           # image pixels per resized pixel
        # per global column / row: the window's pixel edges (x0, x1) / (y0, y1), for boxes
        lx, ly = np.arange(self.cw) - self.x0[self.col_part], np.arange(self.ch) - self.y0[self.row_band]
        self._xedges = (np.stack([lx, lx + W8], 1) * self.sx[self.col_part, None]).astype(np.float32)
        self._yedges = (np.stack([ly, ly + W8], 1) * self.sy[self.row_band, None]).astype(np.float32)
        # integer factors W / rw (powers of two) and H / rh, else 0: there bilinear resizing is
        # a mean of two source lines or one line (:meth:`strip`, :meth:`canvas`)
        kx, ky = width // np.maximum(self.rw, 1), height // np.maximum(self.rh, 1)
        self.kx = np.where((kx * self.rw == width) & (kx >= 2) & (kx & (kx - 1) == 0), kx, 0)
        self.ky = np.where(ky * self.rh == height, ky, 0)
        # per band: the strip columns it needs and, per window start column, its size or -1
        self.bands = []
        for j in range(len(self.rh)):
            parts = np.flatnonzero(self.table[j] >= 0)
            c0, c1 = self.x0[parts[0]], self.x0[parts[-1]] + self.rw[parts[-1]]
            cols = self.col_part[c0:c1 - W8 + 1]
            self.bands.append((c0, c1, np.where(cols >= 0, self.table[j, np.maximum(cols, 0)], -1)))

    def strip(self, img: np.ndarray) -> np.ndarray:
        """``img`` resized to every width, side by side (``H x cw x 3``)."""
        out = np.empty((self.height, self.cw, 3), np.uint8)
        means = None
        for x0, w, k in zip(self.x0, self.rw, self.kx):
            if k:                      # W = k w: the means of columns k x + k/2 - 1 and k x + k/2
                if means is None:      # (of all neighbouring columns, every k-th picked)
                    means = np.empty((self.height, self.width + self.kx.max() // 2, 3), np.uint8)
                    _means(img[:, :-1], img[:, 1:], means[:, :self.width - 1])
                cv2.resize(means[:, k // 2 - 1:k // 2 - 1 + self.width], (int(w), self.height),
                           dst=out[:, x0:x0 + w], interpolation=cv2.INTER_NEAREST)
            else:
                cv2.resize(img, (int(w), self.height), dst=out[:, x0:x0 + w], interpolation=cv2.INTER_LINEAR)
        return out

    def canvas(self, img: np.ndarray) -> np.ndarray:
        """Normed gradients of all bands in one ``ch x cw`` uint8 canvas (undefined where unused):
        every band's strip columns resized to its height, packed, one gradient of the lot."""
        strip = self.strip(img)
        packed = np.empty((self.ch, self.cw, 3), np.uint8)
        for (c0, c1, _), y0, h, k in zip(self.bands, self.y0, self.rh, self.ky):
            band = packed[y0:y0 + h, c0:c1]
            if k and k % 2 == 0:       # H = k rh: the means of rows k y + k/2 - 1 and k y + k/2
                _means(strip[k // 2 - 1::k, c0:c1], strip[k // 2::k, c0:c1], band)
            elif k:                    # odd k: row k y + (k - 1) / 2
                band[...] = strip[k // 2::k, c0:c1]
            else:
                cv2.resize(strip[:, c0:c1], (int(c1 - c0), int(h)), dst=band, interpolation=cv2.INTER_LINEAR)
        return cv2.add(*gradients(packed, self.x0, self.x0 + self.rw - 1, self.y0, self.y0 + self.rh - 1))

    def size_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Model size index of the windows at global positions ``(ys, xs)`` (-1: none)."""
        part = self.col_part[xs]
        return np.where(part >= 0, self.table[self.row_band[ys], np.maximum(part, 0)], -1)

    def boxes(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Pixel xyxy boxes of the windows at global positions ``(ys, xs)``."""
        return np.stack([self._xedges.take(xs, 0), self._yedges.take(ys, 0)], 2).reshape(-1, 4)

    def place(self, ks: np.ndarray, fx: np.ndarray, fy: np.ndarray):
        """Global ``(ys, xs)`` of size-``ks`` windows whose top-left corner is at the fraction
        ``fx, fy`` (in [0, 1]) of the positions available to that size."""
        i, j = self.part[ks], self.band[ks]
        lx = np.rint(fx * (self.rw[i] - W8)).astype(int)
        ly = np.rint(fy * (self.rh[j] - W8)).astype(int)
        return self.y0[j] + ly, self.x0[i] + lx

    def centred(self, ks: np.ndarray, box: np.ndarray):
        """Global ``(ys, xs)`` of the size-``ks`` windows centred nearest to ``box``."""
        i, j = self.part[ks], self.band[ks]
        cx = (box[0] + box[2]) / 2 / self.sx[i] - W8 / 2
        cy = (box[1] + box[3]) / 2 / self.sy[j] - W8 / 2
        lx = np.clip(np.rint(cx), 0, self.rw[i] - W8).astype(int)
        ly = np.clip(np.rint(cy), 0, self.rh[j] - W8).astype(int)
        return self.y0[j] + ly, self.x0[i] + lx


class Candidates:
    """Stage-I candidates of one working image: global score-map positions, size, score, 5x5 flag,
    and after stage III the image's cue integrals (``cue``)."""

    def __init__(self, lay: Layout, ys, xs, size, score, sparse, cue=None):
        self.lay, self.ys, self.xs, self.size, self.score, self.sparse, self.cue = lay, ys, xs, size, score, sparse, cue

    @classmethod
    def empty(cls, lay: Layout) -> "Candidates":
        e = np.zeros(0, np.intp)
        return cls(lay, e, e, e, np.zeros(0, np.float32), np.zeros(0, bool))

    def take(self, sel) -> "Candidates":
        return Candidates(self.lay, self.ys[sel], self.xs[sel], self.size[sel], self.score[sel], self.sparse[sel],
                           self.cue)

    def boxes(self) -> np.ndarray:
        return self.lay.boxes(self.ys, self.xs)

    def best(self, n: int) -> "Candidates":
        """The ``n`` best by score, in their original order (ties at the cut: the first)."""
        if n >= len(self.score):
            return self
        cut = np.partition(self.score, len(self.score) - n)[len(self.score) - n]
        keep = self.score > cut
        keep[np.flatnonzero(self.score == cut)[:n - np.count_nonzero(keep)]] = True
        return self.take(np.flatnonzero(keep))


def _before(k: int) -> np.ndarray:
    """``k x k`` kernel of the neighbours before the centre in raster order."""
    m = np.ones((k, k), np.uint8)
    m[k // 2, k // 2:] = 0
    m[k // 2 + 1:] = 0
    return m


_KERNELS = {k: (np.ones((k, k), np.uint8), _before(k)) for k in (3, 5)}


def local_maxima(s: np.ndarray, k: int) -> np.ndarray:
    """uint8 mask of the positions of ``s`` that are the maximum of their ``k x k``
    neighbourhood (ties go to the first in raster order; -inf is never a maximum)."""
    full, before = _KERNELS[k]
    c = k // 2
    # -inf is never kept: it is not above its earlier neighbours nor the border (-FLT_MAX)
    return cv2.bitwise_and(cv2.compare(s, cv2.dilate(s, full), cv2.CMP_GE),
                           cv2.compare(s, cv2.dilate(s, before, anchor=(c, c)), cv2.CMP_GT))


def grid_maxima(s: np.ndarray) -> np.ndarray:
    """uint8 mask approximating OpenCV's greedy 5x5 NMS in one pass: the maximum of every 3x3
    tile (tiles from the top-left corner) that no tile maximum within 2 px beats (ties go to
    the first in raster order). Unlike local maxima this keeps a lattice of candidates on
    slopes of the score map, as the greedy NMS does; -inf is never kept."""
    h, w = s.shape
    th, tw = -(-h // 3), -(-w // 3)
    padded = cv2.copyMakeBorder(s, 0, 3 * th - h, 0, 3 * tw - w, cv2.BORDER_CONSTANT, value=-np.inf)
    tile = cv2.dilate(padded, _KERNELS[3][0])[1::3, 1::3]                 # max of every tile
    top = cv2.resize(tile, (3 * tw, 3 * th), interpolation=cv2.INTER_NEAREST)[:h, :w]
    m = cv2.compare(s, top, cv2.CMP_GE)
    t = np.where(m > 0, s, np.float32(-np.inf))                               # tile maxima only
    full, before = _KERNELS[5]
    return cv2.bitwise_and(cv2.compare(t, cv2.dilate(t, full), cv2.CMP_GE),
                           cv2.compare(t, cv2.dilate(t, before, anchor=(2, 2)), cv2.CMP_GT))
