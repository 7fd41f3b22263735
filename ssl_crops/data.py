"""Datasets: object-aware two-view pretraining data and labelled images for evaluation."""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
from PIL import Image

from .boxes import BoxIndex
from .demo import make_demo
from .formats import SUBSET_FILES

__all__ = [
    "ObjectCropDataset", "LabeledImageDataset", "ProposalSource", "CorruptImageError", "EncodedImage",
    "open_image", "load_image", "load_index", "find_annotation", "make_demo", "unreadable_rows",
]


class CorruptImageError(ValueError):
    """An image file is missing, truncated or cannot be decoded."""


class ProposalSource(Protocol):
    """Boxes for images without annotations (a BING model or a proposal cache). A source that
    does not look at the pixels (a cache) may set ``needs_image = False``: it then gets ``None``
    and the image is decoded only as far as the crops need."""

    def proposals_for(self, image_id: str, image: Image.Image | None, top_k: int | None = None) -> np.ndarray:
        """Normalized ``x0, y0, x1, y1`` proposals ``(K, 4)``, best first: the first ``top_k``
        (``None``: all)."""


JPEG_SCALES = (8, 4, 2)  # the DCT scale divisors libjpeg decodes at, besides 1 (the full image)


class EncodedImage:
    """An image file read but not decoded: ``size`` comes from the header; pixels are decoded on
    demand, a JPEG at a reduced DCT scale (1/2, 1/4, 1/8) when the regions asked for allow it.

    A missing, truncated or undecodable file raises :class:`CorruptImageError` naming it.
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
        except FileNotFoundError:
            raise CorruptImageError(f"{path}: image file not found") from None
        except OSError as e:
            raise CorruptImageError(f"{path}: cannot read image ({e})") from e
        with self._open() as f:
            self.size, self.format = f.size, f.format
        self._decoded: Image.Image | None = None

    def decode(self) -> Image.Image:
        """The whole image as RGB at full resolution (decoded once)."""
        if self._decoded is None:
            self._decoded = self._load(self._open())
        return self._decoded

    def scale_for(self, regions: Sequence, size) -> int:
        """The largest JPEG scale divisor (8, 4, 2, else 1) at which every region keeps at least
        ``size`` (``int`` or ``(width, height)``) pixels along each axis; 1 for other formats."""
        if self._decoded is not None or self.format != "JPEG":
            return 1
        out_w, out_h = (size, size) if isinstance(size, int) else size
        short = min(min((x1 - x0) / out_w, (y1 - y0) / out_h) for x0, y0, x1, y1 in regions)
        return next((k for k in JPEG_SCALES if short >= k), 1)

    def decode_regions(self, regions: Sequence, size) -> tuple[Image.Image, list[tuple[float, ...]]]:
        """``(image, regions)``: the RGB image decoded at :meth:`scale_for` and the pixel regions
        ``(x0, y0, x1, y1)`` mapped exactly into it (floats, 1/k of the original coordinates:
        reduced pixel ``i`` covers original pixels ``[k i, k (i + 1))``)."""
        k = self.scale_for(regions, size)
        if k > 1:
            f = self._open()
            drafted = f.draft("RGB", (self.size[0] // k, self.size[1] // k))
            if drafted is not None:  # None: a JPEG PIL cannot draft, decoded fully below
                scale = self.size[0] / drafted[1][2]
                return self._load(f), [tuple(v / scale for v in r) for r in regions]
        return self.decode(), [tuple(float(v) for v in r) for r in regions]

    def _open(self) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self._data))
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"{self.path}: cannot decode image ({e})") from e

    def _load(self, f: Image.Image) -> Image.Image:
        try:
            with f:
                return f.convert("RGB")
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise CorruptImageError(f"{self.path}: cannot decode image ({e})") from e


def open_image(path) -> EncodedImage:
    """Read an image file without decoding it (:class:`EncodedImage`); hand it to
    :class:`~ssl_crops.transforms.ObjectAwareCrop` to decode only what the two views need."""
    return EncodedImage(path)


def load_image(path) -> Image.Image:
    """Decode an image fully as RGB; :class:`CorruptImageError` names the file on failure."""
    return EncodedImage(path).decode()


class ObjectCropDataset(torch.utils.data.Dataset):
    """Two views per sample from object boxes: item ``i`` is ``((view_q, view_k), i)``.

    ``sampling="image"``: one item per image, the transform picks one of its boxes;
    ``sampling="box"``: one item per box (the original code's epoch), images without boxes
    are not visited. Images without boxes take the top ``proposal_topk`` boxes of
    ``proposals`` when given, else the transform falls back to scene crops.
    ``transform`` is called as ``transform(image, boxes)`` when it has ``uses_boxes``
    (:class:`~ssl_crops.transforms.ObjectAwareCrop`), else as ``transform(image)``; ``image`` is
    an :class:`EncodedImage` when it has ``accepts_encoded`` (reduced decoding), else the
    decoded RGB PIL image.
    ``on_corrupt="skip"`` serves the next image instead of an unreadable one (missing,
    truncated, empty, not an image, or a decompression bomb), with a warning (once per image
    and process; ``warn=False``: none, for callers that report skips themselves);
    ``bad_images`` counts the skips of this process and ``last_skipped`` lists
    ``(file name, reason)`` of the last item's skips. ``"raise"`` raises :class:`CorruptImageError`. Valid images of any mode or size
    (a PNG named ``.jpg``, CMYK, 1x1 px) are decoded as RGB and served.
    """

    max_consecutive_failures = 32

    def __init__(self, root, index: BoxIndex, transform, proposals: ProposalSource | None = None,
                 sampling: str = "image", proposal_topk: int = 10, on_corrupt: str = "skip", warn: bool = True):
        if sampling not in ("image", "box"):
            raise ValueError(f"sampling must be 'image' or 'box', got {sampling!r}")
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        if sampling == "box" and index.num_boxes == 0:
            raise ValueError("sampling='box' needs an index with boxes")
        self.root, self.index, self.transform = Path(root), index, transform
        self.proposals, self.proposal_topk = proposals, int(proposal_topk)
        self.sampling, self.on_corrupt = sampling, on_corrupt
        self.uses_boxes = getattr(transform, "uses_boxes", False)
        self.accepts_encoded = getattr(transform, "accepts_encoded", False)  # decodes only what it crops
        self.bad_images, self.last_skipped, self.warn, self._warned = 0, [], warn, set()

    def __len__(self) -> int:
        return self.index.num_boxes if self.sampling == "box" else len(self.index)

    def _image_of(self, i: int) -> int:
        return int(self.index.box_image[i]) if self.sampling == "box" else i

    def _image_and_boxes(self, i: int):
        image = self._image_of(i)
        boxes = self.index.flat_boxes[i:i + 1] if self.sampling == "box" else self.index.boxes(i)
        img = open_image(self.root / self.index.path(image))
        if len(boxes) == 0 and self.proposals is not None:  # proposals computed from pixels need the full image
            pixels = img.decode() if getattr(self.proposals, "needs_image", True) else None
            boxes = self.proposals.proposals_for(self.index.image_id(image), pixels, self.proposal_topk)
        return (img if self.accepts_encoded else img.decode()), boxes

    def _next_image_item(self, i: int) -> int:
        """The first item of the image after item ``i``'s image (wrapping around)."""
        if self.sampling == "box":
            box_image = self.index.box_image
            return int(np.searchsorted(box_image, box_image[i], side="right")) % len(self)
        return (i + 1) % len(self)

    def __getitem__(self, i: int):
        j, self.last_skipped = i, []
        for _ in range(self.max_consecutive_failures):
            try:
                img, boxes = self._image_and_boxes(j)
                views = self.transform(img, boxes) if self.uses_boxes else self.transform(img)  # decodes
                break
            except CorruptImageError as e:
                if self.on_corrupt == "raise":
                    raise
                name = self.index.path(self._image_of(j))
                self.bad_images += 1
                self.last_skipped.append((name, str(e).removeprefix(f"{self.root / name}: ")))
                if self.warn and name not in self._warned:
                    self._warned.add(name)
                    warnings.warn(f"skipping unreadable image: {e}", RuntimeWarning, stacklevel=2)
                j = self._next_image_item(j)
        else:
            raise CorruptImageError(f"{self.max_consecutive_failures} unreadable images in a row from {self.root}")
        return views, i


class LabeledImageDataset(torch.utils.data.Dataset):
    """Images with multi-hot targets: item ``i`` is ``(transform(image), target)``.

    An unreadable image raises :class:`CorruptImageError` (``on_corrupt="raise"``); with
    ``"skip"`` its item is the transform of a black image with a NaN target, for the caller to
    leave out (:func:`unreadable_rows`; the file may be anywhere in a batch of any worker)."""

    def __init__(self, root, index: BoxIndex, transform, on_corrupt: str = "raise"):
        if on_corrupt not in ("skip", "raise"):
            raise ValueError(f"on_corrupt must be 'skip' or 'raise', got {on_corrupt!r}")
        self.root, self.index, self.transform, self.on_corrupt = Path(root), index, transform, on_corrupt
        self.targets = torch.from_numpy(index.label_matrix())

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        try:
            img = load_image(self.root / self.index.path(i))
        except CorruptImageError:
            if self.on_corrupt == "raise":
                raise
            return self.transform(Image.new("RGB", (1, 1))), torch.full_like(self.targets[i], float("nan"))
        return self.transform(img), self.targets[i]


def unreadable_rows(targets) -> np.ndarray:
    """Boolean mask of the items :class:`LabeledImageDataset` served for unreadable images."""
    targets = np.asarray(targets)
    return np.isnan(targets.reshape(len(targets), -1)).any(1)


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


def load_index(data_dir, labels=None, boxes=None, coco=None, index=None) -> BoxIndex:
    """The :class:`BoxIndex` of an image folder.

    Explicit files win (``index`` a saved ``.npz``, ``coco`` a COCO json, ``labels`` /
    ``boxes`` the OpenImages-subset dicts); otherwise ``images_selected_new.npy`` and
    ``images_selected_with_all_features.npy`` are looked for beside the folder (in it, its
    parent, the working directory; the boxes dict also beside an explicit labels dict);
    otherwise the folder's images are indexed without boxes.
    """
    data_dir = Path(data_dir)
    if index is not None:
        return BoxIndex.load(index)
    if coco is not None:
        return BoxIndex.from_coco(_must_exist(coco, "COCO json"))
    if labels is not None:
        labels_path = _must_exist(labels, "labels dict")
        boxes_dir = labels_path.parent
    else:
        labels_path, boxes_dir = find_annotation(SUBSET_FILES["labels"], data_dir), data_dir
        if labels_path is None and boxes is not None:
            raise FileNotFoundError(f"{SUBSET_FILES['labels']}: labels dict not found beside {data_dir} (give --labels)")
    if labels_path is None:
        return BoxIndex.from_folder(data_dir)
    boxes_path = _must_exist(boxes, "boxes dict") if boxes is not None else find_annotation(SUBSET_FILES["boxes"], boxes_dir)
    return BoxIndex.from_openimages(labels_path, boxes_path)


def _must_exist(path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    return path
