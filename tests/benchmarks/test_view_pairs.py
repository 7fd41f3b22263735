"""benchmarks/view_pairs.py: what a view holds, the policies, and the CLI on generated data."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
TIMES = ("bing_s", "wall_s")


def test_view_contents(vp):
    boxes = np.array([[0, 0, 10, 10], [50, 50, 100, 100], [0, 0, 100, 100]], float)
    views = np.array([[0, 0, 10, 10],      # box 0 exactly; box 2 covers it too (larger intersection ties: first)
                      [60, 60, 90, 90],    # inside box 1 and box 2: box 1 covers the whole view
                      [200, 200, 300, 300],  # outside every box
                      [0, 0, 40, 40]])     # box 0 wholly inside (>= 50% of the box), box 2 covers the view
    obj, none, dom = vp.view_contents(views, boxes)
    assert obj.tolist() == [True, True, False, True]
    assert none.tolist() == [False, False, True, False]
    assert dom[0] in (0, 2) and dom[1] in (1, 2) and dom[2] == -1 and dom[3] == 2
    # only a big box's small corner: neither half of the view nor half of the box, still >= 10% of the view
    obj, none, dom = vp.view_contents(np.array([[0, 0, 100, 100]], float), np.array([[60, 60, 200, 200]], float))
    assert obj.tolist() == [False] and none.tolist() == [False] and dom.tolist() == [0]
    obj, none, dom = vp.view_contents(np.array([[0, 0, 5, 5]], float), np.zeros((0, 4)))
    assert obj.tolist() == [False] and none.tolist() == [True] and dom.tolist() == [-1]


def test_pair_kinds_are_disjoint(vp):
    labels = np.array([3, 3, 7])
    kinds = vp.pair_kinds(np.array([0, 0, 0, -1, 2]), np.array([0, 1, 2, 0, -1]), labels)
    assert kinds["same_instance"].tolist() == [True, False, False, False, False]
    assert kinds["same_class"].tolist() == [False, True, False, False, False]
    assert kinds["different_class"].tolist() == [False, False, True, False, False]
    assert not any(v.any() for v in vp.pair_kinds(np.array([-1]), np.array([-1]), np.zeros(0, int)).values())


def test_windowed_scene_keeps_both_views_in_one_window(vp):
    """The scale control: both views inside one window of the image area asked, median view area 0.6 x it."""
    crop = vp.WindowedScene(0.1)
    g = torch.Generator().manual_seed(0)
    pairs = np.array([crop.sample_regions(200, 100, None, g) for _ in range(400)], float)
    span = np.concatenate([np.minimum(pairs[:, 0, :2], pairs[:, 1, :2]),
                           np.maximum(pairs[:, 0, 2:], pairs[:, 1, 2:])], 1)
    assert ((span[:, 2] - span[:, 0]) * (span[:, 3] - span[:, 1]) <= 0.1 * 200 * 100 * 1.1).all()
    areas = (pairs[..., 2] - pairs[..., 0]) * (pairs[..., 3] - pairs[..., 1]) / (200 * 100)
    assert np.median(areas) == pytest.approx(0.06, rel=0.15)
    assert (vp.shared_pixels(pairs[:, 0], pairs[:, 1]) == 0).mean() < 0.1
    # the old control (two independent scene crops at that scale) breaks many pairs
    old = vp.object_crop("scene", scale=(0.02, 0.1))
    loose = np.array([old.sample_regions(200, 100, None, g) for _ in range(400)], float)
    assert (vp.shared_pixels(loose[:, 0], loose[:, 1]) == 0).mean() > 0.4


def test_matched_window_hits_the_median_view_area(vp):
    sizes = np.array([[640, 480], [480, 640], [500, 500]] * 10)
    for target in (0.05, 0.14):
        window = vp.matched_window(target, sizes)
        got = vp.median_area(vp.WindowedScene(window), sizes, [np.zeros((0, 4))] * len(sizes))
        assert got == pytest.approx(target, rel=0.05) and window > target / 0.6  # above the uncorrected guess


def test_shared_pixels(vp):
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    b = np.array([[5, 5, 20, 20], [10, 0, 20, 10], [9, 9, 11, 11]])
    assert vp.shared_pixels(a, b).tolist() == [25, 0, 1]  # touching edges share no pixel (exclusive ends)


def test_object_scale_range(vp):
    assert vp.object_scale_range(0.06) == pytest.approx((0.02, 0.1))
    assert vp.object_scale_range(0.9) == (0.2, 1.0)  # never past the whole image


def test_cli_on_generated_data(vp, demo_root, tmp_path):
    def run(seed, name):
        out = tmp_path / name
        argv = ["--coco", str(demo_root / "annotations_test.json"), "--fit-coco",
                str(demo_root / "annotations_train.json"), "--images", str(demo_root / "images"),
                "--json", str(out), "--pairs", "6", "--seed", str(seed), "--size", "64", "--min-region", "96"]
        vp.main(argv)
        return {k: v for k, v in json.loads(out.read_text()).items() if k not in TIMES}

    res = run(0, "a.json")
    assert res["images"] == 8 and res["bing_fit_images"] == 24 and res["pairs_per_image"] == 6
    assert 0 <= res["bing_precision_at_10"] <= 1
    assert res["min_region"] == 96 and 1 <= res["scaled_min_region"] < 96  # demo photos are < 1024 px
    for rows in (res["policies"], res["policies_scaled_min_region"]):
        assert list(rows) == list(vp.POLICIES)
        for name, r in rows.items():
            shares = [r[k] for k in ("object_view", "no_object", *vp.PAIR_KINDS)]
            assert all(0 <= s <= 1 for s in shares), name
            assert sum(r[k] for k in vp.PAIR_KINDS) <= 1 + 1e-9, name
            assert 0 <= r["disjoint"] <= 1, name
            assert r["median_view_side"] > 0 and r["median_upscale"] == pytest.approx(64 / r["median_view_side"], 0.2)
        # the scene control at object scale matches object_original's median view area
        assert rows["scene_object_scale"]["median_view_area"] == pytest.approx(
            rows["object_original"]["median_view_area"], rel=0.35)
        assert rows["scene"]["median_view_area"] > rows["object_original"]["median_view_area"]
        # random boxes of the images' own annotation sizes: object_original's view sizes, other contents
        assert rows["random_same_sizes"]["median_view_side"] == pytest.approx(
            rows["object_original"]["median_view_side"], rel=0.3)
        assert rows["random_same_sizes"]["same_instance"] != rows["object_original"]["same_instance"]
    # a smaller min_region gives smaller object views
    assert res["policies_scaled_min_region"]["object_original"]["median_view_side"] < \
        res["policies"]["object_original"]["median_view_side"]
    assert run(0, "b.json") == res          # deterministic given --seed
    assert run(1, "c.json")["policies"] != res["policies"]


def test_split_cli(demo_root):
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "view_pairs.py"), "--images",
                        str(demo_root / "images"), "--coco", str(demo_root / "annotations_train.json"), "--split",
                        "--pairs", "2"], capture_output=True, text=True,
                       env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "12 scored images" in r.stdout and "BING fitted on 12" in r.stdout and "| random_boxes |" in r.stdout \
        and "| random_same_sizes |" in r.stdout and "disjoint pairs" in r.stdout


@pytest.mark.parametrize("extra, message", [([], "error: give --fit-coco (BING's training images) or --split"),
                                            (["--split", "--pairs", "0"], "must be positive"),
                                            (["--fit-coco", "missing.json"], "missing.json")])
def test_usage_errors(vp, demo_root, tmp_path, capsys, extra, message):
    extra = [str(tmp_path / e) if e.endswith(".json") else e for e in extra]
    with pytest.raises(SystemExit) as e:
        vp.main(["--images", str(demo_root / "images"), "--coco", str(demo_root / "annotations_train.json"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err
