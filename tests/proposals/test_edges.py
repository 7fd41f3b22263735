"""Integral images of the gradient and sums over rectangles."""
import cv2
import numpy as np

from ssl_crops.proposals.edges import cue_integral, rect_sums
from ssl_crops.proposals.gradients import gradients


def test_rectangle_sums_match_brute_force():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (13, 17), dtype=np.uint8)
    integral = np.zeros((14, 18), np.int32)
    integral[1:, 1:] = img.astype(np.int64).cumsum(0).cumsum(1)
    rects = rng.uniform(-5, 22, (2, 4, 50))
    rects[:, 2:] = rects[:, :2] + rng.uniform(0, 12, (2, 2, 50))
    s, area = rect_sums(integral, rects)
    for k in range(2):
        for i in range(50):
            x0 = int(np.clip(np.rint(rects[k, 0, i]), 0, 16))
            y0 = int(np.clip(np.rint(rects[k, 1, i]), 0, 12))
            x1 = int(np.clip(np.rint(rects[k, 2, i]), x0 + 1, 17))
            y1 = int(np.clip(np.rint(rects[k, 3, i]), y0 + 1, 13))
            assert s[k, i] == img[y0:y1, x0:x1].sum() and area[k, i] == (x1 - x0) * (y1 - y0)


def test_packed_integral_gives_both_gradient_sums():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)
    (_, packed), factors = cue_integral(img)
    small = cv2.resize(img, (45, 30), interpolation=cv2.INTER_LINEAR)
    gx, gy = gradients(small, np.array([0]), np.array([44]))
    rects = np.array([[[0, 3, 10], [0, 2, 5], [45, 20, 11], [30, 29, 6]]], np.float64)    # (1, 4, 3)
    s, _ = rect_sums(packed, rects)
    for i, (x0, y0, x1, y1) in enumerate(rects[0].T.astype(int)):
        assert s[0, i] & 0xFFFFFFFF == gx[y0:y1, x0:x1].sum() and s[0, i] >> 32 == gy[y0:y1, x0:x1].sum()
