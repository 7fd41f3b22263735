"""MoCo-v1/v2 augmentations applied after the crop, and the evaluation transforms."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from PIL import Image, ImageFilter
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["MoCoV2Augment", "MoCoV1Augment", "GaussianBlur", "TwoViews", "moco_augment", "eval_transform",
           "linear_train_transform", "IMAGENET_MEAN", "IMAGENET_STD"]

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


