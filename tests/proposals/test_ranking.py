"""Ranking helpers: best-first selection with ties, and snapped boxes without repeats."""
import numpy as np

from ssl_crops.proposals.ranking import best, first, unique_snapped


def test_best_and_first_keep_index_order_on_ties():
    score = np.array([1, 3, 3, 0, 3], np.float32)
    assert best(score, 2).tolist() == [1, 2] and best(score, 5).tolist() == [1, 2, 4, 0, 3]
    boxes = np.array([[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 2, 2]], np.float32)
    assert first(boxes).tolist() == [True, True, False, False]


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
