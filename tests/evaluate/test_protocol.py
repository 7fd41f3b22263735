import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_crops.evaluate import main

ROOT = Path(__file__).resolve().parents[2]
FAST = ["-a", "resnet18", "--image-size", "64", "-j", "0", "-b", "16", "--no-progress", "--train-crops", "0",
        "--probe-epochs", "20", "--lrs", "1e-2", "--wds", "0", "1e-2"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def moco_checkpoint(tmp_path_factory):
    """An original-MoCo-style checkpoint: ``module.encoder_q.*`` keys, MLP head, queue."""
    import torchvision
    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    state = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    state |= {"module.encoder_q.fc.0.weight": torch.randn(512, 512),
              "module.encoder_q.fc.2.weight": torch.randn(128, 512),
              "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint_0199.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {}}, path)
    return path


def test_cached_end_to_end_prints_table_and_hits_cache(demo_root, moco_checkpoint, tmp_path, capsys, monkeypatch):
    args = [str(demo_root / "images"), "--pretrained", str(moco_checkpoint), *FAST,
            "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "out"), "--knn"]
    monkeypatch.setattr(sys, "argv", ["linear_eval.py", *args])
    runpy.run_path(str(ROOT / "linear_eval.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "train: extracted 24 images x 1 views, 512-d" in out and "test: extracted 8 images x 1 views" in out
    for row in ("subset", "all", "head (>100 train imgs)", "medium (20-100)", "tail (<20)", "knn20_map"):
        assert row in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["task"] == "multilabel" and report["num_classes"] == 8 and 0 < report["map"] <= 1
    assert report["checkpoint"]["path"] == str(moco_checkpoint.resolve()) and len(report["sweep"]) == 2
    csv_rows = (tmp_path / "out" / "per_class_ap.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 8
    again = main(args)
    out = capsys.readouterr().out
    assert "train: cached features" in out and "test: cached features" in out and "extracted" not in out
    assert again["map"] == pytest.approx(report["map"])
    from ssl_crops.boxes import load_npy_dict
    labels = load_npy_dict(demo_root / "images_selected_new.npy")
    shifted = dict(zip(labels, [*labels.values()][1:] + [[*labels.values()][0]]))  # same images and classes
    np.save(tmp_path / "shifted.npy", np.array(shifted, dtype=object), allow_pickle=True)
    main(args + ["--labels", str(tmp_path / "shifted.npy"),
                 "--boxes", str(demo_root / "images_selected_with_all_features.npy")])
    out = capsys.readouterr().out  # other train labels: the cached train targets are stale
    assert "train: extracted 24 images" in out and "test: cached features" in out


def test_train_crops_and_moco_protocol(demo_root, tmp_path, capsys):
    cached = [str(demo_root / "images"), *FAST, "--cache-dir", str(tmp_path / "cache"),
              "--out-dir", str(tmp_path / "c")]
    rep = main(cached + ["--train-crops", "2"])
    assert "train+train-crops: extracted 24 images x 3 views" in capsys.readouterr().out and 0 < rep["map"] <= 1
    main(cached)  # center-crop train features come from the cache of the run with crops
    assert "train: cached features" in capsys.readouterr().out
    rep = main([str(demo_root / "images"), *FAST, "--protocol", "moco", "--epochs", "2", "--schedule", "1",
                "--out-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert "epoch 1/2 lr 30 " in out and "epoch 2/2 lr 3 " in out and "subset" in out
    assert rep["protocol"] == "moco" and 0 < rep["map"] <= 1
    assert (tmp_path / "m" / "linear_last.pth").is_file()
    main([str(demo_root / "images"), *FAST, "--protocol", "moco", "--epochs", "2", "--resume", "auto",
          "--out-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert "resumed the linear head at epoch 2" in out and "epoch 1/2" not in out


def test_class_folders_single_label(tmp_path, capsys):
    from PIL import Image
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
    for split, n in (("train", 8), ("val", 4)):
        for name, col in colours.items():
            (tmp_path / "data" / split / name).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(col) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / "data" / split / name / f"{i}.png")
    rep = main([str(tmp_path / "data"), *FAST, "--no-cache", "--out-dir", str(tmp_path / "out")])
    assert rep["task"] == "singlelabel" and rep["num_test"] == 12 and rep["top1"] > 0.9
    assert "top1" in capsys.readouterr().out


def test_missing_checkpoint_is_a_clear_error(demo_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        main([str(demo_root / "images"), "--pretrained", str(tmp_path / "missing.pth"), *FAST, "--no-cache"])


def test_image_size_defaults_to_the_pretraining_size(demo_root, moco_checkpoint, tmp_path, capsys):
    ckpt = torch.load(moco_checkpoint, weights_only=True)
    ckpt["args"] = {"image_size": 40}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    fast = [a for i, a in enumerate(FAST) if "--image-size" not in FAST[max(i - 1, 0):i + 1]]
    rep = main([str(demo_root / "images"), "--pretrained", str(tmp_path / "ckpt.pth"), *fast, "--no-cache",
                "--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rep["image_size"] == 40 and "image size 40 px (the checkpoint's pretraining --image-size)" in out
    assert out.count("40 px (the checkpoint's pretraining --image-size)") == 1  # once, not again in the table
    written = json.loads((tmp_path / "out" / "report.json").read_text())
    assert written["image_size"] == 40 and written["image_size_source"] == rep["image_size_source"]
    rep = main([str(demo_root / "images"), "--pretrained", str(tmp_path / "ckpt.pth"), *fast, "--image-size", "48",
                "--no-cache", "--out-dir", str(tmp_path / "out48")])
    assert rep["image_size"] == 48 and "image size 48 px (--image-size; pretrained at 40)" in capsys.readouterr().out
    # a plain state dict (an exported backbone) records no size: today's default, said so
    torch.save({k.removeprefix("module.encoder_q."): v for k, v in ckpt["state_dict"].items()
                if k.startswith("module.encoder_q.") and ".fc." not in k}, tmp_path / "backbone.pth")
    rep = main([str(demo_root / "images"), "--pretrained", str(tmp_path / "backbone.pth"), *fast, "--no-cache",
                "--out-dir", str(tmp_path / "plain")])
    assert rep["image_size"] == 224
    assert "image size 224 px (default; the checkpoint does not record its pretraining size" in capsys.readouterr().out
    rep = main([str(demo_root / "images"), *fast, "--no-cache", "--out-dir", str(tmp_path / "rand")])
    assert rep["image_size"] == 224 and "image size 224 px (default)" in capsys.readouterr().out


def test_progress_bars_only_on_a_terminal(demo_root, tmp_path, capsys, monkeypatch):
    args = [str(demo_root / "images"), *[a for a in FAST if a != "--no-progress"], "--no-cache",
            "--out-dir", str(tmp_path / "out")]
    main(args)
    assert "\r" not in capsys.readouterr().err  # a piped log: no bar redraws
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    main(args)
    assert "\r" in capsys.readouterr().err


def _colour_folders(root, splits):
    """Class-folder images: ``splits`` maps split -> {class: count}."""
    from PIL import Image
    rng = np.random.default_rng(0)
    colours = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "grey": (128, 128, 128)}
    for split, classes in splits.items():
        for name, n in classes.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                arr = np.clip(np.array(colours[name]) + rng.normal(0, 20, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / name / f"{i}.png")
    return root


def test_val_classes_missing_from_train_are_named_and_left_out(tmp_path, capsys):
    data = _colour_folders(tmp_path / "data", {"train": {"red": 8, "green": 8, "blue": 8},
                                               "val": {"red": 4, "green": 4, "blue": 4, "grey": 3}})
    rep = main([str(data), *FAST, "--no-cache", "--out-dir", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert rep["num_test"] == 12 and rep["test_images_left_out"] == 3  # not scored as class 0
    assert rep["test_unseen_classes"] == {"grey": 3} and rep["num_classes"] == 3
    assert "1 test classes have no training image and are not scored: grey (3 images)" in out
    assert json.loads((tmp_path / "out" / "report.json").read_text())["test_images_left_out"] == 3


def test_coco_json_input_from_the_command_line(demo_root, tmp_path, capsys, monkeypatch):
    args = [str(demo_root / "images"), "--coco", str(demo_root / "annotations_train.json"),
            "--test-coco", str(demo_root / "annotations_test.json"), *FAST, "--no-cache",
            "--out-dir", str(tmp_path / "coco")]
    monkeypatch.setattr(sys, "argv", ["linear_eval.py", *args])
    runpy.run_path(str(ROOT / "linear_eval.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "all (whole test set)" in out and "batch-mean mAP (comparable with the paper only)" in out
    rep = json.loads((tmp_path / "coco" / "report.json").read_text())
    assert rep["num_test"] == 8 and rep["num_train"] == 24 and rep["task"] == "multilabel"
    assert 0 < rep["map"] <= 1 and 0 < rep["map_batch_mean"] <= 1 and not rep["federated"]
    # the same split through saved indices, and through the original dicts: the same labels, the same mAP
    from ssl_crops.boxes import BoxIndex
    BoxIndex.from_coco(demo_root / "annotations_train.json").save(tmp_path / "train.npz")
    BoxIndex.from_coco(demo_root / "annotations_test.json").save(tmp_path / "test.npz")
    by_index = main([str(demo_root / "images"), "--index", str(tmp_path / "train.npz"), "--test-index",
                     str(tmp_path / "test.npz"), *FAST, "--no-cache", "--out-dir", str(tmp_path / "idx")])
    by_dicts = main([str(demo_root / "images"), *FAST, "--no-cache", "--out-dir", str(tmp_path / "dicts")])
    assert by_index["map"] == pytest.approx(rep["map"]) == pytest.approx(by_dicts["map"])


def test_lvis_test_json_is_scored_federated(demo_root, tmp_path):
    coco = json.loads((demo_root / "annotations_test.json").read_text())
    for im in coco["images"]:  # LVIS layout: coco_url; every class verified absent except the first
        im["coco_url"] = f"http://images.cocodataset.org/images/{im.pop('file_name')}"
        present = {a["category_id"] for a in coco["annotations"] if a["image_id"] == im["id"]}
        im["neg_category_ids"] = [c["id"] for c in coco["categories"][1:] if c["id"] not in present]
        im["not_exhaustive_category_ids"] = []
    (tmp_path / "lvis.json").write_text(json.dumps(coco))
    common = [str(demo_root / "images"), "--coco", str(demo_root / "annotations_train.json"), *FAST, "--no-cache"]
    rep = main(common + ["--test-coco", str(tmp_path / "lvis.json"), "--test-images", str(demo_root),
                         "--out-dir", str(tmp_path / "lvis")])
    plain = main(common + ["--test-coco", str(demo_root / "annotations_test.json"), "--out-dir", str(tmp_path / "p")])
    assert rep["federated"] and rep["num_test"] == 8
    first = [r for r in rep["per_class"] if r["class_index"] == 0][0]
    first_plain = [r for r in plain["per_class"] if r["class_index"] == 0][0]
    # the first class has no verified negatives: only its positives are ranked, so its AP is 1
    assert first["ap"] in (None, 1.0) and (first_plain["ap"] is None or first_plain["ap"] <= 1.0)
    others = [(r["ap"], q["ap"]) for r, q in zip(rep["per_class"][1:], plain["per_class"][1:]) if r["ap"] is not None]
    assert others and all(a == pytest.approx(b) for a, b in others)  # exhaustive negatives: plain AP


@pytest.mark.parametrize("flag, content, message", [
    ("--test-labels", "{}", "a JSON file given to --test-labels"),
    ("--test-coco", "{not json", "not a COCO detection json"),
    ("--test-labels", "garbage", "not a readable annotation file"),
])
def test_bad_annotation_files_end_in_one_line(demo_root, tmp_path, monkeypatch, capsys, flag, content, message):
    bad = tmp_path / ("bad.json" if "json" in message or "JSON" in message else "bad.npy")
    bad.write_text(content)
    monkeypatch.setattr(sys, "argv", ["linear_eval.py", str(demo_root / "images"), flag, str(bad), *FAST,
                                      "--no-cache", "--out-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "linear_eval.py"), run_name="__main__")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("linear_eval.py: error: ") and message in err
    assert str(bad) in err and err.count("\n") == 1


def test_moco_protocol_reports_the_original_best_epoch_figure(demo_root, tmp_path, capsys):
    rep = main([str(demo_root / "images"), *FAST, "--protocol", "moco", "--epochs", "3", "--schedule", "2",
                "--paper-batch-size", "4", "--out-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert [h["epoch"] for h in rep["history"]] == [1, 2, 3]
    best = max(rep["history"], key=lambda h: h["test_batch_mean"])
    assert rep["best_epoch"]["epoch"] == best["epoch"] and rep["best_epoch"]["value"] == best["test_batch_mean"]
    assert "best epoch on test, batch-mean (original protocol; comparable with the paper only)" in out
    assert rep["history"][-1]["test_batch_mean"] == pytest.approx(rep["map_batch_mean"])  # the same final head
    assert "test batch-mean mAP" in out and "epoch 3/3" in out


def _two_class_coco(bad_images, path):
    coco = json.loads(bad_images.coco.read_text())
    coco["categories"].append({"id": 2, "name": "other"})
    for a in coco["annotations"][::2]:
        a["category_id"] = 2
    path.write_text(json.dumps(coco))
    return path


def test_unreadable_images_are_left_out_and_named(bad_images, tmp_path, capsys):
    """--bad-image skip (the default, as in pretraining): unreadable train and test images are left
    out, named once in one line each and in report.json; both protocols."""
    coco = _two_class_coco(bad_images, tmp_path / "coco.json")
    common = [str(bad_images.images), "--coco", str(coco), "--test-coco", str(coco), *FAST, "--no-cache", "-j", "2"]
    rep = main(common + ["--out-dir", str(tmp_path / "c")])
    out = capsys.readouterr().out
    assert rep["num_test"] == 40 and rep["num_train"] == 40
    assert sorted(rep["train_unreadable_images"]) == sorted(bad_images.unreadable) == sorted(rep["test_unreadable_images"])
    assert out.count("warning: 4 unreadable train images left out (--bad-image skip): ") == 1
    assert out.count("4 unreadable test images left out") == 1  # once: as it was found, not again in the table
    assert "truncated.jpg: cannot decode image" in out
    rep = main(common + ["--protocol", "moco", "--epochs", "1", "--out-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rep["num_test"] == 40 and "(4 unreadable train images left out)" in out


def test_bad_image_error_is_one_line_naming_the_file(bad_images, tmp_path, monkeypatch, capsys):
    """--bad-image error: the first unreadable image ends the run in one line, not inside the
    traceback of a DataLoader worker."""
    coco = _two_class_coco(bad_images, tmp_path / "coco.json")
    monkeypatch.setattr(sys, "argv", ["linear_eval.py", str(bad_images.images), "--coco", str(coco), "--test-coco",
                                      str(coco), *FAST, "--no-cache", "-j", "2", "--bad-image", "error",
                                      "--out-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(ROOT / "linear_eval.py"), run_name="__main__")
    err = capsys.readouterr().err
    msg = err.strip().splitlines()[-1]
    assert e.value.code == 2 and "Traceback" not in err
    assert msg.startswith("linear_eval.py: error: ") and "DataLoader" not in msg
    assert any(f"{bad_images.images / name}: " in msg for name in bad_images.unreadable)


def test_a_saved_linear_head_follows_the_class_order():
    """Heads saved before COCO classes were numbered by category id have rows in sorted-name order:
    resuming puts them (and their momentum) in today's order instead of mixing classes up."""
    from ssl_crops.evaluate.protocol import _head_in_class_order

    weight = torch.arange(6.0).view(3, 2)  # rows of "apple", "bicycle", "person" (sorted names)
    state = {"fc": {"weight": weight.clone(), "bias": torch.arange(3.0)},
             "optimizer": {"state": {0: {"momentum_buffer": weight.clone()}, 1: {"momentum_buffer": torch.arange(3.0)}}}}
    _head_in_class_order(state, ["person", "bicycle", "apple"])  # category-id order
    assert state["fc"]["weight"][:, 0].tolist() == [4.0, 2.0, 0.0] and state["fc"]["bias"].tolist() == [2.0, 1.0, 0.0]
    assert state["optimizer"]["state"][1]["momentum_buffer"].tolist() == [2.0, 1.0, 0.0]
    _head_in_class_order(state, ["apple", "person", "bicycle"])  # saved with its classes from now on
    assert state["fc"]["bias"].tolist() == [0.0, 2.0, 1.0]
    with pytest.raises(ValueError, match="other classes"):
        _head_in_class_order(state, ["apple", "person", "car"])
