"""Atomic file writes: a killed process never leaves a half-written file under the real name."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write"]


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
