"""Weighted kNN (ssl_crops/evaluate/knn.py)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ssl_crops.evaluate import KNNMonitor
from ssl_crops.evaluate.knn import knn_classify, knn_scores

pytestmark = pytest.mark.usefixtures("one_thread")

def _clusters(n, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 3, n)
    return (rng.normal(size=(3, 8))[lab] + 0.05 * rng.normal(size=(n, 8))).astype(np.float32), lab


def test_k_larger_than_the_train_set_is_capped_by_name_with_a_warning():
    x, lab = _clusters(40)
    with pytest.warns(UserWarning, match="k=200 exceeds the 30 training samples; reporting k=30"):
        res = knn_classify(x[:30], lab[:30], x[30:], lab[30:], k=(5, 200), multilabel=False)
    assert set(res) == {"knn5_top1", "knn30_top1"}  # not reported as knn200
    with pytest.warns(UserWarning):
        scores = knn_scores(x[:30], np.eye(3)[lab[:30]], x[30:], k=(100, 200))
    assert list(scores) == [30]  # both capped to the same k: one result


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
    assert set(res) == {"knn5_map_pct", "knn20_map_pct"} and all(0 < v <= 100 for v in res.values())  # percent
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


def test_knn_monitor_leaves_unreadable_images_out(bad_images, monkeypatch):
    """main_moco.py --bad-image skip --knn-every N: the monitor leaves unreadable images out
    instead of stopping the run; on_corrupt="raise" (--bad-image error) names the file."""
    from ssl_crops.boxes import BoxIndex
    from ssl_crops.data import CorruptImageError
    from ssl_crops.evaluate import knn

    index = BoxIndex.from_coco(bad_images.coco)
    sizes = []
    monkeypatch.setattr(knn, "knn_classify", lambda *a, **k: sizes.append((len(a[0]), len(a[2]))) or knn_classify(*a, **k))
    monitor = KNNMonitor(bad_images.images, index, index, image_size=32, batch_size=8, workers=0, k=(5,),
                         on_corrupt="skip")
    with pytest.warns(UserWarning, match=r"kNN monitor: 4 of 44 training images unreadable or missing in .*, left "
                                         r"out: .*(empty|missing|truncated|huge)\.jpg") as caught:
        res = monitor(_demo_encoder())
    assert sizes == [(40, 40)] and 0 <= res["knn5_map_pct"] <= 100  # 44 images, 4 unreadable
    assert any("4 of 44 test images" in str(w.message) for w in caught)
    with pytest.raises(CorruptImageError, match="missing.jpg|truncated.jpg|empty.jpg|huge.jpg"):
        KNNMonitor(bad_images.images, index, index, image_size=32, batch_size=8, workers=0, k=(5,))(_demo_encoder())


def test_knn_monitor_without_a_readable_test_image_gives_nan(bad_images):
    """Nothing to score: NaN (the run warns and logs null), not a crash nor a silent number."""
    from ssl_crops.boxes import BoxIndex

    index = BoxIndex.from_coco(bad_images.coco)
    bad = index.subset([i for i in range(len(index)) if index.path(i) in ("missing.jpg", "empty.jpg")])
    monitor = KNNMonitor(bad_images.images, index, bad, image_size=32, batch_size=8, workers=0, k=(5,),
                         on_corrupt="skip")
    with pytest.warns(UserWarning, match="2 of 2 test images unreadable or missing"):
        res = monitor(_demo_encoder())
    assert list(res) == ["knn5_map_pct"] and res["knn5_map_pct"] != res["knn5_map_pct"]


def _sharded_worker(rank, init_file, out):
    from ssl_crops.evaluate.knn import sharded_neighbours
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    x, lab = _clusters(50, seed=1)
    rows = np.arange(7) if rank == 0 else np.arange(7, 40)  # uneven shards, one smaller than k
    found = sharded_neighbours(x[rows], rows, x[40:], 20, chunk=4)  # 10 test rows: 3 chunks
    if rank == 0:
        res = knn_classify(None, np.eye(3)[lab[:40]], None, np.eye(3)[lab[40:]], k=(5, 20), neighbours=found)
        np.savez(out, sims=found[0], rows=found[1], **{k: np.float64(v) for k, v in res.items()})
    else:
        assert found is None
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sharded_neighbours_on_two_ranks_equal_one_process(tmp_path):
    """Two gloo ranks holding 7 and 33 training rows: rank 0's merged top-k lists and kNN
    scores equal the one-process search over all 40."""
    from ssl_crops.evaluate.knn import nearest
    out = tmp_path / "found.npz"
    torch.multiprocessing.spawn(_sharded_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    x, lab = _clusters(50, seed=1)
    sims, rows = nearest(x[:40], x[40:], 20)
    got = np.load(out)
    np.testing.assert_allclose(got["sims"], sims, atol=1e-6)
    np.testing.assert_array_equal(got["rows"], rows)
    single = knn_classify(x[:40], np.eye(3)[lab[:40]], x[40:], np.eye(3)[lab[40:]], k=(5, 20))
    assert {k: float(got[k]) for k in single} == pytest.approx(single, abs=1e-6)
