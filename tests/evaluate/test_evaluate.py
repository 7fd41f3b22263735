import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssl_crops.evaluate import (CheckpointError, FeatureCache, KNNMonitor, build_report, extract_features,
                                feature_loader, find_linear_resume, format_table, index_digest, knn_classify,
                                linear_probe, load_backbone, write_report)
from ssl_crops.metrics import mean_average_precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _multilabel_data(n, c=5, d=32, seed=0, informative=True):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if informative:
        x = y @ rng.normal(size=(c, d)).astype(np.float32) * 2 + 0.3 * x
    return x, y


def test_linear_probe_near_perfect_on_label_features():
    x, y = _multilabel_data(500)
    res = linear_probe(x[:400], y[:400], x[400:], True, lrs=(1e-2,), wds=(0.0, 1e-3), epochs=50, log=lambda *a: None)
    assert mean_average_precision(res["test_scores"], y[400:]) > 0.97
    assert len(res["sweep"]) == 2 and res["best"]["lr"] == 1e-2


def test_linear_probe_chance_on_random_features():
    x, y = _multilabel_data(1200, informative=False)
    res = linear_probe(x[:800], y[:800], x[800:], True, epochs=30, log=lambda *a: None)
    chance = y[800:].mean()
    assert abs(mean_average_precision(res["test_scores"], y[800:]) - chance) < 0.08


def test_linear_probe_single_label():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 300)
    x = np.eye(4, 16, dtype=np.float32)[labels] * 3 + rng.normal(size=(300, 16)).astype(np.float32) * 0.3
    res = linear_probe(x[:200], labels[:200], x[200:], False, lrs=(1e-2,), wds=(0.0,), epochs=30)
    assert (res["test_scores"].argmax(1) == labels[200:]).mean() > 0.95


def test_knn_classify():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8))
    lab = rng.integers(0, 3, 90)
    x = (centers[lab] + 0.05 * rng.normal(size=(90, 8))).astype(np.float32)
    x0 = x.copy()
    res = knn_classify(x[:60], lab[:60], x[60:], lab[60:], k=(5, 50), multilabel=False)
    np.testing.assert_array_equal(x, x0)  # inputs are not normalized in place
    assert res == {"knn5_top1": 1.0, "knn50_top1": pytest.approx(1.0)}
    onehot = np.eye(3, dtype=np.float32)[lab]
    res = knn_classify(x[:60], onehot[:60], x[60:], onehot[60:], k=(20,), multilabel=True)
    assert res["knn20_map"] == pytest.approx(1.0)


def _resnet18_sd():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


@pytest.mark.parametrize("fmt", ["original_moco", "main_moco", "plain"])
def test_load_backbone_formats(tmp_path, fmt):
    sd = _resnet18_sd()
    if fmt == "original_moco":
        state = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc")}
        state |= {"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.queue": torch.zeros(128, 8)}
        ckpt = {"arch": "resnet18", "epoch": 200, "state_dict": state}
    elif fmt == "main_moco":
        state = {f"encoder_q.{k}": v for k, v in sd.items()} | {f"encoder_k.{k}": v for k, v in sd.items()}
        state |= {"queue": torch.zeros(128, 8), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        ckpt = {"arch": "resnet18", "epoch": 1, "args": {"lr": 0.03}, "state_dict": state,
                "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2), None)}}
    else:
        ckpt = sd  # no arch entry: inferred from the weights
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    model = load_backbone(path)
    assert isinstance(model.fc, nn.Identity) and model.num_features == 512 and not model.training
    torch.testing.assert_close(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])


def test_load_backbone_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone(tmp_path / "nope.pth")
    sd = _resnet18_sd()
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}, "arch": "resnet18"}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth"):
        load_backbone(truncated)
    incomplete = tmp_path / "incomplete.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if "layer3.0" not in k}, "arch": "resnet18"}, incomplete)
    with pytest.raises(CheckpointError, match=r"incomplete.pth.*missing"):
        load_backbone(incomplete)
    with pytest.raises(CheckpointError, match="do not match resnet50"):
        load_backbone(good, arch="resnet50")


class _Toy(torch.utils.data.Dataset):
    """11 tiny 'images' (3 x 2 x 2); ``views`` > 0 stacks that many (scaled) copies."""

    def __init__(self, n=11, views=0):
        self.x = torch.arange(n * 12, dtype=torch.float32).view(n, 3, 2, 2)
        self.views = views

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        img = torch.stack([self.x[i] * (v + 1) for v in range(self.views)]) if self.views else self.x[i]
        return img, torch.tensor([i % 2, 1 - i % 2], dtype=torch.float32)


def _toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def test_extract_features_order_views_and_plain_loader():
    model = _toy_model()
    ref = model(_Toy().x).detach().numpy()
    f, t = extract_features(model, feature_loader(_Toy(), batch_size=4, workers=0), "cpu", progress=False)
    np.testing.assert_allclose(f, ref, rtol=1e-6)
    assert t[:, 0].tolist() == [i % 2 for i in range(11)]
    f, _ = extract_features(model, feature_loader(_Toy(views=2), batch_size=4, workers=0), "cpu", progress=False)
    assert f.shape == (11, 2, 4)
    np.testing.assert_allclose(f[:, 1], model(_Toy().x * 2).detach().numpy(), rtol=1e-5)
    loader = torch.utils.data.DataLoader(_Toy(), batch_size=4)
    f2, _ = extract_features(model, loader, "cpu", amp="bf16", channels_last=True, progress=False)
    np.testing.assert_allclose(f2, ref, rtol=0.05, atol=0.5)


def _dist_worker(rank, init_file, out):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model = _toy_model()
    f, t = extract_features(model, feature_loader(_Toy(), batch_size=2, workers=0), "cpu", progress=False)
    if rank == 0:
        np.savez(out, f=f, t=t, ref=model(_Toy().x).detach().numpy())
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_extract_features_distributed_dedupes_padding(tmp_path):
    out = tmp_path / "out.npz"
    torch.multiprocessing.spawn(_dist_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    z = np.load(out)
    assert z["f"].shape == (11, 4)  # 11 images on 2 ranks: the sampler pads one, dropped again
    np.testing.assert_allclose(z["f"], z["ref"], rtol=1e-6)
    assert z["t"][:, 0].tolist() == [i % 2 for i in range(11)]


def test_feature_cache_roundtrip(tmp_path):
    cache = FeatureCache(tmp_path)
    key = {"split": "train", "checkpoint": {"path": "x", "mtime_ns": 1}}
    assert cache.load(key) is None
    cache.save(key, np.ones((3, 2), np.float32), np.zeros((3, 5), np.float32))
    f, t = cache.load(key)
    assert f.shape == (3, 2) and t.shape == (3, 5)
    assert cache.load({**key, "checkpoint": {"path": "x", "mtime_ns": 2}}) is None
    cache.path(key).write_bytes(b"garbage")
    assert cache.load(key) is None


def test_index_digest_covers_labels_and_classes():
    from ssl_crops.boxes import BoxIndex
    a = BoxIndex.from_openimages({"img0": ["cat"], "img1": ["dog"]})
    b = BoxIndex.from_openimages({"img0": ["dog"], "img1": ["cat"]})
    c = BoxIndex.from_openimages({"img0": ["cat"], "img1": ["dog"]}, classes=["cat", "dog", "eel"])
    da, db, dc = index_digest(a), index_digest(b), index_digest(c)
    assert da["images"] == db["images"] == dc["images"]
    assert len({da["labels"], db["labels"], dc["labels"]}) == 3
    assert index_digest(BoxIndex.from_openimages({"img0": ["cat"], "img1": ["dog"]})) == da


def test_find_linear_resume(tmp_path):
    assert find_linear_resume("auto", tmp_path) is None
    state = {"epoch": 3, "fc": {"weight": torch.ones(2, 4)}, "optimizer": {}}
    torch.save(state, tmp_path / "linear_last.pth")
    assert find_linear_resume("auto", tmp_path)["epoch"] == 3
    assert find_linear_resume(str(tmp_path / "linear_last.pth"), tmp_path / "elsewhere")["epoch"] == 3
    data = (tmp_path / "linear_last.pth").read_bytes()
    (tmp_path / "linear_last.pth").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping unreadable .*linear_last.pth"):
        assert find_linear_resume("auto", tmp_path) is None
    with pytest.raises(CheckpointError, match="linear_last.pth"):
        find_linear_resume(str(tmp_path / "linear_last.pth"), tmp_path)


def test_report_groups_and_files(tmp_path):
    rng = np.random.default_rng(0)
    targets = (rng.random((50, 3)) < 0.4).astype(np.float32)
    targets[:, 2] = 0
    scores = targets + rng.normal(size=targets.shape) * 0.1
    rep = build_report(scores, targets, np.array([150, 50, 5]), ["a", "b", "c"], True, head_min=100, tail_max=20)
    assert rep["map"] == pytest.approx(1.0) and rep["classes_skipped"] == ["c"]
    assert rep["groups"]["head"]["map"] == pytest.approx(1.0) and rep["groups"]["tail"]["map"] is None
    files = write_report(rep, tmp_path)
    assert set(files.values()) == {tmp_path / "report.json", tmp_path / "per_class_ap.csv"}
    assert (tmp_path / "per_class_ap.csv").read_text().splitlines()[0] == \
        "class_index,class,train_images,test_positives,group,tertile,ap"
    assert "tail (<20)" in format_table(rep)


def _demo_monitor(demo_root, image_size=64):
    from ssl_crops.boxes import BoxIndex
    from ssl_crops.data import load_index
    train = load_index(demo_root / "images")
    test = BoxIndex.from_openimages(demo_root / "images_test.npy", classes=train.classes)
    return KNNMonitor(demo_root / "images", train, test, image_size=image_size, batch_size=8, workers=0, k=(5, 20))


def _demo_encoder():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18()


def test_knn_monitor_on_demo(demo_root):
    enc = _demo_encoder()
    mlp = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 16))
    enc.fc = mlp
    res = _demo_monitor(demo_root)(enc.train())
    assert set(res) == {"knn5_map", "knn20_map"} and all(0 < v <= 1 for v in res.values())
    assert enc.fc is mlp and enc.training


def _knn_worker(rank, init_file, demo_root, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    enc, seen = _demo_encoder(), []
    enc.register_forward_hook(lambda m, x, y: seen.append(len(y)))
    res = _demo_monitor(Path(demo_root), image_size=32)(enc)
    Path(f"{out}.{rank}").write_text(json.dumps({"res": res, "images": sum(seen)}))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_knn_monitor_distributed_matches_single_process(demo_root, tmp_path):
    """Every rank extracts its shard; rank 0 gets the single-process metrics, rank 1 ``{}``."""
    out = tmp_path / "res"
    torch.multiprocessing.spawn(_knn_worker, args=(str(tmp_path / "init"), str(demo_root), str(out)), nprocs=2)
    single = _demo_monitor(demo_root, image_size=32)(_demo_encoder())
    r0, r1 = (json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1))
    assert r0["images"] == r1["images"] == (24 + 8) // 2  # each rank ran half of train and test
    assert r0["res"].keys() == single.keys() and r1["res"] == {}
    assert all(r0["res"][k] == pytest.approx(v, abs=1e-6) for k, v in single.items())
