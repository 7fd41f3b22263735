"""benchmarks/reproduce.py: the generated scenes, the network, and the smoke preset end to end."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_crops.boxes import BoxIndex

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def rp():
    spec = importlib.util.spec_from_file_location("reproduce", REPO / "benchmarks" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scenes_follow_the_premise(rp):
    rng = np.random.default_rng(0)
    weights = (np.arange(12) + 1.0) ** -rp.TAIL_EXPONENT
    weights /= weights.sum()
    counts = np.zeros(12)
    for _ in range(150):
        img, objects = rp.make_scene(rng, 96, weights / weights.sum())
        assert img.size == (96, 96)
        classes = [o[0] for o in objects]
        assert 3 <= len(objects) <= 6 and len(set(classes)) == len(classes)  # several objects, different classes
        for c, x0, y0, x1, y1 in objects:
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            assert 6 <= max(x1 - x0, y1 - y0) <= 0.26 * 1.25 * 96 + 1  # small objects
        counts[classes] += 1
    assert counts[0] > 5 * counts[-1] > 0  # long-tailed: class 0 in most scenes, class 11 in few
    shapes, textures = zip(*rp.CLASSES)
    assert len(set(rp.CLASSES)) == 12 and len(set(shapes)) == 6 and len(set(textures)) == 4


def test_object_pixels_differ_from_background(rp):
    """Objects are drawn where their boxes are: box interiors change when the object is pasted."""
    rng = np.random.default_rng(1)
    img, objects = rp.make_scene(rng, 96, np.full(12, 1 / 12))
    a = np.asarray(img, np.float32)
    c, x0, y0, x1, y1 = objects[-1]
    inner = a[y0:y1, x0:x1]
    assert inner.std(axis=(0, 1)).max() > 10  # textured, not flat


def test_small_resnet_keeps_resolution_in_its_stem(rp):
    net = rp.SmallResNet(num_classes=7, width=8)
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 7)
    assert net.layers[0](net.stem(x)).shape == (2, 8, 32, 32)  # no 4x downsampling at once
    assert net.layers(net.stem(x)).shape == (2, 64, 4, 4)


def test_without_boxes_keeps_images_and_labels(demo_root, rp):
    index = BoxIndex.from_coco(demo_root / "annotations_train.json")
    bare = rp.without_boxes(index)
    assert bare.num_boxes == 0 and len(bare) == len(index) and bare.classes == index.classes
    assert all(bare.image_id(i) == index.image_id(i) and bare.path(i) == index.path(i) and
               np.array_equal(bare.labels(i), index.labels(i)) for i in range(len(index)))


def test_background_has_no_scene_colour(rp):
    """The clutter is gray-level with weak chroma (a random colour field per scene was a shortcut
    for instance discrimination), while its brightness still varies between scenes."""
    rng = np.random.default_rng(2)
    backgrounds = [rp._clutter(rng, 96).astype(np.float32) for _ in range(20)]
    chroma = [np.median(b.max(2) - b.min(2)) for b in backgrounds]
    assert max(chroma) < 40
    assert np.std([b.mean() for b in backgrounds]) > 5


def test_summarize_pairs_seeds(rp):
    def run(m):
        groups = {"head": m, "medium": m, "tail": None}
        return {"linear_map": m, **{f"linear_map_{g}": v for g, v in groups.items()}, "knn_scene_map": m,
                "knn_object_map": m / 2, **{f"knn_object_map_{g}": v for g, v in groups.items()},
                "linear_object_map": m, "loss": [6.0, 5.0], "train_s": 60, "eval_s": 6}
    results = {"a_scene/0": run(0.40), "a_scene/1": run(0.44), "b_obj_orig/0": run(0.45), "b_obj_orig/1": run(0.50)}
    table = rp.summarize(results, ["a_scene", "b_obj_orig"], [0, 1])
    assert "| (a) scene crops | 21.0 +- 1.4 |" in table          # the first column: kNN object mAP
    assert "| (b) - (a) | kNN object mAP | +2.5, +3.0 | +2.8 +- 0.4 |" in table
    assert "| (b) - (a) | linear scene mAP | +5.0, +6.0 | +5.5 +- 0.7 |" in table
    assert "| - |" in table  # the tail group without an AP


@pytest.mark.slow
def test_smoke_preset_end_to_end(rp, tmp_path, one_thread, capsys):
    argv = ["--preset", "smoke", "--out", str(tmp_path), "--epochs", "1", "--threads", "1"]
    res = rp.main(argv)
    assert set(res["runs"]) == {f"{s}/{seed}" for s in rp.SETTINGS for seed in (0, 1)}
    for key, r in res["runs"].items():
        assert all(0 < r[m] <= 1 for m in ("knn_object_map", "linear_object_map", "linear_map", "knn_scene_map")), key
        assert ("loss" in r) == (not key.startswith("e_"))
    table = (tmp_path / "table.md").read_text()
    for label in rp.LABELS.values():
        assert label in table
    assert "| (b) - (a) | linear scene mAP |" in table and "| (d) - (a) | kNN object mAP |" in table
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"].keys() == res["runs"].keys()
    # a rerun with the same --out reuses the finished runs
    capsys.readouterr()
    again = rp.main(argv)
    assert again["runs"] == res["runs"] and "seed 0" not in capsys.readouterr().out.split("preset smoke")[0]


def test_preloaded_object_crops(demo_root, rp):
    index = BoxIndex.from_coco(demo_root / "annotations_train.json")
    every = rp.preload_objects(demo_root / "images", index, 24)
    assert every.images.shape == (index.num_boxes, 3, 24, 24) and every.images.dtype == torch.uint8
    labels = np.concatenate([index.box_labels(i) for i in range(len(index))])
    np.testing.assert_array_equal(every.targets.argmax(1), labels)
    some = rp.preload_objects(demo_root / "images", index, 24, limit=5)
    assert len(some) == 5 and some.targets.sum() == 5
    x, y = some[0]
    assert x.dtype == torch.float32 and x.shape == (3, 24, 24) and abs(float(x.mean())) < 3
    scenes = rp.preload_scenes(demo_root / "images", index, 40)
    assert scenes.images.shape == (len(index), 3, 40, 40)
    np.testing.assert_array_equal(scenes.targets, index.label_matrix())
