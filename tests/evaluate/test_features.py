"""Feature extraction and cache (ssl_crops/evaluate/features.py)."""
import numpy as np
import pytest
import torch
from torch import nn

from ssl_crops.evaluate import FeatureCache, extract_features, feature_loader, index_digest

pytestmark = pytest.mark.usefixtures("one_thread")


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
