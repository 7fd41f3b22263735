"""``python -m ssl_crops.proposals`` on demo data: fit, propose (parallel, resumable), evaluate."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ssl_crops.proposals import Bing, ProposalCache, open_proposals
from ssl_crops.proposals import cache as cache_mod
from ssl_crops.proposals.__main__ import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from ssl_crops.demo import make_demo
    root = make_demo(tmp_path_factory.mktemp("demo"), num_train=24, num_test=8, seed=0)
    return root


@pytest.fixture(scope="module")
def model_path(demo):
    out = demo / "bing.npz"
    main(["fit", "--images", str(demo / "images"), "--out", str(out), "--min-positives", "3"])
    return out


def test_fit_writes_a_model(model_path):
    assert len(Bing.load(model_path).sizes) > 0
    assert isinstance(open_proposals(model_path), Bing)


def test_propose_design_form_parallel(demo, model_path, tmp_path, capsys):
    out = tmp_path / "proposals.npz"
    main(["--images", str(demo / "images"), "--model", str(model_path), "--out", str(out),
          "--workers", "2", "--chunk-size", "8", "--top-k", "50", "--no-progress"])
    cache = open_proposals(out)
    assert isinstance(cache, ProposalCache) and len(cache) == 32
    assert not (tmp_path / "proposals.npz.parts").exists()
    image_id = str(cache.ids[0])
    assert image_id in cache and "nope" not in cache
    p = cache.proposals_for(image_id, None)
    assert p.dtype == np.float32 and 0 < len(p) <= 50 and p.min() >= 0 and p.max() <= 1
    # the same boxes as the model computes directly
    direct = Bing.load(model_path).propose(demo / "images" / f"{image_id}.jpg", 50)
    np.testing.assert_allclose(cache.boxes(image_id), direct)
    with pytest.warns(UserWarning, match="not in the proposal cache"):
        assert cache.proposals_for("nope", None).shape == (0, 4)  # missing image: scene crops, no crash
    # settings that change the proposals are part of the cache: a rerun with another NMS refuses to mix
    with pytest.raises(ValueError, match="nms"):
        main(["--images", str(demo / "images"), "--model", str(model_path), "--out", str(out),
              "--top-k", "50", "--nms", "0.7", "--no-progress"])


def test_propose_resumes(demo, model_path, tmp_path, monkeypatch):
    images = tmp_path / "images"
    shutil.copytree(demo / "images", images)
    out = tmp_path / "p.npz"
    run_chunk, calls = cache_mod._run_chunk, []

    def interrupted(chunk):
        if calls:
            raise KeyboardInterrupt
        calls.append(len(chunk))
        return run_chunk(chunk)

    argv = ["propose", "--images", str(images), "--model", str(model_path), "--out", str(out),
            "--chunk-size", "8", "--top-k", "20", "--no-progress"]
    monkeypatch.setattr(cache_mod, "_run_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert not out.exists() and len(list((tmp_path / "p.npz.parts").glob("shard-*.npz"))) == 1

    def counting(chunk):
        calls.append(len(chunk))
        return run_chunk(chunk)

    calls.clear()
    monkeypatch.setattr(cache_mod, "_run_chunk", counting)
    main(argv)
    assert sum(calls) == 32 - 8 and len(ProposalCache.load(out)) == 32
    # a corrupt image added later: only it is computed, reported by name, cached with no boxes
    (images / "zz_broken.jpg").write_bytes(b"not a jpeg")
    calls.clear()
    main(argv)
    assert sum(calls) == 1
    cache = ProposalCache.load(out)
    assert len(cache) == 33 and len(cache.boxes("zz_broken")) == 0
    assert any("zz_broken.jpg" in f for f in cache.meta["failed"])


def test_evaluate_prints_table(demo, model_path, tmp_path, capsys):
    out = tmp_path / "p.npz"
    main(["propose", "--images", str(demo / "images"), "--model", str(model_path), "--out", str(out),
          "--no-progress"])
    capsys.readouterr()
    coco = str(demo / "annotations_test.json")
    main(["evaluate", "--images", str(demo / "images"), "--coco", coco, "--proposals", str(out)])
    cached = capsys.readouterr().out
    main(["evaluate", "--images", str(demo / "images"), "--coco", coco, "--model", str(model_path)])
    direct = capsys.readouterr().out
    for text in (cached, direct):
        assert "DR IoU>=0.5" in text and "DR IoU>=0.7" in text and "MABO" in text and "@1000" in text
    assert cached.startswith(f"boxes: {coco}: 8 images, ")  # the annotation file used, first
    assert cached.splitlines()[2:5] == direct.splitlines()[2:5]
    assert "ms per image" in direct


def test_progress_bars_only_on_a_terminal(demo, model_path, tmp_path, capsys, monkeypatch):
    images = ["--images", str(demo / "images")]
    main(["fit", *images, "--out", str(tmp_path / "m.npz"), "--min-positives", "3", "--max-images", "4",
          "--rescore-top", "0"])
    main(["propose", *images, "--model", str(model_path), "--out", str(tmp_path / "p.npz"), "--top-k", "5"])
    main(["evaluate", *images, "--coco", str(demo / "annotations_test.json"), "--proposals", str(tmp_path / "p.npz")])
    out, err = capsys.readouterr()
    assert "\r" not in out + err and "wrote" in out and "MABO" in out  # a piped log: summary lines only
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    main(["evaluate", *images, "--coco", str(demo / "annotations_test.json"), "--proposals", str(tmp_path / "p.npz")])
    assert "\r" in capsys.readouterr().err


def test_bad_model_file_is_a_clear_error(demo, tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"garbage")
    r = subprocess.run([sys.executable, "-m", "ssl_crops.proposals", "--images", str(demo / "images"),
                        "--model", str(bad), "--out", str(tmp_path / "p.npz")], capture_output=True, text=True)
    assert r.returncode == 2 and "model.npz" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("content, message", [("{not json", "not a COCO detection json"),
                                              (None, "no boxes found for the images in")])
def test_bad_or_empty_annotations_end_in_one_line(demo, tmp_path, capsys, content, message):
    coco = tmp_path / "ann.json"
    if content is None:   # a valid COCO json whose images have no boxes
        src = json.loads((demo / "annotations_test.json").read_text())
        content = json.dumps({**src, "annotations": []})
    coco.write_text(content)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--images", str(demo / "images"), "--coco", str(coco), "--out", str(tmp_path / "m.npz")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "m.npz").exists()
