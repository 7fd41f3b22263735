"""Pictures: crops, training curves and per-class AP are written as non-blank PNGs."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("matplotlib")

from ssl_crops import viz  # noqa: E402
from ssl_crops.boxes import BoxIndex  # noqa: E402
from ssl_crops.transforms import ObjectAwareCrop  # noqa: E402


def assert_picture(path, min_size):
    img = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    assert img.shape[1] >= min_size[0] and img.shape[0] >= min_size[1], img.shape
    assert img.std() > 10, "blank picture"
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    return img


def _has_colour(img, hex_colour, tol=40):
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img - rgb).max(-1) < tol).sum())


def test_crops_figure(demo_root, tmp_path):
    index = BoxIndex.from_coco(demo_root / "annotations_train.json")
    pictures = {}
    for mode in ("object-object", "scene"):
        crop = ObjectAwareCrop(mode=mode, geometry="original", size=48, min_region=48)
        out = viz.crops_figure(index, demo_root / "images", tmp_path / f"{mode}.png", crop, n=3, seed=1)
        pictures[mode] = img = assert_picture(out, (600, 600))
        assert _has_colour(img, viz.COLOURS["q"]) > 100 and _has_colour(img, viz.COLOURS["k"]) > 100
    # same images; only object crops draw the tight (yellow) and context (orange) regions
    assert _has_colour(pictures["object-object"], viz.COLOURS["tight"], 20) > \
        _has_colour(pictures["scene"], viz.COLOURS["tight"], 20) + 100
    assert _has_colour(pictures["object-object"], viz.COLOURS["context"], 20) > \
        _has_colour(pictures["scene"], viz.COLOURS["context"], 20) + 100


def test_crops_cli_takes_npz_coco_json_and_data_folder(demo_root, tmp_path, capsys):
    index = BoxIndex.from_coco(demo_root / "annotations_train.json")
    index.save(tmp_path / "index.npz")
    for spec in (tmp_path / "index.npz", demo_root / "annotations_train.json", demo_root / "images"):
        out = tmp_path / f"{spec.stem}.png"
        viz.main(["crops", "--index", str(spec), "--images", str(demo_root / "images"), "--out", str(out),
                  "-n", "2", "--size", "32", "--min-region", "40", "--geometry", "relative"])
        assert_picture(out, (500, 300))
        assert f"wrote {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        viz.main(["crops", "--index", str(tmp_path / "nope.npz"), "--images", str(demo_root / "images")])
    assert "nope.npz: index not found" in capsys.readouterr().err


def _write_log(path, typed):
    recs = []
    for step in range(1, 41):
        rec = {"epoch": (step - 1) // 10, "step": step, "loss": 7 - 0.05 * step, "lr": 0.03 * (1 - step / 50),
               "images_per_s": 200 + step % 7}
        recs.append({"type": "step", **rec} if typed else rec)
        if step % 10 == 0:
            recs.append({"type": "epoch", "epoch": step // 10 - 1, "step": step, "loss": 7 - 0.05 * step,
                         "lr": 0.03, "images_per_s": 203, "knn20_map": 0.3 + step / 200, "knn200_map": 0.25 + step / 250})
    path.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 41, "loss"')  # killed mid-write


@pytest.mark.parametrize("typed", [True, False])
def test_log_figure_reads_step_and_epoch_records(tmp_path, typed):
    log = tmp_path / "log.jsonl"
    _write_log(log, typed)
    with pytest.warns(UserWarning, match=r"log.jsonl:45: skipping unreadable"):
        steps, epochs = viz.read_log(log)
    assert [r["step"] for r in steps] == list(range(1, 41))
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3] and epochs[-1]["knn20_map"] == pytest.approx(0.5)
    with pytest.warns(UserWarning):
        out = viz.main(["log", str(log), "--out", str(tmp_path / "curves.png")])
    assert_picture(out, (800, 500))


def test_log_without_records_names_the_file(tmp_path):
    log = tmp_path / "empty.jsonl"
    log.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl: no step or epoch records"):
        viz.log_figure(log, tmp_path / "c.png")


@pytest.mark.parametrize("command, name, content, message", [
    ("log", "empty.jsonl", "\n", "empty.jsonl: no step or epoch records"),
    ("per-class", "missing.json", None, "missing.json: report not found"),
    ("crops", "missing.json", None, "missing.json: index not found"),
])
def test_cli_input_mistakes_end_in_one_line(tmp_path, capsys, command, name, content, message):
    if content is not None:
        (tmp_path / name).write_text(content)
    argv = {"crops": ["crops", "--index", str(tmp_path / name), "--images", str(tmp_path)]}.get(
        command, [command, str(tmp_path / name)])
    with pytest.raises(SystemExit) as e:
        viz.main([*argv, "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x.png").exists()


def test_per_class_ap_figure(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 5000, 30)
    ap = rng.uniform(0, 1, 30).tolist()
    ap[3] = None  # a class without test positives
    out = viz.per_class_ap_figure(ap, [f"class{i}" for i in range(30)], counts, tmp_path / "per_class_ap.png")
    img = assert_picture(out, (600, 300))
    assert _has_colour(img, "#1f77b4") > 500  # the AP bars (tab:blue)
    with pytest.raises(ValueError, match="3 APs, 2 class names"):
        viz.per_class_ap_figure([0.1, 0.2, 0.3], ["a", "b"], [1, 2, 3], tmp_path / "x.png")


def test_per_class_cli_reads_the_report_linear_eval_writes(demo_root, tmp_path, one_thread, capsys):
    from ssl_crops.evaluate import main as linear_eval
    out_dir = tmp_path / "eval"
    linear_eval([str(demo_root / "images"), "-a", "resnet18", "--image-size", "32", "-j", "0", "-b", "16",
                 "--no-progress", "--no-cache", "--train-crops", "0", "--probe-epochs", "2", "--lrs", "1e-2",
                 "--wds", "0", "--out-dir", str(out_dir)])
    out = viz.main(["per-class", str(out_dir / "report.json"), "--out", str(tmp_path / "p.png")])
    assert_picture(out, (400, 300))
    report = json.loads((out_dir / "report.json").read_text())
    del report["per_class_train_images"]  # a report of an older version: counts from per_class_ap.csv beside it
    (out_dir / "report.json").write_text(json.dumps(report))
    assert_picture(viz.main(["per-class", str(out_dir / "report.json"), "--out", str(tmp_path / "q.png")]),
                   (400, 300))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        viz.main(["per-class", str(tmp_path / "bad.json"), "--out", str(tmp_path / "q.png")])
    assert "bad.json: not a linear_eval report" in capsys.readouterr().err


def test_cli_says_how_to_install_matplotlib(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit, match=r"pip install 'ssl-crops\[viz\]'"):
        viz.main(["log", str(tmp_path / "log.jsonl")])


def test_only_viz_imports_matplotlib():
    code = ("import sys, ssl_crops.train, ssl_crops.evaluate, ssl_crops.data, ssl_crops.transforms; "
            "assert 'matplotlib' not in sys.modules; import ssl_crops.viz; assert 'matplotlib' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_classes_without_an_ap_are_labelled_by_the_reason():
    """A class without a training image is not scored (its AP is undefined although the test set
    has positives): the plot must not call it "no test positive"."""
    ap = np.array([0.5, np.nan, np.nan])
    groups = viz._missing_ap(ap, [10, 0, 4])
    assert {k: v[0].tolist() for k, v in groups.items()} == {
        "no training image (not scored)": [False, True, False], "no test positive": [False, False, True]}
