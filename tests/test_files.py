import pytest

from ssl_crops.files import atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.bin"
    with atomic_write(path) as f:
        f.write(b"first")
    assert path.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half of the sec")
            raise RuntimeError("killed while writing")
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]  # no temporary file left behind
