"""ssl-crops: object-aware crops for self-supervised pretraining.

The public names are imported on first use (PEP 562), so that ``import ssl_crops`` and the
torch-free parts (``BoxIndex``, BING proposals) do not pay for importing torch.
"""
import importlib

__version__ = "0.1.0"

_EXPORTS = {  # public name -> the module that defines it
    "BoxIndex": "ssl_crops.boxes",
    "ObjectAwareCrop": "ssl_crops.transforms",
    "ObjectAwareMultiCrop": "ssl_crops.transforms",
    "open_image": "ssl_crops.images",
    "MoCo": "ssl_crops.moco",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
