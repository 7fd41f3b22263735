"""Object-aware two-view crops (Mishra et al., 2112.00319) as a ``torchvision.transforms.v2`` transform.

:class:`ObjectAwareCrop` splits into a sampling half (:meth:`ObjectAwareCrop.sample_regions`,
pure geometry on integer pixel regions) and an applying half (crop, resize, augment). Inside
any ``Dataset``::

    crop = ObjectAwareCrop(mode="object-object", size=224)   # the original method's regions
    view_q, view_k = crop(pil_image, boxes)                   # boxes: normalized xyxy, or BoundingBoxes

A ``torchvision.transforms.v2`` dict sample works too: ``crop({"image": img, "boxes":
BoundingBoxes(...), ...})`` gives back the dict with ``"image"`` replaced by ``(view_q, view_k)``.

The applying half also takes an *encoded* image (:func:`ssl_crops.data.open_image`): any object
with ``size`` (width, height) and ``decode_regions(regions, size) -> (image, regions)``, which
decodes only as many pixels as the two regions need and maps them (as float boxes) into the
decoded image. The regions are sampled in the original pixel coordinates either way.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_modes_mapping
from torchvision.transforms.v2 import functional as F

from .augment import MoCoAugment
from .geometry import (GEOMETRIES, Region, draw_int, draw_uniform, object_regions, random_resized_crop,
                       to_normalized_boxes)

__all__ = ["ObjectAwareCrop", "MODES", "GEOMETRIES"]

MODES = ("scene", "object-object", "object-scene")
_ACCEPTS = "a PIL image or an image tensor (C, H, W) / (..., C, H, W) with 1 or 3 channels"


class ObjectAwareCrop(v2.Transform):
    """Two views of an image, taken from its object boxes (Mishra et al., 2112.00319).

    Modes:
      * ``"scene"``: both views are RandomResizedCrops of the whole image (MoCo-v2).
      * ``"object-object"``: one random box gives a tight and a context region
        (:meth:`object_regions`); one view is a RandomResizedCrop (scale
        ``(object_min_scale, 1)``, the original's ``rescale_parameter``) placed uniformly
        inside the tight region, the other a RandomResizedCrop (scale ``(min_scale, 1)``)
        inside the context region.
      * ``"object-scene"``: the tight view, and a RandomResizedCrop of the whole image.

    ``geometry="original"`` (default) gives the regions of the original code, clipped to the
    image: ``dilation`` scales the box's coordinates and an axis shorter than ``min_region``
    px gets ``min_region // 2`` px of context per side. ``geometry="relative"`` dilates by
    ``dilation`` x the box's width/height and grows both regions about their centre to at
    least ``min_region`` px. ``min_region`` is in pixels of the input image (224 on the
    ~1024 px OpenImages photos; scale it for other resolutions). With ``anchor`` both views
    contain the box centre. Views are resized to ``size`` (int or ``(h, w)``) and passed
    through ``augment`` (default :class:`MoCoAugment`, the fast MoCo-v2 augmentation;
    ``v2.PILToTensor()`` gives uint8 views for :class:`BatchAugment`); with ``swap`` the
    query/key order is random (p=0.5).

    An object mode without boxes falls back to scene crops and counts it in
    ``scene_fallbacks`` (per process). Sampling uses ``generator`` when given, else torch's
    global RNG; ``augment`` always uses the global RNG. ``tv_tensors.BoundingBoxes`` hold
    pixels: when all their coordinates lie in ``[0, 1]`` of a larger image, a warning (once per
    transform) says that normalized boxes were likely wrapped in them.
    """

    uses_boxes = True  # ObjectCropDataset passes (image, boxes)
    accepts_encoded = True  # ... and an encoded image, decoded here at the scale the regions need

    def __init__(self, mode: str = "object-object", geometry: str = "original", dilation: float = 0.2,
                 min_scale: float = 0.2, object_min_scale: float = 0.0, size: int | tuple[int, int] = 224,
                 min_region: int = 224, anchor: bool = False, augment=None, swap: bool = True,
                 ratio=(3 / 4, 4 / 3), interpolation: InterpolationMode = InterpolationMode.BILINEAR,
                 min_box_pixels: int | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        if min_box_pixels is not None:
            warnings.warn("ObjectAwareCrop(min_box_pixels=...) is deprecated: use min_region", DeprecationWarning,
                          stacklevel=2)
            min_region = min_box_pixels
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        for name, v in (("min_scale", min_scale), ("object_min_scale", object_min_scale)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        if int(min_region) < 1:
            raise ValueError(f"min_region must be >= 1 pixel, got {min_region}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio}")
        self.mode, self.geometry, self.dilation = mode, geometry, float(dilation)
        self.size = _pair(size)
        self.scale, self.object_scale = (float(min_scale), 1.0), (float(object_min_scale), 1.0)
        self.min_region, self.anchor = int(min_region), bool(anchor)
        self.swap, self.ratio, self.interpolation = bool(swap), tuple(ratio), interpolation
        self.augment = MoCoAugment() if augment is None else augment
        self.scene_fallbacks = 0
        self._warned_normalized = False

    @property
    def min_box_pixels(self) -> int:
        """Deprecated name of :attr:`min_region`."""
        warnings.warn("ObjectAwareCrop.min_box_pixels is deprecated: use min_region", DeprecationWarning, stacklevel=2)
        return self.min_region

    # ------------------------------------------------------------------ sampling half
    def object_regions(self, width: int, height: int, box) -> tuple[Region, Region]:
        """``(tight, context)`` integer pixel regions ``(x0, y0, x1, y1)`` (exclusive ends,
        clipped) of one normalized box before any random crop; deterministic."""
        box = to_normalized_boxes(box)
        if len(box) != 1:
            raise ValueError(f"object_regions takes one box, got {len(box)}")
        return object_regions(int(width), int(height), box[0], self.geometry, self.dilation, self.min_region)

    def sample_regions(self, width: int, height: int, boxes: Any = None,
                       generator: torch.Generator | None = None) -> tuple[Region, Region]:
        """The two view regions ``(x0, y0, x1, y1)`` (query, key) inside a ``width x height`` image."""
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        g = generator
        image = (0, 0, width, height)
        boxes = to_normalized_boxes(boxes)
        if self.mode != "scene" and len(boxes) == 0:
            self.scene_fallbacks += 1
        if self.mode == "scene" or len(boxes) == 0:
            regions = (random_resized_crop(image, self.scale, self.ratio, g),
                       random_resized_crop(image, self.scale, self.ratio, g))
        else:
            box = boxes[draw_int(0, len(boxes) - 1, g)]
            tight, context = object_regions(width, height, box, self.geometry, self.dilation, self.min_region)
            centre = ((box[0] + box[2]) / 2 * width, (box[1] + box[3]) / 2 * height) if self.anchor else None
            view = random_resized_crop(tight, self.object_scale, self.ratio, g, anchor=centre)
            if self.mode == "object-object":
                other = random_resized_crop(context, self.scale, self.ratio, g, anchor=centre)
            else:
                other = random_resized_crop(image, self.scale, self.ratio, g)
            regions = (view, other)
        if self.swap and draw_uniform(0.0, 1.0, g) < 0.5:
            regions = regions[::-1]
        return regions

    def _params(self, img: Any, boxes: Any, generator: torch.Generator | None) -> dict[str, Any]:
        height, width = _image_size(img)
        if isinstance(boxes, tv_tensors.BoundingBoxes):
            if tuple(boxes.canvas_size) != (height, width):
                raise ValueError(f"BoundingBoxes canvas_size {tuple(boxes.canvas_size)} differs from the image size "
                                 f"{(height, width)} (H, W)")
            self._check_pixels(boxes)
        return {"regions": self.sample_regions(width, height, boxes, generator)}

    def _check_pixels(self, boxes: tv_tensors.BoundingBoxes) -> None:
        """Warn (once) when pixel boxes all lie in [0, 1] of an image larger than a few pixels."""
        if self._warned_normalized or boxes.numel() == 0 or max(boxes.canvas_size) < _FEW_PIXELS:
            return
        if bool(((boxes >= 0) & (boxes <= 1)).all()):
            self._warned_normalized = True
            h, w = boxes.canvas_size
            warnings.warn(f"BoundingBoxes hold pixel coordinates, but all of these lie in [0, 1] on a {w}x{h} image: "
                          "normalized coordinates wrapped in BoundingBoxes? Pass normalized boxes as a plain "
                          "array or tensor, or multiply them by the image width and height", stacklevel=4)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self._params(flat_inputs[0], flat_inputs[1] if len(flat_inputs) > 1 else None, None)

    # ------------------------------------------------------------------ applying half
    def transform(self, inpt: Any, params: dict[str, Any]) -> tuple[Any, Any]:
        regions = params["regions"]
        if _is_encoded(inpt):
            inpt, regions = inpt.decode_regions(regions, self.size[::-1])
        return tuple(self.augment(self._resized_crop(inpt, region)) for region in regions)

    def _resized_crop(self, img: Any, region) -> Any:
        """``region`` (pixel box, possibly fractional) of ``img`` resized to ``size``."""
        if isinstance(img, Image.Image):  # PIL's resize reads fractional boxes: no rounding of the region
            return img.resize(self.size[::-1], pil_modes_mapping[self.interpolation], box=tuple(region))
        x0, y0, x1, y1 = (int(round(v)) for v in region)
        return F.resized_crop(img, y0, x0, y1 - y0, x1 - x0, list(self.size),
                              interpolation=self.interpolation, antialias=True)

    def forward(self, img: Any, boxes: Any = None, generator: torch.Generator | None = None) -> Any:
        """``(view_q, view_k)`` of a PIL image, image tensor or encoded image and its boxes
        (normalized ``x0, y0, x1, y1`` or ``tv_tensors.BoundingBoxes``); for a dict sample
        (``{"image": ..., "boxes": ...}``; the boxes may sit under any key as ``BoundingBoxes``)
        the same dict with ``"image"`` replaced by ``(view_q, view_k)``, other entries unchanged."""
        if isinstance(img, Mapping) and boxes is None:
            key, boxes = _sample_parts(img)
            return {**img, key: self.transform(img[key], self._params(img[key], boxes, generator))}
        return self.transform(img, self._params(img, boxes, generator))

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, geometry={self.geometry!r}, dilation={self.dilation}, "
                f"min_scale={self.scale[0]}, object_min_scale={self.object_scale[0]}, size={self.size}, "
                f"min_region={self.min_region}, anchor={self.anchor}, swap={self.swap}")


_FEW_PIXELS = 16  # images at least this large get the warning about normalized BoundingBoxes


def _sample_parts(sample: Mapping) -> tuple[Any, Any]:
    """``(image key, boxes)`` of a v2 dict sample: the ``"image"`` entry (else the one image
    entry) and the ``BoundingBoxes`` entry (else ``"boxes"``, else none)."""
    if "image" in sample:
        key = "image"
    else:
        keys = [k for k, v in sample.items() if isinstance(v, (Image.Image, tv_tensors.Image)) or _is_encoded(v)]
        if len(keys) != 1:
            raise TypeError(f"ObjectAwareCrop takes a dict sample with an 'image' entry; got keys {list(sample)}")
        key = keys[0]
    boxes = [v for v in sample.values() if isinstance(v, tv_tensors.BoundingBoxes)]
    if len(boxes) > 1:
        raise TypeError("ObjectAwareCrop takes a dict sample with one BoundingBoxes entry; got " f"{len(boxes)}")
    return key, boxes[0] if boxes else sample.get("boxes")


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int) or (isinstance(size, (tuple, list)) and len(size) == 1):
        h = w = int(size if isinstance(size, int) else size[0])
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        h, w = int(size[0]), int(size[1])
    else:
        raise TypeError(f"size must be an int or (h, w), got {size!r}")
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return h, w


def _image_size(img: Any) -> tuple[int, int]:
    """``(height, width)`` of an image the crop can read; ``TypeError`` otherwise."""
    if _is_encoded(img):
        return img.size[1], img.size[0]
    if isinstance(img, Image.Image):
        return img.height, img.width
    if isinstance(img, torch.Tensor) and not isinstance(img, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
        shape = tuple(img.shape)
        if len(shape) >= 3 and shape[-3] in (1, 3):
            return shape[-2], shape[-1]
        hint = " (it looks channels-last: permute it to (C, H, W))" if len(shape) >= 3 and shape[-1] in (1, 3) else ""
        raise TypeError(f"ObjectAwareCrop takes {_ACCEPTS}; got a tensor of shape {shape}{hint}")
    what = type(img).__name__
    if hasattr(img, "shape"):
        what += f" of shape {tuple(img.shape)}"
        if len(img.shape) == 3 and img.shape[-1] in (1, 3):
            what += " (an H, W, C array: use PIL.Image.fromarray(a) or torch.from_numpy(a).permute(2, 0, 1))"
    raise TypeError(f"ObjectAwareCrop takes {_ACCEPTS}; got {what}")


def _is_encoded(img: Any) -> bool:
    return hasattr(img, "decode_regions") and not isinstance(img, (Image.Image, torch.Tensor))
