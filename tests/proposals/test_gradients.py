"""Packed layout (one window per clipped size), local and grid maxima, OpenCV's binarized filter."""
import cv2
import numpy as np

from ssl_crops.proposals.gradients import Candidates, Layout, gradient, grid_maxima, local_maxima
from ssl_crops.proposals.opencv import binarize_filter

SQUARES = np.array([(s, s) for s in (16, 32, 64, 128, 256, 512)])


def test_clipped_sizes_are_kept_once():
    lay = Layout(100, 100, SQUARES)
    # 128 is clipped to the 100 px image and kept; 256 would be the same window; 512 > 2x the image
    assert lay.active.tolist() == [True, True, True, True, False, False]
    ys, xs = lay.place(np.flatnonzero(lay.active), np.zeros(4), np.zeros(4))
    boxes = lay.boxes(ys, xs)
    np.testing.assert_allclose(boxes[-1], [0, 0, 100, 100])
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_layout_boxes_cover_the_image():
    lay = Layout(640, 480, SQUARES)
    k = 2                                                  # 64 x 64 windows: image resized to 80 x 60
    ys, xs = lay.place(np.array([k, k]), np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    np.testing.assert_allclose(lay.boxes(ys, xs), [[0, 0, 64, 64], [576, 416, 640, 480]])
    assert (lay.size_at(ys, xs) == k).all()
    canvas = lay.canvas(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8))
    assert canvas.shape == (lay.ch, lay.cw)


def test_strip_and_bands_match_opencv_resizing_at_integer_factors():
    rng = np.random.default_rng(0)
    for w, h in [(640, 480), (96, 72), (100, 63)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        lay = Layout(w, h, np.array([(a, b) for a in (8, 11, 16, 32, 45, 64) for b in (8, 16, 23, 32, 64)]))
        strip = lay.strip(img)
        for x0, rw in zip(lay.x0, lay.rw):
            np.testing.assert_array_equal(strip[:, x0:x0 + rw], cv2.resize(img, (int(rw), h)))
        canvas = lay.canvas(img)
        for (c0, c1, _), y0, rh in zip(lay.bands, lay.y0, lay.rh):
            band = cv2.resize(strip[:, c0:c1], (int(c1 - c0), int(rh)))
            inner = (lay.x0 >= c0) & (lay.x0 < c1)
            ref = gradient(band, lay.x0[inner] - c0, lay.x0[inner] + lay.rw[inner] - 1 - c0)
            np.testing.assert_array_equal(canvas[y0:y0 + rh, c0:c1], ref)
        assert lay.kx.any() and lay.ky.any()                      # the integer-factor paths ran


def test_local_maxima_and_grid_maxima():
    rng = np.random.default_rng(0)
    s = rng.standard_normal((40, 50)).astype(np.float32)
    m3 = local_maxima(s, 3) > 0
    ys, xs = np.nonzero(m3)
    for y, x in zip(ys, xs):
        assert s[y, x] == s[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2].max()
    assert (local_maxima(s, 5) > 0).sum() < m3.sum()
    g = grid_maxima(s) > 0
    for y, x in zip(*np.nonzero(g)):                       # the best of its 3x3 tile
        assert s[y, x] == s[y // 3 * 3:y // 3 * 3 + 3, x // 3 * 3:x // 3 * 3 + 3].max()
    # on a slope local maxima keep one point, the grid keeps a lattice at least 3 px apart
    ramp = np.add.outer(np.arange(30), np.arange(30)).astype(np.float32)
    assert (local_maxima(ramp, 3) > 0).sum() == 1
    pts = np.argwhere(grid_maxima(ramp) > 0)
    assert len(pts) >= 50
    d = np.abs(pts[:, None] - pts[None]).max(2)
    assert d[np.triu_indices(len(pts), 1)].min() >= 3
    assert (grid_maxima(np.full((5, 5), -np.inf, np.float32)) == 0).all()


def test_binarize_filter_is_opencvs_two_sign_bases():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    approx = binarize_filter(w)
    b1 = np.where(w >= 0, 1.0, -1.0)
    beta1 = np.abs(w).mean()
    r = w - beta1 * b1
    b2 = np.where(r >= 0, 1.0, -1.0)
    np.testing.assert_allclose(approx, beta1 * b1 + np.abs(r).mean() * b2, rtol=1e-5)
    assert len(np.unique(approx)) <= 4


def test_best_candidates_keep_their_order_and_count_with_ties():
    lay = Layout(64, 64, np.array([[16, 16]]))
    score = np.array([3, 1, 2, 2, 2, 0, 5], np.float32)
    n = len(score)
    c = Candidates(lay, np.arange(n), np.arange(n), np.zeros(n, int), score, np.zeros(n, bool))
    best = c.best(3)
    assert best.score.tolist() == [3, 2, 5] and best.ys.tolist() == [0, 2, 6]   # first of the tied 2s
    assert c.best(7) is c and c.best(1).score.tolist() == [5]


def test_the_old_features_alias_is_gone():
    import importlib.util

    assert importlib.util.find_spec("ssl_crops.proposals.features") is None  # gradients.py is the one name
