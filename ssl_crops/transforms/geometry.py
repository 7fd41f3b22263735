"""Object regions and random resized crops: pure integer geometry on pixel regions."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

Region = tuple  # (x0, y0, x1, y1) integer pixels, x1/y1 exclusive


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=g)) if hi > lo else float(lo)


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > lo else int(lo)


def _rrc_size(w: int, h: int, scale, ratio, g) -> tuple[int, int]:
    """Crop size of torchvision's RandomResizedCrop inside a ``w x h`` region."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], g)
        aspect = math.exp(_uniform(*log_ratio, g))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return cw, ch
    in_ratio = w / h  # fallback: the whole region, aspect clamped to ``ratio``
    if in_ratio < ratio[0]:
        return w, max(1, int(round(w / ratio[0])))
    if in_ratio > ratio[1]:
        return max(1, int(round(h * ratio[1]))), h
    return w, h


def _rrc(region: Region, scale, ratio, g, anchor=None) -> Region:
    """RandomResizedCrop inside ``region``; with ``anchor`` (x, y) the crop contains it."""
    x0, y0, x1, y1 = region
    cw, ch = _rrc_size(x1 - x0, y1 - y0, scale, ratio, g)
    if anchor is None:
        left, top = _randint(x0, x1 - cw, g), _randint(y0, y1 - ch, g)
    else:
        ax, ay = anchor
        left = _randint(max(x0, math.ceil(ax - cw)), min(x1 - cw, math.floor(ax)), g)
        top = _randint(max(y0, math.ceil(ay - ch)), min(y1 - ch, math.floor(ay)), g)
    return (left, top, left + cw, top + ch)


def _pixel_region(box: np.ndarray, width: int, height: int, min_pixels: int) -> Region:
    """Integer pixel region of a normalized box, grown about its centre to at least
    ``min_pixels`` per side (never more than the image) and shifted inside the image."""
    x0, x1 = _span(box[0] * width, box[2] * width, width, min_pixels)
    y0, y1 = _span(box[1] * height, box[3] * height, height, min_pixels)
    return (x0, y0, x1, y1)


def _span(lo: float, hi: float, limit: int, min_len: int) -> tuple[int, int]:
    a, b = max(0, math.floor(lo)), min(limit, math.ceil(hi))
    need = min(max(min_len, 1), limit)
    if b - a < need:
        a = int(round((lo + hi) / 2 - need / 2))
        a = min(max(a, 0), limit - need)
        b = a + need
    return a, b


def _dilate(region: Region, dilation: float, width: int, height: int) -> Region:
    """Grow ``region`` by ``dilation`` x its own width/height on each side, clipped."""
    x0, y0, x1, y1 = region
    dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
    return (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)),
            min(width, math.ceil(x1 + dx)), min(height, math.ceil(y1 + dy)))


def to_normalized_boxes(boxes: Any) -> np.ndarray:
    """Boxes as a float ``(N, 4)`` array of normalized ``x0, y0, x1, y1``.

    Accepts ``tv_tensors.BoundingBoxes`` (any format, pixel coordinates of their canvas),
    or arrays / tensors / lists already normalized; ``None`` gives no boxes.
    """
    if boxes is None:
        return np.zeros((0, 4))
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        h, w = boxes.canvas_size
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        return xyxy.detach().cpu().double().numpy().reshape(-1, 4) / np.array([w, h, w, h])
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in normalized x0, y0, x1, y1; got {arr.shape}")
    arr = arr.reshape(-1, 4)
    valid = np.isfinite(arr).all(1) & (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])
    return np.clip(arr[valid], 0.0, 1.0)


