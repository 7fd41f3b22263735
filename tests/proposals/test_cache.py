"""The proposal cache: arrays, the dataset protocol, files, ``open_proposals`` and ``propose_folder``."""
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from ssl_crops.proposals import Bing, ProposalCache, list_images, open_proposals, propose_folder

RECORDS = [("a", np.array([[0, 0, 20, 10], [10, 5, 50, 30], [-4, 0, 44, 40]], np.float32), np.array([3., 2., 1.]),
            (40, 20)),
           ("sub/b", np.zeros((0, 4)), np.zeros(0), (8, 8))]


def tiny_model():
    sizes = [(16, 16), (32, 32), (32, 16)]
    return Bing(np.random.default_rng(0).standard_normal((8, 8)) / 100, sizes, np.tile([1.0, 0.0], (3, 1)))


def write_images(root, n=3):
    rng = np.random.default_rng(1)
    for i in range(n):
        (root / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40 + 8 * i, 56, 3), np.uint8)).save(root / f"d{i % 2}" / f"im{i}.jpg")
    return root


def test_records_round_trip_and_the_dataset_protocol():
    cache = ProposalCache.from_records(RECORDS, {"top_k": 3})
    assert len(cache) == 2 and "a" in cache and "c" not in cache and cache.size("a") == (40, 20)
    assert [r[0] for r in cache.records()] == ["a", "sub/b"]
    np.testing.assert_array_equal(cache.boxes("a"), RECORDS[0][1])
    np.testing.assert_array_equal(cache.scores("a"), [3, 2, 1])
    p = cache.proposals_for("a", None)
    np.testing.assert_allclose(p, [[0, 0, 0.5, 0.5], [0.25, 0.25, 1, 1], [0, 0, 1, 1]])   # clipped to the image
    np.testing.assert_array_equal(cache.proposals_for("a", None, top_k=2), p[:2])
    assert cache.proposals_for("sub/b", None).shape == (0, 4)
    with pytest.warns(UserWarning, match="'c' is not in the proposal cache"):
        assert cache.proposals_for("c", None).shape == (0, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                              # warned once per cache
        cache.proposals_for("d", None)
    with pytest.raises(KeyError, match="not in the proposal cache"):
        cache.boxes("c")


def test_inconsistent_arrays_are_refused():
    with pytest.raises(ValueError, match="inconsistent"):
        ProposalCache(["a"], [0, 2], np.zeros((1, 4)), np.zeros(1), [(1, 1)])
    with pytest.raises(ValueError, match="duplicate image ids"):
        ProposalCache(["a", "a"], [0, 0, 0], np.zeros((0, 4)), np.zeros(0), [(1, 1), (1, 1)])


def test_files_and_open_proposals(tmp_path):
    cache = ProposalCache.from_records(RECORDS, {"top_k": 3})
    cache.save(tmp_path / "p.npz")
    back = open_proposals(tmp_path / "p.npz")
    assert isinstance(back, ProposalCache) and back.meta == {"top_k": 3} and list(back.ids) == ["a", "sub/b"]
    np.testing.assert_array_equal(back.boxes_flat, cache.boxes_flat)
    tiny_model().save(tmp_path / "m.npz")
    assert isinstance(open_proposals(tmp_path / "m.npz"), Bing)
    np.savez(tmp_path / "other.npz", x=np.zeros(2))
    with pytest.raises(ValueError, match="other.npz: neither a BING model nor a proposal cache"):
        open_proposals(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.npz: neither"):
        open_proposals(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz: proposals file not found"):
        open_proposals(tmp_path / "nope.npz")
    np.savez(tmp_path / "part.npz", ids=np.array(["a"]), offsets=np.array([0, 0]))
    with pytest.raises(ValueError, match=r"part.npz: not a valid proposal cache.*missing arrays"):
        ProposalCache.load(tmp_path / "part.npz")
    with pytest.raises(FileNotFoundError, match="nope.npz: proposal cache not found"):
        ProposalCache.load(tmp_path / "nope.npz")


def test_list_images_names_ids_like_the_folder_index(tmp_path):
    write_images(tmp_path / "images")
    (tmp_path / "images" / "notes.txt").write_text("x")
    assert list_images(tmp_path / "images") == [("d0/im0", "d0/im0.jpg"), ("d0/im2", "d0/im2.jpg"),
                                                ("d1/im1", "d1/im1.jpg")]


def test_propose_folder_in_process(tmp_path, capsys):
    images = write_images(tmp_path / "images")
    (images / "d1" / "bad.jpg").write_bytes(b"not a jpeg")
    model = tiny_model()
    cache = propose_folder(images, model, tmp_path / "p.npz", top_k=5, progress=False, model_name="tiny")
    assert sorted(cache.ids) == ["d0/im0", "d0/im2", "d1/bad", "d1/im1"]
    assert cache.meta["model"] == "tiny" and cache.meta["top_k"] == 5 and len(cache.meta["failed"]) == 1
    assert "bad.jpg" in capsys.readouterr().err and len(cache.boxes("d1/bad")) == 0
    boxes, scores = model.propose(images / "d0" / "im2.jpg", 5, return_scores=True)
    np.testing.assert_array_equal(cache.boxes("d0/im2"), boxes)
    np.testing.assert_array_equal(cache.scores("d0/im2"), scores)
    assert cache.size("d0/im2") == (56, 56) and not (tmp_path / "p.npz.parts").exists()
    with pytest.raises(ValueError, match="top_k=5.*--overwrite"):       # other settings do not mix
        propose_folder(images, model, tmp_path / "p.npz", top_k=9, progress=False, model_name="tiny")
    again = propose_folder(images, model, tmp_path / "p.npz", top_k=9, progress=False, model_name="tiny",
                           overwrite=True)
    assert again.meta["top_k"] == 9 and json.loads(json.dumps(again.meta))
