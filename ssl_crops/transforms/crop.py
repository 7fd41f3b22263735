"""Object-aware two-view crops (Mishra et al., 2112.00319) as a ``torchvision.transforms.v2`` transform.

:class:`ObjectAwareCrop` splits into a sampling half (:meth:`ObjectAwareCrop.sample_regions`,
pure geometry on integer pixel regions) and an applying half (crop, resize, augment). Inside
any ``Dataset``::

    crop = ObjectAwareCrop(mode="object-object", size=224)   # the original method's regions
    view_q, view_k = crop(pil_image, boxes)                   # boxes: normalized xyxy, or BoundingBoxes

A ``torchvision.transforms.v2`` dict sample works too: ``crop({"image": img, "boxes":
BoundingBoxes(...), ...})`` gives back the dict with ``"image"`` replaced by ``(view_q, view_k)``
and the whole image's boxes dropped (they do not describe the views). Tensor views are
:class:`~ssl_crops.transforms.inputs.View`: a v2 transform with random parameters placed after
the crop raises, pointing to ``augment=`` (each view gets its own draw there).

The applying half also takes an *encoded* image (:func:`ssl_crops.data.open_image`): any object
with ``size`` (width, height) and ``decode_regions(regions, size) -> (image, regions)``, which
decodes only as many pixels as the two regions need and maps them (as float boxes) into the
decoded image. The regions are sampled in the original pixel coordinates either way.
"""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from torchvision.transforms import InterpolationMode, v2

from .augment import MoCoAugment
from .geometry import (GEOMETRIES, Region, draw_int, draw_uniform, object_regions, random_resized_crop,
                       to_normalized_boxes)
from .inputs import (SceneFallbacks, SharedCounter, as_views, check_canvas, image_size, is_encoded, pair_size,
                     resized_crop, sample_parts, without_boxes)

__all__ = ["ObjectAwareCrop", "MODES", "GEOMETRIES"]

MODES = ("scene", "object-object", "object-scene")


class ObjectAwareCrop(SceneFallbacks, v2.Transform):
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
    ``scene_fallbacks``, summed over the DataLoader workers that share this transform
    (``local_scene_fallbacks``: this process's share). Sampling uses ``generator`` when given, else torch's
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
        self.size = pair_size(size)
        self.scale, self.object_scale = (float(min_scale), 1.0), (float(object_min_scale), 1.0)
        self.min_region, self.anchor = int(min_region), bool(anchor)
        self.swap, self.ratio, self.interpolation = bool(swap), tuple(ratio), interpolation
        self.augment = MoCoAugment() if augment is None else augment
        self._fallbacks = SharedCounter()
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
            self._fallbacks.add()
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
        height, width = image_size(img)
        self._warned_normalized = check_canvas(boxes, height, width, self._warned_normalized)
        return {"regions": self.sample_regions(width, height, boxes, generator)}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self._params(flat_inputs[0], flat_inputs[1] if len(flat_inputs) > 1 else None, None)

    # ------------------------------------------------------------------ applying half
    def transform(self, inpt: Any, params: dict[str, Any]) -> tuple[Any, Any]:
        regions = params["regions"]
        if is_encoded(inpt):
            inpt, regions = inpt.decode_regions(regions, self.size[::-1])
        return tuple(as_views(self.augment(resized_crop(inpt, r, self.size, self.interpolation)) for r in regions))

    def forward(self, img: Any, boxes: Any = None, generator: torch.Generator | None = None) -> Any:
        """``(view_q, view_k)`` of a PIL image, image tensor or encoded image and its boxes
        (normalized ``x0, y0, x1, y1`` or ``tv_tensors.BoundingBoxes``); for a dict sample
        (``{"image": ..., "boxes": ...}``; the boxes may sit under any key as ``BoundingBoxes``)
        the same dict with ``"image"`` replaced by ``(view_q, view_k)`` and the boxes dropped,
        other entries unchanged."""
        if isinstance(img, Mapping) and boxes is None:
            key, box_key, boxes = sample_parts(img)
            return without_boxes(img, key, self.transform(img[key], self._params(img[key], boxes, generator)), box_key)
        return self.transform(img, self._params(img, boxes, generator))

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, geometry={self.geometry!r}, dilation={self.dilation}, "
                f"min_scale={self.scale[0]}, object_min_scale={self.object_scale[0]}, size={self.size}, "
                f"min_region={self.min_region}, anchor={self.anchor}, swap={self.swap}")
