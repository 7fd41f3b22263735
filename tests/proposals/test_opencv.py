"""OpenCV contrib's model files: FileStorage matrices and the binarized filter."""
import gzip

import numpy as np
import pytest

from ssl_crops.proposals.opencv import ModelFileError, binarize_filter, read_opencv_matrix


def storage(rows, cols, dt, data, name="m"):
    return (f"%YAML:1.0\n{name}: !!opencv-matrix\n   rows: {rows}\n   cols: {cols}\n   dt: {dt}\n"
            f"   data: [ {data} ]\n")


def test_reads_plain_and_gzipped_matrices_with_their_type(tmp_path):
    (tmp_path / "a.yml").write_text(storage(2, 3, "f", "1., 2.5, -3.,\n      4e-1, 5, 6"))
    a = read_opencv_matrix(tmp_path / "a.yml")
    assert a.dtype == np.float32 and a.shape == (2, 3)
    np.testing.assert_allclose(a, [[1, 2.5, -3], [0.4, 5, 6]])
    with gzip.open(tmp_path / "b.yml.gz", "wt") as f:
        f.write(storage(3, 1, "i", "0, 7, 35"))
    b = read_opencv_matrix(tmp_path / "b.yml.gz")
    assert b.dtype == np.int32 and b.ravel().tolist() == [0, 7, 35]
    (tmp_path / "c.yml").write_text(storage(1, 2, '"d"', "1, 2"))          # quoted type
    assert read_opencv_matrix(tmp_path / "c.yml").dtype == np.float64


@pytest.mark.parametrize("text, message", [
    ("rows: 1", "not an OpenCV FileStorage YAML file"),
    ("%YAML:1.0\nm: 3\n", "no opencv-matrix"),
    (storage(2, 2, "f", "1, 2, 3"), "3 values for a 2x2 matrix"),
    (storage(1, 1, "q", "1"), "malformed matrix header or data"),
    (storage(1, 1, "f", "one"), "malformed matrix header or data"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path, text, message):
    (tmp_path / "bad.yml").write_text(text)
    with pytest.raises(ModelFileError, match=f"bad.yml: {message}"):
        read_opencv_matrix(tmp_path / "bad.yml")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(ModelFileError, match="nope.yml.gz: model file not found"):
        read_opencv_matrix(tmp_path / "nope.yml.gz")
    (tmp_path / "x.yml.gz").write_bytes(b"not gzip")
    with pytest.raises(ModelFileError, match="x.yml.gz: cannot read"):
        read_opencv_matrix(tmp_path / "x.yml.gz")
    assert issubclass(ModelFileError, ValueError)


def test_binarize_filter_by_hand():
    w = np.tile((np.arange(8) + 1) / 100, (8, 1))
    # beta1 = mean|w| = 0.045 (all signs +1); residual w - 0.045, beta2 = mean|residual| = 0.02
    b = binarize_filter(w)
    assert b.dtype == np.float32 and b.shape == (8, 8)
    np.testing.assert_allclose(b[0], [0.025] * 4 + [0.065] * 4, rtol=1e-6)
    np.testing.assert_allclose(binarize_filter(w, n=1), np.full((8, 8), 0.045), rtol=1e-6)
    rng = np.random.default_rng(0)
    r = rng.standard_normal((8, 8))
    errors = [np.abs(binarize_filter(r, n) - r).sum() for n in (1, 2, 4)]
    assert errors[0] > errors[1] > errors[2]                  # more bases: closer to the filter
