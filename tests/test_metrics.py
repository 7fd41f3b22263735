import numpy as np
import pytest

from ssl_crops.metrics import (average_precision, frequency_groups, group_map, map_details,
                               mean_average_precision, topk_accuracy)


def brute_ap(scores, targets, ignore=-1):
    """AP by definition: mean over positives of precision among samples scored >= it."""
    out = []
    for c in range(scores.shape[1]):
        keep = targets[:, c] != ignore
        s, t = scores[keep, c], targets[keep, c]
        pos = np.flatnonzero(t == 1)
        if not len(pos):
            out.append(np.nan)
            continue
        out.append(np.mean([(t[s >= s[i]] == 1).sum() / (s >= s[i]).sum() for i in pos]))
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_ap_matches_brute_force_with_ties_and_ignores(seed):
    rng = np.random.default_rng(seed)
    n, c = rng.integers(1, 60), 7
    scores = rng.integers(0, 5, size=(n, c)).astype(float)  # many ties
    if seed % 2:
        scores += rng.random((n, c)) * (rng.random((n, c)) < 0.5)
    targets = (rng.random((n, c)) < 0.3).astype(int)
    targets[rng.random((n, c)) < 0.15] = -1
    targets[:, 0] = 0  # a class without positives
    ap = average_precision(scores, targets, chunk=3)
    np.testing.assert_allclose(ap, brute_ap(scores, targets), equal_nan=True)
    assert np.isnan(ap[0])


def test_ap_known_values_and_tie_order_independence():
    assert average_precision([3, 2, 1], [1, 0, 1])[0] == pytest.approx((1 + 2 / 3) / 2)
    # all tied: precision at the end of the group = prevalence, whatever the order
    assert average_precision([1, 1, 1, 1], [0, 1, 0, 1])[0] == pytest.approx(0.5)
    assert average_precision([1, 1, 1, 1], [1, 1, 0, 0])[0] == pytest.approx(0.5)
    # -1 removes the sample from the ranking entirely
    assert average_precision([3, 2, 1], [-1, 0, 1])[0] == pytest.approx(0.5)
    assert average_precision([3, 2, 1], [-1, 0, 1], ignore_index=None)[0] == pytest.approx(1 / 3)


def test_map_skips_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.5], [0.1, 0.3, 0.5]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    res = map_details(scores, targets)
    assert res.skipped.tolist() == [2]
    assert res.map == pytest.approx((1.0 + 0.5) / 2)
    assert mean_average_precision(scores, targets) == res.map
    assert np.isnan(mean_average_precision(scores, np.zeros_like(targets)))


def test_ap_shape_and_nan_checks():
    with pytest.raises(ValueError):
        average_precision(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError):
        average_precision([np.nan, 1.0], [1, 0])


def test_ap_large_is_fast():
    import time
    rng = np.random.default_rng(0)
    scores = rng.random((20000, 300)).astype(np.float32)
    targets = (rng.random((20000, 300)) < 0.01).astype(np.int8)
    t = time.perf_counter()
    ap = average_precision(scores, targets)
    assert time.perf_counter() - t < 20
    assert abs(np.nanmean(ap) - 0.01) < 0.005  # random scores: AP ~ prevalence


def test_topk_and_groups():
    scores = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(scores, np.array([1, 1, 0]), ks=(1, 2, 5))
    assert acc == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 5: 1.0}
    groups = frequency_groups([500, 100, 20, 19], head_min=100, tail_max=20)
    assert groups.tolist() == ["head", "medium", "medium", "tail"]
    gm = group_map([0.5, np.nan, 0.2, 0.4], groups)
    assert gm["head"]["map"] == 0.5 and gm["medium"] == {"map": 0.2, "classes": 2, "evaluated": 1}
