import numpy as np
import pytest

from ssl_crops.metrics import (TERTILES, average_precision, batch_mean_average_precision, federated_average_precision,
                               federated_targets, frequency_groups, group_map, map_details, mean_average_precision,
                               tertile_groups, topk_accuracy)


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


def test_batch_mean_map_is_the_original_per_batch_mean():
    rng = np.random.default_rng(0)
    targets = (rng.random((70, 6)) < 0.2).astype(np.float32)
    scores = targets * 0.5 + rng.random(targets.shape)
    # by hand, as main_lincls.py: AP per class with a positive in the batch, nanmean per batch, weighted by size
    per_batch = [(mean_average_precision(scores[lo:lo + 32], targets[lo:lo + 32]), min(32, 70 - lo))
                 for lo in range(0, 70, 32)]
    expected = sum(m * n for m, n in per_batch) / 70
    assert batch_mean_average_precision(scores, targets, 32) == pytest.approx(expected)
    assert batch_mean_average_precision(scores, targets, 70) == pytest.approx(mean_average_precision(scores, targets))
    assert batch_mean_average_precision(scores, targets, 8) != pytest.approx(mean_average_precision(scores, targets))
    with pytest.raises(ValueError, match="batch_size"):
        batch_mean_average_precision(scores, targets, 0)


def test_batch_mean_skips_batches_without_positives():
    targets = np.array([[1], [0], [0], [0]], np.float32)
    scores = np.array([[0.9], [0.1], [0.5], [0.2]])
    assert batch_mean_average_precision(scores, targets, 2) == pytest.approx(1.0)  # the second batch has no positive


def test_federated_ap_follows_lvis_rule():
    scores = np.array([[0.9], [0.8], [0.95], [0.6], [0.5]])
    pos = np.array([[0], [1], [0], [1], [0]], bool)
    neg = np.array([[1], [0], [0], [0], [1]], bool)   # image 2 is not verified negative: not scored
    nex = np.array([[0], [0], [0], [1], [0]], bool)   # image 3: class not exhaustively annotated: not scored
    t = federated_targets(pos, neg, nex)
    np.testing.assert_array_equal(t[:, 0], [0, 1, -1, -1, 0])
    # ranking of scored images: 0 (neg), 1 (pos), 4 (neg) -> AP 1/2
    assert federated_average_precision(scores, pos, neg, nex)[0] == pytest.approx(0.5)
    # a plain (non-federated) AP would count images 2 and 4 as negatives and image 3 as a positive
    assert average_precision(scores, pos.astype(int))[0] == pytest.approx((1 / 3 + 2 / 4) / 2)
    with pytest.raises(ValueError, match="shapes"):
        federated_targets(pos, neg[:2], nex)


def test_tertile_groups_split_any_dataset_in_three():
    counts = np.array([900, 950, 5000, 1200, 2000, 901])  # every class >= 900 images: all "head" at 100/20
    assert set(frequency_groups(counts, 100, 20)) == {"head"}
    t = tertile_groups(counts)
    assert t.tolist() == ["rare third", "middle third", "frequent third", "middle third", "frequent third",
                          "rare third"]
    g = group_map(np.array([0.1, 0.2, 0.3, 0.4, 0.5, np.nan]), t, TERTILES, counts)
    assert g["frequent third"] == {"map": pytest.approx(0.4), "classes": 2, "evaluated": 2, "train_images": [2000, 5000]}
    assert g["rare third"]["evaluated"] == 1 and g["rare third"]["train_images"] == [900, 901]
    assert tertile_groups([3]).tolist() == ["frequent third"]
