"""Object regions and random resized crops: pure integer geometry on pixel regions.

A region is ``(x0, y0, x1, y1)`` in integer pixels, ``x1``/``y1`` exclusive. Two geometries turn
a normalized box into a tight region and a context region:

* ``"original"`` (:func:`original_regions`): the ``extract_bb`` regions of the original
  object-cropping-ssl code. Coordinates truncate to pixels, the context region's dilation
  scales the *coordinates* (``x0 -= int(x0 * d)``, ``x1 += int(x1 * d)``), and an axis
  shorter than ``min_region`` px gets ``min_region // 2`` px of context on each side. The
  original then crops with PIL, which pads with black past the image edge; we clip to the
  image (``clip=False`` gives the unclipped regions, for comparison).
* ``"relative"`` (:func:`relative_regions`): the box dilated by ``dilation`` x its own width
  and height, and both regions grown about their centre to at least ``min_region`` px (at
  most the image), then shifted inside the image.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

__all__ = ["Region", "GEOMETRIES", "original_regions", "relative_regions", "object_regions", "clip_region",
           "random_resized_crop", "to_normalized_boxes", "draw_int", "draw_uniform"]

Region = tuple  # (x0, y0, x1, y1) integer pixels, x1/y1 exclusive
GEOMETRIES = ("original", "relative")
_TOLERANCE = 1e-6  # normalized coordinates this far outside [0, 1] are float error, and clipped


def draw_uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    """Uniform float in ``[lo, hi)`` from ``g`` (``lo`` when the range is empty)."""
    return float(torch.empty(1).uniform_(lo, hi, generator=g)) if hi > lo else float(lo)


def draw_int(lo: int, hi: int, g: torch.Generator | None) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive) from ``g``."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > lo else int(lo)


# --------------------------------------------------------------------------- the two geometries
def _original_axis(lo: int, hi: int, limit: int, min_region: int) -> tuple[int, int]:
    """One axis of the original code's small-box rule (``limit`` is W or H)."""
    half = min_region // 2
    if hi - lo < min_region:
        if lo - half > 0:
            lo -= half
        else:
            lo, hi = 0, min_region
        if hi + half < limit:
            hi += half
        else:
            lo = hi - min_region
    return lo, hi


def original_regions(width: int, height: int, box, dilation: float = 0.2, min_region: int = 224,
                     clip: bool = True) -> tuple[Region, Region]:
    """``(tight, context)`` regions of the original code for a normalized ``x0, y0, x1, y1`` box.

    ``dilation`` applies to the context region only; ``min_region`` is the original's 224
    (half of it, 112, is the context added per side). With ``clip=False`` the regions are
    those the original cropped from the image, padding with black past its edge.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    px = (int(x0 * width), int(y0 * height), int(x1 * width), int(y1 * height))
    out = []
    for d in (0.0, float(dilation)):
        a, b, c, e = px
        a, b, c, e = a - int(a * d), b - int(b * d), c + int(c * d), e + int(e * d)
        a, c = _original_axis(a, c, width, min_region)
        b, e = _original_axis(b, e, height, min_region)
        out.append(clip_region((a, b, c, e), width, height) if clip else (a, b, c, e))
    return out[0], out[1]


def _grow(lo: float, hi: float, limit: int, min_len: int) -> tuple[int, int]:
    """Integer span covering ``[lo, hi]`` clipped to ``[0, limit]``, grown about its centre to at
    least ``min(min_len, limit)`` (and at least 1) and shifted inside ``[0, limit]``."""
    a, b = max(0, math.floor(lo)), min(limit, math.ceil(hi))
    need = min(max(int(min_len), 1), limit)
    if b - a < need:
        a = min(max(math.floor((lo + hi) / 2 - need / 2), 0), limit - need)
        b = a + need
    return a, b


def relative_regions(width: int, height: int, box, dilation: float = 0.2,
                     min_region: int = 224) -> tuple[Region, Region]:
    """``(tight, context)`` regions for a normalized box: the box, and the box dilated by
    ``dilation`` x its own width/height per side; each grown about its centre to at least
    ``min_region`` px per side (at most the image) and kept inside the image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1, y0, y1 = x0 * width, x1 * width, y0 * height, y1 * height
    out = []
    for d in (0.0, float(dilation)):
        dx, dy = d * (x1 - x0), d * (y1 - y0)
        a, c = _grow(x0 - dx, x1 + dx, width, min_region)
        b, e = _grow(y0 - dy, y1 + dy, height, min_region)
        out.append((a, b, c, e))
    return out[0], out[1]


def object_regions(width: int, height: int, box, geometry: str = "original", dilation: float = 0.2,
                   min_region: int = 224) -> tuple[Region, Region]:
    """``(tight, context)`` integer regions of one normalized box under ``geometry``."""
    if geometry == "original":
        return original_regions(width, height, box, dilation, min_region)
    if geometry == "relative":
        return relative_regions(width, height, box, dilation, min_region)
    raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")


def clip_region(region: Region, width: int, height: int) -> Region:
    """``region`` clipped to the image, never empty: a region wholly outside keeps one pixel
    row/column at the nearest edge."""
    x0, y0, x1, y1 = (int(v) for v in region)
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return (x0, y0, max(x0 + 1, min(x1, width)), max(y0 + 1, min(y1, height)))


# --------------------------------------------------------------------------- random resized crops
def _rrc_size(w: int, h: int, scale, ratio, g) -> tuple[int, int] | None:
    """Crop size of torchvision's ``RandomResizedCrop`` in a ``w x h`` region; ``None`` after its
    ten failed tries (then it takes the centre crop of :func:`_rrc_fallback`)."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * draw_uniform(scale[0], scale[1], g)
        aspect = math.exp(draw_uniform(*log_ratio, g))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return cw, ch
    return None


def _rrc_fallback(w: int, h: int, ratio) -> tuple[int, int]:
    in_ratio = w / h  # the whole region, aspect clamped to ``ratio``
    if in_ratio < ratio[0]:
        return w, max(1, min(h, int(round(w / ratio[0]))))
    if in_ratio > ratio[1]:
        return max(1, min(w, int(round(h * ratio[1])))), h
    return w, h


def random_resized_crop(region: Region, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                        generator: torch.Generator | None = None, anchor=None) -> Region:
    """torchvision's ``RandomResizedCrop`` placement inside ``region``: size by area ``scale``
    and aspect ``ratio``, position uniform inside the region (the centre after ten failed
    tries, as torchvision). With ``anchor`` ``(x, y)`` the crop also contains that point
    (clamped into the region)."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    size = _rrc_size(w, h, scale, ratio, generator)
    if size is None:
        cw, ch = _rrc_fallback(w, h, ratio)
        if anchor is None:
            left, top = x0 + (w - cw) // 2, y0 + (h - ch) // 2
            return (left, top, left + cw, top + ch)
    else:
        cw, ch = size
    if anchor is None:
        left, top = draw_int(x0, x1 - cw, generator), draw_int(y0, y1 - ch, generator)
    else:
        ax, ay = min(max(anchor[0], x0), x1), min(max(anchor[1], y0), y1)
        left = draw_int(max(x0, math.ceil(ax - cw)), min(x1 - cw, math.floor(ax)), generator)
        top = draw_int(max(y0, math.ceil(ay - ch)), min(y1 - ch, math.floor(ay)), generator)
    return (left, top, left + cw, top + ch)


# --------------------------------------------------------------------------- boxes in
def to_normalized_boxes(boxes: Any) -> np.ndarray:
    """Boxes as a float64 ``(N, 4)`` array of normalized ``x0, y0, x1, y1``.

    Accepts ``tv_tensors.BoundingBoxes`` (any format, pixels of their canvas, clamped to it),
    or normalized arrays / tensors / lists (one box ``(4,)`` or ``(N, 4)``); ``None`` gives no
    boxes. Nothing is dropped silently: non-finite values, coordinates outside ``[0, 1]``
    (pixels passed as normalized) and rows with ``x1 < x0`` or ``y1 < y0`` (``x, y, w, h``
    passed as ``x0, y0, x1, y1``) raise ``ValueError``. Zero-width boxes are kept.
    """
    if boxes is None:
        return np.zeros((0, 4))
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        h, w = boxes.canvas_size
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        arr = xyxy.detach().cpu().double().numpy().reshape(-1, 4) / np.array([w, h, w, h])
        return _check_boxes(np.clip(arr, 0.0, 1.0), pixels=True)
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TypeError(f"boxes must be an (N, 4) array, tensor or list of normalized x0, y0, x1, y1, or "
                        f"tv_tensors.BoundingBoxes; got {type(boxes).__name__} ({e})") from None
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.ndim not in (1, 2) or arr.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in normalized x0, y0, x1, y1; got {arr.shape}")
    return _check_boxes(arr.reshape(-1, 4), pixels=False)


def _check_boxes(arr: np.ndarray, pixels: bool) -> np.ndarray:
    bad = ~np.isfinite(arr).all(1)
    if bad.any():
        raise ValueError(f"boxes hold non-finite values: {_rows(arr, bad)}")
    if not pixels:
        outside = ((arr < -_TOLERANCE) | (arr > 1 + _TOLERANCE)).any(1)
        if outside.any():
            raise ValueError(f"box coordinates must be normalized to [0, 1]; got {_rows(arr, outside)} (pass pixel "
                             "boxes as tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(H, W)))")
        arr = np.clip(arr, 0.0, 1.0)
    inverted = (arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1])
    if inverted.any():
        raise ValueError(f"boxes with x1 < x0 or y1 < y0: {_rows(arr, inverted)}; boxes are x0, y0, x1, y1 (for "
                         "x, y, w, h pass tv_tensors.BoundingBoxes(boxes, format='XYWH', canvas_size=(H, W)))")
    return arr


def _rows(arr: np.ndarray, mask: np.ndarray, limit: int = 3) -> str:
    idx = np.flatnonzero(mask)
    shown = "; ".join(f"row {i}: {np.array2string(arr[i], precision=4, separator=', ')}" for i in idx[:limit])
    return shown + (f" (and {len(idx) - limit} more of {len(arr)} rows)" if len(idx) > limit else "")
