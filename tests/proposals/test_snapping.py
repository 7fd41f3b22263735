"""Edge snapping of ranked proposals."""
import numpy as np

from ssl_crops.proposals.edges import cue_integral
from ssl_crops.proposals.evaluation import box_iou
from ssl_crops.proposals.snapping import snap_edges


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


def test_snap_returns_the_start_of_the_fully_snapped_list(monkeypatch):
    """``snap(.., keep)`` snaps only as far down the list as its first ``keep`` boxes need, also
    when snapped boxes that repeat earlier ones are dropped."""
    from ssl_crops.proposals import snapping
    rng = np.random.default_rng(0)
    boxes = np.unique(rng.integers(0, 4, (300, 4)).astype(np.float32), axis=0)
    rng.shuffle(boxes)
    score = -np.arange(len(boxes), dtype=np.float32)
    seen = []

    def coarse(packed, factors, b, step, size):               # stand-in geometry: many boxes meet
        seen.append(len(b))
        return np.floor(b / 2) * 2

    monkeypatch.setattr(snapping, "snap_edges", coarse)
    integral = ((None, None), (0.5, 0.5))
    full, full_score = snapping.snap(boxes, score, integral, 0.1, 5, None, (64, 64))
    assert seen == [len(boxes) - 5] and len(full) < len(boxes)            # some dropped
    np.testing.assert_array_equal(full[:5], boxes[:5])                    # the head stays
    np.testing.assert_array_equal(full_score, score[np.isin(score, full_score)])
    for keep in (6, 20, 100, len(full)):
        seen.clear()
        out, out_score = snapping.snap(boxes, score, integral, 0.1, 5, keep, (64, 64))
        np.testing.assert_array_equal(out, full[:keep])
        np.testing.assert_array_equal(out_score, full_score[:keep])
        assert seen[0] == keep - 5 and (len(seen) == 1 or seen[-1] <= 2 * seen[-2] + 5)
    assert len(seen) > 1                                                  # drops: it snapped further down
    seen.clear()
    out, _ = snapping.snap(boxes, score, integral, 0.1, 5, 6, (64, 64))
    assert seen == [1]                                                    # one box below the head
