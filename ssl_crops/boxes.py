"""Images, labels and boxes in flat numpy arrays, and readers for the annotation formats.

A :class:`BoxIndex` holds no per-image Python objects: image ids, offsets, boxes and labels
live in a handful of numpy arrays, so DataLoader workers share it without copy-on-write
growth, and it saves to (and loads from) a pickle-free ``.npz`` in well under a second.

Boxes are normalized ``x0, y0, x1, y1`` in ``[0, 1]``. Readers drop invalid boxes (non-numeric,
inverted, zero width or height, wholly outside the image) and clip boxes partly outside it;
they count both per reason (``index.dropped_reasons``, ``index.clipped``) and warn about them.
When most boxes lie outside ``[0, 1]`` (pixel coordinates where normalized ones belong) a
reader stops with a ``ValueError`` naming the file instead.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .box_rows import RowBuilder, box_changes, format_counts, parse_rows, to_float
from .files import UnsafePickleError, atomic_write, load_npy_dict

__all__ = ["BoxIndex", "load_npy_dict", "image_files", "coco_file_name", "random_boxes_like", "UnsafePickleError",
           "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_FORMAT_VERSION = 1

# --------------------------------------------------------------------------- index
class BoxIndex:
    """Image ids, image-level labels and object boxes of a dataset, in flat arrays.

    Build one with :meth:`from_openimages`, :meth:`from_coco` or :meth:`from_folder`;
    save it with :meth:`save` and read it back with :meth:`load`.
    """

    _ARRAYS = ("ids", "files", "classes", "label_offsets", "label_values", "box_offsets", "boxes", "box_labels")
    _FEDERATED = ("neg_offsets", "neg_values", "nex_offsets", "nex_values")

    def __init__(self, *, ids, files, classes, label_offsets, label_values, box_offsets, boxes,
                 box_labels, dropped=0, out_of_vocabulary=0, skipped=None, dropped_reasons=None, clipped=0,
                 source="", neg_offsets=None, neg_values=None, nex_offsets=None, nex_values=None):
        self._ids = np.asarray(ids, dtype=str)
        self._files = _compact_files(self._ids, np.asarray(files, dtype=str))
        self._classes = np.asarray(classes, dtype=str)
        self._label_offsets = np.asarray(label_offsets, np.int64)
        self._label_values = np.asarray(label_values, np.int32)
        self._box_offsets = np.asarray(box_offsets, np.int64)
        self._boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        self._box_labels = np.asarray(box_labels, np.int32)
        self.dropped = int(dropped)
        self.out_of_vocabulary = int(out_of_vocabulary)
        self.skipped = {k: int(v) for k, v in (skipped or {}).items() if v}
        self.dropped_reasons = {k: int(v) for k, v in (dropped_reasons or {}).items() if v}
        self.clipped, self.source = int(clipped), str(source)
        self._box_image = None
        n = len(self._ids)
        self.federated = neg_offsets is not None
        if self.federated:  # LVIS: verified negatives and not-exhaustive classes per image
            self._neg_offsets, self._nex_offsets = (np.asarray(a, np.int64) for a in (neg_offsets, nex_offsets))
            self._neg_values, self._nex_values = (np.asarray(a, np.int32) for a in (neg_values, nex_values))
            if len(self._neg_offsets) != n + 1 or len(self._nex_offsets) != n + 1 or \
                    self._neg_offsets[-1] != len(self._neg_values) or self._nex_offsets[-1] != len(self._nex_values):
                raise ValueError("BoxIndex: federated arrays do not match the number of images")
        if len(self._label_offsets) != n + 1 or len(self._box_offsets) != n + 1:
            raise ValueError("BoxIndex: offsets do not match the number of images")
        if self._box_offsets[-1] != len(self._boxes) or len(self._box_labels) != len(self._boxes):
            raise ValueError("BoxIndex: box arrays do not match their offsets")
        if self._label_offsets[-1] != len(self._label_values):
            raise ValueError("BoxIndex: label arrays do not match their offsets")

    # ------------------------------------------------------------------ readers
    @classmethod
    def from_openimages(cls, labels_npy, boxes_npy=None, classes: Sequence[str] | None = None,
                        suffix: str = ".jpg") -> "BoxIndex":
        """Read the OpenImages-subset dicts.

        ``labels_npy``: image id -> list of class ids (``images_selected_new.npy`` or a test
        dict); ``boxes_npy``: image id -> ``{'data': rows}`` or a list of rows of the
        OpenImages box CSV (``[2]`` class, ``[4:8]`` XMin, XMax, YMin, YMax as numbers or
        strings, normalized to ``[0, 1]``). Either argument may be a path or an already loaded
        dict. ``classes`` fixes the class vocabulary and its order (e.g. the training classes
        when reading a test dict); otherwise classes are sorted by name.
        """
        labels = _as_dict(labels_npy)
        boxes = _as_dict(boxes_npy) if boxes_npy is not None else {}
        source = _source(labels_npy, "labels dict") + (f" + {_source(boxes_npy, 'boxes dict')}" if boxes_npy is not None
                                                       else "")
        builder = RowBuilder(classes, source, "they look like pixel coordinates, but the boxes dict holds XMin, XMax, "
                                            "YMin, YMax normalized to [0, 1] (as OpenImages' box CSV): divide x by "
                                            "the image width and y by its height")
        for image_id, image_labels in labels.items():
            entry = boxes.get(image_id, ())
            rows = entry.get("data", ()) if isinstance(entry, Mapping) else entry
            coords, names = parse_rows(rows)
            if isinstance(image_labels, (str, bytes)):
                image_labels = [image_labels]
            builder.add(str(image_id), f"{image_id}{suffix}", image_labels, coords, names)
        return cls(**builder.build())

    @classmethod
    def from_coco(cls, json_path, classes: Sequence[str] | None = None, include_crowd: bool = False) -> "BoxIndex":
        """Read a COCO detection json (absolute ``[x, y, w, h]`` boxes, category names) or an
        LVIS json.

        LVIS images carry ``coco_url`` instead of ``file_name``: the file is then
        ``<folder>/<name>`` of the URL (e.g. ``train2017/000000391895.jpg``, relative to the
        COCO folder; LVIS v1 val draws from both train2017 and val2017). Their
        ``neg_category_ids`` and ``not_exhaustive_category_ids`` are kept for federated AP
        (:meth:`target_matrix`). The classes are all the json's categories in category-id order
        (or ``classes``).
        Crowd annotations (``iscrowd``) are left out unless
        ``include_crowd`` (as in ``ssl_crops.datasets.crops``). Annotations left out on
        purpose are counted by reason in ``index.skipped`` (crowd, unknown category id,
        unknown image id); invalid boxes in ``index.dropped``.
        """
        json_path = Path(json_path)
        try:
            with open(json_path) as f:
                coco = json.load(f)
            categories = {c["id"]: str(c["name"]) for c in coco["categories"]}
            images = coco["images"]
            annotations = coco.get("annotations", [])
        except FileNotFoundError:
            raise FileNotFoundError(f"{json_path}: COCO json not found") from None
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise ValueError(f"{json_path}: not a COCO detection json ({type(e).__name__}: {e})") from e
        per_image: dict = {}
        skipped = {"crowd": 0, "unknown category id": 0, "unknown image id": 0}
        for a in annotations:
            if not isinstance(a, Mapping):
                raise ValueError(f"{json_path}: an annotation is not an object: {a!r:.80}")
            if a.get("iscrowd") and not include_crowd:
                skipped["crowd"] += 1
            elif a.get("category_id") not in categories:
                skipped["unknown category id"] += 1
            else:
                per_image.setdefault(a.get("image_id"), []).append(a)
        builder = RowBuilder(classes if classes is not None else [categories[k] for k in sorted(categories)],
                           str(json_path), "check the images' width and height entries against the photos "
                                           "(COCO bbox is [x, y, width, height] in pixels of that size)")
        for im in images:
            try:
                w, h, name = float(im["width"]), float(im["height"]), coco_file_name(im)
                anns = per_image.pop(im["id"], [])
                neg = [categories[c] for c in im.get("neg_category_ids", ()) if c in categories]
                nex = [categories[c] for c in im.get("not_exhaustive_category_ids", ()) if c in categories]
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{json_path}: image entry {im!r:.120} lacks id/width/height/file_name "
                                 f"(or coco_url)") from e
            coords = np.full((len(anns), 4), np.nan)
            names = [categories[a["category_id"]] for a in anns]
            for k, a in enumerate(anns):
                bbox = a.get("bbox")
                if isinstance(bbox, (list, tuple)) and len(bbox) == 4 and w > 0 and h > 0:
                    x, y, bw, bh = (to_float(v) for v in bbox)
                    coords[k] = (x / w, y / h, (x + bw) / w, (y + bh) / h)
            builder.add(Path(name).stem, name, sorted(set(names)), coords, names, neg, nex)
        skipped["unknown image id"] = sum(map(len, per_image.values()))
        builder.skipped = skipped
        return cls(**builder.build())

    @classmethod
    def from_folder(cls, root, classes: Sequence[str] | None = None) -> "BoxIndex":
        """Index the images under ``root`` (no boxes).

        When every image sits in a first-level sub-folder, the sub-folder names are the
        class labels (ImageFolder layout); otherwise images have no labels.
        """
        files, others = _scan(root)
        if not files:
            found = f"; found {len(others)} other files, e.g. {others[0]}" if others else " (the folder is empty)"
            raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found{found}")
        class_layout = all(len(p.parts) == 2 for p in files)
        builder = RowBuilder(classes, f"{root} (image folder, no boxes)")
        builder.skipped = {"files that are not images": len(others)}
        empty = np.zeros((0, 4))
        for p in files:
            labels = [p.parts[0]] if class_layout else []
            builder.add(p.with_suffix("").as_posix(), p.as_posix(), labels, empty, [])
        return cls(**builder.build())

    # ------------------------------------------------------------------ storage
    def save(self, path) -> None:
        """Write a pickle-free ``.npz`` (atomically: temporary file, then rename)."""
        names = self._ARRAYS + (self._FEDERATED if self.federated else ())
        arrays = {name: getattr(self, "_" + name) for name in names}
        meta = {"version": _FORMAT_VERSION, "dropped": self.dropped, "out_of_vocabulary": self.out_of_vocabulary,
                "skipped": self.skipped, "dropped_reasons": self.dropped_reasons, "clipped": self.clipped,
                "source": self.source}
        with atomic_write(path) as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **arrays)

    @classmethod
    def load(cls, path) -> "BoxIndex":
        """Read an index written by :meth:`save`."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {name: z[name] for name in cls._ARRAYS + cls._FEDERATED if name in z}
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: index file not found") from None
        except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
            raise ValueError(f"{path}: not a readable BoxIndex file ({type(e).__name__}: {e})") from e
        if meta.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: BoxIndex format version {meta.get('version')} is not supported")
        return cls(**arrays, dropped=meta["dropped"], out_of_vocabulary=meta.get("out_of_vocabulary", 0),
                   skipped=meta.get("skipped"), dropped_reasons=meta.get("dropped_reasons"),
                   clipped=meta.get("clipped", 0), source=f"{path} (saved index of {meta.get('source') or '?'})")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return (f"BoxIndex({len(self)} images, {self.num_boxes} boxes, {self.num_classes} classes, "
                f"dropped={self.dropped})")

    def describe(self) -> str:
        """One line: the source file(s), what was read, and what was dropped, clipped or left out."""
        line = f"{self.source or 'BoxIndex'}: {len(self)} images, {self.num_boxes} boxes, {self.num_classes} classes"
        total = self.num_boxes + self.dropped
        changes = box_changes(total, self.dropped_reasons or ({"invalid": self.dropped} if self.dropped else {}),
                               self.clipped)
        left_out = format_counts(self.skipped)
        return line + (f"; {changes}" if changes else "") + (f"; left out: {left_out}" if left_out else "")

    @property
    def num_boxes(self) -> int:
        return len(self._boxes)

    @property
    def num_classes(self) -> int:
        return len(self._classes)

    @property
    def classes(self) -> list[str]:
        return self._classes.tolist()

    def image_id(self, i: int) -> str:
        return str(self._ids[i])

    def path(self, i: int) -> str:
        """File name of image ``i``, relative to the image folder."""
        if self._files.ndim == 0:
            return str(self._ids[i]) + str(self._files)
        return str(self._files[i])

    def labels(self, i: int) -> np.ndarray:
        return self._label_values[self._label_offsets[i]:self._label_offsets[i + 1]].astype(np.int64)

    def boxes(self, i: int) -> np.ndarray:
        return self._boxes[self._box_offsets[i]:self._box_offsets[i + 1]]

    def box_labels(self, i: int) -> np.ndarray:
        return self._box_labels[self._box_offsets[i]:self._box_offsets[i + 1]].astype(np.int64)

    @property
    def flat_boxes(self) -> np.ndarray:
        """All boxes, ``(num_boxes, 4)``; box ``j`` belongs to image ``box_image[j]``."""
        return self._boxes

    @property
    def box_image(self) -> np.ndarray:
        if self._box_image is None:
            self._box_image = np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self._box_offsets))
        return self._box_image

    def num_labels_per_image(self) -> np.ndarray:
        return np.diff(self._label_offsets)

    def num_boxes_per_image(self) -> np.ndarray:
        return np.diff(self._box_offsets)

    def label_matrix(self) -> np.ndarray:
        """Multi-hot ``(len, num_classes)`` float32 matrix of image labels."""
        out = np.zeros((len(self), self.num_classes), np.float32)
        rows = np.repeat(np.arange(len(self)), np.diff(self._label_offsets))
        out[rows, self._label_values] = 1.0
        return out

    def negative_labels(self, i: int) -> np.ndarray:
        """Classes verified absent from image ``i`` (LVIS ``neg_category_ids``; empty otherwise)."""
        if not self.federated:
            return np.zeros(0, np.int64)
        return self._neg_values[self._neg_offsets[i]:self._neg_offsets[i + 1]].astype(np.int64)

    def not_exhaustive_labels(self, i: int) -> np.ndarray:
        """Classes not exhaustively annotated in image ``i`` (LVIS; empty otherwise)."""
        if not self.federated:
            return np.zeros(0, np.int64)
        return self._nex_values[self._nex_offsets[i]:self._nex_offsets[i + 1]].astype(np.int64)

    def target_matrix(self) -> np.ndarray:
        """Evaluation targets ``(len, num_classes)`` int8: the multi-hot labels, or for a
        federated (LVIS) index 1 positive, 0 verified negative, -1 not scored
        (:func:`ssl_crops.metrics.federated_targets`)."""
        if not self.federated:
            return self.label_matrix().astype(np.int8)
        from .metrics import federated_targets

        def matrix(offsets, values):
            m = np.zeros((len(self), self.num_classes), bool)
            m[np.repeat(np.arange(len(self)), np.diff(offsets)), values] = True
            return m
        return federated_targets(matrix(self._label_offsets, self._label_values),
                                 matrix(self._neg_offsets, self._neg_values), matrix(self._nex_offsets, self._nex_values))

    def subset(self, images) -> "BoxIndex":
        """A new index of the given images (indices or a boolean mask), in that order."""
        idx = np.arange(len(self))[images] if np.asarray(images).dtype == bool else np.asarray(images, np.int64)
        files = self._files if self._files.ndim == 0 else self._files[idx]
        lo, lv = _take_ragged(self._label_offsets, self._label_values, idx)
        bo, keep = _take_ragged(self._box_offsets, np.arange(self.num_boxes), idx)
        fed = {}
        if self.federated:
            fed = dict(zip(("neg_offsets", "neg_values"), _take_ragged(self._neg_offsets, self._neg_values, idx)))
            fed.update(zip(("nex_offsets", "nex_values"), _take_ragged(self._nex_offsets, self._nex_values, idx)))
        return BoxIndex(ids=self._ids[idx], files=np.char.add(self._ids[idx], files) if files.ndim == 0 else files,
                        classes=self._classes, label_offsets=lo, label_values=lv, box_offsets=bo,
                        boxes=self._boxes[keep], box_labels=self._box_labels[keep], **self._counts(), **fed)

    def with_images(self, files: Sequence[str]) -> "BoxIndex":
        """The same index with the images ``files`` (relative paths, ids their stems) appended,
        without labels or boxes (e.g. folder images no annotation lists, cropped from proposals)."""
        n, files = len(files), [str(f) for f in files]
        pad = lambda offsets: np.concatenate([offsets, np.full(n, offsets[-1])])  # noqa: E731
        fed = {k: pad(getattr(self, "_" + k)) if k.endswith("offsets") else getattr(self, "_" + k)
               for k in self._FEDERATED} if self.federated else {}
        own = np.char.add(self._ids, self._files) if self._files.ndim == 0 else self._files
        return BoxIndex(ids=np.concatenate([self._ids, [Path(f).with_suffix("").as_posix() for f in files]]),
                        files=np.concatenate([own, files]), classes=self._classes,
                        label_offsets=pad(self._label_offsets), label_values=self._label_values,
                        box_offsets=pad(self._box_offsets), boxes=self._boxes, box_labels=self._box_labels,
                        **self._counts(), **fed)

    def with_classes(self, classes: Sequence[str]) -> "BoxIndex":
        """The same images with class indices of the vocabulary ``classes``, in its order (e.g.
        the training classes for a test split); labels and boxes of other classes are left out
        and counted in ``out_of_vocabulary``."""
        classes = np.asarray(list(dict.fromkeys(classes)), dtype=str)
        if np.array_equal(classes, self._classes):
            return self
        new = {c: i for i, c in enumerate(classes.tolist())}
        mapping = np.array([new.get(c, -1) for c in self._classes.tolist()] + [-1], np.int32)

        def remap(offsets, values):
            v = mapping[values] if len(values) else np.zeros(0, np.int32)
            keep = v >= 0
            counts = np.bincount(np.repeat(np.arange(len(self)), np.diff(offsets))[keep], minlength=len(self))
            out = np.zeros(len(self) + 1, np.int64)
            out[1:] = np.cumsum(counts)
            return out, v[keep], keep
        lo, lv, lkeep = remap(self._label_offsets, self._label_values)
        bo, bl, bkeep = remap(self._box_offsets, self._box_labels)
        fed = {}
        if self.federated:
            no, nv, _ = remap(self._neg_offsets, self._neg_values)
            xo, xv, _ = remap(self._nex_offsets, self._nex_values)
            fed = {"neg_offsets": no, "neg_values": nv, "nex_offsets": xo, "nex_values": xv}
        files = np.char.add(self._ids, self._files) if self._files.ndim == 0 else self._files
        return BoxIndex(ids=self._ids, files=files, classes=classes, label_offsets=lo, label_values=lv,
                        box_offsets=bo, boxes=self._boxes[bkeep], box_labels=bl,
                        **{**self._counts(),
                           "out_of_vocabulary": self.out_of_vocabulary + int((~lkeep).sum() + (~bkeep).sum())}, **fed)

    def _counts(self) -> dict:
        """What was dropped, clipped and left out, and the source: kept by subsets."""
        return {"dropped": self.dropped, "out_of_vocabulary": self.out_of_vocabulary, "skipped": self.skipped,
                "dropped_reasons": self.dropped_reasons, "clipped": self.clipped, "source": self.source}

    def class_counts(self) -> np.ndarray:
        """Number of images per class."""
        return np.bincount(self._label_values, minlength=self.num_classes)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, "_" + n).nbytes for n in self._ARRAYS)


def image_files(root) -> list[Path]:
    """Image files (``IMAGE_EXTENSIONS``) under ``root``, as sorted paths relative to it."""
    return _scan(root)[0]


def _scan(root) -> tuple[list[Path], list[Path]]:
    """``(image files, other files)`` under ``root`` (hidden files left out), sorted, relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    images, others = [], []
    for p in root.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
            images.append(p.relative_to(root))
        elif not p.name.startswith(".") and p.is_file():
            others.append(p.relative_to(root))
    return sorted(images), sorted(others)


def _compact_files(ids: np.ndarray, files: np.ndarray) -> np.ndarray:
    """Store file names as one shared suffix (0-d array) when every file is ``id + suffix``."""
    if files.ndim == 0 or len(files) == 0:
        return files if files.ndim == 0 else np.array("", dtype=str)
    suffix = files[0][len(ids[0]):] if files[0].startswith(ids[0]) else None
    if suffix is not None and np.array_equal(np.char.add(ids, suffix), files):
        return np.array(suffix, dtype=str)
    return files


def random_boxes_like(boxes, rng: np.random.Generator) -> np.ndarray:
    """Normalized boxes ``(N, 4)`` of the sizes of ``boxes`` (normalized ``x0, y0, x1, y1``;
    sizes clipped to ``[0, 1]``) at uniformly random positions inside the image: the control
    that keeps a box source's sizes and drops its positions (``main_moco.py --random-boxes``)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    w, h = np.clip(b[:, 2] - b[:, 0], 0, 1), np.clip(b[:, 3] - b[:, 1], 0, 1)
    x0, y0 = rng.uniform(0, 1 - w), rng.uniform(0, 1 - h)
    return np.clip(np.stack([x0, y0, x0 + w, y0 + h], 1), 0, 1)  # x0 + w may round past 1


def _take_ragged(offsets: np.ndarray, values: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and values of the rows ``idx`` of a ragged array."""
    counts = (offsets[1:] - offsets[:-1])[idx]
    out = np.zeros(len(idx) + 1, np.int64)
    out[1:] = np.cumsum(counts)
    starts = np.repeat(offsets[:-1][idx] - out[:-1], counts)
    return out, values[starts + np.arange(out[-1])]


def coco_file_name(image: Mapping) -> str:
    """``file_name`` of a COCO image entry, or ``<folder>/<name>`` of an LVIS ``coco_url``."""
    if "file_name" in image:
        return str(image["file_name"])
    parts = [p for p in str(image["coco_url"]).split("/") if p]
    if not parts:
        raise ValueError("empty coco_url")
    return "/".join(parts[-2:])


def _source(source, what: str) -> str:
    return f"{what} (in memory)" if isinstance(source, Mapping) else str(source)


def _as_dict(source) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    return load_npy_dict(source)
