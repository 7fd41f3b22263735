"""What the crop transforms take and give: image kinds, v2 dict samples, the views they return
and their shared counters (for :class:`~ssl_crops.transforms.ObjectAwareCrop` and
:class:`~ssl_crops.transforms.ObjectAwareMultiCrop`).

* Inputs: a PIL image, an image tensor ``(C, H, W)`` with 1 or 3 channels, or an *encoded* image
  (:func:`ssl_crops.open_image`: any object with ``size`` and ``decode_regions``), alone or as
  the ``"image"`` entry of a ``torchvision.transforms.v2`` dict sample.
* Views out: tensors come back as :class:`View` (a ``tv_tensors.Image``). A v2 transform placed
  *after* a crop would draw its random parameters once for all the views of a sample, so every
  kernel except ``normalize`` and ``to_dtype`` (the same for every view by nature) raises a
  ``TypeError`` pointing to the crop's ``augment=`` instead. Torch ops on views give plain tensors.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode
from torchvision.transforms.functional import pil_modes_mapping
from torchvision.transforms.v2 import functional as F

__all__ = ["View", "as_views", "SharedCounter", "SceneFallbacks", "pair_size", "image_size", "is_encoded", "sample_parts",
           "without_boxes", "check_canvas", "resized_crop", "ACCEPTS"]

ACCEPTS = "a PIL image or an image tensor (C, H, W) / (..., C, H, W) with 1 or 3 channels"
_SAME_FOR_EVERY_VIEW = {"normalize", "to_dtype", "get_dimensions", "get_num_channels", "get_num_frames", "get_size"}
_FEW_PIXELS = 16  # images at least this large get the warning about normalized BoundingBoxes


class View(tv_tensors.Image):
    """One view returned by a crop transform: a ``tv_tensors.Image`` that v2 transforms with random
    parameters refuse (they would give every view of the sample the same draw)."""


def _refuse(name: str):
    def kernel(inpt, *args, **kwargs):
        raise TypeError(f"v2 transform (F.{name}) after ObjectAwareCrop / ObjectAwareMultiCrop: it would apply one "
                        "draw of its random parameters to every view of the sample (or to one view only). Pass "
                        "per-view transforms as the crop's augment= (e.g. augment=v2.Compose([...])); v2.Normalize "
                        "and v2.ToDtype may follow the crop")
    return kernel


for _name in dir(F):  # the dispatching functionals: those with an ``<name>_image`` kernel
    if hasattr(F, f"{_name}_image") and _name not in _SAME_FOR_EVERY_VIEW:
        F.register_kernel(getattr(F, _name), View)(_refuse(_name))


def as_views(outputs) -> list:
    """``outputs`` with every tensor as a :class:`View` (other outputs, e.g. PIL images, as given)."""
    return [o.as_subclass(View) if isinstance(o, torch.Tensor) else o for o in outputs]


class SharedCounter:
    """A count kept in shared memory, one slot per process: increments in DataLoader workers
    (forked or spawned) add up in the main process's :attr:`value`; :attr:`local` is this
    process's own share."""

    SLOTS = 257  # the main process and up to 256 workers (worker ids wrap around past that)

    def __init__(self):
        self._slots = torch.zeros(self.SLOTS, dtype=torch.int64).share_memory_()

    @staticmethod
    def _slot() -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (SharedCounter.SLOTS - 1)

    def add(self, n: int = 1) -> None:
        self._slots[self._slot()] += n

    @property
    def value(self) -> int:
        return int(self._slots.sum())

    @property
    def local(self) -> int:
        return int(self._slots[self._slot()])


class SceneFallbacks:
    """``scene_fallbacks`` of a crop transform: images without boxes given scene views, summed
    over the DataLoader workers that share the transform (``local_scene_fallbacks``: this
    process's share). Set ``self._fallbacks = SharedCounter()`` in ``__init__``."""

    @property
    def scene_fallbacks(self) -> int:
        return self._fallbacks.value

    @property
    def local_scene_fallbacks(self) -> int:
        return self._fallbacks.local


def pair_size(size) -> tuple[int, int]:
    """``(h, w)`` of an int or ``(h, w)`` size; ``TypeError`` / ``ValueError`` otherwise."""
    if isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 1):
        h = w = int(size if isinstance(size, int) else size[0])
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        raise TypeError(f"size must be an int or (h, w), got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def is_encoded(img: Any) -> bool:
    return hasattr(img, "decode_regions") and not isinstance(img, (Image.Image, torch.Tensor))


def image_size(img: Any, who: str = "ObjectAwareCrop") -> tuple[int, int]:
    """``(height, width)`` of an image the crops can read; ``TypeError`` (naming ``who``) otherwise."""
    if is_encoded(img):
        return img.size[1], img.size[0]
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor) and not isinstance(img, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
        shape = tuple(img.shape)
        if len(shape) >= 3 and shape[-3] in (1, 3):
            return shape[-2], shape[-1]
        hint = " (it looks channels-last: permute it to (C, H, W))" if len(shape) >= 3 and shape[-1] in (1, 3) else ""
        raise TypeError(f"{who} takes {ACCEPTS}; got a tensor of shape {shape}{hint}")
    what = type(img).__name__
    if hasattr(img, "shape"):
        what += f" of shape {tuple(img.shape)}"
        if len(img.shape) == 3 and img.shape[-1] in (1, 3):
            what += " (an H, W, C array: use PIL.Image.fromarray(a) or torch.from_numpy(a).permute(2, 0, 1))"
    raise TypeError(f"{who} takes {ACCEPTS}; got {what}")


def sample_parts(sample: Mapping, who: str = "ObjectAwareCrop") -> tuple[Any, Any, Any]:
    """``(image key, boxes key, boxes)`` of a v2 dict sample: the ``"image"`` entry (else the one
    image entry) and the ``BoundingBoxes`` entry (else ``"boxes"``, else none: key ``None``)."""
    if "image" in sample:
        key = "image"
    else:
        keys = [k for k, v in sample.items() if isinstance(v, (Image.Image, tv_tensors.Image)) or is_encoded(v)]
        if len(keys) != 1:
            raise TypeError(f"{who} takes a dict sample with an 'image' entry; got keys {list(sample)}")
        key = keys[0]
    boxes = [k for k, v in sample.items() if isinstance(v, tv_tensors.BoundingBoxes)]
    if len(boxes) > 1:
        raise TypeError(f"{who} takes a dict sample with one BoundingBoxes entry; got {len(boxes)}")
    box_key = boxes[0] if boxes else ("boxes" if "boxes" in sample else None)
    return key, box_key, None if box_key is None else sample[box_key]


def without_boxes(sample: Mapping, key: Any, views: Any, box_key: Any) -> dict:
    """The dict sample with ``views`` under ``key`` and the whole image's boxes dropped (they do
    not describe the views); other entries unchanged."""
    return {k: (views if k == key else v) for k, v in sample.items() if k != box_key}


def check_canvas(boxes: Any, height: int, width: int, warned: bool) -> bool:
    """Check ``BoundingBoxes`` against the image; warn (unless ``warned``) when pixel boxes all
    lie in [0, 1] of an image larger than a few pixels. Returns whether the warning was given."""
    if not isinstance(boxes, tv_tensors.BoundingBoxes):
        return warned
    if tuple(boxes.canvas_size) != (height, width):
        raise ValueError(f"BoundingBoxes canvas_size {tuple(boxes.canvas_size)} differs from the image size "
                         f"{(height, width)} (H, W)")
    if warned or boxes.numel() == 0 or max(boxes.canvas_size) < _FEW_PIXELS:
        return warned
    if bool(((boxes >= 0) & (boxes <= 1)).all()):
        warnings.warn(f"BoundingBoxes hold pixel coordinates, but all of these lie in [0, 1] on a {width}x{height} "
                      "image: normalized coordinates wrapped in BoundingBoxes? Pass normalized boxes as a plain "
                      "array or tensor, or multiply them by the image width and height", stacklevel=4)
        return True
    return False


def resized_crop(img: Any, region, size: tuple[int, int], interpolation: InterpolationMode) -> Any:
    """``region`` (pixel box, possibly fractional) of ``img`` resized to ``size`` ``(h, w)``."""
    if isinstance(img, Image.Image):  # PIL's resize reads fractional boxes: no rounding of the region
        return img.resize(size[::-1], pil_modes_mapping[interpolation], box=tuple(region))
    x0, y0, x1, y1 = (int(round(v)) for v in region)
    return F.resized_crop(img, y0, x0, y1 - y0, x1 - x0, list(size), interpolation=interpolation, antialias=True)
