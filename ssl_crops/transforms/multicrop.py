"""Object-aware multi-crop (DINO, iBOT, SwAV): global and local views placed in object regions.

::

    crop = ObjectAwareMultiCrop()               # 2 global 224 px + 8 local 96 px views, DINO's augmentation
    views = crop(pil_image, boxes)              # list: globals first, then locals
    views = crop(open_image(path), boxes)       # reduced JPEG decode where no view loses pixels

Each kind of view is placed by ``global_from`` / ``local_from``: ``"scene"`` (the whole image,
DINO's multi-crop), ``"context"`` (a box's dilated region, the paper's context region) or
``"tight"`` (the box's tight region); both from :func:`~ssl_crops.transforms.geometry.object_regions`
(``geometry``, ``dilation``, ``min_region``: one for the global views' regions, one for the
locals'). ``boxes="one"`` draws one box per image for every
object-placed view (the paper's object-object crop is ``global_from="context", local_from="tight"``,
object-scene is ``global_from="scene", local_from="tight"``); ``boxes="each"`` draws a box per view.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torchvision.transforms import InterpolationMode, v2

from .augment import AugmentSpec, MoCoAugment
from .geometry import GEOMETRIES, Region, draw_int, object_regions, random_resized_crop, to_normalized_boxes
from .inputs import (SceneFallbacks, SharedCounter, as_views, check_canvas, image_size, is_encoded, pair_size,
                     resized_crop, sample_parts, without_boxes)

__all__ = ["ObjectAwareMultiCrop", "PLACEMENTS", "BOX_CHOICES", "dino_augment"]

PLACEMENTS = ("scene", "context", "tight")
BOX_CHOICES = ("one", "each")
_WHO = "ObjectAwareMultiCrop"


def dino_augment(num_globals: int = 2, num_locals: int = 8) -> list:
    """DINO's per-view augmentation (``DataAugmentationDINO``) with the fast OpenCV kernels: blur
    p=1 on global 0, blur p=0.1 + solarize p=0.2 on global 1 (further globals alternate), blur
    p=0.5 on the locals; jitter 0.4/0.4/0.2/0.1 (p=0.8), grayscale 0.2, flip, normalize on all."""
    kinds = [i % 2 for i in range(num_globals)] + [2] * num_locals
    specs = {k: MoCoAugment(spec=AugmentSpec.dino(k)) for k in set(kinds)}
    return [specs[k] for k in kinds]


def _scale(name: str, scale) -> tuple[float, float]:
    lo, hi = (float(v) for v in scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= 1, got {scale}")
    return lo, hi


class ObjectAwareMultiCrop(SceneFallbacks, v2.Transform):
    """``num_globals`` global views (``global_size`` px, area ``global_scale`` of their region) and
    ``num_locals`` local views (``local_size``, ``local_scale``), globals first.

    Defaults: ``main_dino.py``'s (2 globals at scale 0.4-1, 8 locals of 96 px at 0.05-0.4) with
    the paper's object-object placement (globals in a box's context region, locals in its tight
    region, one box per image). ``min_region`` (px of the input image) is an int or ``(global,
    local)``: the regions of global views grow to at least the first, those of local views to the
    second (default 224 and 96, the view sizes: 224 suits ~1024 px photos, scale both with the
    photos, e.g. ``(140, 60)`` on 640 px COCO photos). ``scale`` is the share of the *placement region's* area, as in
    :class:`~ssl_crops.transforms.ObjectAwareCrop`. ``augment``: ``None`` (:func:`dino_augment`),
    one callable for every view, or a list with one callable per view (globals first). Images
    without boxes get scene views, counted in ``scene_fallbacks`` (summed over DataLoader
    workers; ``local_scene_fallbacks``: this process's share). Same inputs and box checks as
    ``ObjectAwareCrop``; a v2 dict sample comes back with the views under its image key and the
    whole image's boxes dropped.
    """

    uses_boxes = True  # ObjectCropDataset passes (image, boxes)
    accepts_encoded = True  # ... and an encoded image

    def __init__(self, num_globals: int = 2, num_locals: int = 8, global_size: int | tuple[int, int] = 224,
                 local_size: int | tuple[int, int] = 96, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4),
                 global_from: str = "context", local_from: str = "tight", boxes: str = "one",
                 geometry: str = "original", dilation: float = 0.2, min_region: int | tuple[int, int] = (224, 96),
                 ratio=(3 / 4, 4 / 3),
                 augment=None, interpolation: InterpolationMode = InterpolationMode.BILINEAR):
        super().__init__()
        if int(num_globals) < 1 or int(num_locals) < 0:
            raise ValueError(f"need num_globals >= 1 and num_locals >= 0, got {num_globals}, {num_locals}")
        for name, v in (("global_from", global_from), ("local_from", local_from)):
            if v not in PLACEMENTS:
                raise ValueError(f"{name} must be one of {PLACEMENTS}, got {v!r}")
        if boxes not in BOX_CHOICES:
            raise ValueError(f"boxes must be one of {BOX_CHOICES}, got {boxes!r}")
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        min_region = (min_region, min_region) if isinstance(min_region, int) else tuple(int(m) for m in min_region)
        if dilation < 0 or len(min_region) != 2 or min(min_region) < 1:
            raise ValueError(f"need dilation >= 0 and min_region >= 1 (an int or (global, local)), got {dilation}, "
                             f"{min_region}")
        if not (len(ratio) == 2 and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio must be (min, max) with 0 < min <= max, got {ratio}")
        self.num_globals, self.num_locals = int(num_globals), int(num_locals)
        self.global_size, self.local_size = pair_size(global_size), pair_size(local_size)
        self.global_scale, self.local_scale = _scale("global_scale", global_scale), _scale("local_scale", local_scale)
        self.global_from, self.local_from, self.boxes = global_from, local_from, boxes
        self.geometry, self.dilation, self.min_region = geometry, float(dilation), min_region
        self.ratio, self.interpolation = tuple(ratio), interpolation
        n = self.num_globals + self.num_locals
        if augment is None:
            augment = dino_augment(self.num_globals, self.num_locals)
        elif not isinstance(augment, Sequence):
            augment = [augment] * n
        if len(augment) != n:
            raise ValueError(f"augment: one callable per view ({n}), got {len(augment)}")
        self.augment = list(augment)
        self._fallbacks = SharedCounter()
        self._warned_normalized = False

    @property
    def num_views(self) -> int:
        return self.num_globals + self.num_locals

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(h, w)`` of every view, globals first."""
        return [self.global_size] * self.num_globals + [self.local_size] * self.num_locals

    # ------------------------------------------------------------------ sampling half
    def sample_regions(self, width: int, height: int, boxes: Any = None,
                       generator: torch.Generator | None = None) -> list[Region]:
        """The integer pixel regions ``(x0, y0, x1, y1)`` of every view (globals first) in a
        ``width x height`` image; reproducible with ``generator``."""
        width, height = int(width), int(height)
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        g, image = generator, (0, 0, width, height)
        boxes = to_normalized_boxes(boxes)
        placements = [self.global_from] * self.num_globals + [self.local_from] * self.num_locals
        if len(boxes) == 0 and any(p != "scene" for p in placements):
            self._fallbacks.add()
            placements = ["scene"] * len(placements)
        one = draw_int(0, len(boxes) - 1, g) if len(boxes) and self.boxes == "one" else None
        regions = {}  # (box index, min_region) -> (tight, context)
        out = []
        for i, place in enumerate(placements):
            scale, least = (self.global_scale, self.min_region[0]) if i < self.num_globals else \
                (self.local_scale, self.min_region[1])
            if place == "scene":
                region = image
            else:
                b = one if one is not None else draw_int(0, len(boxes) - 1, g)
                if (b, least) not in regions:
                    regions[b, least] = object_regions(width, height, boxes[b], self.geometry, self.dilation, least)
                region = regions[b, least][0 if place == "tight" else 1]
            out.append(random_resized_crop(region, scale, self.ratio, g))
        return out

    def _params(self, img: Any, boxes: Any, generator: torch.Generator | None) -> dict[str, Any]:
        height, width = image_size(img, _WHO)
        self._warned_normalized = check_canvas(boxes, height, width, self._warned_normalized)
        return {"regions": self.sample_regions(width, height, boxes, generator)}

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return self._params(flat_inputs[0], flat_inputs[1] if len(flat_inputs) > 1 else None, None)

    # ------------------------------------------------------------------ applying half
    def _decode(self, img: Any, regions: list[Region]) -> tuple[Any, list]:
        """Decode an encoded image at the coarsest JPEG scale at which every view's region, global
        and local, keeps at least the view's output size along each axis (as ``ObjectAwareCrop``).

        ``decode_regions`` sizes every region against one output size (the globals'), so each
        local region is handed over scaled by ``global_size / local_size`` and mapped back by the
        same factor: a local region then limits the scale exactly as if sized against ``local_size``."""
        (gh, gw), (lh, lw) = self.global_size, self.local_size
        factors = [(1.0, 1.0)] * self.num_globals + [(gw / lw, gh / lh)] * self.num_locals
        proxies = [(x0 * fx, y0 * fy, x1 * fx, y1 * fy) for (x0, y0, x1, y1), (fx, fy) in zip(regions, factors)]
        decoded, mapped = img.decode_regions(proxies, (gw, gh))
        return decoded, [(x0 / fx, y0 / fy, x1 / fx, y1 / fy) for (x0, y0, x1, y1), (fx, fy) in zip(mapped, factors)]

    def transform(self, inpt: Any, params: dict[str, Any]) -> list:
        regions = params["regions"]
        if is_encoded(inpt):
            inpt, regions = self._decode(inpt, regions)
        return as_views(aug(resized_crop(inpt, r, size, self.interpolation))
                        for aug, r, size in zip(self.augment, regions, self.sizes))

    def forward(self, img: Any, boxes: Any = None, generator: torch.Generator | None = None) -> Any:
        """The list of views (globals first) of an image and its boxes (normalized ``x0, y0, x1,
        y1`` or ``BoundingBoxes``); for a v2 dict sample, the dict with the views under the image key
        and the boxes dropped."""
        if isinstance(img, Mapping) and boxes is None:
            key, box_key, boxes = sample_parts(img, _WHO)
            return without_boxes(img, key, self.transform(img[key], self._params(img[key], boxes, generator)), box_key)
        return self.transform(img, self._params(img, boxes, generator))

    def extra_repr(self) -> str:
        return (f"num_globals={self.num_globals}, num_locals={self.num_locals}, global_size={self.global_size}, "
                f"local_size={self.local_size}, global_scale={self.global_scale}, local_scale={self.local_scale}, "
                f"global_from={self.global_from!r}, local_from={self.local_from!r}, boxes={self.boxes!r}, "
                f"geometry={self.geometry!r}, dilation={self.dilation}, min_region={self.min_region}")
