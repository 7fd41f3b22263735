import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_crops.evaluate import main

ROOT = Path(__file__).resolve().parents[1]
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


def test_image_size_defaults_to_the_pretraining_size(demo_root, moco_checkpoint, tmp_path):
    ckpt = torch.load(moco_checkpoint, weights_only=True)
    ckpt["args"] = {"image_size": 40}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    fast = [a for i, a in enumerate(FAST) if "--image-size" not in FAST[max(i - 1, 0):i + 1]]
    rep = main([str(demo_root / "images"), "--pretrained", str(tmp_path / "ckpt.pth"), *fast, "--no-cache",
                "--out-dir", str(tmp_path / "out")])
    assert rep["image_size"] == 40
    rep = main([str(demo_root / "images"), *fast, "--no-cache", "--out-dir", str(tmp_path / "rand")])
    assert rep["image_size"] == 224
