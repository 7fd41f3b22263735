"""BING model: OpenCV model import, gradients, training, files, bad input."""
import gzip
import json

import numpy as np
import pytest

from ssl_crops.demo import synthetic_scenes
from ssl_crops.proposals import (Bing, ImageReadError, ModelFileError, box_iou, evaluate_proposals,
                                 normed_gradient, read_image)
from ssl_crops.proposals.ranking import rank
from ssl_crops.proposals.rescoring import Rescorer


def write_opencv_matrix(path, a, dt):
    """An OpenCV FileStorage YAML matrix, gzip'd, as OpenCV contrib ships the BING model."""
    a = np.asarray(a)
    data = ", ".join(str(v) for v in a.ravel())
    text = (f"%YAML:1.0\nObjNessB2W8MAXBGR: !!opencv-matrix\n   rows: {a.shape[0]}\n   cols: {a.shape[1]}\n"
            f"   dt: {dt}\n   data: [ {data} ]\n")
    with gzip.open(path, "wt") as f:
        f.write(text)


def write_opencv_model(d, idx, w1, w2):
    write_opencv_matrix(d / "ObjNessB2W8MAXBGR.idx.yml.gz", np.reshape(idx, (-1, 1)), "i")
    write_opencv_matrix(d / "ObjNessB2W8MAXBGR.wS1.yml.gz", w1, "f")
    write_opencv_matrix(d / "ObjNessB2W8MAXBGR.wS2.yml.gz", w2, "f")


def test_from_opencv_size_encoding(tmp_path):
    write_opencv_model(tmp_path, [0, 1, 6, 35], np.zeros((8, 8)), np.ones((4, 2)))
    model = Bing.from_opencv(tmp_path)
    # idx = (log2 h - 4) * 6 + (log2 w - 4)
    assert model.sizes.tolist() == [[16, 16], [32, 16], [16, 32], [512, 512]]


def test_from_opencv_hand_computed_score(tmp_path):
    # filter w[y, x] = (x + 1) / 100; stage II v = 0.5, t = -1 for the only usable size
    w1 = np.tile((np.arange(8) + 1) / 100, (8, 1))
    write_opencv_model(tmp_path, [0, 1], w1, [[0.5, -1.0], [9.0, 9.0]])
    model = Bing.from_opencv(tmp_path)
    img = np.zeros((8, 8, 3), np.uint8)
    img[:, 4:, 2] = 200            # a vertical edge in one channel
    # OpenCV scores binarized weights (two +-1 bases, Nw = 2) against the gradient's top 4 bits:
    # beta1 = mean(w) = 0.045 (all +1); residual w - 0.045, beta2 = mean|residual| = 0.02, so
    # columns 0-3 weigh 0.025 and columns 4-7 0.065. |gx| = 200 at columns 3 and 4, 0 elsewhere
    # (borders too), gy = 0; 200 >> 4 = 12. Stage I: 8 * 12 * (0.025 + 0.065) = 8.64; stage II:
    # 0.5 * 8.64 - 1 = 3.32. The 16x16 window is clipped to the 8x8 image; 32x16 is more than
    # twice the image width and skipped.
    boxes, scores = model.propose(img, return_scores=True)
    assert boxes.tolist() == [[0, 0, 8, 8]]
    assert scores == pytest.approx([3.32], rel=1e-5)
    # the exact (unbinarized) score the calibration was not fitted on would be 0.5 * 144 - 1
    exact = Bing(w1, [[16, 16]], [[0.5, -1.0]])
    assert exact.propose(img, return_scores=True)[1] == pytest.approx([71.0], rel=1e-5)


def test_normed_gradient_matches_definition():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    a = img.astype(int)
    h, w = a.shape[:2]
    gx = np.zeros((h, w), int)
    gy = np.zeros((h, w), int)
    for y in range(h):
        for x in range(w):
            dx = a[y, x + 1] - a[y, x - 1] if 0 < x < w - 1 else 2 * (a[y, 1] - a[y, 0] if x == 0 else a[y, -1] - a[y, -2])
            dy = a[y + 1, x] - a[y - 1, x] if 0 < y < h - 1 else 2 * (a[1, x] - a[0, x] if y == 0 else a[-1, x] - a[-2, x])
            gx[y, x], gy[y, x] = np.abs(dx).max(), np.abs(dy).max()
    np.testing.assert_array_equal(normed_gradient(img), np.minimum(gx + gy, 255))


def grid_windows(w, h, n):
    """An image-independent grid of windows: 3x3 shapes, each on a regular grid of centres."""
    per_shape = []
    for fw in (0.2, 0.4, 0.7):
        for fh in (0.2, 0.4, 0.7):
            bw, bh = fw * w, fh * h
            cx = np.linspace(bw / 2, w - bw / 2, 4)
            cy = np.linspace(bh / 2, h - bh / 2, 3)
            c = np.stack(np.meshgrid(cx, cy), -1).reshape(-1, 2)
            per_shape.append(np.concatenate([c - [bw / 2, bh / 2], c + [bw / 2, bh / 2]], 1))
    return np.stack(per_shape, 1).reshape(-1, 4)[:n]       # interleave the shapes


@pytest.fixture(scope="module")
def scenes():
    return synthetic_scenes(60, 192, 144, seed=1), synthetic_scenes(20, 192, 144, seed=2)


@pytest.fixture(scope="module")
def fitted(scenes):
    train, _ = scenes
    return Bing.fit([im for im, _ in train], [b for _, b in train], seed=0, min_positives=5)


@pytest.fixture(scope="module")
def fitted_fine(scenes):
    """A model with sides between powers of two (a sqrt(2) step), ranked by ``fine_share``."""
    train, _ = scenes
    return Bing.fit([im for im, _ in train], [b for _, b in train], seed=0, min_positives=5,
                    sides=(16, 32, 64, 91, 128, 181, 256, 362, 512))


def test_fit_beats_grid(scenes, fitted):
    _, test = scenes
    gts = [b for _, b in test]
    ours = evaluate_proposals([fitted.propose(im, 100) for im, _ in test], gts, ks=(100,))
    grid = evaluate_proposals([grid_windows(192, 144, 100)] * len(test), gts, ks=(100,))
    assert ours["num_boxes"] >= 30
    assert ours["detection_rate"][0.5][0] >= grid["detection_rate"][0.5][0] + 0.2, (ours, grid)


def test_fit_is_deterministic(scenes, fitted):
    train, _ = scenes
    again = Bing.fit([im for im, _ in train[:30]], [b for _, b in train[:30]], seed=0, min_positives=5)
    same = Bing.fit([im for im, _ in train[:30]], [b for _, b in train[:30]], seed=0, min_positives=5)
    np.testing.assert_array_equal(again.filter, same.filter)
    np.testing.assert_array_equal(again.calib, same.calib)


def _rank(model, c, n):
    return rank(c.score, c.sparse, model._fine[c.size], n, model.sparse_top, model.fine_after, model.fine_share)


def test_propose_output(scenes, fitted, fitted_fine):
    img = scenes[1][0][0]
    boxes, scores = fitted.propose(img, 300, return_scores=True)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4 and 0 < len(boxes) <= 300
    # lists for different top_k are prefixes of each other
    np.testing.assert_array_equal(fitted.propose(img, 10), boxes[:10])
    np.testing.assert_array_equal(fitted.propose(img, None)[:300], boxes)
    assert not fitted._fine.any()                     # default sides: powers of two
    # fine sizes (sqrt 2 steps) only after fine_after ranks, then one rank in 1 / fine_share
    work, _ = fitted_fine._working(img)
    cand = fitted_fine._stage1(work)
    fine = fitted_fine._fine[cand.size[_rank(fitted_fine, cand, 400)]]
    assert fitted_fine._fine.any() and fine.sum() > 0
    assert not fine[:fitted_fine.fine_after].any()
    assert fine[fitted_fine.fine_after:].sum() == int(300 * fitted_fine.fine_share)
    np.testing.assert_array_equal(fitted_fine.propose(img, 10), fitted_fine.propose(img, 300)[:10])
    # within each queue: best first; coarse: the best sparse_top 5x5 maxima, then the rest
    order = _rank(fitted_fine, cand, len(cand.score))
    fine, score, sparse = fitted_fine._fine[cand.size[order]], cand.score[order], cand.sparse[order]
    coarse, head = score[~fine], fitted_fine.sparse_top
    assert np.all(np.diff(score[fine]) <= 0)
    assert np.all(np.diff(coarse[:head]) <= 0) and np.all(np.diff(coarse[head:]) <= 0)
    assert sparse[~fine][:head].all() and coarse[head - 1] >= score[~fine & sparse][head:].max()
    norm = fitted.proposals_for("x", img)
    np.testing.assert_allclose(norm[:10], fitted.propose(img, 10) / [192, 144, 192, 144], rtol=1e-6)
    fitted.nms_iou = 0.5
    try:
        kept = fitted.propose(img, 50)
    finally:
        fitted.nms_iou = None
    iou = box_iou(kept, kept)
    assert len(kept) and (iou[np.triu_indices(len(kept), 1)] <= 0.5 + 1e-6).all()


def test_tiny_images(fitted):
    assert fitted.propose(np.zeros((4, 4, 3), np.uint8)).shape == (0, 4)
    assert fitted.propose(np.zeros((1, 1), np.uint8)).shape == (0, 4)
    assert fitted.propose(np.zeros((7, 300, 3), np.uint8)).shape == (0, 4)
    boxes = fitted.propose(np.full((12, 9, 3), 50, np.uint8))
    assert boxes.shape[1] == 4 and len(boxes) > 0
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= 9) and np.all(boxes[:, 3] <= 12)


def test_sixteen_bit_and_one_channel_images_match_their_8_bit_rgb(scenes, fitted):
    img = scenes[1][2][0]
    ref, ref_scores = fitted.propose(img, 200, return_scores=True)
    assert len(ref) == 200
    wide = img.astype(np.uint16) * 257                     # the same picture in 16 bits
    boxes, scores = fitted.propose(wide, 200, return_scores=True)
    np.testing.assert_array_equal(boxes, ref)
    np.testing.assert_array_equal(scores, ref_scores)
    gray = img.mean(2).astype(np.uint8)
    for one in (gray, gray[:, :, None], np.dstack([gray, np.full_like(gray, 255)])):
        np.testing.assert_array_equal(fitted.propose(one, 200), fitted.propose(np.dstack([gray] * 3), 200))


def test_huge_image_is_proposed_at_the_working_size(scenes, fitted):
    import cv2

    img = scenes[1][3][0]                                   # 192 x 144
    model = Bing(fitted.filter, fitted.sizes, fitted.calib, max_side=192, color=fitted.color)
    big = cv2.resize(img, None, fx=16, fy=16, interpolation=cv2.INTER_NEAREST)   # 3072 x 2304
    small, big_boxes = model.propose(img, 100), model.propose(big, 100)
    assert big_boxes.shape == (100, 4)
    assert np.all(big_boxes[:, :2] >= 0) and np.all(big_boxes[:, 2] <= 3072) and np.all(big_boxes[:, 3] <= 2304)
    # the same boxes, 16x larger, up to resampling: most match closely
    best = box_iou(big_boxes / 16, small).max(1)
    assert np.median(best) > 0.9, np.median(best)


def test_large_jpeg_path_boxes_are_in_the_files_pixels(tmp_path, scenes, fitted):
    import cv2
    from PIL import Image

    img = cv2.resize(scenes[1][4][0], None, fx=12.5, fy=12.5, interpolation=cv2.INTER_LINEAR)   # 2400 x 1800
    path = tmp_path / "big.jpg"
    Image.fromarray(img).save(path, quality=95)
    from_path = fitted.propose(path, 100)               # decoded at 1/2 scale (DCT), then 640 px
    from_array = fitted.propose(read_image(path), 100)
    assert from_path[:, 2].max() <= 2400 and from_path[:, 3].max() <= 1800
    assert from_path[:, 2].max() > 1200                 # not in the reduced decode's pixels
    assert np.median(box_iou(from_path, from_array).max(1)) > 0.8


@pytest.mark.parametrize("shape", [(256, 256), (40, 300), (20, 20), (700, 90)])
def test_no_duplicate_boxes(fitted, shape):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    model = Bing(fitted.filter, [(w, h) for w in (16, 32, 64, 128, 256, 512) for h in (16, 32, 64, 128, 256, 512)],
                 np.tile([1.0, 0.0], (36, 1)), snap=0.1)      # snapped boxes that meet are not repeated
    boxes = model.propose(img, None)
    assert len(boxes) > 0
    assert len(np.unique(boxes, axis=0)) == len(boxes)


def test_save_load_round_trip(tmp_path, scenes, fitted):
    path = tmp_path / "bing.npz"
    fitted.save(path)
    back = Bing.load(path)
    np.testing.assert_array_equal(back.sizes, fitted.sizes)
    img = scenes[1][1][0]
    np.testing.assert_array_equal(back.propose(img), fitted.propose(img))
    assert back.params == fitted.params and back.color == "hsv"
    with np.load(path, allow_pickle=False) as z:      # readable without pickle
        assert set(z.files) >= {"filter", "sizes", "calib", "rescorer"}
    np.testing.assert_array_equal(back.rescorer.array, fitted.rescorer.array)
    assert (back.rescorer.top, back.rescorer.head) == (fitted.rescorer.top, fitted.rescorer.head)
    assert fitted.rescorer.head == 50 and back.snap == fitted.snap == 0.12


def test_format_2_files_without_the_newer_cue_and_snap_load(tmp_path, scenes, fitted):
    """Format /2 files written before the border-orientation cue and edge snapping load with
    their 15-cue rescorer and no snapping."""
    old_params = {k: v for k, v in fitted.params.items() if k != "snap"}
    older = np.delete(fitted.rescorer.array, -2, axis=1)
    path = tmp_path / "v2.npz"
    np.savez(path, format=np.array("ssl_crops.bing/2"), filter=fitted.filter, sizes=fitted.sizes, calib=fitted.calib,
             params=np.array(json.dumps(old_params)), rescorer=older, rescore_top=np.array(fitted.rescorer.top),
             rescore_head=np.array(50))
    old = Bing.load(path)
    assert old.snap is None and len(old.rescorer.weights) == len(fitted.rescorer.weights) - 1
    img = scenes[1][1][0]
    same = Bing(fitted.filter, fitted.sizes, fitted.calib, **old_params,
                rescorer=Rescorer.from_array(older, fitted.rescorer.top, 50))
    np.testing.assert_array_equal(old.propose(img), same.propose(img))


def test_format_1_files_load_without_stage_three(tmp_path, scenes, fitted):
    """Files of format /1 (before stage III) load as models without a rescorer."""
    path = tmp_path / "old.npz"
    np.savez(path, format=np.array("ssl_crops.bing/1"), filter=fitted.filter, sizes=fitted.sizes,
             calib=fitted.calib, params=np.array(json.dumps(fitted.params)))
    old = Bing.load(path)
    assert old.rescorer is None
    img = scenes[1][1][0]
    plain = Bing(fitted.filter, fitted.sizes, fitted.calib, **fitted.params)
    np.testing.assert_array_equal(old.propose(img), plain.propose(img))
    np.savez(path, format=np.array("ssl_crops.bing/9"), filter=fitted.filter)
    with pytest.raises(ModelFileError, match="old.npz.*not a BING model file"):
        Bing.load(path)


def test_stage_three_reranks_the_best_stage_two_candidates(scenes, fitted):
    img = scenes[1][2][0]
    plain = Bing(fitted.filter, fitted.sizes, fitted.calib, **{**fitted.params, "snap": None})
    work, _ = plain._working(img)
    everything = plain._scored(work)
    top = fitted.rescorer.top
    fitted.rescorer.top, fitted.rescorer.head, fitted.snap = 50, 0, None
    try:
        boxes = fitted.propose(img, None)
    finally:
        fitted.rescorer.top, fitted.rescorer.head, fitted.snap = top, 50, 0.12
    # the 50 best by stage-II score, in another order
    best = everything.take(np.argsort(-everything.score)[:50]).boxes()
    assert len(boxes) == 50
    assert {tuple(b) for b in boxes.tolist()} == {tuple(b) for b in best.tolist()}
    assert boxes.tolist() != plain.propose(img, 50).tolist()


def test_stage_three_keeps_the_stage_two_head(scenes, fitted, monkeypatch):
    """The first ``rescorer.head`` proposals are the stage-II ranking's (the best 5x5 maxima of
    coarse sizes), with scores above the rest, and are not snapped; stage III re-ranks and
    snapping moves only the proposals below them."""
    plain = Bing(fitted.filter, fitted.sizes, fitted.calib, **{**fitted.params, "snap": None})
    assert fitted.rescorer.head == 50
    for img, _ in scenes[1][:5]:
        boxes, score = fitted.propose(img, 200, return_scores=True)
        np.testing.assert_array_equal(boxes[:50], plain.propose(img, 50))
        assert np.all(np.diff(score[:50]) < 0) and score[:50].min() > score[50:].max()
        assert boxes[50:].tolist() != plain.propose(img, 200)[50:].tolist()    # re-ranked below
    fitted.snap = None
    try:
        unsnapped = fitted.propose(img, 200)
    finally:
        fitted.snap = 0.12
    moved = np.any(boxes != unsnapped, axis=1)
    assert not moved[:50].any() and moved[50:].any() and len(np.unique(boxes, axis=0)) == len(boxes)
    with monkeypatch.context() as m:              # top_k within the head: no stage III is computed
        m.setattr("ssl_crops.proposals.bing.cue_integral", None)
        m.setattr("ssl_crops.proposals.rescoring.cue_integral", None)
        np.testing.assert_array_equal(fitted.propose(img, 50), boxes[:50])
    fitted.rescorer.head = 10
    try:
        np.testing.assert_array_equal(fitted.propose(img, 10), plain.propose(img, 10))
        assert fitted.propose(img, 50)[10:].tolist() != plain.propose(img, 50)[10:].tolist()
    finally:
        fitted.rescorer.head = 50
    with pytest.raises(ValueError, match="snap must be None or in"):
        Bing(fitted.filter, fitted.sizes, fitted.calib, snap=0.5)
    with pytest.raises(ValueError, match="head .* must not exceed sparse_top"):
        Bing(fitted.filter, fitted.sizes, fitted.calib, sparse_top=20, rescorer=fitted.rescorer)
    with pytest.raises(ValueError, match="rescore_head must be in"):
        Bing.fit([im for im, _ in scenes[0][:5]], [b for _, b in scenes[0][:5]], rescore_head=101)


def test_proposals_for_top_k_is_the_start_of_the_full_list(scenes, fitted, monkeypatch):
    """``proposals_for(.., top_k)`` is the first ``top_k`` of the model's ``top_k`` list; stage III
    runs only when the list goes past the head, and snapping only for the boxes it returns."""
    from ssl_crops.proposals import rescoring, snapping
    rescored, snapped = [], []
    rescore, snap_edges = rescoring.Rescorer.rescore, snapping.snap_edges
    monkeypatch.setattr(rescoring.Rescorer, "rescore", lambda self, *a: rescored.append(1) or rescore(self, *a))
    monkeypatch.setattr(snapping, "snap_edges", lambda p, f, boxes, *a: snapped.append(len(boxes))
                        or snap_edges(p, f, boxes, *a))
    assert fitted.top_k == 1000 and fitted.rescorer.head == 50 and fitted.snap
    for img, _ in scenes[1][:4]:
        full = fitted.proposals_for("x", img)
        assert len(rescored) == 1 and sum(snapped) == len(full) - 50
        rescored.clear(), snapped.clear()
        for k in (0, 1, 10, 50):                                  # within the head: neither stage runs
            np.testing.assert_array_equal(fitted.proposals_for("x", img, top_k=k), full[:k])
        assert not rescored and not snapped
        for k in (51, 200, 2000):
            np.testing.assert_array_equal(fitted.proposals_for("x", img, top_k=k), full[:k])
            assert len(rescored) == 1 and sum(snapped) == min(k, len(full)) - 50
            rescored.clear(), snapped.clear()
    with pytest.raises(ValueError, match="top_k must be at least 0"):
        fitted.proposals_for("x", img, top_k=-1)


def test_proposals_for_top_k_without_stage_three_or_with_nms(scenes, fitted):
    img = scenes[1][3][0]
    plain = Bing(fitted.filter, fitted.sizes, fitted.calib, **{**fitted.params, "top_k": 300})
    full = plain.proposals_for("x", img)
    assert len(full) == 300
    for k in (1, 10, 120, 300, 400):
        np.testing.assert_array_equal(plain.proposals_for("x", img, top_k=k), full[:k])
    plain.nms_iou = 0.6
    full = plain.proposals_for("x", img)
    np.testing.assert_array_equal(plain.proposals_for("x", img, top_k=10), full[:10])


def test_fit_without_stage_three(scenes):
    train, _ = scenes
    model = Bing.fit([im for im, _ in train[:30]], [b for _, b in train[:30]], min_positives=5, rescore_top=None)
    assert model.rescorer is None and model.fine_share == 0.15


def test_non_finite_model_weights_are_refused(tmp_path, fitted):
    path = tmp_path / "bing.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["rescorer"] = arrays["rescorer"].copy()
    arrays["rescorer"][2, 0] = np.nan
    np.savez(tmp_path / "nan.npz", **arrays)
    with pytest.raises(ModelFileError, match="nan.npz: non-finite values in rescorer"):
        Bing.load(tmp_path / "nan.npz")


def test_bad_model_files_name_the_file(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="model.npz"):
        Bing.load(bad)
    write_opencv_model(tmp_path, [0, 1], np.zeros((8, 8)), np.ones((2, 2)))
    (tmp_path / "ObjNessB2W8MAXBGR.wS2.yml.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ModelFileError, match="wS2"):
        Bing.from_opencv(tmp_path)
    write_opencv_matrix(tmp_path / "ObjNessB2W8MAXBGR.wS2.yml.gz", np.ones((3, 2)), "f")
    with pytest.raises(ModelFileError, match="wS2.*2x2"):
        Bing.from_opencv(tmp_path)
    (tmp_path / "ObjNessB2W8MAXBGR.idx.yml.gz").unlink()
    with pytest.raises(ModelFileError, match="idx.*not found"):
        Bing.from_opencv(tmp_path)


def test_corrupt_image_names_the_file(tmp_path, fitted):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(ImageReadError, match="broken.jpg"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        fitted.propose(bad)


def test_fit_index_matches_fit_on_pixel_boxes_and_names_unreadable_images(demo_root, tmp_path):
    import shutil

    from PIL import Image

    from ssl_crops.boxes import BoxIndex

    index = BoxIndex.from_coco(demo_root / "annotations_train.json")
    rows = [0, 3, 5, 7, 9, 11]
    paths = [demo_root / "images" / index.path(i) for i in rows]
    sizes = [Image.open(p).size for p in paths]
    boxes = [index.boxes(i) * np.array([w, h, w, h], np.float32) for i, (w, h) in zip(rows, sizes)]
    a = Bing.fit_index(index, demo_root / "images", rows, seed=0, min_positives=2)
    b = Bing.fit(paths, boxes, seed=0, min_positives=2)
    np.testing.assert_array_equal(a.filter, b.filter)
    np.testing.assert_array_equal(a.sizes, b.sizes)
    shutil.copytree(demo_root / "images", tmp_path / "images")
    (tmp_path / "images" / index.path(3)).write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match=index.path(3)):
        Bing.fit_index(index, tmp_path / "images", rows)


# --------------------------------------------------------------------------- fuzzing (issue 12 item 9)
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

FUZZ_MODEL = Bing(np.random.default_rng(3).standard_normal((8, 8)) / 100,
                  [(w, h) for w in (16, 32, 64, 128, 256, 512) for h in (16, 32, 64, 128, 256, 512)],
                  np.tile([1.0, 0.0], (36, 1)), color="hsv")

SHAPES = st.one_of(
    st.tuples(st.integers(1, 24), st.integers(1, 24)),                       # tiny
    st.tuples(st.integers(24, 300), st.integers(24, 300)),                   # ordinary
    st.tuples(st.integers(1, 6), st.integers(1500, 5000)),                   # huge and thin
    st.tuples(st.integers(1500, 3000), st.integers(1500, 3000)),             # huge
).flatmap(lambda hw: st.sampled_from([hw, hw[::-1]]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=SHAPES, channels=st.sampled_from([None, 1, 2, 3, 4]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]), seed=st.integers(0, 2 ** 16),
       top_k=st.sampled_from([1, 10, 1000, None]))
def test_propose_fuzz(shape, channels, dtype, seed, top_k):
    rng = np.random.default_rng(seed)
    h, w = shape
    full = (h, w) if channels is None else (h, w, channels)
    if dtype is np.float32:
        img = rng.random(full, dtype=np.float32)
    else:
        img = rng.integers(0, np.iinfo(dtype).max, full, dtype=dtype, endpoint=True)
    boxes, scores = FUZZ_MODEL.propose(img, top_k, return_scores=True)
    assert boxes.dtype == np.float32 and boxes.shape == (len(scores), 4)
    if top_k is not None:
        assert len(boxes) <= top_k
    assert np.isfinite(boxes).all() and np.isfinite(scores).all()
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2] <= w * (1 + 1e-6)) and np.all(boxes[:, 3] <= h * (1 + 1e-6))
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    if min(h, w) >= 8:
        assert len(boxes) > 0
