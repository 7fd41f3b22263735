"""Proposal quality: IoU, detection rate and mean best overlap."""
import numpy as np
import pytest

from ssl_crops.proposals.evaluation import box_iou, evaluate_proposals, format_table


def test_box_iou_by_hand():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = np.array([[0, 0, 10, 10], [10, 10, 20, 20], [0, 0, 5, 10]])
    np.testing.assert_allclose(box_iou(a, b), [[1, 0, 0.5], [25 / 175, 25 / 175, 0]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)
    assert box_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0           # empty boxes: no division by zero


def test_detection_rate_and_mabo_at_each_count():
    gts = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.zeros((0, 4)), np.array([[0, 0, 4, 4]])]
    props = [np.array([[50, 50, 60, 60], [0, 0, 10, 10], [20, 20, 30, 36]]),       # IoU 1 at 2, 0.625 at 3
             np.array([[0, 0, 1, 1]]),                                          # no boxes: not counted
             np.zeros((0, 4))]                                                  # no proposals: 0
    r = evaluate_proposals(props, gts, ks=(1, 2, 3, 1000), thresholds=(0.5, 0.7))
    assert r["num_boxes"] == 3 and r["ks"] == [1, 2, 3, 1000]
    np.testing.assert_allclose(r["detection_rate"][0.5], [0, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(r["detection_rate"][0.7], [0, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(r["mabo"], [0, 1 / 3, 1.625 / 3, 1.625 / 3])
    empty = evaluate_proposals([np.zeros((0, 4))], [np.zeros((0, 4))], ks=(1, 10))
    assert empty["num_boxes"] == 0 and empty["mabo"] == [0.0, 0.0] and empty["detection_rate"][0.5] == [0.0, 0.0]


def test_format_table_lists_every_row():
    r = evaluate_proposals([np.array([[0, 0, 10, 10]])], [np.array([[0, 0, 10, 10]])], ks=(1, 10))
    text = format_table(r, "ours")
    lines = text.splitlines()
    assert lines[0].split() == ["ours", "@1", "@10"]
    assert lines[1].split()[-2:] == ["1.000", "1.000"] and lines[-1] == "(1 ground-truth boxes)"
    assert [line.split()[0] for line in lines[1:4]] == ["DR", "DR", "MABO"]
    assert format_table(r).startswith("proposals")


@pytest.mark.parametrize("ks", [(5,), (1, 2)])
def test_more_proposals_never_lower_the_rates(ks):
    rng = np.random.default_rng(0)
    gts = [rng.uniform(0, 50, (3, 2)) @ np.array([[1, 0, 1, 0], [0, 1, 0, 1]]) + [0, 0, 10, 10] for _ in range(4)]
    props = [np.sort(rng.uniform(0, 60, (30, 4)).reshape(30, 2, 2), axis=1).transpose(0, 2, 1).reshape(30, 4)
             for _ in range(4)]
    r = evaluate_proposals(props, gts, ks=(*ks, 30))
    assert np.all(np.diff(r["mabo"]) >= 0) and np.all(np.diff(r["detection_rate"][0.5]) >= 0)
