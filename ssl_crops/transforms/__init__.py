"""Views out: object regions (``geometry``), the two-view crop (``crop``) and the MoCo
augmentations (``augment``), as ``torchvision.transforms.v2`` transforms."""
from .augment import (IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, BatchAugment, GaussianBlur, MoCoAugment,
                      MoCoV1Augment, MoCoV2Augment, TwoViews, eval_transform, linear_train_transform, moco_augment)
from .crop import MODES, ObjectAwareCrop
from .geometry import (GEOMETRIES, Region, object_regions, original_regions, random_resized_crop,
                       relative_regions, to_normalized_boxes)

__all__ = [
    "ObjectAwareCrop", "MoCoAugment", "BatchAugment", "AugmentSpec", "MoCoV2Augment", "MoCoV1Augment",
    "GaussianBlur", "TwoViews", "moco_augment",
    "eval_transform", "linear_train_transform", "to_normalized_boxes", "IMAGENET_MEAN", "IMAGENET_STD",
    "MODES", "Region", "GEOMETRIES", "object_regions", "original_regions", "relative_regions",
    "random_resized_crop",
]
