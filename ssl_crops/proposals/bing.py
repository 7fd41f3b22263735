"""BING objectness proposals (Cheng et al., CVPR 2014): a fast, trainable re-implementation.

Pipeline for one image (``Bing.propose``):

1. The image (8 or 16 bit, gray or colour) becomes uint8 RGB, is shrunk to the working size
   (long side ``max_side``, 640 px by default; never enlarged) and converted to the model's
   colour space (HSV for fitted models, RGB for OpenCV's).
2. For every window size ``(w, h)`` of the model (sides from 8..724 px in sqrt(2) steps;
   fitted models by default 16..512 in powers of two; sizes larger than twice the image
   skipped, sizes larger than the image clipped to it and kept once) the image is resized to
   ``round(8 W / w) x round(8 H / h)`` so that one 8x8 window is one candidate (bilinear,
   separable: one resize per width, one per height band).
3. Normed gradients ``min(255, max_c |gx_c| + max_c |gy_c|)`` (``gradients.normed_gradient``).
4. Stage I: the 8x8 linear filter correlated with every band (exact float weights; OpenCV's
   model keeps its binarized weights and 4-bit gradients, the scores its stage II was fitted on).
5. Stage II: per-size calibration ``v_i * s + t_i`` of the score maps.
6. Non-maximum suppression per size: 3x3 local maxima (``maxima="grid"``: a one-pass
   approximation of OpenCV's greedy 5x5 NMS), flagged when also 5x5 maxima; optionally the
   best ``per_size`` of each size.
7. Stage III (fitted models; ``rescorer``): only the best ``rescorer.top`` (3000) candidates
   by stage-II score are kept and re-scored by a logistic model of the stage-II score and
   edge, edge-orientation, placement and shape cues of the window against its surroundings
   (``rescoring``), except the first ``rescorer.head`` (50) proposals, which keep the stage-II
   ranking (the best 5x5 maxima of coarse sizes): their scores are lifted above the rest, in
   that order. Skipped when all proposals asked for are in that head (``Rescorer.rescore``).
8. Ranking (``ranking.rank``): the first ``sparse_top`` proposals are the best 5x5 maxima of
   the coarse (power-of-two) sizes, then the best of the rest, with one rank in ``1 / fine_share``
   after ``fine_after`` given to the fine (sqrt(2)) sizes.
9. Edge snapping (fitted models; ``snap``): every side of the proposals after the rescorer's
   head moves by ``-snap``, 0 or ``+snap`` of the box's side to where the gradient runs along
   it most (``snapping.snap``; window sizes are a factor 2 apart and positions an eighth of a
   window, so many windows miss an object's outline); a box snapped onto an earlier one stays
   put. Only the boxes the returned list needs are snapped. Boxes are mapped back to the
   input's pixels (continuous ``xyxy``, ``x1``/``y1`` exclusive); optional greedy box NMS.

The knobs come in groups (``config``): ``ScoringConfig`` (steps 1-6), ``RankingConfig`` (8, 9,
``top_k``), ``FitConfig`` (training); ``Bing(...)`` and ``Bing.fit(...)`` also take them as
keyword arguments by name.

``Bing.fit`` trains the stages (a primal-Newton L2-loss linear SVM for stage I, per-size
logistic fits for stage II, a weighted logistic fit for stage III); ``Bing.from_opencv``
imports OpenCV contrib's published model (stages I and II).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from ..files import atomic_write
from .knobs import (FIT_RANKING, FIT_SCORING, FitConfig, Knob, RankingConfig, ScoringConfig,
                     split_knobs)
from .edges import cue_integral
from .evaluation import box_iou, evaluate_proposals, format_table
from .gradients import SIDES, W8, Candidates, Layout, convert_color, grid_maxima, local_maxima, normed_gradient
from .images import ImageReadError, as_rgb, image_size, read_image, working_image
from .opencv import (OPENCV_GRADIENT_SHIFT, OPENCV_PREFIX, OPENCV_SIDES, ModelFileError, binarize_filter,
                     read_opencv_matrix)
from .ranking import head, nms, rank, top_per_group
from .rescoring import Rescorer, cues
from .snapping import snap
from .solvers import logistic_1d, svm_l2

__all__ = [
    "Bing", "ScoringConfig", "RankingConfig", "FitConfig", "ImageReadError", "ModelFileError", "read_image",
    "image_size", "as_rgb", "normed_gradient", "box_iou", "evaluate_proposals", "format_table",
    "read_opencv_matrix", "SIDES",
]

FORMAT = "ssl_crops.bing/2"                # /2 adds the optional stage-III rescorer
READABLE_FORMATS = ("ssl_crops.bing/1", FORMAT)
PARAMS = ("per_size", "nms_iou", "top_k", "color", "max_side", "sparse_top", "gradient_shift", "maxima",
          "fine_share", "fine_after", "snap")   # the knobs a model file saves, in its order
LAYOUTS = 64                             # image sizes whose layouts are cached (coco128 has 58; ~90 kB each)
_OFFS = np.arange(W8)


def _patches(mag: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The 8x8 windows of ``mag`` at top-left corners ``(ys, xs)``: ``(n, 8, 8)``."""
    return mag[ys[:, None, None] + _OFFS[None, :, None], xs[:, None, None] + _OFFS[None, None, :]]


# --------------------------------------------------------------------------- model
class Bing:
    """BING objectness model: an 8x8 stage-I filter, per-size stage-II calibration and an
    optional stage III.

    ``sizes``: ``(K, 2)`` window ``(w, h)`` in pixels of the working image (sides in
    ``SIDES``); ``calib``: ``(K, 2)`` ``(v, t)``; ``scoring``: :class:`~.knobs.ScoringConfig`;
    ``ranking``: :class:`~.knobs.RankingConfig`; ``rescorer``: optional stage III
    (:class:`~.rescoring.Rescorer`); ``knobs``: fields of either config by name (``snap=0.12``),
    also readable and settable as attributes (``model.nms_iou = 0.5``).
    """

    color, max_side, gradient_shift, maxima, per_size = (
        Knob("scoring", k) for k in ("color", "max_side", "gradient_shift", "maxima", "per_size"))
    top_k, sparse_top, fine_share, fine_after, snap, nms_iou = (
        Knob("ranking", k) for k in ("top_k", "sparse_top", "fine_share", "fine_after", "snap", "nms_iou"))

    def __init__(self, filter, sizes, calib, *, scoring: ScoringConfig | None = None,
                 ranking: RankingConfig | None = None, rescorer: Rescorer | None = None, **knobs):
        self.filter = np.ascontiguousarray(np.asarray(filter, np.float32).reshape(W8, W8))
        self.sizes = np.asarray(sizes, np.int64).reshape(-1, 2)
        self.calib = np.asarray(calib, np.float32).reshape(-1, 2)
        if len(self.sizes) != len(self.calib) or len(self.sizes) == 0:
            raise ValueError(f"{len(self.sizes)} sizes but {len(self.calib)} calibration rows")
        if not np.all(np.isin(self.sizes, SIDES)):
            raise ValueError(f"window sizes must be in {SIDES.tolist()}, got {self.sizes.tolist()}")
        if len(np.unique(self.sizes, axis=0)) != len(self.sizes):
            raise ValueError(f"repeated window sizes in {self.sizes.tolist()}")
        self.scoring, self.ranking = split_knobs(knobs, scoring or ScoringConfig(), ranking or RankingConfig())
        self._fine = ~np.all(np.isin(self.sizes, OPENCV_SIDES), axis=1)     # a side between powers of two
        if rescorer is not None and rescorer.head > min(self.sparse_top, self.fine_after):
            raise ValueError(f"rescorer head ({rescorer.head}) must not exceed sparse_top ({self.sparse_top}) "
                             f"and fine_after ({self.fine_after})")
        self.rescorer = rescorer
        self._layout = lru_cache(maxsize=LAYOUTS)(self._columns)

    def __repr__(self) -> str:
        return (f"Bing({len(self.sizes)} sizes, color={self.color}, max_side={self.max_side}, "
                f"per_size={self.per_size}, nms_iou={self.nms_iou}, "
                f"rescore_top={self.rescorer and self.rescorer.top}, "
                f"rescore_head={self.rescorer and self.rescorer.head}, snap={self.snap})")

    def __getstate__(self):                # picklable for multiprocessing (the cache is not)
        return {k: v for k, v in self.__dict__.items() if k != "_layout"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._layout = lru_cache(maxsize=LAYOUTS)(self._columns)

    @property
    def params(self) -> dict:
        """The knobs of both configs, flat (what :meth:`save` writes as JSON)."""
        knobs = {**asdict(self.scoring), **asdict(self.ranking)}
        return {k: knobs[k] for k in PARAMS}

    # ------------------------------------------------------------------ inference
    def _working(self, img):
        """Working image (uint8 RGB) and the ``(x, y)`` factors back to ``img``'s pixels."""
        if isinstance(img, (str, os.PathLike)):             # decode big JPEGs at a reduced scale
            w, h = image_size(img)
            work, _ = working_image(read_image(img, self.max_side), self.max_side)
            return work, (w / work.shape[1], h / work.shape[0])
        return working_image(as_rgb(img), self.max_side)

    def _columns(self, w: int, h: int):
        """Layout of a ``w x h`` working image and, per band, the calibration ``(v, t)`` of every
        band column (``t = -inf`` where no window starts) and whether it has coarse sizes."""
        lay = Layout(w, h, self.sizes)
        cols = []
        for c0, c1, size in lay.bands:
            v, t = np.zeros(c1 - c0, np.float32), np.full(c1 - c0, -np.inf, np.float32)
            ok = np.flatnonzero(size >= 0)
            v[ok], t[ok] = self.calib[size[ok]].T
            cols.append((v, t, bool(np.any(~self._fine[size[ok]]))))   # 5x5 maxima only rank coarse sizes
        return lay, cols

    def _stage1(self, work: np.ndarray) -> Candidates:
        """Candidates of a working image (in the model's colour space): the 3x3 maxima of every
        size's calibrated score map."""
        lay, cols = self._layout(work.shape[1], work.shape[0])
        if not lay.bands:
            return Candidates.empty(lay)
        out = []
        mag = lay.canvas(work)
        if self.gradient_shift:
            mag >>= self.gradient_shift
        for (c0, c1, size), y0, h, (v, t, coarse) in zip(lay.bands, lay.y0, lay.rh, cols):
            s = cv2.filter2D(mag[y0:y0 + h, c0:c1].astype(np.float32), -1, self.filter, anchor=(0, 0),
                             borderType=cv2.BORDER_CONSTANT)[:h - W8 + 1]      # windows inside the band
            s *= v                                     # calibrated in place, -inf where no window starts
            s += t
            pts = cv2.findNonZero(grid_maxima(s[:, :len(size)]) if self.maxima == "grid" else local_maxima(s, 3))
            if pts is None:
                continue
            pts = pts.reshape(-1, 2)
            xs, ys = pts[:, 0].astype(np.intp), pts[:, 1].astype(np.intp)
            f = ys * s.shape[1] + xs                    # flat indices: take is faster than [ys, xs]
            sparse = local_maxima(s, 5).ravel().take(f) > 0 if coarse else np.zeros(len(f), bool)
            out.append((ys + y0, xs + c0, size.take(xs), s.ravel().take(f), sparse))
        return Candidates(lay, *map(np.concatenate, zip(*out))) if out else Candidates.empty(lay)

    def _scored(self, work: np.ndarray) -> Candidates:
        """Stages I and II of an RGB working image, with the ``per_size`` cap."""
        c = self._stage1(convert_color(work, self.color))
        return c.take(top_per_group(c.size, c.score, self.per_size)) if self.per_size else c

    def _rescored(self, work: np.ndarray, c: Candidates, upto: int | None):
        """Stage III of the ``rescorer.top`` best candidates ``c`` by stage-II score, unless the
        first ``upto`` proposals (``None``: all) are all in its head, which it leaves in stage-II
        order: the candidates and the cue integrals of ``work`` (``None`` when not computed)."""
        if self.rescorer is None or not len(c.score):
            return c, None
        c = c.best(self.rescorer.top)
        top = head(c.score, c.sparse, self._fine.take(c.size), self.rescorer.head)
        if upto is not None and upto <= len(top):
            return c, None
        c.score, cue = self.rescorer.rescore(work, c.boxes(), c.score, top)
        return c, cue

    def _propose(self, work: np.ndarray, factors, n: int | None, keep: int | None):
        """The first ``keep`` of the ``n`` best proposals (``None``: all; ``keep <= n``) of the
        working image ``work``, in the pixels of its input (``factors``), and their scores.
        Stage III, ranking and snapping run only as far as they change those."""
        upto = None if self.nms_iou is not None else keep      # the part of the list returned (NMS: all)
        c, cue = self._rescored(work, self._scored(work), upto)                 # stages I, II and III
        fixed = 0 if self.rescorer is None else self.rescorer.head               # not snapped
        count = len(c.score) if n is None or upto is None else min(n, len(c.score))
        if upto is not None and (self.snap is None or upto <= fixed):  # else boxes dropped by snapping
            count = min(count, upto)                                   # pull later ones into the list
        order = rank(c.score, c.sparse, self._fine.take(c.size), count, self.sparse_top, self.fine_after,
                     self.fine_share)
        c, score = c.take(order), c.score[order].astype(np.float32)
        boxes = c.boxes()
        if self.snap is not None and min(len(boxes), len(boxes) if upto is None else upto) > fixed:
            boxes, score = snap(boxes, score, cue if cue is not None else cue_integral(work), self.snap, fixed,
                                upto, (c.lay.width, c.lay.height))
        boxes *= np.array([*factors, *factors], np.float32)
        if self.nms_iou is not None and len(boxes):
            kept = nms(boxes, self.nms_iou, len(boxes) if n is None else n)
            boxes, score = boxes[kept], score[kept]
        return (boxes, score) if keep is None else (boxes[:keep], score[:keep])

    def propose(self, img, top_k: int | None = 1000, return_scores: bool = False):
        """Proposals of ``img`` (array, PIL image or path): float32 ``(K, 4)`` pixel
        ``x0, y0, x1, y1`` of ``img``, best first (and their scores when ``return_scores``);
        the first ``top_k`` (``None``: all)."""
        top_k = _count(top_k)
        work, factors = self._working(img)
        boxes, score = self._propose(work, factors, top_k, top_k)
        return (boxes, score) if return_scores else boxes

    def proposals_for(self, image_id: str, image, top_k: int | None = None) -> np.ndarray:
        """Dataset protocol: float32 ``(K, 4)`` normalized xyxy, best first (``image_id`` unused):
        the first ``top_k`` (``None``: all) of the model's ``self.top_k`` proposals, for which
        stage III and snapping run only as far as those need."""
        img = as_rgb(image)
        h, w = img.shape[:2]
        keep = self.top_k if top_k is None else min(_count(top_k), self.top_k)
        work, factors = self._working(img)
        return self._propose(work, factors, self.top_k, keep)[0] / np.array([w, h, w, h], np.float32)

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
    def fit(cls, images: Iterable, boxes: Iterable, *, config: FitConfig | None = None,
            scoring: ScoringConfig | None = None, ranking: RankingConfig | None = None, progress: bool = False,
            **knobs) -> "Bing":
        """Train on ``images`` (arrays or paths) with ``boxes`` (pixel xyxy per image).

        ``config``: :class:`~.knobs.FitConfig`; ``scoring``, ``ranking``: the model's configs
        (defaults: colour ``hsv``, ``fine_share`` 0.15, ``snap`` 0.12, held-out choices, README);
        ``knobs``: fields of any of the three by name. Images are taken at the working size
        ``max_side`` and in colour space ``color``, as :meth:`propose` will see them. Stage I:
        positives are the 8x8 gradient windows of the sizes near every ground-truth box (window
        IoU >= 0.5 with the box, plus horizontal flips), negatives random windows with IoU < 0.5
        to every box; a class-balanced L2-loss linear SVM (regularization ``c``). Sizes with
        fewer than ``min_positives`` boxes are dropped. Stage II: per size, a logistic fit of
        "candidate has IoU >= 0.5 with a box" on the stage-I score of the candidates of the same
        images. Stage III (unless ``rescore_top`` is ``None``): a :class:`~.rescoring.Rescorer`
        of the best ``rescore_top`` candidates of the same images, the first ``rescore_head``
        proposals left in stage-II order. Deterministic given ``seed``.
        """
        config, scoring, ranking = split_knobs(knobs, config or FitConfig(), scoring or FIT_SCORING,
                                               ranking or FIT_RANKING)
        rng, color, rescore_top, rescore_head = (np.random.default_rng(config.seed), scoring.color,
                                                 config.rescore_top, config.rescore_head)
        all_sizes = np.array([(w, h) for h in config.sides for w in config.sides], np.int64)
        kwargs = {"scoring": scoring, "ranking": ranking}
        proto = cls(np.zeros((W8, W8)), all_sizes, np.zeros((len(all_sizes), 2)), **kwargs)
        if rescore_top is not None and not 0 <= rescore_head <= min(proto.sparse_top, proto.fine_after, rescore_top):
            raise ValueError(f"rescore_head must be in 0..min(sparse_top, fine_after, rescore_top), got {rescore_head}")
        data = []
        for img, b in _progress(list(zip(images, boxes)), progress, "BING images"):
            work, (fx, fy) = proto._working(img)
            data.append((work, np.asarray(b, np.float64).reshape(-1, 4) / [fx, fy, fx, fy]))
        if not data:
            raise ValueError("Bing.fit needs at least one image")
        pos, pos_size, neg = [], [], []
        for work, gt in _progress(data, progress, "BING stage I features"):
            lay = proto._layout(work.shape[1], work.shape[0])[0]
            ks = np.flatnonzero(lay.active)
            if len(ks) == 0:
                continue
            mag = lay.canvas(convert_color(work, color))
            for b in gt:
                ys, xs = lay.centred(ks, b)
                hit = box_iou(lay.boxes(ys, xs), b[None])[:, 0] >= 0.5
                p = _patches(mag, ys[hit], xs[hit])
                pos += [p, p[:, :, ::-1]]
                pos_size += [ks[hit], ks[hit]]
            # negatives: a random size, then a random position of that size
            kn = rng.choice(ks, config.negatives_per_image)
            ys, xs = lay.place(kn, rng.random(len(kn)), rng.random(len(kn)))
            if len(gt):
                far = box_iou(lay.boxes(ys, xs), gt).max(1) < 0.5
                ys, xs = ys[far], xs[far]
            neg.append(_patches(mag, ys, xs))
        pos_size = np.concatenate(pos_size) if pos_size else np.zeros(0, int)
        counts = np.bincount(pos_size, minlength=len(all_sizes)) // 2     # flips counted once
        keep = np.flatnonzero(counts >= config.min_positives)
        pos = np.concatenate(pos) if pos else np.zeros((0, W8, W8))
        neg = np.concatenate(neg) if neg else np.zeros((0, W8, W8))
        if len(keep) == 0 or len(neg) == 0:
            raise ValueError(f"too few positives: no window size has {config.min_positives} boxes "
                             f"(counts {counts.tolist()}); pass more images or a lower min_positives")
        x = np.concatenate([pos.reshape(-1, W8 * W8), neg.reshape(-1, W8 * W8)]) / 255.0
        y = np.concatenate([np.ones(len(pos)), -np.ones(len(neg))])
        w = svm_l2(x, y, config.c)
        filt = (w[:-1] / 255.0).reshape(W8, W8)
        # stage II
        model = cls(filt, all_sizes[keep], np.tile([1.0, 0.0], (len(keep), 1)), **kwargs)
        feats, labels, groups = [], [], []
        for work, gt in _progress(data, progress, "BING stage II"):
            cand = model._stage1(convert_color(work, color))
            hit = (box_iou(cand.boxes(), gt).max(1) >= 0.5 if len(gt) and len(cand.size)
                   else np.zeros(len(cand.size), bool))
            feats.append(cand.score), labels.append(hit), groups.append(cand.size)
        feats, labels, groups = map(np.concatenate, (feats, labels, groups))
        for k in range(len(keep)):
            m = groups == k
            model.calib[k] = logistic_1d(feats[m], labels[m])
        model._layout.cache_clear()
        if rescore_top is not None:
            rows, ious = [], []
            for work, gt in _progress(data, progress, "BING stage III"):
                cand = model._scored(work).best(int(rescore_top))
                boxes = cand.boxes()
                rows.append(cues(*cue_integral(work), boxes, cand.score))
                ious.append(box_iou(boxes, gt) if len(gt) else np.zeros((len(boxes), 0)))
            model.rescorer = Rescorer.fit(np.concatenate(rows), ious, int(rescore_top), int(rescore_head),
                                          config.box_weight)
        return model

    # ------------------------------------------------------------------ files
    def save(self, path) -> None:
        """Write a pickle-free ``.npz`` (atomically)."""
        with atomic_write(path) as f:
            extra = {} if self.rescorer is None else {"rescorer": self.rescorer.array,
                                                      "rescore_top": np.array(self.rescorer.top),
                                                      "rescore_head": np.array(self.rescorer.head)}
            np.savez(f, format=np.array(FORMAT), filter=self.filter, sizes=self.sizes,
                     calib=self.calib, params=np.array(json.dumps(self.params)), **extra)

    @classmethod
    def load(cls, path) -> "Bing":
        """Read a model written by :meth:`save` (or an OpenCV model folder)."""
        if Path(path).is_dir():
            return cls.from_opencv(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format" not in z.files or str(z["format"]) not in READABLE_FORMATS:
                    raise ModelFileError(f"{path}: not a BING model file (no format in {READABLE_FORMATS})")
                params = json.loads(str(z["params"]))
                weights = [k for k in ("filter", "calib", "rescorer") if k in z.files]
                bad = [k for k in weights if not np.all(np.isfinite(z[k]))]
                if bad:
                    raise ModelFileError(f"{path}: non-finite values in {', '.join(bad)}")
                rescorer = (Rescorer.from_array(z["rescorer"], int(z["rescore_top"]), int(z["rescore_head"]))
                            if "rescorer" in z.files else None)
                return cls(z["filter"], z["sizes"], z["calib"], rescorer=rescorer, **params)
        except ModelFileError:
            raise
        except FileNotFoundError as e:
            raise ModelFileError(f"{path}: model file not found") from e
        except Exception as e:  # zip, npy, json and shape errors
            raise ModelFileError(f"{path}: malformed BING model file ({type(e).__name__}: {e})") from e

    @classmethod
    def from_opencv(cls, model_dir, prefix: str = OPENCV_PREFIX, *, scoring: ScoringConfig | None = None,
                    **knobs) -> "Bing":
        """Import OpenCV contrib's model: ``<prefix>.idx.yml.gz`` (kept size indices),
        ``.wS1.yml.gz`` (8x8 stage-I filter, rows = y) and ``.wS2.yml.gz`` (per-size v, t).

        OpenCV encodes a size as ``idx = (log2 h - 4) * 6 + (log2 w - 4)``, i.e.
        ``w = 2 ** (4 + idx % 6)``, ``h = 2 ** (4 + idx // 6)``; row ``i`` of ``wS2`` belongs
        to ``idx[i]``. Its stage II was fitted on binarized scores (the filter as two {-1, +1}
        bases, the gradient's top 4 bits), so those are the scores computed here; the
        gradient is "MAXBGR" (max over RGB channels). ``scoring`` defaults to that scoring.
        """
        d = Path(model_dir)
        files = [d / f"{prefix}.{part}.yml.gz" for part in ("idx", "wS1", "wS2")]
        idx, w1, w2 = (read_opencv_matrix(f) for f in files)
        idx = idx.reshape(-1)
        n = len(OPENCV_SIDES)
        if idx.size == 0 or np.any(idx != np.round(idx)) or idx.min() < 0 or idx.max() >= n ** 2:
            raise ModelFileError(f"{files[0]}: size indices must be integers in 0..{n ** 2 - 1}")
        if len(np.unique(idx)) != idx.size:
            raise ModelFileError(f"{files[0]}: repeated size indices")
        if w1.size != W8 * W8:
            raise ModelFileError(f"{files[1]}: expected an 8x8 filter, got {w1.shape}")
        if w2.shape != (idx.size, 2):
            raise ModelFileError(f"{files[2]}: expected {idx.size}x2 (v, t) rows, got {w2.shape}")
        idx = idx.astype(int)
        sizes = np.stack([OPENCV_SIDES[idx % n], OPENCV_SIDES[idx // n]], axis=1)
        scoring = scoring or ScoringConfig(color="rgb", gradient_shift=OPENCV_GRADIENT_SHIFT, maxima="grid")
        return cls(binarize_filter(w1.reshape(W8, W8)), sizes, w2, scoring=scoring, **knobs)


def _progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc)


def _count(top_k) -> int | None:
    if top_k is not None and int(top_k) < 0:
        raise ValueError(f"top_k must be at least 0, got {top_k}")
    return None if top_k is None else int(top_k)
