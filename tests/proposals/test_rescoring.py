"""Stage III: cues from integral images and the weighted logistic rescorer."""
import numpy as np
import pytest

from ssl_crops.proposals import normed_gradient
from ssl_crops.proposals.edges import cue_integral
from ssl_crops.proposals.rescoring import CUES, Rescorer, cues


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
