import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from ssl_crops.transforms import (IMAGENET_MEAN, IMAGENET_STD, AugmentSpec, BatchAugment, MoCoAugment,
                                  MoCoV1Augment, MoCoV2Augment)
from ssl_crops.transforms.augment import _JITTER_U8, _hue_f, _jitter_f, moco_augment

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _scene(seed=0, size=48):
    """A colourful image with edges and smooth gradients (blur, flip and hue all show)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = np.stack([200 * x + 30, 160 * y + 40, 120 * (1 - x) * y + 60], -1)
    for _ in range(6):
        x0, y0 = rng.integers(0, size - 12, 2)
        img[y0:y0 + 10, x0:x0 + 8] = rng.integers(0, 256, 3)
    img[:, : size // 6] = (250, 20, 20)  # an asymmetric red band: flips show in the left/right balance
    return np.clip(img, 0, 255).astype(np.uint8)


def _stats(view: torch.Tensor) -> np.ndarray:
    """Summary statistics of a normalized view: channel means, contrast, saturation, sharpness,
    left/right balance of red, grayness."""
    x = (view * STD + MEAN).clamp(0, 1)
    sat = (x.amax(0) - x.amin(0)).mean()
    sharp = (x[:, :, 1:] - x[:, :, :-1]).abs().mean()
    w = x.shape[-1]
    lr = x[0, :, : w // 2].mean() - x[0, :, w // 2:].mean()
    return np.array([*x.mean((1, 2)).tolist(), float(x.std()), float(sat), float(sharp), float(lr), float(sat < 0.01)])


STAT_NAMES = ["mean R", "mean G", "mean B", "contrast", "saturation", "sharpness", "left-right", "gray"]


def wasserstein_distance(u: np.ndarray, v: np.ndarray) -> float:
    """Wasserstein-1 distance of two 1-D samples: the area between their empirical CDFs."""
    u, v = np.sort(u), np.sort(v)
    points = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, points[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, points[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Wasserstein-1 distance of each statistic, in units of the reference's (``b``) spread."""
    return np.array([wasserstein_distance(a[:, j], b[:, j]) / (b[:, j].std() + 1e-3) for j in range(a.shape[1])])


def _assert_same_distributions(a: np.ndarray, b: np.ndarray, tol=0.15):
    """Equal within sampling noise: two seeds of the same pipeline (n=1000) are about 0.05-0.1 apart."""
    d = _distances(a, b)
    bad = {name: round(float(v), 3) for name, v in zip(STAT_NAMES, d) if v > tol}
    assert not bad, f"distributions differ (W1 / std): {bad}"


N = 1000  # draws per distribution


def _draw(aug, img, n, seed):
    torch.manual_seed(seed)
    return np.stack([_stats(aug(img)) for _ in range(n)])


@pytest.mark.parametrize("aug_plus", [True, False])
def test_fast_augmentation_matches_torchvision_statistics(aug_plus, one_thread):
    img = Image.fromarray(_scene())
    ref = _draw(MoCoV2Augment() if aug_plus else MoCoV1Augment(), img, N, 0)
    _assert_same_distributions(_draw(MoCoAugment(aug_plus), img, N, 1), ref)
    # the check has power: dropping the flip or the blur is seen
    no_flip = _draw(MoCoAugment(aug_plus, spec=AugmentSpec(flip_p=0.0) if aug_plus else None), img, N, 1)
    if aug_plus:
        assert _distances(no_flip, ref)[STAT_NAMES.index("left-right")] > 0.5
        no_blur = _draw(MoCoAugment(spec=AugmentSpec(blur_p=0.0)), img, N, 1)
        assert _distances(no_blur, ref)[STAT_NAMES.index("sharpness")] > 0.15


def test_uint8_jitter_kernels_match_torchvision_pil_kernels():
    img = _scene(3)
    pil = Image.fromarray(img)
    refs = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    for op, (kernel, ref) in enumerate(zip(_JITTER_U8, refs)):
        for f in ((0.6, 1.0, 1.37) if op < 3 else (-0.1, 0.02, 0.09)):
            ours = kernel(img, f).astype(int)
            theirs = np.asarray(ref(pil, f)).astype(int)
            diff = np.abs(ours - theirs)
            if op < 3:
                assert diff.max() <= 1, (op, f)
            else:  # OpenCV and PIL round the 8-bit HSV round trip differently: a few levels here and there
                assert diff.max() <= 10 and diff.mean() < 1.0, (op, f, diff.max(), diff.mean())


def test_float_jitter_kernels_match_torchvision_tensor_kernels():
    x = torch.from_numpy(_scene(4)).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(3, 1, 1, 1)
    refs = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)
    factors = ((0.6, 1.0, 1.4), (0.6, 1.0, 1.4), (0.6, 1.0, 1.4), (-0.4, 0.0, 0.1))
    for op, (ref, fs) in enumerate(zip(refs, factors)):
        out = _jitter_f(op, x.clone(), torch.tensor(fs))
        for i, f in enumerate(fs):
            torch.testing.assert_close(out[i], ref(x[i], f), atol=1e-4, rtol=0)
    gray = x.clone()
    gray[:] = x[:, :1]
    torch.testing.assert_close(_hue_f(gray, torch.tensor([0.3, -0.2, 0.1])), gray, atol=1e-6, rtol=0)


def test_spec_draws_torchvision_ranges():
    p = AugmentSpec().sample(20000, torch.Generator().manual_seed(0))
    f = p["factors"].numpy()
    assert f[:, :3].min() >= 0.6 and f[:, :3].max() <= 1.4 and np.abs(f[:, 3]).max() <= 0.1
    assert abs(f[:, 0].mean() - 1.0) < 0.01 and abs(f[:, 3].mean()) < 0.003
    for key, prob in (("jitter", 0.8), ("gray", 0.2), ("blur", 0.5), ("flip", 0.5)):
        assert abs(p[key].float().mean().item() - prob) < 0.015, key
    s = p["sigma"].numpy()
    assert s.min() >= 0.1 and s.max() <= 2.0 and abs(s.mean() - 1.05) < 0.02
    orders = {tuple(o) for o in p["order"].tolist()}
    assert len(orders) == 24  # every order of ColorJitter's four operations
    assert (p["order"][:, 0] == 3).float().mean().item() == pytest.approx(0.25, abs=0.015)
    v1 = AugmentSpec.moco(False).sample(1000)
    assert v1["jitter"].all() and not v1["blur"].any() and v1["factors"][:, 3].abs().max() > 0.3


def test_fast_augmentation_inputs_outputs_and_seeding():
    img = _scene(5)
    aug = moco_augment(True)
    torch.manual_seed(3)
    a = aug(Image.fromarray(img))
    torch.manual_seed(3)
    b = aug(torch.from_numpy(img).permute(2, 0, 1))
    torch.manual_seed(3)
    c = aug(img)
    assert a.shape == (3, 48, 48) and a.dtype == torch.float32
    assert torch.equal(a, b) and torch.equal(a, c)
    torch.manual_seed(3)
    d = aug(torch.from_numpy(img).permute(2, 0, 1).float() / 255)  # float image tensors in [0, 1]
    assert torch.equal(a, d)
    gray = torch.from_numpy(img[..., 0]).unsqueeze(0)
    torch.manual_seed(4)
    e = aug(gray)
    torch.manual_seed(4)
    assert torch.equal(e, aug(Image.fromarray(img[..., 0])))  # one channel, as PIL "L"
    with pytest.raises(TypeError, match="shape"):
        aug(torch.zeros(2, 3, 8, 8))


def test_batch_augmentation_matches_the_cpu_augmentation_distributions(one_thread):
    img = _scene(6)
    torch.manual_seed(0)
    batch = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).repeat(N, 1, 1, 1)
    out = BatchAugment()(batch)
    assert out.shape == (N, 3, 48, 48) and out.dtype == torch.float32
    ours = np.stack([_stats(v) for v in out])
    _assert_same_distributions(ours, _draw(MoCoAugment(), img, N, 1))
    _assert_same_distributions(ours, _draw(MoCoV2Augment(), Image.fromarray(img), N, 2))
    out_v1 = np.stack([_stats(v) for v in BatchAugment(aug_plus=False)(batch)])
    _assert_same_distributions(out_v1, _draw(MoCoAugment(False), img, N, 3))


def test_batch_augmentation_parameters_are_per_sample_and_seeded():
    batch = torch.from_numpy(_scene(7)).permute(2, 0, 1).unsqueeze(0).repeat(16, 1, 1, 1)
    aug = BatchAugment()
    a = aug(batch, generator=torch.Generator().manual_seed(1))
    b = aug(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert len({tuple(v.flatten()[:200].tolist()) for v in a}) == 16  # every sample differs
    torch.manual_seed(5)
    c = aug(batch)
    torch.manual_seed(5)
    assert torch.equal(c, aug(batch))
    # nothing drawn: the identity up to normalization
    plain = BatchAugment(spec=AugmentSpec(jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0))(batch)
    torch.testing.assert_close(plain, (batch.float() / 255 - MEAN) / STD)
    with pytest.raises(ValueError, match="uint8"):
        aug(batch.float())


def test_batch_blur_matches_a_gaussian_blur_per_sample():
    x = torch.from_numpy(_scene(8)).permute(2, 0, 1).float().div(255).unsqueeze(0).repeat(2, 1, 1, 1)
    aug = BatchAugment()
    out = aug._blur(x.clone(), torch.tensor([0.5, 1.7], dtype=torch.float64))
    for i, s in enumerate((0.5, 1.7)):
        ref = F.gaussian_blur(x[i], [13, 13], [s, s])
        torch.testing.assert_close(out[i], ref, atol=2e-3, rtol=0)


@pytest.mark.parametrize("side", [1, 2, 6])
def test_reference_blur_handles_views_smaller_than_its_kernel(side):
    from ssl_crops.transforms.augment import GaussianBlur
    x = torch.rand(3, side, side + 1)
    blur = GaussianBlur((2.0, 2.0))  # kernel 13 px: wider than the view
    out = blur(x)
    assert out.shape == x.shape and torch.isfinite(out).all()
    if side > 1:
        assert not torch.equal(out, x)  # it still blurs


def test_solarize_matches_pil_on_both_paths_and_dino_specs():
    img = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    off = dict(jitter=False, gray=False, blur=False, flip=False, order=[0, 1, 2, 3], factors=[1] * 4, sigma=1.0)
    out = MoCoAugment().augment_uint8(img, {**off, "solarize": True})
    assert np.array_equal(out, np.array(F.solarize(Image.fromarray(img), 128)))
    assert np.array_equal(MoCoAugment().augment_uint8(img, {**off, "solarize": False}), img)
    spec = AugmentSpec(jitter_p=0, grayscale_p=0, blur_p=0, flip_p=0, solarize_p=1.0)
    batch = BatchAugment(spec=spec, mean=(0, 0, 0), std=(1, 1, 1))(torch.from_numpy(img).permute(2, 0, 1)[None])
    assert torch.allclose(batch[0] * 255, torch.from_numpy(out).permute(2, 0, 1).float(), atol=1e-3)
    g1, g2, loc = (AugmentSpec.dino(v) for v in range(3))
    assert (g1.blur_p, g1.solarize_p, g2.blur_p, g2.solarize_p, loc.blur_p, loc.solarize_p) == (1, 0, 0.1, 0.2, 0.5, 0)
    assert (g1.brightness, g1.contrast, g1.saturation, g1.hue, g1.jitter_p, g1.grayscale_p) == (0.4, 0.4, 0.2, 0.1, 0.8, 0.2)
    draws = g2.sample(4000, torch.Generator().manual_seed(0))["solarize"].float().mean()
    assert abs(draws - 0.2) < 0.03
    moco = AugmentSpec().sample(3, torch.Generator().manual_seed(1))
    assert not moco["solarize"].any()


def test_device_blur_has_one_shape_per_batch_size(monkeypatch):
    """The grouped conv of the blur sees the whole batch whichever samples are blurred (a new
    shape per count would mean a cuDNN search, and a recompile, per step); sigma 0 is the identity."""
    import torch.nn.functional as F
    from ssl_crops.transforms import BatchAugment
    shapes, conv2d = set(), F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda x, w, *a, **k: shapes.add((tuple(x.shape), tuple(w.shape))) or
                        conv2d(x, w, *a, **k))
    x = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    aug = BatchAugment()
    for seed in range(6):
        aug(x, torch.Generator().manual_seed(seed))
    assert {s[0][1] for s in shapes} == {16 * 3}
    y = torch.rand(2, 3, 24, 24)
    assert torch.equal(aug._blur(y, torch.tensor([0.0, 1.5]))[0], y[0])
