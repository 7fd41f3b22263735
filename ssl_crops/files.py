"""Atomic file writes: a killed process never leaves a half-written file under the real name."""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing; when the block ends without error,
    flush and fsync it and rename it over ``path``, else remove it.

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
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
