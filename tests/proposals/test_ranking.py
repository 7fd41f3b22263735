"""Ranking of proposals: best-first selection with ties, per-group caps, the 5x5-maxima head,
the fine-size rank pattern, box NMS and snapped boxes without repeats."""
import numpy as np
import pytest

from ssl_crops.proposals.evaluation import box_iou
from ssl_crops.proposals.ranking import (best, fine_slots, first, head, nms, rank, rank_coarse, top_per_group,
                                         unique_snapped)


def test_best_and_first_keep_index_order_on_ties():
    score = np.array([1, 3, 3, 0, 3], np.float32)
    assert best(score, 2).tolist() == [1, 2] and best(score, 5).tolist() == [1, 2, 4, 0, 3]
    boxes = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
    assert first(boxes).tolist() == [True, True, False, False]


def test_best_takes_the_highest_scores_best_first():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 200).astype(np.float32)         # many ties
    full = np.argsort(-score, kind="stable")
    for n in (0, 1, 7, 50, 199, 200, 300):
        got = best(score, n)
        assert len(set(got.tolist())) == len(got) == min(n, 200)
        np.testing.assert_array_equal(score[got], score[full[:n]])
        assert got.tolist() == full[:n].tolist()                   # ties cut at n: the first indices kept
    assert best(score, 200).tolist() == full.tolist()


def test_top_per_group_caps_every_group_best_first():
    groups = np.array([2, 0, 2, 0, 2, 1, 0, 2])
    scores = np.array([5, 1, 7, 3, 6, 4, 2, 0], np.float32)
    keep = top_per_group(groups, scores, 2)
    assert keep.tolist() == [3, 6, 5, 2, 4]                    # per group in order: best first
    assert top_per_group(groups, scores, 10).tolist() == [3, 6, 1, 5, 2, 4, 0, 7]
    assert top_per_group(groups, scores, 0).tolist() == []


def test_rank_coarse_puts_the_best_sparse_first():
    score = np.array([9, 1, 5, 8, 2, 7], np.float32)
    sparse = np.array([False, True, True, False, True, False])
    # the best 2 of the 5x5 maxima (5, 2), then the best of all the rest (9, 8, 7, 1)
    assert rank_coarse(score, sparse, 6, 2).tolist() == [2, 4, 0, 3, 5, 1]
    assert rank_coarse(score, sparse, 3, 2).tolist() == [2, 4, 0]
    assert rank_coarse(score, sparse, 1, 2).tolist() == [2]
    assert rank_coarse(score, sparse, 6, 0).tolist() == [0, 3, 5, 2, 4, 1]   # no head: by score


def test_fine_slots_pattern():
    slot, ia, ib = fine_slots(12, 2, 0.25)
    # after the first 2 ranks, every 4th rank is fine: j = 3, 7 -> ranks 5, 9
    assert np.flatnonzero(slot).tolist() == [5, 9]
    assert ia[~slot].tolist() == list(range(10)) and ib[slot].tolist() == [0, 1]
    assert not slot.flags.writeable and fine_slots(12, 2, 0.25)[0] is slot      # cached, shared
    assert not fine_slots(5, 0, 0.0)[0].any() and fine_slots(5, 0, 1.0)[0].all()


def test_rank_merges_the_queues_with_a_fixed_pattern():
    rng = np.random.default_rng(1)
    score = rng.standard_normal(60).astype(np.float32)
    fine = np.zeros(60, bool)
    fine[rng.choice(60, 6, replace=False)] = True               # fewer than the fine slots
    sparse = rng.random(60) < 0.2
    full = rank(score, sparse, fine, 60, 5, 10, 0.25)
    assert sorted(full.tolist()) == list(range(60))            # every candidate once
    for n in (1, 10, 25, 59):                                  # shorter lists are prefixes
        assert rank(score, sparse, fine, n, 5, 10, 0.25).tolist() == full[:n].tolist()
    f = fine[full]
    assert not f[:10].any()                                    # no fine sizes before fine_after
    slot = fine_slots(60, 10, 0.25)[0]
    nf = int(fine.sum())
    upto = np.flatnonzero(slot)[nf - 1] + 1                    # until the fine queue runs out
    np.testing.assert_array_equal(f[:upto], slot[:upto])
    assert not f[upto:].any()                                  # then its slots go to the coarse queue
    assert np.all(np.diff(score[full[f]]) <= 0)
    coarse = full[~f]
    np.testing.assert_array_equal(coarse, np.flatnonzero(~fine)[rank_coarse(score[~fine], sparse[~fine],
                                                                              int((~fine).sum()), 5)])
    assert rank(score, sparse, np.zeros(60, bool), 0, 5, 10, 0.25).tolist() == []


def test_head_is_the_start_of_the_ranking():
    rng = np.random.default_rng(2)
    score = rng.standard_normal(80).astype(np.float32)
    fine, sparse = rng.random(80) < 0.3, rng.random(80) < 0.4
    n = int((sparse & ~fine).sum())
    top = head(score, sparse, fine, 8)
    assert top.tolist() == rank(score, sparse, fine, 8, 10, 10, 0.5).tolist()
    assert sparse[top].all() and not fine[top].any() and np.all(np.diff(score[top]) <= 0)
    assert len(head(score, sparse, fine, 500)) == n            # fewer when there are fewer


def test_nms_keeps_the_first_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30], [0, 1, 10, 11], [21, 20, 31, 30]],
                     np.float32)
    assert nms(boxes, 0.5, 10).tolist() == [0, 2]
    assert nms(boxes, 0.5, 1).tolist() == [0]
    assert nms(boxes, 0.95, 10).tolist() == [0, 1, 2, 3, 4]
    kept = boxes[nms(boxes, 0.5, 10)]
    assert (box_iou(kept, kept)[np.triu_indices(len(kept), 1)] <= 0.5).all()


def test_snapped_boxes_that_meet_are_not_repeated():
    a, b, c = [0, 0, 10, 10], [1, 0, 10, 10], [0, 0, 20, 20]
    boxes = np.array([a, b, c], np.float32)
    # the second snaps onto the first, so stays put; the third then snaps onto the second: stays too
    out, keep = unique_snapped(boxes, np.array([a, a, b], np.float32))
    np.testing.assert_array_equal(out, boxes)
    assert keep.all()
    # the second snaps onto the first, whose snapped box is the second's own: dropped
    out, keep = unique_snapped(np.array([a, b], np.float32), np.array([b, b], np.float32))
    np.testing.assert_array_equal(out, [b])
    assert keep.tolist() == [True, False]
    out, keep = unique_snapped(boxes, boxes[::-1].copy())         # no repeats: as snapped
    np.testing.assert_array_equal(out, boxes[::-1])


@pytest.mark.parametrize("seed", range(3))
def test_unique_snapped_lists_are_prefixes(seed):
    rng = np.random.default_rng(seed)
    boxes = np.unique(rng.integers(0, 4, (40, 4)).astype(np.float32), axis=0)
    rng.shuffle(boxes)
    snapped = np.where(rng.random((len(boxes), 1)) < 0.5, boxes[rng.integers(0, len(boxes), len(boxes))], boxes)
    out, keep = unique_snapped(boxes, snapped)
    assert len(np.unique(out, axis=0)) == len(out)
    for m in (1, 5, len(boxes) // 2):
        o, k = unique_snapped(boxes[:m], snapped[:m])
        np.testing.assert_array_equal(o, out[:len(o)])
        np.testing.assert_array_equal(k, keep[:m])
