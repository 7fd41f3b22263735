"""Linear probe sweep (ssl_crops/evaluate/probe.py)."""
import numpy as np
import pytest

from ssl_crops.evaluate.probe import _widen, linear_probe
from ssl_crops.metrics import mean_average_precision

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=400, c=4, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.float32)
    x = (y @ rng.normal(size=(c, d)) + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    return x, y


def test_widen_steps_past_the_edge_only():
    assert _widen([1e-3, 1e-2], 1e-2) == [pytest.approx(1e-1)]
    assert _widen([1e-3, 1e-2], 1e-3) == [pytest.approx(1e-4)]
    assert _widen([1e-3, 3e-3, 1e-2], 3e-3) == []
    assert _widen([0.0, 1e-3, 1e-2], 0.0) == []  # zero weight decay is a true bound
    assert _widen([0.0, 1e-3], 1e-3) == [pytest.approx(1e-2)]
    assert _widen([1e-2], 1e-2) == []  # one value: the user fixed it


@pytest.fixture
def peaked_at(monkeypatch):
    """Validation mAP that peaks at a chosen lr: each head scores its own lr (as its bias) and
    the score is higher the closer that lr is to the peak (in decades)."""
    import math

    import torch
    from torch import nn

    from ssl_crops.evaluate import probe
    trained = []

    def heads(x, y, multilabel, configs, *a, **k):
        trained.append(list(configs))
        out = []
        for lr, wd in configs:
            h = nn.Linear(x.shape[1], y.shape[1])
            with torch.no_grad():
                h.weight.zero_(), h.bias.fill_(lr)
            out.append(h)
        return out

    def peak(lr_star):
        monkeypatch.setattr(probe, "train_linear_heads", heads)
        monkeypatch.setattr(probe, "score_predictions", lambda s, t, m: {
            "map": 1 - abs(math.log10(float(s[0, 0])) - math.log10(lr_star)) / 10})
        return trained
    return peak


def test_sweep_widens_when_the_best_setting_is_on_the_edge(peaked_at):
    trained = peaked_at(1.0)
    x, y = _data(100)
    logs = []
    res = linear_probe(x, y, x, True, lrs=(1e-3, 1e-2), wds=(0.0,), widen=3, log=logs.append)
    assert sorted(r["lr"] for r in res["sweep"]) == pytest.approx([1e-3, 1e-2, 1e-1, 1.0, 10.0])
    assert [len(c) for c in trained] == [2, 1, 1, 1, 1]  # only new settings are trained, then the final head
    assert res["best"]["lr"] == pytest.approx(1.0)
    assert len(res["notes"]) == 3 and "best lr 0.01, wd 0 on the edge of the grid" in res["notes"][0]
    assert any("widened with lr [0.1" in m for m in logs)


def test_sweep_says_when_it_stays_on_the_edge(peaked_at):
    peaked_at(1e3)
    x, y = _data(100)
    res = linear_probe(x, y, x, True, lrs=(1e-3, 1e-2), wds=(0.0, 1e-4), widen=1, log=lambda *a: None)
    assert res["best"]["lr"] == pytest.approx(0.1) and len(res["sweep"]) == 6
    assert "after widening 1 times: a wider sweep may do better" in res["notes"][-1]
    res = linear_probe(x, y, x, True, lrs=(1e-3, 1e-2), wds=(0.0,), widen=0, log=lambda *a: None)
    assert len(res["sweep"]) == 2 and "after widening 0 times" in res["notes"][0]


def test_no_widening_inside_the_grid():
    x, y = _data()
    res = linear_probe(x[:300], y[:300], x[300:], True, lrs=(1e-4, 1e-2, 1.0), wds=(0.0,), epochs=20,
                       log=lambda *a: None)
    if res["best"]["lr"] == pytest.approx(1e-2):
        assert res["notes"] == [] and len(res["sweep"]) == 3
    else:  # the data decided otherwise: the grid must have grown
        assert res["notes"] and len(res["sweep"]) > 3


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
