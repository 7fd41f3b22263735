"""Image input: 16-bit, one channel, alpha, floats, the working size and reduced JPEG decoding."""
import numpy as np
import pytest
from PIL import Image

from ssl_crops.proposals.images import ImageReadError, as_rgb, read_image, to_uint8, working_image


def test_sixteen_bit_arrays_are_scaled_not_clipped():
    ramp = np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16)   # 0, 257, ..., 65535
    out = as_rgb(ramp)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, 0], np.arange(256, dtype=np.uint8).reshape(16, 16))
    # 16-bit values held in wider integers (PIL's "I" mode) are read as 16-bit too
    np.testing.assert_array_equal(to_uint8(ramp.astype(np.int32)), to_uint8(ramp))


def test_sixteen_bit_png_file_is_not_all_white(tmp_path):
    a = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")                 # PIL keeps 16 bits
    img = read_image(path)
    assert img.shape == (30, 40, 3)
    np.testing.assert_allclose(img[:, :, 0].astype(float), a / 257.0, atol=0.51)
    assert as_rgb(Image.open(path)).max() == 255 and as_rgb(Image.open(path)).min() == 0


@pytest.mark.parametrize("shape", [(9, 7), (9, 7, 1), (9, 7, 2), (9, 7, 3), (9, 7, 4)])
def test_channel_layouts(shape):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    out = as_rgb(a)
    assert out.shape == (9, 7, 3) and out.flags.c_contiguous
    first = a if a.ndim == 2 else a[:, :, 0]
    np.testing.assert_array_equal(out[:, :, 0], first)
    if a.ndim == 2 or a.shape[2] <= 2:                 # gray (+ alpha): replicated
        np.testing.assert_array_equal(out[:, :, 1], first)
        np.testing.assert_array_equal(out[:, :, 2], first)


def test_floats_and_bad_shapes():
    np.testing.assert_array_equal(as_rgb(np.array([[0.0, 0.5, 1.0, 2.0]], np.float32))[0, :, 0], [0, 128, 255, 255])
    with pytest.raises(ValueError, match="shape"):
        as_rgb(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        as_rgb(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="dtype"):
        as_rgb(np.zeros((4, 4), complex))


def test_working_image_shrinks_and_never_enlarges():
    img = np.zeros((3000, 4000, 3), np.uint8)
    img[1000:2000, 1000:3000] = 200
    small, (fx, fy) = working_image(img, 640)
    assert small.shape == (480, 640, 3) and (fx, fy) == (6.25, 6.25)
    ys, xs = np.nonzero(small[:, :, 0] > 100)          # the bright block, 6.25x smaller
    assert abs(xs.min() * fx - 1000) < 13 and abs(ys.max() * fy - 2000) < 13
    same, f = working_image(img[:400, :500], 640)
    assert same.shape == (400, 500, 3) and f == (1.0, 1.0)
    assert working_image(img, None)[0] is img


def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.jpg"
    Image.fromarray(rng.integers(0, 256, (1600, 2400, 3), dtype=np.uint8)).save(path)
    assert read_image(path).shape == (1600, 2400, 3)
    reduced = read_image(path, max_side=640)
    assert 640 <= max(reduced.shape[:2]) < 2400 and reduced.shape[1] * 2 == reduced.shape[0] * 3


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "nope.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageReadError, match="nope.png"):
        read_image(bad, max_side=640)
