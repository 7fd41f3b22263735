"""Object-aware two-view crops (Mishra et al., 2112.00319) as a ``torchvision.transforms.v2`` transform.

:class:`ObjectAwareCrop` splits into a sampling half (:meth:`ObjectAwareCrop.sample_regions`,
pure geometry) and an applying half (crop, resize, augment). Inside any ``Dataset``::

    crop = ObjectAwareCrop(mode="object-object", dilation=0.2, size=224)
    view_q, view_k = crop(pil_image, boxes)      # boxes: normalized xyxy, or BoundingBoxes

The applying half also takes an *encoded* image (:func:`ssl_crops.data.open_image`): any object
with ``size`` (width, height) and ``decode_regions(regions, size) -> (image, regions)``, which
decodes only as many pixels as the two regions need and maps them (as float boxes) into the
decoded image. The regions are sampled in the original pixel coordinates either way.
"""
from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.functional import pil_modes_mapping
from torchvision.transforms.v2 import functional as F

from .augment import MoCoAugment
from .geometry import Region, _dilate, _pixel_region, _randint, _rrc, _uniform, to_normalized_boxes

__all__ = ["ObjectAwareCrop", "MODES"]

MODES = ("scene", "object-object", "object-scene")


class ObjectAwareCrop(v2.Transform):
    """Two views of an image, taken from its object boxes (Mishra et al., 2112.00319).

    Modes:
      * ``"scene"``: both views are RandomResizedCrops of the whole image (MoCo-v2).
      * ``"object-object"``: one random box; the tight view is a RandomResizedCrop of the box
        (scale ``(object_min_scale, 1)``, the original's ``rescale_parameter``); the other is
        a RandomResizedCrop (scale ``(min_scale, 1)``) of the box dilated by ``dilation`` x
        its width/height on each side. Both views contain the box centre, so both overlap
        the object. ``dilation=0`` gives plain Obj-Obj.
      * ``"object-scene"``: the tight box view, and a RandomResizedCrop of the whole image.

    Boxes smaller than ``min_box_pixels`` are grown about their centre (inside the image);
    every region is clipped to the image. With no boxes, ``scene`` is used. Views are
    resized to ``size`` and passed through ``augment`` (default :class:`MoCoAugment`, the fast
    MoCo-v2 augmentation; ``v2.PILToTensor()`` gives uint8 views for :class:`BatchAugment`);
    with ``swap`` the query/key order is random. Randomness comes from torch's RNG (seed it
    with ``torch.manual_seed``; DataLoader workers are seeded per worker).
    """

    uses_boxes = True  # ObjectCropDataset passes (image, boxes)
    accepts_encoded = True  # ... and an encoded image, decoded here at the scale the regions need

    def __init__(self, mode: str = "object-object", dilation: float = 0.2, min_scale: float = 0.2,
                 object_min_scale: float = 0.0, size: int = 224, min_box_pixels: int = 32,
                 augment=None, swap: bool = True, ratio=(3 / 4, 4 / 3),
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if dilation < 0:
            raise ValueError(f"dilation must be >= 0, got {dilation}")
        for name, v in (("min_scale", min_scale), ("object_min_scale", object_min_scale)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {v}")
        self.mode, self.dilation, self.size = mode, float(dilation), int(size)
        self.scale, self.object_scale = (float(min_scale), 1.0), (float(object_min_scale), 1.0)
        self.min_box_pixels, self.swap, self.ratio = int(min_box_pixels), bool(swap), tuple(ratio)
        self.interpolation = interpolation
        self.augment = MoCoAugment() if augment is None else augment

    def sample_regions(self, width: int, height: int, boxes: Any = None,
                       generator: torch.Generator | None = None) -> tuple[Region, Region]:
        """Sample the two pixel regions ``(x0, y0, x1, y1)`` (query, key) inside the image."""
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        g = generator
        image = (0, 0, width, height)
        boxes = to_normalized_boxes(boxes)
        if self.mode == "scene" or len(boxes) == 0:
            regions = (_rrc(image, self.scale, self.ratio, g), _rrc(image, self.scale, self.ratio, g))
        else:
            box = _pixel_region(boxes[_randint(0, len(boxes) - 1, g)], width, height, self.min_box_pixels)
            centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
            tight = _rrc(box, self.object_scale, self.ratio, g, anchor=centre)
            if self.mode == "object-object":
                other = _rrc(_dilate(box, self.dilation, width, height), self.scale, self.ratio, g, anchor=centre)
            else:
                other = _rrc(image, self.scale, self.ratio, g)
            regions = (tight, other)
        if self.swap and _uniform(0.0, 1.0, g) < 0.5:
            regions = regions[::-1]
        return regions

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        image, boxes = flat_inputs
        if _is_encoded(image):
            width, height = image.size
        else:
            height, width = F.get_size(image)
        return {"regions": self.sample_regions(width, height, boxes)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> tuple[Any, Any]:
        regions = params["regions"]
        if _is_encoded(inpt):
            inpt, regions = inpt.decode_regions(regions, self.size)
        return tuple(self.augment(self._resized_crop(inpt, region)) for region in regions)

    def _resized_crop(self, img: Any, region) -> Any:
        """``region`` (float pixel box) of ``img`` resized to ``size`` x ``size``."""
        if isinstance(img, Image.Image):  # PIL's resize reads fractional boxes: no rounding of the region
            return img.resize((self.size, self.size), pil_modes_mapping[self.interpolation], box=tuple(region))
        x0, y0, x1, y1 = (int(round(v)) for v in region)
        return F.resized_crop(img, y0, x0, y1 - y0, x1 - x0, [self.size, self.size],
                              interpolation=self.interpolation, antialias=True)

    def forward(self, img: Any, boxes: Any = None) -> tuple[Any, Any]:
        """``(view_q, view_k)`` of a PIL image, image tensor or encoded image and its normalized boxes."""
        return self.transform(img, self.make_params([img, boxes]))

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, dilation={self.dilation}, min_scale={self.scale[0]}, "
                f"object_min_scale={self.object_scale[0]}, size={self.size}, "
                f"min_box_pixels={self.min_box_pixels}, swap={self.swap}")


def _is_encoded(img: Any) -> bool:
    return hasattr(img, "decode_regions") and not isinstance(img, (Image.Image, torch.Tensor))
