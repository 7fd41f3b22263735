"""Object-aware two-view crops and the MoCo augmentations, as ``torchvision.transforms.v2``.

:class:`ObjectAwareCrop` splits into a sampling half (:meth:`ObjectAwareCrop.sample_regions`,
pure geometry) and an applying half (crop, resize, augment). Inside any ``Dataset``::

    crop = ObjectAwareCrop(mode="object-object", dilation=0.2, size=224)
    view_q, view_k = crop(pil_image, boxes)      # boxes: normalized xyxy, or BoundingBoxes
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "ObjectAwareCrop", "MoCoV2Augment", "MoCoV1Augment", "GaussianBlur", "TwoViews",
    "moco_augment", "eval_transform", "linear_train_transform", "to_normalized_boxes", "IMAGENET_MEAN", "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODES = ("scene", "object-object", "object-scene")

Region = tuple  # (x0, y0, x1, y1) integer pixels, x1/y1 exclusive


# --------------------------------------------------------------------------- augmentations
class GaussianBlur(v2.Transform):
    """Gaussian blur with sigma drawn uniformly from ``sigma`` (MoCo-v2 / SimCLR)."""

    def __init__(self, sigma: Sequence[float] = (0.1, 2.0)):
        super().__init__()
        self.sigma = tuple(sigma)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"sigma": float(torch.empty(1).uniform_(*self.sigma))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        sigma = params["sigma"]
        if isinstance(inpt, Image.Image):
            return inpt.filter(ImageFilter.GaussianBlur(radius=sigma))
        if isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
            return inpt
        k = 2 * math.ceil(3 * sigma) + 1
        return F.gaussian_blur(inpt, [k, k], [sigma, sigma])


def _to_tensor_normalized() -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]


class MoCoV2Augment(v2.Compose):
    """MoCo-v2 (``--aug-plus``) augmentation applied after the crop: color jitter
    0.4/0.4/0.4/0.1 (p=0.8), grayscale (p=0.2), Gaussian blur sigma 0.1-2 (p=0.5), horizontal
    flip, to float tensor, ImageNet normalization."""

    def __init__(self, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2,
                 blur_sigma=(0.1, 2.0), blur_p=0.5):
        super().__init__([
            v2.RandomApply([v2.ColorJitter(*jitter)], p=jitter_p),
            v2.RandomGrayscale(p=grayscale_p),
            v2.RandomApply([GaussianBlur(blur_sigma)], p=blur_p),
            v2.RandomHorizontalFlip(),
            *_to_tensor_normalized(),
        ])


class MoCoV1Augment(v2.Compose):
    """MoCo-v1 augmentation applied after the crop: grayscale (p=0.2), color jitter
    0.4/0.4/0.4/0.4, horizontal flip, to float tensor, ImageNet normalization."""

    def __init__(self):
        super().__init__([
            v2.RandomGrayscale(p=0.2),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.4),
            v2.RandomHorizontalFlip(),
            *_to_tensor_normalized(),
        ])


def moco_augment(aug_plus: bool = True) -> v2.Compose:
    """The post-crop augmentation of MoCo-v2 (``aug_plus``) or MoCo-v1."""
    return MoCoV2Augment() if aug_plus else MoCoV1Augment()


def eval_transform(size: int = 224, resize: int | None = None) -> v2.Compose:
    """Resize the short side to ``resize`` (default ``size / 0.875``), center crop, normalize."""
    return v2.Compose([
        v2.Resize(resize or int(round(size / 0.875)), antialias=True),
        v2.CenterCrop(size),
        *_to_tensor_normalized(),
    ])


def linear_train_transform(size: int = 224) -> v2.Compose:
    """The MoCo linear-protocol training augmentation: RandomResizedCrop, flip, normalize."""
    return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(),
                       *_to_tensor_normalized()])


class TwoViews:
    """Apply ``transform`` twice to one image: ``(transform(img), transform(img))``."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img):
        return self.transform(img), self.transform(img)

    def __repr__(self) -> str:
        return f"TwoViews({self.transform!r})"


# --------------------------------------------------------------------------- geometry
def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return float(torch.empty(1).uniform_(lo, hi, generator=g)) if hi > lo else float(lo)


def _randint(lo: int, hi: int, g: torch.Generator | None) -> int:
    """Uniform integer in ``[lo, hi]`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=g)) if hi > lo else int(lo)


def _rrc_size(w: int, h: int, scale, ratio, g) -> tuple[int, int]:
    """Crop size of torchvision's RandomResizedCrop inside a ``w x h`` region."""
    area = w * h
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(scale[0], scale[1], g)
        aspect = math.exp(_uniform(*log_ratio, g))
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            return cw, ch
    in_ratio = w / h  # fallback: the whole region, aspect clamped to ``ratio``
    if in_ratio < ratio[0]:
        return w, max(1, int(round(w / ratio[0])))
    if in_ratio > ratio[1]:
        return max(1, int(round(h * ratio[1]))), h
    return w, h


def _rrc(region: Region, scale, ratio, g, anchor=None) -> Region:
    """RandomResizedCrop inside ``region``; with ``anchor`` (x, y) the crop contains it."""
    x0, y0, x1, y1 = region
    cw, ch = _rrc_size(x1 - x0, y1 - y0, scale, ratio, g)
    if anchor is None:
        left, top = _randint(x0, x1 - cw, g), _randint(y0, y1 - ch, g)
    else:
        ax, ay = anchor
        left = _randint(max(x0, math.ceil(ax - cw)), min(x1 - cw, math.floor(ax)), g)
        top = _randint(max(y0, math.ceil(ay - ch)), min(y1 - ch, math.floor(ay)), g)
    return (left, top, left + cw, top + ch)


def _pixel_region(box: np.ndarray, width: int, height: int, min_pixels: int) -> Region:
    """Integer pixel region of a normalized box, grown about its centre to at least
    ``min_pixels`` per side (never more than the image) and shifted inside the image."""
    x0, x1 = _span(box[0] * width, box[2] * width, width, min_pixels)
    y0, y1 = _span(box[1] * height, box[3] * height, height, min_pixels)
    return (x0, y0, x1, y1)


def _span(lo: float, hi: float, limit: int, min_len: int) -> tuple[int, int]:
    a, b = max(0, math.floor(lo)), min(limit, math.ceil(hi))
    need = min(max(min_len, 1), limit)
    if b - a < need:
        a = int(round((lo + hi) / 2 - need / 2))
        a = min(max(a, 0), limit - need)
        b = a + need
    return a, b


def _dilate(region: Region, dilation: float, width: int, height: int) -> Region:
    """Grow ``region`` by ``dilation`` x its own width/height on each side, clipped."""
    x0, y0, x1, y1 = region
    dx, dy = dilation * (x1 - x0), dilation * (y1 - y0)
    return (max(0, math.floor(x0 - dx)), max(0, math.floor(y0 - dy)),
            min(width, math.ceil(x1 + dx)), min(height, math.ceil(y1 + dy)))


def to_normalized_boxes(boxes: Any) -> np.ndarray:
    """Boxes as a float ``(N, 4)`` array of normalized ``x0, y0, x1, y1``.

    Accepts ``tv_tensors.BoundingBoxes`` (any format, pixel coordinates of their canvas),
    or arrays / tensors / lists already normalized; ``None`` gives no boxes.
    """
    if boxes is None:
        return np.zeros((0, 4))
    if isinstance(boxes, tv_tensors.BoundingBoxes):
        h, w = boxes.canvas_size
        xyxy = F.convert_bounding_box_format(boxes, new_format=tv_tensors.BoundingBoxFormat.XYXY)
        return xyxy.detach().cpu().double().numpy().reshape(-1, 4) / np.array([w, h, w, h])
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4))
    if arr.shape[-1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) in normalized x0, y0, x1, y1; got {arr.shape}")
    arr = arr.reshape(-1, 4)
    valid = np.isfinite(arr).all(1) & (arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])
    return np.clip(arr[valid], 0.0, 1.0)


# --------------------------------------------------------------------------- the crop
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
    resized to ``size`` and passed through ``augment`` (default :class:`MoCoV2Augment`);
    with ``swap`` the query/key order is random. Randomness comes from torch's RNG (seed it
    with ``torch.manual_seed``; DataLoader workers are seeded per worker).
    """

    uses_boxes = True  # ObjectCropDataset passes (image, boxes)

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
        self.augment = MoCoV2Augment() if augment is None else augment

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
        image = next(x for x in flat_inputs if isinstance(x, (Image.Image, torch.Tensor))
                     and not isinstance(x, tv_tensors.BoundingBoxes))
        boxes = next((x for x in flat_inputs[1:] if x is not None), None)
        width, height = F.get_size(image)[::-1]
        return {"regions": self.sample_regions(width, height, boxes)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> tuple[Any, Any]:
        views = []
        for x0, y0, x1, y1 in params["regions"]:
            view = F.resized_crop(inpt, y0, x0, y1 - y0, x1 - x0, [self.size, self.size],
                                  interpolation=self.interpolation, antialias=True)
            views.append(self.augment(view))
        return tuple(views)

    def forward(self, img: Any, boxes: Any = None) -> tuple[Any, Any]:
        """``(view_q, view_k)`` of a PIL image or image tensor and its normalized boxes."""
        return self.transform(img, self.make_params([img, boxes]))

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, dilation={self.dilation}, min_scale={self.scale[0]}, "
                f"object_min_scale={self.object_scale[0]}, size={self.size}, "
                f"min_box_pixels={self.min_box_pixels}, swap={self.swap}")
