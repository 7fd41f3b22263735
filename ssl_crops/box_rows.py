"""From annotation rows to the arrays of a :class:`~ssl_crops.boxes.BoxIndex`: parsing of
OpenImages box rows, validation and clipping of boxes with counts per reason, class lookup."""
from __future__ import annotations

import warnings
from operator import itemgetter
from typing import Mapping, Sequence

import numpy as np

# OpenImages box CSV columns, as rows of images_selected_with_all_features.npy hold them.
_OI_LABEL, _OI_XMIN, _OI_XMAX, _OI_YMIN, _OI_YMAX = 2, 4, 5, 6, 7
_OI_BOX, _OI_NAME = itemgetter(_OI_XMIN, _OI_YMIN, _OI_XMAX, _OI_YMAX), itemgetter(_OI_LABEL)


# --------------------------------------------------------------------------- helpers
_NAN = float("nan")


def to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# a box whose coordinates leave [0, 1] by more than this is counted as clipped (COCO boxes often
# overshoot their image by a fraction of a pixel: float rounding, not a mistake)
_CLIP_TOLERANCE = 1e-3


def _clean_boxes(boxes: np.ndarray) -> tuple[np.ndarray, dict[str, int], int]:
    """``(valid mask, {reason: boxes dropped}, boxes clipped)``; clips ``boxes`` (N, 4 xyxy
    normalized) to ``[0, 1]`` in place."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(axis=1)
        ordered = finite & (boxes[:, 2] >= boxes[:, 0]) & (boxes[:, 3] >= boxes[:, 1])
        empty = ordered & ((boxes[:, 2] == boxes[:, 0]) | (boxes[:, 3] == boxes[:, 1]))
        outside = ordered & ~empty & ((boxes[:, :2] >= 1).any(1) | (boxes[:, 2:] <= 0).any(1))
        valid = ordered & ~empty & ~outside
        clipped = valid & ((boxes < -_CLIP_TOLERANCE) | (boxes > 1 + _CLIP_TOLERANCE)).any(1)
    np.clip(boxes, 0.0, 1.0, out=boxes)
    reasons = {"not a number": ~finite, "inverted (x1 < x0 or y1 < y0)": finite & ~ordered,
               "zero width or height": empty, "outside the image": outside}
    return valid, {k: int(m.sum()) for k, m in reasons.items() if m.any()}, int(clipped.sum())


def _outside_share(boxes: np.ndarray) -> tuple[int, int]:
    """``(boxes with a coordinate outside [0, 1], numeric boxes)`` before clipping."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(boxes).all(axis=1)
        outside = ((boxes < -_CLIP_TOLERANCE) | (boxes > 1 + _CLIP_TOLERANCE)).any(1) & finite
    return int(outside.sum()), int(finite.sum())


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in counts.items() if n)


class RowBuilder:
    """Accumulates images in flat lists and turns them into a :class:`BoxIndex`; boxes are
    converted, validated and matched to classes once, over all images together."""

    def __init__(self, classes: Sequence[str] | None, source: str = "", pixel_hint: str = ""):
        self.fixed = classes is not None
        self.vocabulary = list(dict.fromkeys(_as_str(c) for c in classes)) if self.fixed else None  # in this order
        self.source, self.pixel_hint = source, pixel_hint  # the file read; what outside-[0, 1] boxes mean
        self.ids: list[str] = []
        self.files: list[str] = []
        self.labels: list = []       # class names per image (str, bytes or numpy strings)
        self.box_counts: list[int] = []
        self.coords: list = []       # one [x0, y0, x1, y1] per box (numbers or numeric strings)
        self.box_names: list = []    # class name per box (str, bytes or numpy strings)
        self.negatives: list = []    # LVIS: verified-absent class names per image
        self.not_exhaustive: list = []  # LVIS: classes not exhaustively annotated per image
        self.skipped: dict[str, int] = {}  # annotations left out on purpose, by reason

    def add(self, image_id: str, file: str, labels: Sequence, coords: Sequence, box_names: Sequence,
            negatives: Sequence = (), not_exhaustive: Sequence = ()):
        self.ids.append(str(image_id))
        self.files.append(file)
        self.labels.append(labels)
        self.negatives.append(negatives)
        self.not_exhaustive.append(not_exhaustive)
        self.box_counts.append(len(box_names))
        self.coords.extend(coords)
        self.box_names.extend(box_names)

    def build(self) -> dict:
        """The keyword arguments of a ``BoxIndex``."""
        n = len(self.ids)
        boxes = _float_boxes(self.coords)
        outside, numeric = _outside_share(boxes)
        if outside > numeric / 2:
            raise ValueError(f"{self.source}: {outside} of {numeric} boxes lie outside [0, 1] of the image: "
                             f"{self.pixel_hint}")
        valid, reasons, clipped = _clean_boxes(boxes)
        dropped = int((~valid).sum())
        if dropped or clipped:
            warnings.warn(f"{self.source}: " + box_changes(len(boxes), reasons, clipped), stacklevel=3)
        names = np.array(self.box_names, dtype=str)
        if self.fixed:
            classes = np.array(self.vocabulary, dtype=str)
        else:
            label_names = {_as_str(c) for ls in self.labels for c in ls}
            classes = np.array(sorted(label_names.union(names[valid].tolist())), dtype=str)
        if len(classes):  # class index of each box name, in the vocabulary's own order
            order = np.argsort(classes)
            pos = np.minimum(np.searchsorted(classes[order], names), len(classes) - 1)
            box_labels = order[pos]
            known = classes[box_labels] == names
        else:
            box_labels, known = np.zeros(len(names), np.int64), np.zeros(len(names), bool)
        keep = valid & known
        out_of_vocabulary = int((valid & ~known).sum())
        box_image = np.repeat(np.arange(n), self.box_counts)
        box_offsets = np.zeros(n + 1, np.int64)
        box_offsets[1:] = np.cumsum(np.bincount(box_image[keep], minlength=n))

        lookup = {c: i for i, c in enumerate(classes.tolist())}

        def ragged(lists, count=True):
            nonlocal out_of_vocabulary
            out = []
            for ls in lists:
                names_in = {_as_str(c) for c in ls}
                ids = sorted(lookup[c] for c in names_in if c in lookup)
                if count:
                    out_of_vocabulary += len(names_in) - len(ids)
                out.append(ids)
            offsets = np.zeros(n + 1, np.int64)
            offsets[1:] = np.cumsum([len(ls) for ls in out])
            return offsets, np.fromiter((c for ls in out for c in ls), np.int32, int(offsets[-1]))

        label_offsets, label_values = ragged(self.labels)
        federated = {}
        if any(len(n) for n in self.negatives) or any(len(n) for n in self.not_exhaustive):
            federated = dict(zip(("neg_offsets", "neg_values"), ragged(self.negatives, False)))
            federated.update(zip(("nex_offsets", "nex_values"), ragged(self.not_exhaustive, False)))
        return dict(
            ids=np.array(self.ids, dtype=str), files=np.array(self.files, dtype=str), classes=classes,
            label_offsets=label_offsets, label_values=label_values, box_offsets=box_offsets,
            boxes=boxes[keep].astype(np.float32), box_labels=box_labels[keep], dropped=dropped,
            out_of_vocabulary=out_of_vocabulary, skipped=self.skipped, dropped_reasons=reasons, clipped=clipped,
            source=self.source, **federated,
        )


def box_changes(total: int, reasons: Mapping[str, int], clipped: int) -> str:
    """``"3 of 929 boxes dropped (2 outside the image, 1 not a number); 5 of 929 boxes partly
    outside the image, clipped to it"``; reasons with a zero count are left out."""
    parts = []
    if sum(reasons.values()):
        parts.append(f"{sum(reasons.values())} of {total} boxes dropped ({format_counts(reasons)})")
    if clipped:
        parts.append(f"{clipped} of {total} boxes partly outside the image, clipped to it")
    return "; ".join(parts)


def _float_boxes(coords: list) -> np.ndarray:
    """``(N, 4)`` float64 from rows of numbers or numeric strings; unparsable values are NaN."""
    if not coords:
        return np.zeros((0, 4))
    try:
        return np.array(coords, dtype=np.float64).reshape(-1, 4)
    except (TypeError, ValueError):  # some value is not a number: convert one by one
        return np.array([[to_float(v) for v in row] for row in coords], dtype=np.float64).reshape(-1, 4)


def _as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def parse_rows(rows) -> tuple[list, list]:
    """``([x0, y0, x1, y1] per row, class per row)`` from OpenImages box CSV rows; a row too
    short to hold a box becomes NaN (dropped and counted)."""
    try:  # the common case: every row is complete
        return list(map(_OI_BOX, rows)), list(map(_OI_NAME, rows))
    except (IndexError, TypeError, KeyError):
        pass
    coords, names = [], []
    for row in rows:
        try:
            names.append(row[_OI_LABEL])
            coords.append([row[_OI_XMIN], row[_OI_YMIN], row[_OI_XMAX], row[_OI_YMAX]])
        except (IndexError, TypeError, KeyError):
            if len(names) == len(coords):
                names.append("")
            coords.append([_NAN] * 4)
    return coords, names
