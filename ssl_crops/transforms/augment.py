"""MoCo-v1/v2 augmentations applied after the crop, and the evaluation transforms.

* :class:`MoCoAugment`: the fast per-view CPU augmentation (uint8 OpenCV kernels), the default of
  :class:`~ssl_crops.transforms.ObjectAwareCrop` and of :func:`moco_augment`;
* :class:`BatchAugment`: the same augmentation of a uint8 ``(N, 3, H, W)`` batch on any device,
  with per-sample parameters (``main_moco.py --augment-on device``);
* :class:`MoCoV2Augment` / :class:`MoCoV1Augment`: the torchvision compositions of the original code,
  the reference the other two are tested against.

All three draw their parameters from the same distributions (:class:`AugmentSpec`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["MoCoAugment", "BatchAugment", "AugmentSpec", "MoCoV2Augment", "MoCoV1Augment", "GaussianBlur",
           "TwoViews", "moco_augment", "eval_transform", "linear_train_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        k = min(2 * math.ceil(3 * sigma) + 1, 2 * min(F.get_size(inpt)) - 1)  # reflect padding needs k // 2 < side
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


def moco_augment(aug_plus: bool = True) -> "MoCoAugment":
    """The post-crop augmentation of MoCo-v2 (``aug_plus``) or MoCo-v1 (fast CPU kernels)."""
    return MoCoAugment(aug_plus)


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




# --------------------------------------------------------------------------- fast and batched MoCo augmentation
@dataclass(frozen=True)
class AugmentSpec:
    """Parameter distributions of a MoCo augmentation, as torchvision draws them.

    ``ColorJitter(brightness, contrast, saturation, hue)`` with probability ``jitter_p`` (its
    four operations in a random order), grayscale with probability ``grayscale_p`` (before the
    jitter with ``grayscale_first``, as MoCo-v1 does), Gaussian blur with sigma uniform in
    ``blur_sigma`` with probability ``blur_p``, solarization (pixels >= 128 inverted, after the
    blur) with probability ``solarize_p``, horizontal flip with probability ``flip_p``.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_sigma: tuple = (0.1, 2.0)
    blur_p: float = 0.5
    flip_p: float = 0.5
    grayscale_first: bool = False
    solarize_p: float = 0.0

    @classmethod
    def moco(cls, aug_plus: bool = True) -> "AugmentSpec":
        """MoCo-v2 (``aug_plus``) or MoCo-v1 (grayscale, then jitter 0.4/0.4/0.4/0.4 always, no blur)."""
        return cls() if aug_plus else cls(hue=0.4, jitter_p=1.0, blur_p=0.0, grayscale_first=True)

    @classmethod
    def dino(cls, view: int) -> "AugmentSpec":
        """DINO's ``DataAugmentationDINO``: jitter 0.4/0.4/0.2/0.1 (p=0.8), grayscale 0.2, flip, and
        blur p=1 on global view 0, blur p=0.1 + solarize p=0.2 on global view 1, blur p=0.5 on
        local views (``view`` 2)."""
        blur_p, solarize_p = ((1.0, 0.0), (0.1, 0.2), (0.5, 0.0))[view]
        return cls(saturation=0.2, blur_p=blur_p, solarize_p=solarize_p)

    def sample(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Parameters of ``n`` independent draws as CPU tensors: ``jitter``, ``gray``, ``blur``,
        ``flip``, ``solarize`` (bool ``(n,)``), ``order`` (``(n, 4)`` permutations of brightness, contrast,
        saturation, hue), ``factors`` (``(n, 4)``, in that order) and ``sigma`` (``(n,)``)."""
        u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
        lo = torch.tensor([max(0.0, 1 - self.brightness), max(0.0, 1 - self.contrast),
                           max(0.0, 1 - self.saturation), -self.hue], dtype=torch.float64)
        hi = torch.tensor([1 + self.brightness, 1 + self.contrast, 1 + self.saturation, self.hue], dtype=torch.float64)
        s0, s1 = self.blur_sigma
        solarize = (torch.rand(n, generator=generator) < self.solarize_p) if self.solarize_p > 0 else \
            torch.zeros(n, dtype=torch.bool)  # drawn only when asked: the MoCo draws stay as they were
        return {"solarize": solarize, "jitter": u[:, 0] < self.jitter_p, "factors": lo + (hi - lo) * u[:, 1:5],
                "gray": u[:, 5] < self.grayscale_p, "blur": u[:, 6] < self.blur_p,
                "sigma": s0 + (s1 - s0) * torch.rand(n, generator=generator, dtype=torch.float64),
                "flip": u[:, 7] < self.flip_p,
                "order": torch.rand(n, 4, generator=generator).argsort(1)}


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _lut(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


_RAMP = np.arange(256, dtype=np.float64)


def _brightness_u8(img, f):
    return cv2.LUT(img, _lut(_RAMP * f))


def _contrast_u8(img, f):
    mean = round(float(_gray(img).mean()))  # PIL's ImageEnhance.Contrast: the rounded mean of L
    return cv2.LUT(img, _lut(mean + f * (_RAMP - mean)))


def _saturation_u8(img, f):
    return cv2.addWeighted(img, f, cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB), 1.0 - f, 0.0)


def _hue_u8(img, f):
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)  # 8-bit HSV with H in 0..255, as PIL's
    hsv[..., 0] += np.uint8(int(f * 255) % 256)      # wraps around, as torchvision's PIL kernel
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


_JITTER_U8 = (_brightness_u8, _contrast_u8, _saturation_u8, _hue_u8)
_SOLARIZE = _lut(np.where(_RAMP >= 128, 255 - _RAMP, _RAMP))  # PIL's ImageOps.solarize(threshold=128)


def _as_hwc_uint8(img: Any) -> np.ndarray:
    if isinstance(img, Image.Image):
        return np.array(img.convert("RGB") if img.mode != "RGB" else img)
    if isinstance(img, torch.Tensor):
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise TypeError(f"expected a (3, H, W) or (1, H, W) image tensor, got shape {tuple(img.shape)}")
        if img.is_floating_point():  # torchvision's convention: floats in [0, 1]
            img = img.detach().mul(255).round_().clamp_(0, 255)
        img = img.detach().cpu().to(torch.uint8).expand(3, -1, -1).permute(1, 2, 0).numpy()
    if isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return np.ascontiguousarray(img)
    raise TypeError(f"expected an RGB PIL image, a uint8 (H, W, 3) array or (3, H, W) tensor, got {type(img).__name__}")


class MoCoAugment(v2.Transform):
    """MoCo-v2 (``aug_plus``) or MoCo-v1 augmentation of one view, fast: vectorized OpenCV kernels
    on the uint8 view, the parameter distributions of torchvision's (:class:`AugmentSpec`), output
    a normalized float ``(3, H, W)`` tensor like :class:`MoCoV2Augment`'s. Takes a PIL image, a
    uint8 ``(H, W, 3)`` array or a ``(3, H, W)`` / ``(1, H, W)`` image tensor (uint8, or float in
    [0, 1], quantized to uint8). Randomness from torch's RNG."""

    def __init__(self, aug_plus: bool = True, spec: AugmentSpec | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.spec = AugmentSpec.moco(aug_plus) if spec is None else spec
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) * 255
        self.scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(3, 1, 1) * 255)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {k: v[0].tolist() for k, v in self.spec.sample(1).items()}

    def augment_uint8(self, img: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The augmented uint8 ``(H, W, 3)`` view (before normalization)."""
        spec = self.spec
        if spec.grayscale_first and params["gray"]:
            img = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
        if params["jitter"]:
            for op in params["order"]:
                img = _JITTER_U8[op](img, params["factors"][op])
        if not spec.grayscale_first and params["gray"]:
            img = cv2.cvtColor(_gray(img), cv2.COLOR_GRAY2RGB)
        if params["blur"]:
            img = cv2.GaussianBlur(img, (0, 0), params["sigma"], borderType=cv2.BORDER_REFLECT_101)
        if params.get("solarize"):
            img = cv2.LUT(img, _SOLARIZE)
        if params["flip"]:
            img = cv2.flip(img, 1)
        return img

    def transform(self, inpt: Any, params: dict[str, Any]) -> torch.Tensor:
        out = torch.from_numpy(self.augment_uint8(_as_hwc_uint8(inpt), params)).permute(2, 0, 1).contiguous()
        return out.float().sub_(self.mean).mul_(self.scale)

    def forward(self, img: Any) -> torch.Tensor:
        return self.transform(img, self.make_params([img]))

    def extra_repr(self) -> str:
        return repr(self.spec)


def _gray_f(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _blend_f(x, y, f):
    return (f.view(-1, 1, 1, 1) * x + (1 - f.view(-1, 1, 1, 1)) * y).clamp_(0, 1)


def _hue_f(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Shift the hue of ``x`` (``(n, 3, H, W)`` in [0, 1]) by ``f`` turns per sample."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    chroma = maxc - minc
    gray = chroma == 0
    s = chroma / torch.where(gray, torch.ones_like(maxc), maxc)
    c = torch.where(gray, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / c, (maxc - g) / c, (maxc - b) / c
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.remainder(h / 6.0 + f.view(-1, 1, 1), 1.0) * 6.0
    vs = maxc * s  # back to RGB: channel = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6
    out = []
    for n in (5.0, 3.0, 1.0):
        k = torch.remainder(h + n, 6.0)
        out.append(maxc - vs * torch.minimum(k, 4.0 - k).clamp_(0, 1))
    return torch.stack(out, 1).clamp_(0, 1)


def _jitter_f(op: int, x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    if op == 0:
        return (x * f.view(-1, 1, 1, 1)).clamp_(0, 1)
    if op == 1:
        return _blend_f(x, _gray_f(x).mean((1, 2, 3), keepdim=True), f)
    if op == 2:
        return _blend_f(x, _gray_f(x), f)
    return _hue_f(x, f)


class BatchAugment(torch.nn.Module):
    """MoCo-v2 (``aug_plus``) or MoCo-v1 augmentation of a uint8 ``(N, 3, H, W)`` batch on its own
    device, every sample with its own random parameters (drawn as :class:`MoCoAugment` draws
    them); returns the normalized float32 batch.

    Parameters come from ``generator`` (a CPU ``torch.Generator``) or torch's default CPU
    generator, so a seed gives the same augmentation on every device; they reach the device in
    one non-blocking copy. Move the module to the device once (``mean``/``std`` are buffers).
    """

    def __init__(self, aug_plus: bool = True, spec: AugmentSpec | None = None,
                 mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.spec = AugmentSpec.moco(aug_plus) if spec is None else spec
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"BatchAugment expects a uint8 (N, 3, H, W) batch, got {images.dtype} {tuple(images.shape)}")
        p = self.spec.sample(len(images), generator)
        ops = []  # (function, sample indices, per-sample values), in the order they apply

        def plan(mask: torch.Tensor, fn, *values: torch.Tensor) -> None:
            if mask.any():  # a CPU tensor: no sync
                idx = mask.nonzero().squeeze(1)
                ops.append((fn, idx, [v[idx] for v in values]))

        gray = lambda y: _gray_f(y).expand(-1, 3, -1, -1)  # noqa: E731
        if self.spec.grayscale_first:
            plan(p["gray"], gray)
        for k in range(4):
            for op in range(4):
                plan(p["jitter"] & (p["order"][:, k] == op), lambda y, f, op=op: _jitter_f(op, y, f), p["factors"][:, op])
        if not self.spec.grayscale_first:
            plan(p["gray"], gray)
        # every sample blurred (sigma 0: the identity), so the grouped conv has one shape per batch size:
        # no cuDNN benchmark search or recompile per count of blurred samples
        plan(p["blur"].any().expand(len(images)), self._blur, torch.where(p["blur"], p["sigma"], 0.0))
        plan(p["solarize"], lambda y: torch.where(y >= 127.5 / 255, 1 - y, y))
        plan(p["flip"], lambda y: y.flip(-1))
        device = images.device
        x = images.float().div_(255)
        if ops:  # every index and value in one fp32 buffer: one copy, from pinned memory on CUDA
            parts = [t.float() for _, idx, vals in ops for t in (idx, *vals)]
            flat = torch.cat(parts)
            if device.type == "cuda":
                flat = flat.pin_memory()
            chunks = iter(flat.to(device, non_blocking=True).split([len(t) for t in parts]))
            for fn, _, vals in ops:
                idx = next(chunks).long()
                x[idx] = fn(x[idx], *[next(chunks) for _ in vals])
        return x.sub_(self.mean.to(device)).div_(self.std.to(device))

    def _blur(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur, one sigma per sample (0: none), reflected borders."""
        n, c, h, w = x.shape
        r = min(math.ceil(3 * self.spec.blur_sigma[1]), h - 1, w - 1)
        if r < 1:
            return x
        t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
        k = torch.exp(-t ** 2 / (2 * sigma.to(x.dtype).clamp_min(1e-6).view(-1, 1) ** 2))  # sigma 0: exactly [.., 0, 1, 0, ..]
        k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
        y = torch.nn.functional.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="reflect")
        y = torch.nn.functional.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
        y = torch.nn.functional.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
        return y.view(n, c, h, w)

    def extra_repr(self) -> str:
        return repr(self.spec)
