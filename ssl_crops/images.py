"""Image files: read once, size from the header, decoded on demand (a JPEG at a reduced DCT
scale when the caller allows it), one error type naming the file. Torch-free: the datasets and
the BING proposals both read images through here."""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "EncodedImage", "open_image", "load_image", "image_size", "JPEG_SCALES"]

JPEG_SCALES = (8, 4, 2)  # the DCT scale divisors libjpeg decodes at, besides 1 (the full image)
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"


class ImageReadError(ValueError):
    """An image file is missing, truncated or cannot be decoded; the message names the file and
    the problem. (``ssl_crops.data.CorruptImageError`` and
    ``ssl_crops.proposals.ImageReadError`` are this class.)"""


class EncodedImage:
    """An image file read but not decoded: ``size`` and ``format`` come from the header; pixels
    are decoded on demand, a JPEG at a reduced DCT scale (1/2, 1/4, 1/8) when allowed.

    A missing, empty, truncated or undecodable file raises :class:`ImageReadError` naming it;
    a JPEG that lacks only its end marker is decoded, with ``truncated`` set (the caller counts it).
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self._data = self.path.read_bytes()
        except FileNotFoundError:
            raise ImageReadError(f"{path}: image file not found") from None
        except OSError as e:
            raise ImageReadError(f"{path}: cannot read image ({e})") from e
        if not self._data:
            raise ImageReadError(f"{path}: empty file (0 bytes)")
        self.truncated = _lacks_only_its_end(self._data)
        if self.truncated:  # PIL refuses a stream without its end marker; libjpeg decodes it whole
            self._data += _JPEG_END
        with self._open() as f:
            self.size, self.format = f.size, f.format
        self._decoded: Image.Image | None = None

    def decode(self) -> Image.Image:
        """The whole image as RGB at full resolution (decoded once)."""
        if self._decoded is None:
            self._decoded = self._load(self._open())
        return self._decoded

    def decode_native(self, min_side: int | None = None) -> Image.Image:
        """The image decoded in its own mode (16-bit, gray, alpha kept), the caller converts it.

        ``min_side``: a JPEG is decoded at a reduced DCT scale when that still leaves its long
        side at least ``min_side`` pixels and shrinks it at least twofold."""
        f = self._open()
        if min_side is not None and self.format == "JPEG":
            w, h = self.size
            scale = min_side / max(w, h)
            if scale < 0.5:
                f.draft("RGB", (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
        return self._load(f, mode=None)

    def scale_for(self, regions: Sequence, size) -> int:
        """The largest JPEG scale divisor (8, 4, 2, else 1) at which every region keeps at least
        ``size`` (``int`` or ``(width, height)``) pixels along each axis; 1 for other formats."""
        if self._decoded is not None or self.format != "JPEG":
            return 1
        out_w, out_h = (size, size) if isinstance(size, int) else size
        short = min(min((x1 - x0) / out_w, (y1 - y0) / out_h) for x0, y0, x1, y1 in regions)
        return next((k for k in JPEG_SCALES if short >= k), 1)

    def decode_regions(self, regions: Sequence, size) -> tuple[Image.Image, list[tuple[float, ...]]]:
        """``(image, regions)``: the RGB image decoded at :meth:`scale_for` and the pixel regions
        ``(x0, y0, x1, y1)`` mapped exactly into it (floats, 1/k of the original coordinates:
        reduced pixel ``i`` covers original pixels ``[k i, k (i + 1))``)."""
        k = self.scale_for(regions, size)
        if k > 1:
            f = self._open()
            drafted = f.draft("RGB", (self.size[0] // k, self.size[1] // k))
            if drafted is not None:  # None: a JPEG PIL cannot draft, decoded fully below
                scale = self.size[0] / drafted[1][2]
                return self._load(f), [tuple(v / scale for v in r) for r in regions]
        return self.decode(), [tuple(float(v) for v in r) for r in regions]

    def _open(self) -> Image.Image:
        try:
            return Image.open(io.BytesIO(self._data))
        except UnidentifiedImageError:
            raise ImageReadError(f"{self.path}: cannot decode image: not an image file (no format PIL "
                                 "reads)") from None
        except _DECODE_ERRORS as e:
            raise ImageReadError(f"{self.path}: cannot decode image ({e})") from e

    def _load(self, f: Image.Image, mode: str | None = "RGB") -> Image.Image:
        try:
            if mode is None:  # an in-memory file: nothing to close
                f.load()
                return f
            with f:
                return f.convert(mode)
        except _DECODE_ERRORS as e:
            raise ImageReadError(f"{self.path}: cannot decode image ({e})") from e


def _lacks_only_its_end(data: bytes) -> bool:
    """A JPEG without its end marker whose pixels decode down to its last two rows of 16-px
    blocks (which the decoder holds back); a JPEG cut shorter is not."""
    if data[:2] != _JPEG_START or data.rfind(_JPEG_END) > data.rfind(b"\xff\xda"):  # an end after the last scan
        return False
    try:
        f = Image.open(io.BytesIO(data))
    except _DECODE_ERRORS:
        return False
    try:
        f.load()
        return True  # decodes as it is (a small one, read in one go)
    except _DECODE_ERRORS:
        pass
    box = f.im.getbbox() if f.im is not None else None  # the rows decoded (the rest stays black)
    return box is not None and box[3] >= f.size[1] - 32


def open_image(path) -> EncodedImage:
    """Read an image file without decoding it (:class:`EncodedImage`); hand it to
    :class:`~ssl_crops.transforms.ObjectAwareCrop` to decode only what the two views need."""
    return EncodedImage(path)


def load_image(path) -> Image.Image:
    """Decode an image fully as RGB; :class:`ImageReadError` names the file on failure."""
    return EncodedImage(path).decode()


def image_size(path) -> tuple[int, int]:
    """``(width, height)`` of an image file from its header; :class:`ImageReadError` names it."""
    try:
        with Image.open(path) as im:
            return im.size
    except UnidentifiedImageError:
        empty = Path(path).stat().st_size == 0
        what = "empty file (0 bytes)" if empty else "cannot read image: not an image file"
        raise ImageReadError(f"{path}: {what}") from None
    except _DECODE_ERRORS as e:
        raise ImageReadError(f"{path}: cannot read image ({e})") from e
