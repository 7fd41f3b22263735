"""BING objectness proposals (Cheng et al., CVPR 2014): a fast, trainable re-implementation.

Pipeline for one image (``Bing.propose``):

1. For every quantized window size ``(w, h)``, ``w, h in {16, 32, ..., 512}`` (sizes larger
   than twice the image skipped, sizes larger than the image clipped to it), the image is
   resized to ``round(8 W / w) x round(8 H / h)`` so that one 8x8 window is one candidate.
   The resize is bilinear and separable: one horizontal resize per width, one vertical
   resize per height, all sizes packed into one canvas so the steps below run once per
   image instead of once per size.
2. Normed gradients ("MAXBGR"): ``min(255, max_c |gx_c| + max_c |gy_c|)`` with central
   differences inside and doubled one-sided differences on the borders of every resized
   image, as in OpenCV contrib (the max over channels does not depend on RGB/BGR order).
3. Stage I: the 8x8 linear filter is correlated with the whole canvas (``cv2.matchTemplate``,
   exact float weights, not the binarized approximation of the paper).
4. Non-maximum suppression per size: a position is kept when it is the maximum of its 5x5
   neighbourhood (ties go to the first in raster order), then the best ``per_size``.
5. Stage II: per-size calibration ``v_i * s + t_i``; boxes mapped back to pixel ``xyxy``
   (continuous coordinates, ``x1``/``y1`` exclusive), sorted best first, optional box NMS.

``Bing.fit`` trains both stages (a primal-Newton L2-loss linear SVM for stage I, per-size
logistic fits for stage II); ``Bing.from_opencv`` imports OpenCV contrib's published model.
"""
from __future__ import annotations

import gzip
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
from PIL import Image

from ..files import atomic_write

__all__ = [
    "Bing", "ImageReadError", "ModelFileError", "read_image", "image_size", "as_rgb", "normed_gradient",
    "box_iou", "evaluate_proposals", "format_table", "read_opencv_matrix", "SIDES",
]

W8 = 8                                   # feature window side
SIDES = 16 * 2 ** np.arange(6)           # quantized window sides 16..512
FORMAT = "ssl_crops.bing/1"
OPENCV_PREFIX = "ObjNessB2W8MAXBGR"


class ImageReadError(ValueError):
    """An image file cannot be decoded; the message names the file."""


class ModelFileError(ValueError):
    """A model file is missing, malformed or inconsistent; the message names the file."""


# --------------------------------------------------------------------------- images
def read_image(path) -> np.ndarray:
    """Decode ``path`` to a uint8 RGB array; raises :class:`ImageReadError` naming the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header; :class:`ImageReadError` names it."""
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e


def as_rgb(img) -> np.ndarray:
    """A path, PIL image or uint8 array (gray, RGB or RGBA) as a uint8 ``H x W x 3`` array."""
    if isinstance(img, (str, os.PathLike)):
        return read_image(img)
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got dtype {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or min(a.shape[:2]) < 1:
        raise ValueError(f"expected an H x W x 3 image, got shape {a.shape}")
    return np.ascontiguousarray(a[:, :, :3])


# --------------------------------------------------------------------------- features
def _maxdiff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel max over channels of ``|a - b|`` (uint8)."""
    d = cv2.absdiff(a, b)
    return cv2.max(cv2.max(d[..., 0], d[..., 1]), d[..., 2])


def _double(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = _maxdiff(a, b)
    return cv2.add(d, d)


def _gradient(a: np.ndarray, col_starts, col_ends, row_starts, row_ends) -> np.ndarray:
    """MAXBGR normed gradient of an ``H x W x 3`` canvas of packed images.

    ``col_starts``/``col_ends`` (``row_...``) are the first/last column (row) of every packed
    image: there the central difference is replaced by twice the one-sided one, as OpenCV
    does on image borders, so packed images do not see each other.
    """
    gx = np.empty(a.shape[:2], np.uint8)
    gx[:, 1:-1] = _maxdiff(a[:, 2:], a[:, :-2])
    gx[:, col_starts] = _double(a[:, col_starts + 1], a[:, col_starts])
    gx[:, col_ends] = _double(a[:, col_ends], a[:, col_ends - 1])
    gy = np.empty(a.shape[:2], np.uint8)
    gy[1:-1] = _maxdiff(a[2:], a[:-2])
    gy[row_starts] = _double(a[row_starts + 1], a[row_starts])
    gy[row_ends] = _double(a[row_ends], a[row_ends - 1])
    return cv2.add(gx, gy)


def normed_gradient(img) -> np.ndarray:
    """BING normed gradient ``min(255, max_c|gx| + max_c|gy|)`` of one image (uint8 ``H x W``)."""
    a = as_rgb(img)
    if min(a.shape[:2]) < 2:
        raise ValueError("normed_gradient needs an image at least 2x2")
    h, w = a.shape[:2]
    return _gradient(a, np.array([0]), np.array([w - 1]), np.array([0]), np.array([h - 1]))


class _Layout:
    """Where every (width, height) resized image sits in the packed canvas of an image size."""

    def __init__(self, width: int, height: int, sizes: np.ndarray):
        self.width, self.height = width, height
        self.active = (sizes[:, 0] <= 2 * width) & (sizes[:, 1] <= 2 * height)
        wsides, hsides = np.unique(sizes[self.active, 0]), np.unique(sizes[self.active, 1])
        # resized extents: an 8-pixel window there covers min(side, image side) pixels
        self.rw = np.rint(W8 * width / np.minimum(wsides, width)).astype(int)
        self.rh = np.rint(W8 * height / np.minimum(hsides, height)).astype(int)
        self.x0 = np.concatenate([[0], np.cumsum(self.rw)[:-1]]).astype(int)
        self.y0 = np.concatenate([[0], np.cumsum(self.rh)[:-1]]).astype(int)
        self.cw, self.ch = int(self.rw.sum()), int(self.rh.sum())
        # part (width) and block (height) of every model size; -1 for inactive sizes
        self.part = np.where(self.active, np.searchsorted(wsides, sizes[:, 0]), -1)
        self.block = np.where(self.active, np.searchsorted(hsides, sizes[:, 1]), -1)
        table = -np.ones((len(hsides) + 1, len(wsides) + 1), int)   # last row/col: no window
        for k in np.flatnonzero(self.active):
            table[self.block[k], self.part[k]] = k
        col = np.full(max(self.cw - W8 + 1, 0), len(wsides))
        for i in range(len(wsides)):
            col[self.x0[i]:self.x0[i] + self.rw[i] - W8 + 1] = i
        row = np.full(max(self.ch - W8 + 1, 0), len(hsides))
        for j in range(len(hsides)):
            row[self.y0[j]:self.y0[j] + self.rh[j] - W8 + 1] = j
        self.col_part, self.row_block = col, row
        self.size_of = table[row[:, None], col[None, :]]          # score map -> size index or -1
        self.invalid = self.size_of < 0
        self.penalty = np.where(self.invalid, -np.inf, 0).astype(np.float32)
        self.sx, self.sy = width / self.rw, height / self.rh       # pixels per resized pixel

    def canvas(self, img: np.ndarray) -> np.ndarray:
        """Normed-gradient canvas (uint8 ``ch x cw``) of ``img``."""
        strip = np.concatenate([cv2.resize(img, (int(w), self.height), interpolation=cv2.INTER_LINEAR)
                                for w in self.rw], axis=1)
        canvas = np.concatenate([cv2.resize(strip, (self.cw, int(h)), interpolation=cv2.INTER_LINEAR)
                                 for h in self.rh], axis=0)
        return _gradient(canvas, self.x0, self.x0 + self.rw - 1, self.y0, self.y0 + self.rh - 1)

    def boxes(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Pixel xyxy boxes of the windows at score-map positions ``(ys, xs)``."""
        i, j = self.col_part[xs], self.row_block[ys]
        lx, ly = xs - self.x0[i], ys - self.y0[j]
        sx, sy = self.sx[i], self.sy[j]
        return np.stack([lx * sx, ly * sy, (lx + W8) * sx, (ly + W8) * sy], axis=1).astype(np.float32)

    def place(self, ks: np.ndarray, fx: np.ndarray, fy: np.ndarray):
        """Score-map ``(ys, xs)`` of size-``ks`` windows whose top-left corner is at the
        fraction ``fx, fy`` (in [0, 1]) of the positions available to that size."""
        i, j = self.part[ks], self.block[ks]
        lx = np.rint(fx * (self.rw[i] - W8)).astype(int)
        ly = np.rint(fy * (self.rh[j] - W8)).astype(int)
        return self.y0[j] + ly, self.x0[i] + lx

    def centred(self, ks: np.ndarray, box: np.ndarray):
        """Score-map ``(ys, xs)`` of the size-``ks`` windows centred nearest to ``box``."""
        i, j = self.part[ks], self.block[ks]
        cx = (box[0] + box[2]) / 2 / self.sx[i] - W8 / 2
        cy = (box[1] + box[3]) / 2 / self.sy[j] - W8 / 2
        lx = np.clip(np.rint(cx), 0, self.rw[i] - W8).astype(int)
        ly = np.clip(np.rint(cy), 0, self.rh[j] - W8).astype(int)
        return self.y0[j] + ly, self.x0[i] + lx


_OFFS = np.arange(W8)


def _patches(mag: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The 8x8 windows of ``mag`` at top-left corners ``(ys, xs)``: ``(n, 8, 8)``."""
    return mag[ys[:, None, None] + _OFFS[None, :, None], xs[:, None, None] + _OFFS[None, None, :]]


_K5 = np.ones((5, 5), np.uint8)           # 5x5 neighbourhood (OpenCV's NSS = 2)
_K5_BEFORE = _K5.copy()                   # the neighbours before the centre in raster order
_K5_BEFORE[2, 2:] = 0
_K5_BEFORE[3:] = 0


def _local_maxima(s: np.ndarray, penalty: np.ndarray):
    """``(ys, xs)`` of the positions that are the maximum of their 5x5 neighbourhood (ties go
    to the first in raster order); ``penalty`` is -inf where there is no window, else 0."""
    s = cv2.add(s, penalty)
    # -inf positions fail the strict test against their earlier neighbours
    keep = cv2.bitwise_and(cv2.compare(s, cv2.dilate(s, _K5), cv2.CMP_GE),
                           cv2.compare(s, cv2.dilate(s, _K5_BEFORE, anchor=(2, 2)), cv2.CMP_GT))
    pts = cv2.findNonZero(keep)
    if pts is None:
        return np.zeros(0, int), np.zeros(0, int)
    pts = pts.reshape(-1, 2)                 # (x, y), raster order
    return pts[:, 1].astype(np.intp), pts[:, 0].astype(np.intp)


def _top_per_group(groups: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores of every group, best first within each group."""
    order = np.argsort(-scores, kind="stable")
    order = order[np.argsort(groups[order].astype(np.int16), kind="stable")]   # radix sort
    g = groups[order]
    starts = np.searchsorted(g, g, side="left")
    return order[np.arange(len(g)) - starts < n]


def _nms(boxes: np.ndarray, iou: float, top_k: int) -> np.ndarray:
    """Greedy box NMS of ``boxes`` sorted best first; kept indices, best first."""
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1).astype(np.float64)
    rank = 1.0 - np.arange(len(boxes)) / len(boxes)           # NMSBoxes wants scores >= 0
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), rank.tolist(), 0.0, float(iou), top_k=top_k)
    return np.sort(np.asarray(keep, int).reshape(-1))


# --------------------------------------------------------------------------- model
class Bing:
    """BING objectness model: an 8x8 stage-I filter and per-size stage-II calibration.

    ``sizes``: ``(K, 2)`` window ``(w, h)`` in pixels; ``calib``: ``(K, 2)`` ``(v, t)``;
    ``per_size``: candidates kept per size after NMS; ``nms_iou``: optional final box NMS;
    ``top_k``: number of proposals ``proposals_for`` returns.
    """

    def __init__(self, filter, sizes, calib, per_size: int = 130, nms_iou: float | None = None,
                 top_k: int = 1000):
        self.filter = np.ascontiguousarray(np.asarray(filter, np.float32).reshape(W8, W8))
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.calib = np.asarray(calib, np.float32).reshape(-1, 2)
        if len(self.sizes) != len(self.calib) or len(self.sizes) == 0:
            raise ValueError(f"{len(self.sizes)} sizes but {len(self.calib)} calibration rows")
        if not np.all(np.isin(self.sizes, SIDES)):
            raise ValueError(f"window sizes must be in {SIDES.tolist()}, got {self.sizes.tolist()}")
        self.per_size, self.nms_iou, self.top_k = int(per_size), nms_iou, int(top_k)
        self._layout = lru_cache(maxsize=16)(lambda w, h: _Layout(w, h, self.sizes))

    def __repr__(self) -> str:
        return f"Bing({len(self.sizes)} sizes, per_size={self.per_size}, nms_iou={self.nms_iou})"

    def __getstate__(self):                # picklable for multiprocessing (the cache is not)
        return {k: v for k, v in self.__dict__.items() if k != "_layout"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._layout = lru_cache(maxsize=16)(lambda w, h: _Layout(w, h, self.sizes))

    # ------------------------------------------------------------------ inference
    def _stage1(self, img: np.ndarray, per_size: int):
        """Stage-I candidates: (layout, score-map ys, xs, size index, raw score)."""
        lay = self._layout(img.shape[1], img.shape[0])
        if lay.invalid.all():
            e = np.zeros(0, int)
            return lay, e, e, e, np.zeros(0, np.float32)
        mag = lay.canvas(img)
        # correlation, valid part: s[y, x] = sum(filter * mag[y:y+8, x:x+8])
        s = cv2.filter2D(mag.astype(np.float32), -1, self.filter, anchor=(0, 0),
                         borderType=cv2.BORDER_CONSTANT)[:lay.ch - W8 + 1, :lay.cw - W8 + 1]
        ys, xs = _local_maxima(s, lay.penalty)
        g, sc = lay.size_of[ys, xs], s[ys, xs]
        sel = _top_per_group(g, sc, per_size)
        return lay, ys[sel], xs[sel], g[sel], sc[sel]

    def propose(self, img, top_k: int | None = 1000, return_scores: bool = False):
        """Proposals of ``img`` (uint8 RGB array, PIL image or path): float32 ``(K, 4)``
        pixel ``x0, y0, x1, y1``, best first (and their scores when ``return_scores``)."""
        img = as_rgb(img)
        lay, ys, xs, g, sc = self._stage1(img, self.per_size)
        score = self.calib[g, 0] * sc + self.calib[g, 1]
        n = len(score) if top_k is None else min(int(top_k), len(score))
        if self.nms_iou is None and n < len(score):
            part = np.argpartition(-score, n - 1)[:n]
            order = part[np.argsort(-score[part], kind="stable")]
        else:
            order = np.argsort(-score, kind="stable")
        boxes, score = lay.boxes(ys[order], xs[order]), score[order].astype(np.float32)
        if self.nms_iou is not None and len(boxes):
            keep = _nms(boxes, self.nms_iou, n)
            boxes, score = boxes[keep], score[keep]
        boxes, score = boxes[:n], score[:n]
        return (boxes, score) if return_scores else boxes

    def proposals_for(self, image_id: str, image) -> np.ndarray:
        """Dataset protocol: float32 ``(K, 4)`` normalized xyxy, best first (``image_id`` unused)."""
        img = as_rgb(image)
        h, w = img.shape[:2]
        return self.propose(img, self.top_k) / np.array([w, h, w, h], np.float32)

    # ------------------------------------------------------------------ training
    @classmethod
    def fit_index(cls, index, root, images: Sequence[int], **kwargs) -> "Bing":
        """:meth:`fit` on images ``images`` of a ``BoxIndex`` (files under ``root``, normalized
        boxes); an unreadable image raises :class:`ImageReadError` naming it."""
        paths = [Path(root) / index.path(i) for i in images]
        boxes = [index.boxes(i) * np.array([*size, *size], np.float32)
                 for i, size in zip(images, map(image_size, paths))]
        return cls.fit(paths, boxes, **kwargs)

    @classmethod
    def fit(cls, images: Iterable, boxes: Iterable, seed: int = 0, min_positives: int = 10,
            negatives_per_image: int = 100, per_size: int = 130, c: float = 1e-3,
            progress: bool = False, **kwargs) -> "Bing":
        """Train on ``images`` (uint8 RGB arrays or paths) with ``boxes`` (pixel xyxy per image).

        Stage I: positives are the 8x8 gradient windows of the quantized sizes near every
        ground-truth box (window IoU >= 0.5 with the box, plus horizontal flips), negatives
        random windows with IoU < 0.5 to every box; a class-balanced L2-loss linear SVM
        (regularization ``c``). Sizes with fewer than ``min_positives`` boxes are dropped.
        Stage II: per size, a logistic fit of "candidate has IoU >= 0.5 with a box" on the
        stage-I score of the NMS candidates of the same images. Deterministic given ``seed``.
        """
        rng = np.random.default_rng(seed)
        all_sizes = np.array([(w, h) for h in SIDES for w in SIDES], np.int64)
        data = [(im, np.asarray(b, np.float64).reshape(-1, 4)) for im, b in zip(images, boxes)]
        if not data:
            raise ValueError("Bing.fit needs at least one image")
        pos, pos_size, neg = [], [], []
        for img, gt in _progress(data, progress, "BING stage I features"):
            img = as_rgb(img)
            lay = _Layout(img.shape[1], img.shape[0], all_sizes)
            ks = np.flatnonzero(lay.active)
            if len(ks) == 0:
                continue
            mag = lay.canvas(img)
            for b in gt:
                ys, xs = lay.centred(ks, b)
                hit = box_iou(lay.boxes(ys, xs), b[None])[:, 0] >= 0.5
                p = _patches(mag, ys[hit], xs[hit])
                pos += [p, p[:, :, ::-1]]
                pos_size += [ks[hit], ks[hit]]
            # negatives: a random size, then a random position of that size
            kn = rng.choice(ks, negatives_per_image)
            ys, xs = lay.place(kn, rng.random(len(kn)), rng.random(len(kn)))
            if len(gt):
                far = box_iou(lay.boxes(ys, xs), gt).max(1) < 0.5
                ys, xs = ys[far], xs[far]
            neg.append(_patches(mag, ys, xs))
        pos_size = np.concatenate(pos_size) if pos_size else np.zeros(0, int)
        counts = np.bincount(pos_size, minlength=len(all_sizes)) // 2     # flips counted once
        keep = np.flatnonzero(counts >= min_positives)
        pos = np.concatenate(pos) if pos else np.zeros((0, W8, W8))
        neg = np.concatenate(neg) if neg else np.zeros((0, W8, W8))
        if len(keep) == 0 or len(neg) == 0:
            raise ValueError(f"too few positives: no window size has {min_positives} boxes "
                             f"(counts {counts.tolist()}); pass more images or a lower min_positives")
        x = np.concatenate([pos.reshape(-1, W8 * W8), neg.reshape(-1, W8 * W8)]) / 255.0
        y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
        w = _svm_l2(x, y, c)
        filt = (w[:-1] / 255.0).reshape(W8, W8)
        # stage II
        model = cls(filt, all_sizes[keep], np.tile([1.0, 0.0], (len(keep), 1)), per_size=per_size, **kwargs)
        feats, labels, groups = [], [], []
        for img, gt in _progress(data, progress, "BING stage II"):
            lay, ys, xs, g, sc = model._stage1(as_rgb(img), per_size)
            hit = box_iou(lay.boxes(ys, xs), gt).max(1) >= 0.5 if len(gt) and len(g) else np.zeros(len(g), bool)
            feats.append(sc), labels.append(hit), groups.append(g)
        feats, labels, groups = map(np.concatenate, (feats, labels, groups))
        for k in range(len(keep)):
            m = groups == k
            model.calib[k] = _logistic_1d(feats[m], labels[m])
        return model

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write a pickle-free ``.npz`` (atomically)."""
        params = {"per_size": self.per_size, "nms_iou": self.nms_iou, "top_k": self.top_k}
        with atomic_write(path) as f:
            np.savez(f, format=np.array(FORMAT), filter=self.filter, sizes=self.sizes,
                     calib=self.calib, params=np.array(json.dumps(params)))

    @classmethod
    def load(cls, path) -> "Bing":
        """Read a model written by :meth:`save` (or an OpenCV model folder)."""
        if Path(path).is_dir():
            return cls.from_opencv(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) != FORMAT:
                    raise ModelFileError(f"{path}: not a BING model file (no format '{FORMAT}')")
                params = json.loads(str(z["params"]))
                return cls(z["filter"], z["sizes"], z["calib"], **params)
        except ModelFileError:
            raise
        except FileNotFoundError as e:
            raise ModelFileError(f"{path}: model file not found") from e
        except Exception as e:  # zip, npy, json and shape errors
            raise ModelFileError(f"{path}: malformed BING model file ({type(e).__name__}: {e})") from e

    @classmethod
    def from_opencv(cls, model_dir, prefix: str = OPENCV_PREFIX, **kwargs) -> "Bing":
        """Import OpenCV contrib's model: ``<prefix>.idx.yml.gz`` (kept size indices),
        ``.wS1.yml.gz`` (8x8 stage-I filter, rows = y) and ``.wS2.yml.gz`` (per-size v, t).

        OpenCV encodes a size as ``idx = (log2 h - 4) * 6 + (log2 w - 4)``, i.e.
        ``w = 2 ** (4 + idx % 6)``, ``h = 2 ** (4 + idx // 6)``; row ``i`` of ``wS2`` belongs
        to ``idx[i]``. "MAXBGR" is the gradient used here (max over colour channels).
        """
        d = Path(model_dir)
        files = [d / f"{prefix}.{part}.yml.gz" for part in ("idx", "wS1", "wS2")]
        idx, w1, w2 = (read_opencv_matrix(f) for f in files)
        idx = idx.reshape(-1)
        if idx.size == 0 or np.any(idx != np.round(idx)) or idx.min() < 0 or idx.max() >= len(SIDES) ** 2:
            raise ModelFileError(f"{files[0]}: size indices must be integers in 0..{len(SIDES) ** 2 - 1}")
        if w1.size != W8 * W8:
            raise ModelFileError(f"{files[1]}: expected an 8x8 filter, got {w1.shape}")
        if w2.shape != (idx.size, 2):
            raise ModelFileError(f"{files[2]}: expected {idx.size}x2 (v, t) rows, got {w2.shape}")
        idx = idx.astype(int)
        sizes = np.stack([SIDES[idx % len(SIDES)], SIDES[idx // len(SIDES)]], axis=1)
        return cls(w1.reshape(W8, W8), sizes, w2, **kwargs)


_DT = {"u": np.uint8, "c": np.int8, "w": np.uint16, "s": np.int16, "i": np.int32, "f": np.float32, "d": np.float64}


def read_opencv_matrix(path) -> np.ndarray:
    """Read the single ``!!opencv-matrix`` of an OpenCV FileStorage YAML file (``.gz`` or not)."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise ModelFileError(f"{path}: model file not found") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e
    if not text.startswith("%YAML"):
        raise ModelFileError(f"{path}: not an OpenCV FileStorage YAML file")
    fields = {k: re.search(rf"^\s*{k}:\s*(\S+)", text, re.M) for k in ("rows", "cols", "dt")}
    data = re.search(r"data:\s*\[([^\]]*)\]", text)
    if "!!opencv-matrix" not in text or data is None or not all(fields.values()):
        raise ModelFileError(f"{path}: no opencv-matrix with rows, cols, dt and data")
    try:
        rows, cols = int(fields["rows"][1]), int(fields["cols"][1])
        dt = _DT[fields["dt"][1].strip("\"'")]
        values = np.array([float(v) for v in data[1].replace(",", " ").split()], np.float64)
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: malformed matrix header or data ({e})") from e
    if values.size != rows * cols:
        raise ModelFileError(f"{path}: {values.size} values for a {rows}x{cols} matrix")
    return values.astype(dt).reshape(rows, cols)


# --------------------------------------------------------------------------- solvers
def _svm_l2(x: np.ndarray, y: np.ndarray, c: float, iters: int = 50) -> np.ndarray:
    """Class-balanced L2-loss linear SVM by primal Newton (Keerthi & DeCoste 2005).

    Minimizes ``c/2 |w|^2 + sum_i a_i max(0, 1 - y_i (w.x_i + b))^2`` with weights ``a_i``
    summing to 1/2 per class; returns ``[w, b]``.
    """
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = np.where(y > 0, 0.5 / max((y > 0).sum(), 1), 0.5 / max((y < 0).sum(), 1))
    reg = np.full(xb.shape[1], c)
    reg[-1] = 1e-8
    w = np.zeros(xb.shape[1])

    def objective(w):
        m = np.maximum(0, 1 - y * (xb @ w))
        return 0.5 * (reg * w) @ w + a @ (m * m)

    f = objective(w)
    for _ in range(iters):
        act = y * (xb @ w) < 1
        xa, ya, aa = xb[act], y[act], a[act]
        grad = reg * w + 2 * xa.T @ (aa * (xa @ w - ya))
        hess = np.diag(reg) + 2 * (xa.T * aa) @ xa
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6 and objective(w - t * step) > f - 1e-4 * t * grad @ step:
            t /= 2
        w_new = w - t * step
        f_new = objective(w_new)
        if f - f_new < 1e-10 * max(1.0, abs(f)):
            return w_new if f_new < f else w
        w, f = w_new, f_new
    return w


def _logistic_1d(s: np.ndarray, y: np.ndarray, ridge: float = 1e-2, iters: int = 50) -> np.ndarray:
    """``(v, t)`` of a ridge-regularized logistic fit ``P(y) = sigmoid(v s + t)`` (Newton)."""
    if len(s) == 0:
        return np.array([0.0, -10.0], np.float32)
    mu, sd = s.mean(), s.std() + 1e-12
    z = np.stack([(s - mu) / sd, np.ones_like(s)], axis=1)
    yy = y.astype(np.float64)
    th = np.zeros(2)
    n = len(s)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(z @ th, -50, 50)))
        grad = z.T @ (p - yy) / n + ridge * th
        hess = (z.T * (p * (1 - p))) @ z / n + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        th -= step
        if np.abs(step).max() < 1e-8:
            break
    v = th[0] / sd
    return np.array([v, th[1] - v * mu], np.float32)


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc)


# --------------------------------------------------------------------------- evaluation
def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(len(a), len(b))`` of xyxy boxes."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None] - inter, 1e-12)


def evaluate_proposals(proposals: Sequence[np.ndarray], gts: Sequence[np.ndarray],
                       ks: Sequence[int] = (1, 10, 100, 1000), thresholds: Sequence[float] = (0.5, 0.7)) -> dict:
    """Detection rate (share of ground-truth boxes with a proposal of IoU >= t among the
    first k) and mean best overlap over all boxes, at every ``k``. Boxes in one coordinate
    frame per image (pixels or normalized), proposals best first."""
    best = []
    for p, g in zip(proposals, gts):
        g = np.asarray(g).reshape(-1, 4)
        if len(g) == 0:
            continue
        iou = box_iou(g, p)
        cum = np.maximum.accumulate(iou, axis=1) if iou.shape[1] else np.zeros((len(g), 1))
        best.append(cum[:, np.minimum(np.asarray(ks), cum.shape[1]) - 1])
    best = np.concatenate(best) if best else np.zeros((0, len(ks)))
    return {"ks": list(ks), "num_boxes": len(best),
            "detection_rate": {t: (best >= t).mean(0).tolist() if len(best) else [0.0] * len(ks) for t in thresholds},
            "mabo": best.mean(0).tolist() if len(best) else [0.0] * len(ks)}


def format_table(result: dict, name: str = "") -> str:
    """The result of :func:`evaluate_proposals` as a small text table."""
    head = f"{name or 'proposals':<22}" + "".join(f"{'@' + str(k):>8}" for k in result["ks"])
    lines = [head]
    for t, v in result["detection_rate"].items():
        lines.append(f"{'DR IoU>=' + str(t):<22}" + "".join(f"{x:8.3f}" for x in v))
    lines.append(f"{'MABO':<22}" + "".join(f"{x:8.3f}" for x in result["mabo"]))
    lines.append(f"({result['num_boxes']} ground-truth boxes)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- scenes
