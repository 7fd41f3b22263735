"""Weighted kNN (ssl_crops/evaluate/knn.py)."""
import numpy as np
import pytest

from ssl_crops.evaluate.knn import knn_classify, knn_scores


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


def test_k_within_the_train_set_is_unchanged(recwarn):
    x, lab = _clusters(90)
    res = knn_classify(x[:60], lab[:60], x[60:], lab[60:], k=(5, 60), multilabel=False)
    assert res == {"knn5_top1": 1.0, "knn60_top1": pytest.approx(1.0)} and not recwarn.list
