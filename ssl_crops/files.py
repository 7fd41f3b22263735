"""File helpers: atomic writes (a killed process never leaves a half-written file under the
real name) and pickled annotation dicts read without executing code from the pickle."""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Mapping

import numpy as np

__all__ = ["atomic_write", "atomic_link", "json_text", "load_npy_dict", "UnsafePickleError"]


@contextmanager
def atomic_write(path, mode: str = "wb", backup=None):
    """Open a temporary file beside ``path`` for writing; when the block ends without error,
    flush and fsync it and rename it over ``path``, else remove it. With ``backup``, an
    existing ``path`` is first renamed to ``backup`` (so one of the two is always complete).

        with atomic_write("index.npz") as f:
            np.savez(f, ...)
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if backup is not None and path.is_file():
            os.replace(path, backup)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_link(src, path) -> bool:
    """Put a file with ``src``'s content at ``path`` atomically: a hard link (no second copy on
    disk; True), or a copy where the file system has none (False)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.link")
    try:
        os.link(src, tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        with open(src, "rb") as f, atomic_write(path) as out:
            shutil.copyfileobj(f, out)
        return False
    finally:
        tmp.unlink(missing_ok=True)


def json_text(obj, **kwargs) -> str:
    """``json.dumps(obj)`` as strict JSON: NaN and infinities (not JSON) become ``null``;
    ``allow_nan=False`` catches any that slip through (numpy scalars become numbers)."""
    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        return None if isinstance(v, float) and not math.isfinite(v) else v
    return json.dumps(clean(obj), allow_nan=False, **kwargs)


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than numpy arrays and builtin containers."""


_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("_codecs", "encode"),  # bytes pickled by Python 2 / protocol 2
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str):
        canonical = module.replace("numpy.core.", "numpy._core.", 1)
        if (canonical, name) not in _SAFE_GLOBALS:
            raise UnsafePickleError(
                f"{self._source}: refusing to unpickle {module}.{name}; only numpy arrays and "
                "builtin containers, strings and numbers are allowed in annotation files"
            )
        if canonical.startswith("numpy._core") and not hasattr(np, "_core"):
            canonical = canonical.replace("numpy._core.", "numpy.core.", 1)  # numpy < 2
        return super().find_class(canonical, name)


def load_npy_dict(path: str | os.PathLike) -> dict:
    """Read a dict saved with ``np.save(path, d)`` without executing code from the pickle.

    Plain pickle files (``.pkl``) are read with the same restrictions.
    Raises :class:`UnsafePickleError` for a hostile pickle and ``ValueError`` for a file
    that is truncated or holds no dict, each naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: annotation file not found")
    with open(path, "rb") as f:
        head = f.read(6)
        f.seek(0)
        try:
            if head == b"\x93NUMPY":
                obj = _read_npy(f, str(path))
            else:
                obj = _RestrictedUnpickler(f, str(path)).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: not a readable annotation file ({type(e).__name__}: {e})") from e
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.ndim == 0:
        obj = obj.item()
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return dict(obj)


def _read_npy(f, source: str):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        shape, fortran, dtype = np.lib.format._read_array_header(f, version)
    if dtype.hasobject:
        return _RestrictedUnpickler(f, source).load()
    f.seek(0)
    return np.load(f, allow_pickle=False)
