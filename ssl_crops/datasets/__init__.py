"""Data preparation on disk: the OpenImages subset (build, download) and COCO object crops.
(The torch ``Dataset``s that read prepared data are in ``ssl_crops.data``.)

Submodules load on first use, so ``python -m ssl_crops.datasets.openimages`` and
``python -m ssl_crops.datasets.crops`` do not import each other.
"""
import importlib

_EXPORTS = {"build": "openimages", "select": "openimages", "download": "openimages",
            "read_ids": "openimages", "export_crops": "crops"}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
