"""Reports (ssl_crops/evaluate/report.py)."""
import json

import numpy as np
import pytest

from ssl_crops.evaluate.report import build_report, format_table, write_report
from ssl_crops.metrics import batch_mean_average_precision

def _report(n=600, c=6, seed=0, **kw):
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, c)) < 0.1).astype(np.float32)
    scores = targets * 0.8 + rng.random(targets.shape)
    counts = np.array([900, 950, 5000, 1200, 2000, 901])[:c]
    return build_report(scores, targets, counts, [f"c{i}" for i in range(c)], True, **kw), scores, targets


def test_report_has_whole_set_and_paper_comparable_batch_mean_map():
    rep, scores, targets = _report()
    assert rep["map_batch_mean"] == pytest.approx(batch_mean_average_precision(scores, targets, 256))
    assert rep["map_batch_mean"] > rep["map"]  # per-batch mAP is inflated: it must never replace the whole-set one
    assert "comparable with the paper only" in rep["map_batch_mean_note"]
    table = format_table(rep)
    assert "all (whole test set)" in table and "batch-mean mAP (comparable with the paper only)" in table
    small, _, _ = _report(paper_batch_size=32)
    assert small["map_batch_mean"] == pytest.approx(batch_mean_average_precision(scores, targets, 32))


def test_tertiles_beside_thresholds_name_their_classes():
    rep, _, _ = _report()
    assert rep["groups"]["head"]["classes"] == 6 and rep["groups"]["tail"]["classes"] == 0  # 100/20: all head
    t = rep["tertiles"]
    assert [t[g]["class_names"] for g in t] == [["c2", "c4"], ["c1", "c3"], ["c0", "c5"]]
    assert t["frequent third"]["train_images"] == [2000, 5000]
    assert [r["tertile"] for r in rep["per_class"]][:3] == ["rare third", "middle third", "frequent third"]
    table = format_table(rep)
    assert "frequent third [2000-5000 imgs]" in table and "rare third [900-901 imgs]" in table


def test_classes_without_training_images_are_not_scored_and_named():
    targets = np.array([[1, 0, 1, 0], [0, 1, 1, 0], [1, 1, 0, 0]], np.float32)
    scores = np.array([[0.9, 0.1, 0.1, 0.5], [0.2, 0.8, 0.1, 0.5], [0.7, 0.6, 0.9, 0.5]])
    rep = build_report(scores, targets, np.array([5, 4, 0, 0]), ["a", "b", "c", "d"], True)
    assert rep["map"] == pytest.approx(1.0)  # c (AP 0.58 if it were scored) has no training image
    assert rep["classes_without_train_images"] == ["c"] and rep["classes_skipped"] == ["d"]
    assert rep["per_class"][2]["test_positives"] == 2 and rep["per_class"][2]["ap"] is None
    assert [r["tertile"] for r in rep["per_class"]] == ["frequent third", "middle third", "no training image",
                                                        "no training image"]
    assert "not scored (test positives but no training image): 1 classes" in format_table(rep)


def test_write_report_is_the_one_writer(tmp_path):
    rep, _, _ = _report()
    files = write_report(rep, tmp_path / "out")
    assert set(files) == {"report", "per-class AP", "per-class AP plot"}
    js = json.loads(files["report"].read_text())
    assert js["map"] == rep["map"] and js["map_batch_mean"] == rep["map_batch_mean"] and "per_class" not in js
    assert js["per_class_ap"] == {r["class"]: r["ap"] for r in rep["per_class"]} and len(js["per_class_ap"]) == 6
    rows = files["per-class AP"].read_text().splitlines()
    assert rows[0] == "class_index,class,train_images,test_positives,group,tertile,ap" and len(rows) == 7
    from PIL import Image
    with Image.open(files["per-class AP plot"]) as png:  # linear_eval's per_class_ap.png: a real picture
        assert png.size[0] >= 300 and png.size[1] >= 200
        assert np.asarray(png.convert("L")).std() > 10


def test_write_report_without_matplotlib_warns_and_writes_the_rest(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.warns(UserWarning, match=r"per_class_ap.png not written.*pip install"):
        files = write_report(_report()[0], tmp_path)
    assert set(files) == {"report", "per-class AP"} and not (tmp_path / "per_class_ap.png").exists()


def test_report_groups_and_files(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 3)) < 0.4).astype(np.float32)
    targets[:, 2] = 0
    scores = targets + rng.normal(size=targets.shape) * 0.1
    rep = build_report(scores, targets, np.array([150, 50, 5]), ["a", "b", "c"], True, head_min=100, tail_max=20)
    assert rep["map"] == pytest.approx(1.0) and rep["classes_skipped"] == ["c"]
    assert rep["groups"]["head"]["map"] == pytest.approx(1.0) and rep["groups"]["tail"]["map"] is None
    files = write_report(rep, tmp_path)
    assert set(files.values()) == {tmp_path / "report.json", tmp_path / "per_class_ap.csv", tmp_path / "per_class_ap.png"}
    assert (tmp_path / "per_class_ap.csv").read_text().splitlines()[0] == \
        "class_index,class,train_images,test_positives,group,tertile,ap"
    assert "tail (<20)" in format_table(rep)


def test_table_in_percent_and_without_the_lines_a_run_printed_as_it_went(tmp_path):
    rep, _, _ = _report(image_size=224, image_size_source="the checkpoint's")
    rep.update(sweep=[{"lr": 1.0, "wd": 0.0}], best={"lr": 1.0, "wd": 0.0, "val_map": 0.5},
               sweep_notes=["best lr on the edge: widened with lr 10"], notes=["2 test classes unseen"])
    full, once = format_table(rep), format_table(rep, notes=False)
    assert "mAP %" in full.splitlines()[0] and f"{100 * rep['map']:6.2f}" in full
    for line in ("image size: 224 px", "probe: best lr on the edge", "note: 2 test classes unseen"):
        assert line in full and line not in once
    assert "probe: lr 1, wd 0 chosen" in once  # the choice itself was not printed before


def test_report_json_is_strict(tmp_path):
    rep, _, _ = _report()
    rep["knn"] = {"knn20_map": float("nan")}
    text = write_report(rep, tmp_path)["report"].read_text()
    assert "NaN" not in text and json.loads(text)["knn"] == {"knn20_map": None}
