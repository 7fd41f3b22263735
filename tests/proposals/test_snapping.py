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
