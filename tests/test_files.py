import numpy as np
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


def test_atomic_link_shares_the_file_and_json_text_is_strict(tmp_path):
    import json
    import math

    from ssl_crops.files import atomic_link, json_text

    src = tmp_path / "a.bin"
    src.write_bytes(b"weights")
    assert atomic_link(src, tmp_path / "b.bin") and (tmp_path / "b.bin").read_bytes() == b"weights"
    assert (tmp_path / "b.bin").stat().st_ino == src.stat().st_ino and not list(tmp_path.glob(".*"))
    text = json_text({"map": float("nan"), "k": [math.inf, 1.5, np.float32(2.0)]})
    assert json.loads(text) == {"map": None, "k": [None, 1.5, 2.0]} and "NaN" not in text
