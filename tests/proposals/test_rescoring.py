"""Stage III: cues from integral images and the weighted logistic rescorer."""
import cv2
import numpy as np
import pytest

from ssl_crops.proposals import normed_gradient
from ssl_crops.proposals.evaluation import box_iou
from ssl_crops.proposals.features import gradients
from ssl_crops.proposals.rescoring import CUES, Rescorer, _sums, cue_integral, cues, snap_edges


def test_rectangle_sums_match_brute_force():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    integral = np.zeros((14, 18), np.int32)
    integral[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)
    rects = rng.uniform(-5, 22, (2, 4, 50))
    rects[:, 2:] = rects[:, :2] + rng.uniform(0, 12, (2, 2, 50))
    s, area = _sums(integral, rects)
    for k in range(2):
        for i in range(50):
            x0 = int(np.clip(np.rint(rects[k, 0, i]), 0, 16))
            y0 = int(np.clip(np.rint(rects[k, 1, i]), 0, 12))
            x1 = int(np.clip(np.rint(rects[k, 2, i]), x0 + 1, 17))
            y1 = int(np.clip(np.rint(rects[k, 3, i]), y0 + 1, 13))
            assert s[k, i] == img[y0:y1, x0:x1].sum() and area[k, i] == (x1 - x0) * (y1 - y0)


def test_cues_of_a_square_on_a_flat_background():
    # a 32x32 white square at (48, 32) in a 128x96 black image; at half size 16x16 at (24, 16)
    img = np.zeros((96, 128, 3), np.uint8)
    img[32:64, 48:80] = 255
    integral, factors = cue_integral(img)
    assert integral[0].shape == integral[1].shape == (49, 65) and factors == (0.5, 0.5)
    np.testing.assert_array_equal(integral[0][-1, -1], normed_gradient(img[::2, ::2]).sum())
    tight, off, cut = [48, 32, 80, 64], [4, 4, 36, 36], [64, 16, 96, 48]
    x = dict(zip(CUES, cues(integral, factors, np.array([tight, off, cut], np.float32), np.array([1.0, 2.0, 3.0])).T))
    np.testing.assert_array_equal(x["score"], [1, 2, 3])
    # the square's outline runs along the tight box's border; the cut box's sides cross it
    assert x["border_orientation"][0] > 1 and x["border_orientation"][1] == 0 and x["border_orientation"][2] < -1
    # the square's edges lie on the window's border band (the central difference spreads one
    # pixel onto the ring), none in its core
    assert x["edge_band"][0] > x["edge_ring"][0] > 0 and x["edge_core"][0] == 0
    assert x["edge_contrast"][0] > 0 and x["edge_band_core"][0] > 4
    assert x["edge_in"][1] == 0 and x["edge_contrast"][1] < x["edge_contrast"][0]
    np.testing.assert_allclose(x["log_area"], np.log(32 * 32 / (128 * 96)), rtol=1e-5)
    np.testing.assert_allclose(x["log_aspect"], 0, atol=1e-6)
    np.testing.assert_allclose(x["centre_dx"], [0, 0.5 - 20 / 128, 0.5 - 48 / 128], atol=1e-6)
    np.testing.assert_array_equal(x["at_border"], [0, 0, 0])
    flat = cues(*cue_integral(np.zeros((8, 8, 3), np.uint8)), np.array([[0, 0, 8, 8]]), [0.0])[0]
    assert flat[CUES.index("at_border")] == 1 and flat[CUES.index("border_orientation")] == 0


def test_packed_integral_gives_both_gradient_sums():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    (_, packed), factors = cue_integral(img)
    small = cv2.resize(img, (45, 30), interpolation=cv2.INTER_LINEAR)
    gx, gy = gradients(small, np.array([0]), np.array([44]))
    rects = np.array([[[0, 3, 10], [0, 2, 5], [45, 20, 11], [30, 29, 6]]], np.float64)    # (1, 4, 3)
    s, _ = _sums(packed, rects)
    for i, (x0, y0, x1, y1) in enumerate(rects[0].T.astype(int)):
        assert s[0, i] & 0xFFFFFFFF == gx[y0:y1, x0:x1].sum() and s[0, i] >> 32 == gy[y0:y1, x0:x1].sum()


def test_snap_edges_moves_sides_onto_an_outline():
    # a white 40x32 rectangle at (48, 40) in a 128x96 black image
    img = np.zeros((96, 128, 3), np.uint8)
    img[40:72, 48:88] = 255
    rect = np.array([[48, 40, 88, 72]], np.float32)
    (_, packed), factors = cue_integral(img)
    loose = np.array([[36, 28, 100, 84], [52, 43, 84, 69], [4, 4, 36, 36]], np.float32)
    snapped = snap_edges(packed, factors, loose, 0.1, (128, 96))
    # the loose box's outline lies just beyond its border strips (an eighth of the side on
    # either side of each edge): every side moves a tenth of the side inwards, onto it
    np.testing.assert_allclose(snapped[0], [36 + 6.4, 28 + 5.6, 100 - 6.4, 84 - 5.6], atol=1e-4)
    assert (box_iou(snapped[:2], rect) > box_iou(loose[:2], rect)).all()
    np.testing.assert_array_equal(snapped[2], loose[2])                    # nothing to snap to: stays
    edge = snap_edges(packed, factors, np.array([[0, 0, 128, 96]], np.float32), 0.1, (128, 96))
    assert edge.min() >= 0 and (edge[0, 2:] <= [128, 96]).all()


def test_rescorer_learns_a_cue_and_weighs_boxes_equally():
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, len(CUES)))
    # image 0: one box hit by 100 windows (all with a high cue 1); image 1: one box hit by
    # 2 windows (with a high cue 2); every other window is a miss
    iou0, iou1 = np.zeros((n // 2, 1)), np.zeros((n // 2, 1))
    iou0[:100] = 0.8
    iou1[:2] = 0.8
    x[:100, 1] += 3
    x[n // 2:n // 2 + 2, 2] += 3
    equal = Rescorer.fit(x, [iou0, iou1], top=10, box_weight=30)
    assert equal.top == 10 and equal.weights[1] > 0
    # with weight per box, the 2 windows of box 2 weigh as much as the 100 of box 1
    assert equal.weights[2] > 0.3 * equal.weights[1]
    per_window = Rescorer.fit(x, [iou0, iou1], box_weight=1e-9)   # positives barely count
    assert abs(per_window.weights[1]) < equal.weights[1]
    # the logit is the standardized linear model
    z = (x[:5] - equal.mean) / equal.std
    np.testing.assert_allclose(equal.score(x[:5].astype(np.float32)), z @ equal.weights[:-1] + equal.weights[-1],
                               rtol=1e-4, atol=1e-4)
    back = Rescorer.from_array(equal.array, equal.top)
    np.testing.assert_array_equal(back.weights, equal.weights)
    # a model saved before the last cue existed scores the cues it knows
    older = Rescorer.from_array(np.delete(equal.array, -2, axis=1), 10)
    assert len(older.weights) == len(CUES)
    np.testing.assert_allclose(older.score(x[:5].astype(np.float32)),
                               (x[:5, :-1] - older.mean) / older.std @ older.weights[:-1] + older.weights[-1],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="rescorer array"):
        Rescorer.from_array(np.zeros((3, len(CUES) + 2)), 10)
    with pytest.raises(ValueError, match="at least 1"):
        Rescorer(equal.mean, equal.std, equal.weights, top=0)
