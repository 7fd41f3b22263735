"""OpenCV contrib's published BING model: FileStorage matrices and the binarized scoring it was fitted with."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np

__all__ = ["ModelFileError", "read_opencv_matrix", "binarize_filter", "OPENCV_PREFIX", "OPENCV_SIDES",
           "OPENCV_GRADIENT_SHIFT"]

OPENCV_PREFIX = "ObjNessB2W8MAXBGR"
OPENCV_SIDES = 16 * 2 ** np.arange(6)    # its window sides: idx = (log2 h - 4) * 6 + (log2 w - 4)
OPENCV_GRADIENT_SHIFT = 4                # it scores the top 4 bits of the gradient (Ng = 4)


class ModelFileError(ValueError):
    """A model file is missing, malformed or inconsistent; the message names the file."""


def binarize_filter(w: np.ndarray, n: int = 2) -> np.ndarray:
    """OpenCV's approximation of the 8x8 filter by ``n`` scaled {-1, +1} bases (Nw = 2):
    greedily, ``b = sign(r)``, ``beta = mean(r * b)``, ``r -= beta * b``; returns ``sum beta b``."""
    r = np.asarray(w, np.float64).ravel().copy()
    approx = np.zeros_like(r)
    for _ in range(n):
        b = np.where(r >= 0, 1.0, -1.0)
        beta = (r * b).mean()
        approx += beta * b
        r -= beta * b
    return approx.reshape(np.shape(w)).astype(np.float32)


_DT = {"u": np.uint8, "c": np.int8, "w": np.uint16, "s": np.int16, "i": np.int32, "f": np.float32, "d": np.float64}


def read_opencv_matrix(path) -> np.ndarray:
    """Read the single ``!!opencv-matrix`` of an OpenCV FileStorage YAML file (``.gz`` or not)."""
    path = Path(path)
    try:
        raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError as e:
        raise ModelFileError(f"{path}: model file not found") from e
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise ModelFileError(f"{path}: cannot read ({e})") from e
    if not text.startswith("%YAML"):
        raise ModelFileError(f"{path}: not an OpenCV FileStorage YAML file")
    fields = {k: re.search(rf"^\s*{k}:\s*(\S+)", text, re.M) for k in ("rows", "cols", "dt")}
    data = re.search(r"data:\s*\[([^\]]*)\]", text)
    if "!!opencv-matrix" not in text or data is None or not all(fields.values()):
        raise ModelFileError(f"{path}: no opencv-matrix with rows, cols, dt and data")
    try:
        rows, cols = int(fields["rows"][1]), int(fields["cols"][1])
        dt = _DT[fields["dt"][1].strip("\"'")]
        values = np.array([float(v) for v in data[1].replace(",", " ").split()], np.float64)
    except (KeyError, ValueError) as e:
        raise ModelFileError(f"{path}: malformed matrix header or data ({e})") from e
    if values.size != rows * cols:
        raise ModelFileError(f"{path}: {values.size} values for a {rows}x{cols} matrix")
    return values.astype(dt).reshape(rows, cols)
