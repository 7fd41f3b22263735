"""Integral images of the gradient of a working image, and sums over rectangles and over strips
along a box's sides: what stage III's cues (:mod:`.rescoring`) and edge snapping
(:mod:`.snapping`) measure."""
from __future__ import annotations

import sys

import cv2
import numpy as np

from .gradients import gradients

__all__ = ["STRIP", "cue_integral", "rect_sums", "border_sums"]

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


def rect_sums(integral: np.ndarray, rects: np.ndarray):
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


def border_sums(packed: np.ndarray, box: np.ndarray, shifts):
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
    s, area = rect_sums(packed, rects)
    gx, gy = (s & 0xFFFFFFFF).astype(np.float32), (s >> 32).astype(np.float32)
    return (np.concatenate([ex, ey]), np.concatenate([gx[:2], gy[2:]]), np.concatenate([gy[:2], gx[2:]]), area)
