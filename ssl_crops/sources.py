"""Annotation sources: the command-line flags that name them (:func:`add_annotation_args`), what
they name (:class:`AnnotationSpec`) and the one loader (:func:`load_index`). Torch-free."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Sequence

import numpy as np

from .boxes import IMAGE_EXTENSIONS, BoxIndex
from .formats import SUBSET_FILES

__all__ = ["AnnotationSpec", "load_index", "find_annotation", "add_annotation_args", "folder_match",
           "ANNOTATION_KINDS"]

ANNOTATION_KINDS = ("labels", "boxes", "coco", "index")
_HELP = {
    "labels": "labels dict (images_selected_new.npy form; default: {default} beside the image folder)",
    "boxes": "boxes dict (images_selected_with_all_features.npy form; default: the one beside the labels dict)",
    "coco": "COCO or LVIS detection json instead of the dicts (LVIS: federated scoring)",
    "index": "a saved BoxIndex .npz (BoxIndex.save, e.g. index.npz of the OpenImages builder) instead of the dicts",
}


@dataclass(frozen=True)
class AnnotationSpec:
    """Where the boxes and labels of the images in ``images`` come from.

    Explicit files win (``index`` a saved ``.npz``, ``coco`` a COCO/LVIS json, ``labels`` /
    ``boxes`` the OpenImages-subset dicts); otherwise the labels dict (``split="train"``:
    ``images_selected_new.npy`` with ``images_selected_with_all_features.npy``; ``"test"``:
    ``images_test.npy``, labels only) is looked for in ``images``, its parent and the working
    directory (the boxes dict also beside an explicit labels dict). A train split with none
    indexes the folder's images without boxes; a test split with none is an error.
    ``classes``: the class vocabulary and its order (e.g. the training classes).
    """
    images: Path
    labels: Path | None = None
    boxes: Path | None = None
    coco: Path | None = None
    index: Path | None = None
    include_crowd: bool = False
    split: str = "train"
    classes: tuple[str, ...] | None = None

    def __post_init__(self):
        if self.split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {self.split!r}")
        for name in ("images",) + ANNOTATION_KINDS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(self.classes))

    @classmethod
    def from_args(cls, args: argparse.Namespace, images, prefix: str = "", **kw) -> "AnnotationSpec":
        """The files named by :func:`add_annotation_args` flags (``prefix="test-"``: the test
        split's); flags the parser does not declare count as not given."""
        attr = prefix.replace("-", "_")
        files = {k: getattr(args, attr + k, None) for k in ANNOTATION_KINDS}
        return cls(images, **files, include_crowd=bool(getattr(args, "include_crowd", False)),
                   split="test" if prefix else "train", **kw)

    @classmethod
    def from_path(cls, path) -> "AnnotationSpec":
        """One path: a data folder, a BoxIndex ``.npz``, a COCO ``.json`` or a labels ``.npy``
        (boxes dict beside it), told apart by its suffix."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: index not found (a .npz, COCO .json, labels .npy or data folder)")
        if path.is_dir():
            return cls(path)
        kind = {".npz": "index", ".json": "coco", ".npy": "labels"}.get(path.suffix.lower())
        if kind is None:
            raise ValueError(f"{path}: not an index (expected .npz, COCO .json, labels .npy or a data folder)")
        return cls(path.parent, **{kind: path})


def find_annotation(name: str | os.PathLike, data_dir) -> Path | None:
    """``name`` if it is an existing path, else the first of ``data_dir/name``,
    ``data_dir/../name`` and ``./name`` that exists."""
    name = Path(name)
    if name.is_file():
        return name
    for folder in (Path(data_dir), Path(data_dir).parent, Path.cwd()):
        if (folder / name).is_file():
            return folder / name
    return None


def load_index(spec: AnnotationSpec | str | os.PathLike, labels=None, boxes=None, coco=None,
               index=None) -> BoxIndex:
    """The :class:`BoxIndex` named by ``spec`` (an :class:`AnnotationSpec`, or an image folder
    with the files as keywords: ``load_index(folder, coco=...)``)."""
    if not isinstance(spec, AnnotationSpec):
        spec = AnnotationSpec(spec, labels=labels, boxes=boxes, coco=coco, index=index)
    elif any(f is not None for f in (labels, boxes, coco, index)):
        raise TypeError("load_index: give the files in the AnnotationSpec, not as keywords")
    if spec.index is not None:
        return _vocabulary(BoxIndex.load(spec.index), spec.classes)
    if spec.coco is not None:
        return _vocabulary(BoxIndex.from_coco(_must_exist(spec.coco, "COCO json"), include_crowd=spec.include_crowd),
                           spec.classes)
    test = spec.split == "test"
    default = SUBSET_FILES["test_labels" if test else "labels"]
    if spec.labels is not None:
        labels_path = _must_exist(spec.labels, "labels dict")
        boxes_dir = labels_path.parent
    else:
        labels_path, boxes_dir = find_annotation(default, spec.images), spec.images
        if labels_path is None and (spec.boxes is not None or test):
            raise FileNotFoundError(f"{default}: {spec.split} labels dict not found in {spec.images}, its parent or "
                                    f"the working directory (give --{'test-labels or --test-coco' if test else 'labels'})")
    if labels_path is None:
        return BoxIndex.from_folder(spec.images)
    if spec.boxes is not None:
        boxes_path = _must_exist(spec.boxes, "boxes dict")
    else:
        boxes_path = None if test else find_annotation(SUBSET_FILES["boxes"], boxes_dir)
    return BoxIndex.from_openimages(labels_path, boxes_path, classes=spec.classes)


def folder_match(index: BoxIndex, root) -> tuple[np.ndarray, list[str]]:
    """``(present, unlisted)``: which images of ``index`` are files under ``root`` (a boolean
    mask), and the image files (``IMAGE_EXTENSIONS``, relative paths, sorted) in the folders the
    index names that it does not list. Each folder is listed once (no stat per image)."""
    root, listing = Path(root), {}

    def names(folder: str) -> set:
        if folder not in listing:
            try:
                with os.scandir(root / folder) as it:
                    listing[folder] = {e.name for e in it if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listing[folder] = set()
        return listing[folder]
    paths = [PurePosixPath(index.path(i)) for i in range(len(index))]
    present = np.array([p.name in names(str(p.parent)) for p in paths], bool)
    listed = {str(p) for p in paths}
    unlisted = (str(PurePosixPath(folder) / name) for folder, found in listing.items() for name in found)
    return present, sorted(p for p in unlisted if PurePosixPath(p).suffix.lower() in IMAGE_EXTENSIONS
                           and p not in listed)


def add_annotation_args(parser, prefix: str = "", kinds: Sequence[str] = ANNOTATION_KINDS, what: str = "") -> None:
    """Declare the annotation flags ``--<prefix>labels``, ``--<prefix>boxes``, ``--<prefix>coco``
    and ``--<prefix>index`` (those in ``kinds``; default ``None``, read back with
    :meth:`AnnotationSpec.from_args`) on ``parser`` or an argument group. ``what`` starts
    each help line (e.g. ``"test annotations for kNN"``)."""
    for kind in kinds:
        if kind not in ANNOTATION_KINDS:
            raise ValueError(f"unknown annotation kind {kind!r} (one of {', '.join(ANNOTATION_KINDS)})")
        text = _HELP[kind].format(default=SUBSET_FILES["test_labels" if prefix else "labels"])
        parser.add_argument(f"--{prefix}{kind}", default=None, help=f"{what}: {text}" if what else text)


def _vocabulary(index: BoxIndex, classes) -> BoxIndex:
    return index if classes is None else index.with_classes(classes)


def _must_exist(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path
