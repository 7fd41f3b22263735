"""Views out: object regions (``geometry``), the two-view crop (``crop``), the multi-crop
(``multicrop``), what they take and give (``inputs``) and the augmentations (``augment``), as
``torchvision.transforms.v2`` transforms.

Only the public names are exported here; helpers live in their submodules
(``ssl_crops.transforms.geometry.object_regions``, ``ssl_crops.transforms.crop.MODES``, ...).
"""
import importlib
import warnings

from .augment import (IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, BatchAugment, MoCoAugment, MoCoV1Augment,
                      MoCoV2Augment, TwoViews, eval_transform, linear_train_transform)
from .crop import ObjectAwareCrop
from .multicrop import ObjectAwareMultiCrop

__all__ = [
    "ObjectAwareCrop", "ObjectAwareMultiCrop", "MoCoAugment", "BatchAugment", "AugmentSpec", "MoCoV2Augment", "MoCoV1Augment",
    "TwoViews", "eval_transform", "linear_train_transform", "IMAGENET_MEAN", "IMAGENET_STD",
]

# Names this package exported before 0.2; they still work, with a DeprecationWarning naming their module.
_MOVED = {
    "GaussianBlur": "augment", "moco_augment": "augment", "MODES": "crop",
    "GEOMETRIES": "geometry", "Region": "geometry", "object_regions": "geometry", "original_regions": "geometry",
    "relative_regions": "geometry", "random_resized_crop": "geometry", "to_normalized_boxes": "geometry",
}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = f"{__name__}.{_MOVED[name]}"
    warnings.warn(f"import {name} from {module}; {__name__}.{name} will be removed", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(module), name)
