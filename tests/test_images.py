"""The one image reader: both old error names are its class, reduced JPEG decoding as before."""
import numpy as np
import pytest
from PIL import Image

from ssl_crops.data import CorruptImageError
from ssl_crops.images import EncodedImage, ImageReadError, image_size
from ssl_crops.proposals.images import ImageReadError as ProposalsImageReadError
from ssl_crops.proposals.images import read_image


def test_one_error_type_under_both_old_names(tmp_path):
    assert CorruptImageError is ImageReadError is ProposalsImageReadError and issubclass(ImageReadError, ValueError)
    bad = tmp_path / "junk.jpg"
    bad.write_bytes(b"not an image")
    for read in (EncodedImage, read_image, image_size):
        with pytest.raises(CorruptImageError, match="junk.jpg: cannot"):
            read(bad)
    with pytest.raises(ImageReadError, match="gone.jpg: image file not found"):
        read_image(tmp_path / "gone.jpg")


def test_reduced_jpeg_decode_matches_pil_draft(tmp_path):
    """read_image(max_side) gives the pixels of the former direct PIL draft decode."""
    path = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (1200, 1800, 3), dtype=np.uint8)).save(path)
    with Image.open(path) as im:  # the former read_image: draft to ceil(side * 300 / 1800)
        im.draft("RGB", (300, 200))
        expected = np.asarray(im.convert("RGB"))
    got = read_image(path, max_side=300)
    assert got.shape == expected.shape == (300, 450, 3)
    np.testing.assert_array_equal(got, expected)
    assert read_image(path, max_side=1000).shape == (1200, 1800, 3)  # a half-scale decode would go below 1000


def test_encoded_image_decodes_regions_at_reduced_scale(tmp_path):
    path = tmp_path / "a.jpg"
    Image.fromarray(np.full((800, 640, 3), 120, np.uint8)).save(path)
    img = EncodedImage(path)
    assert img.size == (640, 800) and image_size(path) == (640, 800)
    reduced, regions = img.decode_regions([(0, 0, 640, 800)], 64)
    assert reduced.size == (80, 100) and regions == [(0.0, 0.0, 80.0, 100.0)]
    assert img.decode().size == (640, 800)


def _jpeg(path, size=(640, 480)):
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def test_an_empty_file_says_so(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for read in (EncodedImage, image_size):
        with pytest.raises(ImageReadError, match=r"empty.jpg: empty file \(0 bytes\)$"):
            read(empty)


def test_a_jpeg_without_only_its_end_marker_is_decoded_and_flagged(tmp_path):
    """A JPEG missing its last 2 bytes (the end marker) decodes whole, ``truncated`` set; a JPEG
    cut in half is still an error; a complete one is not flagged."""
    data = _jpeg(tmp_path / "whole.jpg")
    assert not EncodedImage(tmp_path / "whole.jpg").truncated
    (tmp_path / "no_end.jpg").write_bytes(data[:-2])
    img = EncodedImage(tmp_path / "no_end.jpg")
    with Image.open(tmp_path / "whole.jpg") as whole:
        expected = np.asarray(whole.convert("RGB"))
    assert img.truncated and np.array_equal(np.asarray(img.decode()), expected)
    (tmp_path / "half.jpg").write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageReadError, match="half.jpg: cannot decode image"):
        EncodedImage(tmp_path / "half.jpg").decode()


def test_only_the_image_module_opens_images():
    """One image reader: ``Image.open`` only in ssl_crops/images.py (and the download check,
    which verifies downloaded files)."""
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "ssl_crops"
    callers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "Image.open(" in p.read_text())
    assert callers == ["datasets/openimages/download.py", "images.py"]
