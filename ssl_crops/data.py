"""The torch ``Dataset``s: object-aware two-view pretraining items and labelled images for
evaluation. (Preparing data on disk, the OpenImages subset and COCO crops, is ``ssl_crops.datasets``.)"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from .boxes import BoxIndex, random_boxes_like
from .demo import make_demo
from .images import EncodedImage, ImageReadError, load_image, open_image
from .sources import find_annotation, load_index

__all__ = [
    "ObjectCropDataset", "LabeledImageDataset", "ProposalSource", "CorruptImageError", "EncodedImage",
    "open_image", "load_image", "load_index", "find_annotation", "make_demo", "unreadable_rows",
]

CorruptImageError = ImageReadError  # the name this module used for it


class ProposalSource(Protocol):
    """Boxes for images without annotations (a BING model or a proposal cache). A source that
    does not look at the pixels (a cache) may set ``needs_image = False``: it then gets ``None``
    and the image is decoded only as far as the crops need."""

    def proposals_for(self, image_id: str, image: Image.Image | None, top_k: int | None = None) -> np.ndarray:
        """Normalized ``x0, y0, x1, y1`` proposals ``(K, 4)``, best first: the first ``top_k``
        (``None``: all)."""


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
    (a PNG named ``.jpg``, CMYK, 1x1 px) are decoded as RGB and served; so are JPEGs that lack only
    their end marker, counted in ``truncated_images``.
    ``random_boxes=True`` (the random-box control, ``main_moco.py --random-boxes``) replaces an
    image's boxes (annotations or proposals) by boxes of the same sizes at uniformly random
    positions, drawn from ``(random_boxes_seed, epoch, image)``: the same in an epoch for every
    item of the image, new each epoch (:meth:`set_epoch`; ``SeededDataset`` calls it per item).
    """

    max_consecutive_failures = 32

    def __init__(self, root, index: BoxIndex, transform, proposals: ProposalSource | None = None,
                 sampling: str = "image", proposal_topk: int = 10, on_corrupt: str = "skip", warn: bool = True,
                 random_boxes: bool = False, random_boxes_seed: int = 0):
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
        self.truncated_images = 0  # JPEGs without their end marker, decoded and used
        self.random_boxes, self.random_boxes_seed, self.epoch = bool(random_boxes), int(random_boxes_seed), 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch the random boxes of ``random_boxes=True`` are drawn for."""
        self.epoch = int(epoch)

    def placed_boxes(self, image: int, boxes) -> np.ndarray:
        """``boxes`` of ``image`` at the random positions of this epoch (``random_boxes=True``)."""
        rng = np.random.default_rng([self.random_boxes_seed, self.epoch, image])
        return random_boxes_like(boxes, rng)

    def __len__(self) -> int:
        return self.index.num_boxes if self.sampling == "box" else len(self.index)

    def _image_of(self, i: int) -> int:
        return int(self.index.box_image[i]) if self.sampling == "box" else i

    def _image_and_boxes(self, i: int):
        image = self._image_of(i)
        boxes = self.index.flat_boxes[i:i + 1] if self.sampling == "box" else self.index.boxes(i)
        if self.random_boxes and len(boxes):  # all of the image's boxes drawn at once: item i takes its row
            row = i - int(self.index.box_image.searchsorted(image)) if self.sampling == "box" else slice(None)
            boxes = self.placed_boxes(image, self.index.boxes(image))[row].reshape(-1, 4)
        img = open_image(self.root / self.index.path(image))
        self.truncated_images += img.truncated
        if len(boxes) == 0 and self.proposals is not None:  # proposals computed from pixels need the full image
            pixels = img.decode() if getattr(self.proposals, "needs_image", True) else None
            boxes = self.proposals.proposals_for(self.index.image_id(image), pixels, self.proposal_topk)
            if self.random_boxes and len(boxes):
                boxes = self.placed_boxes(image, boxes)
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
