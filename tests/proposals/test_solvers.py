"""Solvers of BING's stages: the class-balanced L2-loss SVM and the logistic fits."""
import numpy as np

from ssl_crops.proposals.solvers import logistic, logistic_1d, svm_l2


def test_svm_separates_and_balances_the_classes():
    rng = np.random.default_rng(0)
    pos = rng.normal([2, 2], 0.5, (20, 2))
    neg = rng.normal([-2, -2], 0.5, (400, 2))                 # 20 times as many negatives
    x, y = np.concatenate([pos, neg]), np.concatenate([np.ones(20), -np.ones(400)])
    w = svm_l2(x, y, 1e-3)
    assert w.shape == (3,)
    margin = y * (x @ w[:2] + w[2])
    assert (margin > 0).all()                                  # separable: all on their side
    # balanced: the boundary lies about half way between the class means, not pushed onto the positives
    mid = (x @ w[:2] + w[2])[:20].mean() + (x @ w[:2] + w[2])[20:].mean()
    assert abs(mid) < 0.5
    strong = svm_l2(x, y, 10.0)                                # more regularization: smaller weights
    assert np.linalg.norm(strong[:2]) < np.linalg.norm(w[:2])


def test_logistic_1d_recovers_a_known_calibration():
    rng = np.random.default_rng(1)
    s = rng.uniform(-3, 5, 20000)
    y = rng.random(20000) < 1 / (1 + np.exp(-(1.5 * s - 2)))
    v, t = logistic_1d(s, y, ridge=1e-6)
    assert abs(v - 1.5) < 0.1 and abs(t + 2) < 0.15
    assert logistic_1d(np.zeros(0), np.zeros(0, bool)).tolist() == [0.0, -10.0]     # no candidates: never
    v, t = logistic_1d(np.full(10, 3.0), np.ones(10, bool))                          # constant scores
    assert np.isfinite([v, t]).all()


def test_weighted_logistic_counts_sample_weights():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4000, 2))
    y = rng.random(4000) < 1 / (1 + np.exp(-(2 * x[:, 0] - 1)))
    w = logistic(x, y, np.ones(4000), ridge=1e-6)
    assert abs(w[0] - 2) < 0.25 and abs(w[1]) < 0.2 and abs(w[2] + 1) < 0.2
    # doubling every row's weight changes nothing (weights are normalized)
    np.testing.assert_allclose(logistic(x, y, np.full(4000, 2.0), ridge=1e-6), w, rtol=1e-6)
    # a weight that favours the positives moves the bias up
    heavy = logistic(x, y, np.where(y, 5.0, 1.0), ridge=1e-6)
    assert heavy[2] > w[2] + 1
