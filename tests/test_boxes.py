import json
import os

import numpy as np
import pytest

from ssl_crops.boxes import BoxIndex, UnsafePickleError, load_npy_dict, random_boxes_like

CLASSES = ["/m/cat", "/m/dog", "/m/car"]


def _rows(image_id, boxes, as_text):
    out = []
    for name, (x0, y0, x1, y1) in boxes:
        coords = [x0, x1, y0, y1]
        coords = [f"{v}" for v in coords] if as_text else coords
        out.append([image_id, "xclick", name, "1", *coords, "0", "0", "0", "0", "0"])
    return out


OBJECTS = {
    "img_a": [("/m/cat", (0.1, 0.2, 0.5, 0.6)), ("/m/dog", (0.5, 0.5, 0.9, 1.0))],
    "img_b": [("/m/car", (0.0, 0.0, 1.0, 0.5))],
    "img_c": [],
}


def _dicts(as_text, wrapped):
    labels = {k: list(dict.fromkeys(n for n, _ in v)) or ["/m/car"] for k, v in OBJECTS.items()}
    boxes = {}
    for k, v in OBJECTS.items():
        rows = _rows(k, v, as_text)
        boxes[k] = {"data": rows} if wrapped else rows
    return labels, boxes


def _coco(path, sizes):
    names = sorted(CLASSES)
    images, anns = [], []
    for n, (image_id, objs) in enumerate(OBJECTS.items()):
        w, h = sizes[image_id]
        images.append({"id": 100 + n, "file_name": f"{image_id}.jpg", "width": w, "height": h})
        for name, (x0, y0, x1, y1) in objs:
            anns.append({"id": len(anns), "image_id": 100 + n, "category_id": names.index(name) + 7,
                         "bbox": [x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h]})
    cats = [{"id": i + 7, "name": n} for i, n in enumerate(names)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _assert_same(a: BoxIndex, b: BoxIndex, labels=True):
    assert len(a) == len(b) and a.num_boxes == b.num_boxes and a.classes == b.classes
    for i in range(len(a)):
        assert a.image_id(i) == b.image_id(i) and a.path(i) == b.path(i)
        np.testing.assert_allclose(a.boxes(i), b.boxes(i), atol=1e-6)
        np.testing.assert_array_equal(a.box_labels(i), b.box_labels(i))
        if labels:
            np.testing.assert_array_equal(a.labels(i), b.labels(i))


def test_both_dict_forms_and_coco_give_the_same_index(tmp_path):
    lab, wrapped_text = _dicts(as_text=True, wrapped=True)
    _, bare_numbers = _dicts(as_text=False, wrapped=False)
    np.save(tmp_path / "labels.npy", lab, allow_pickle=True)
    np.save(tmp_path / "a.npy", wrapped_text, allow_pickle=True)
    np.save(tmp_path / "b.npy", bare_numbers, allow_pickle=True)
    a = BoxIndex.from_openimages(tmp_path / "labels.npy", tmp_path / "a.npy")
    b = BoxIndex.from_openimages(tmp_path / "labels.npy", tmp_path / "b.npy")
    _assert_same(a, b)
    assert a.classes == sorted(CLASSES)
    assert a.image_id(0) == "img_a" and a.path(0) == "img_a.jpg"
    np.testing.assert_allclose(a.boxes(0)[0], [0.1, 0.2, 0.5, 0.6], atol=1e-7)
    assert a.boxes(0).dtype == np.float32 and a.labels(0).dtype == np.int64
    assert [a.classes[c] for c in a.box_labels(0)] == ["/m/cat", "/m/dog"]
    coco = BoxIndex.from_coco(_coco(tmp_path / "c.json", {"img_a": (640, 480), "img_b": (300, 200), "img_c": (50, 60)}))
    # COCO image labels are the classes of the image's boxes; img_c has none.
    _assert_same(a, coco, labels=False)
    assert coco.labels(2).size == 0 and a.labels(2).tolist() == [a.classes.index("/m/car")]


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "images_selected_new.npy"
    np.save(path, {"x": Evil()}, allow_pickle=True)
    with pytest.raises(UnsafePickleError, match="images_selected_new.npy.*system"):
        load_npy_dict(path)
    with pytest.raises(UnsafePickleError):
        BoxIndex.from_openimages(path)
    assert not marker.exists()


def test_truncated_and_non_dict_files_name_the_file(tmp_path):
    lab, _ = _dicts(True, True)
    path = tmp_path / "labels.npy"
    np.save(path, lab, allow_pickle=True)
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="labels.npy"):
        load_npy_dict(path)
    np.save(tmp_path / "arr.npy", np.arange(3))
    with pytest.raises(ValueError, match="arr.npy.*dict"):
        load_npy_dict(tmp_path / "arr.npy")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        load_npy_dict(tmp_path / "missing.npy")


def test_numpy_object_rows_and_plain_pickles_are_read(tmp_path):
    import pickle

    rows = np.array([["i", "s", "/m/cat", "1", "0.1", "0.2", "0.3", "0.4"]], dtype=object)
    with open(tmp_path / "boxes.pkl", "wb") as f:
        pickle.dump({"i": {"data": rows}}, f, protocol=2)
    index = BoxIndex.from_openimages({"i": ["/m/cat"]}, tmp_path / "boxes.pkl")
    np.testing.assert_allclose(index.boxes(0), [[0.1, 0.3, 0.2, 0.4]], atol=1e-7)


def test_malformed_boxes_are_dropped_clipped_and_counted():
    rows = [
        ["i", "s", "/m/cat", "1", "0.1", "0.5", "0.1", "0.5"],    # fine
        ["i", "s", "/m/cat", "1", "nan", "0.5", "0.1", "0.5"],    # NaN
        ["i", "s", "/m/cat", "1", "abc", "0.5", "0.1", "0.5"],    # not a number
        ["i", "s", "/m/dog", "1", "0.6", "0.2", "0.1", "0.5"],    # inverted x
        ["i", "s", "/m/dog", "1", "0.3", "0.3", "0.1", "0.5"],    # zero width
        ["i", "s", "/m/dog", "1", "1.2", "1.5", "0.1", "0.5"],    # outside: zero area after clip
        ["i", "s", "/m/car", "1", "-0.2", "0.4", "0.5", "1.3"],   # clipped, kept
        ["i", "s", "/m/car"],                                     # short row
    ]
    with pytest.warns(UserWarning) as record:
        index = BoxIndex.from_openimages({"i": ["/m/cat"]}, {"i": {"data": rows}})
    assert index.dropped == 6 and index.num_boxes == 2
    assert index.dropped_reasons == {"not a number": 3, "inverted (x1 < x0 or y1 < y0)": 1,
                                     "zero width or height": 1, "outside the image": 1}
    assert index.clipped == 1 and len(record) == 1
    assert str(record[0].message) == (
        "labels dict (in memory) + boxes dict (in memory): 6 of 8 boxes dropped (3 not a number, 1 inverted "
        "(x1 < x0 or y1 < y0), 1 zero width or height, 1 outside the image); 1 of 8 boxes partly outside the "
        "image, clipped to it")
    np.testing.assert_allclose(index.boxes(0), [[0.1, 0.1, 0.5, 0.5], [0.0, 0.5, 0.4, 1.0]], atol=1e-7)
    assert np.isfinite(index.flat_boxes).all()


def test_fixed_vocabulary_drops_unknown_classes():
    lab, boxes = _dicts(True, True)
    index = BoxIndex.from_openimages(lab, boxes, classes=["/m/dog", "/m/cat"])
    assert index.classes == ["/m/dog", "/m/cat"]  # a given vocabulary keeps its order
    assert [index.classes[c] for c in index.box_labels(0)] == ["/m/cat", "/m/dog"]
    assert index.num_boxes == 2 and index.labels(1).size == 0
    assert index.out_of_vocabulary == 3  # img_b: car box and label; img_c: car label


def test_save_load_round_trip_is_pickle_free(tmp_path):
    lab, boxes = _dicts(True, True)
    a = BoxIndex.from_openimages(lab, boxes)
    a.save(tmp_path / "index.npz")
    with np.load(tmp_path / "index.npz", allow_pickle=False) as z:
        assert all(z[k].dtype != object for k in z.files)
    b = BoxIndex.load(tmp_path / "index.npz")
    _assert_same(a, b)
    assert b.dropped == a.dropped
    np.testing.assert_array_equal(a.label_matrix(), b.label_matrix())
    np.testing.assert_array_equal(b.box_image, [0, 0, 1])
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 nonsense")
    with pytest.raises(ValueError, match="bad.npz"):
        BoxIndex.load(tmp_path / "bad.npz")


def test_from_folder_with_and_without_class_folders(tmp_path):
    from PIL import Image

    for cls_name, n in (("cat", 2), ("dog", 1)):
        (tmp_path / "cls" / cls_name).mkdir(parents=True)
        for k in range(n):
            Image.new("RGB", (8, 8)).save(tmp_path / "cls" / cls_name / f"{k}.png")
    index = BoxIndex.from_folder(tmp_path / "cls")
    assert index.classes == ["cat", "dog"] and len(index) == 3 and index.num_boxes == 0
    assert index.path(2) == "dog/0.png" and index.labels(2).tolist() == [1]
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "x.jpg")
    flat = BoxIndex.from_folder(tmp_path / "flat")
    assert flat.path(0) == "x.jpg" and flat.labels(0).size == 0 and flat.classes == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty: no images"):
        BoxIndex.from_folder(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        BoxIndex.from_folder(tmp_path / "missing")


def test_coco_errors_name_the_file(tmp_path):
    (tmp_path / "a.json").write_text("{not json")
    with pytest.raises(ValueError, match="a.json"):
        BoxIndex.from_coco(tmp_path / "a.json")
    (tmp_path / "b.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "x.jpg"}], "categories": []}))
    with pytest.raises(ValueError, match="b.json.*width"):
        BoxIndex.from_coco(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"file_name": "x.jpg", "width": 4, "height": 4}],
                                                 "categories": []}))
    with pytest.raises(ValueError, match="c.json.*id"):
        BoxIndex.from_coco(tmp_path / "c.json")
    (tmp_path / "d.json").write_text(json.dumps({"images": [], "annotations": [3], "categories": []}))
    with pytest.raises(ValueError, match="d.json.*annotation"):
        BoxIndex.from_coco(tmp_path / "d.json")


def test_demo_index_matches_its_coco_json(demo_root):
    a = BoxIndex.from_openimages(demo_root / "images_selected_new.npy", demo_root / "images_selected_with_all_features.npy")
    b = BoxIndex.from_coco(demo_root / "annotations_train.json")
    _assert_same(a, b)
    assert 2 <= a.num_boxes_per_image().min() and a.num_boxes_per_image().max() <= 8


def _lvis(path):
    """A small LVIS-style json: ``coco_url`` instead of ``file_name``, federated fields."""
    images = [{"id": 1, "coco_url": "http://images.cocodataset.org/val2017/000000000001.jpg", "width": 100,
               "height": 50, "neg_category_ids": [3], "not_exhaustive_category_ids": [1]},
              {"id": 2, "coco_url": "http://images.cocodataset.org/train2017/000000000002.jpg", "width": 100,
               "height": 100, "neg_category_ids": [1], "not_exhaustive_category_ids": []}]
    cats = [{"id": 1, "name": "apple", "frequency": "f"}, {"id": 2, "name": "bus", "frequency": "c"},
            {"id": 3, "name": "cat", "frequency": "r"}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20]},
            {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 50, 50]},
            {"id": 3, "image_id": 2, "category_id": 99, "bbox": [0, 0, 50, 50]}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_lvis_json_is_read_with_its_federated_fields(tmp_path):
    index = BoxIndex.from_coco(_lvis(tmp_path / "lvis.json"))
    assert [index.path(i) for i in range(2)] == ["val2017/000000000001.jpg", "train2017/000000000002.jpg"]
    assert index.classes == ["apple", "bus", "cat"] and index.federated
    np.testing.assert_allclose(index.boxes(0), [[0.1, 0.2, 0.3, 0.6]])
    assert index.negative_labels(0).tolist() == [2] and index.not_exhaustive_labels(0).tolist() == [0]
    # apple: positive but not exhaustively annotated in image 0 (not scored), verified absent in image 1
    np.testing.assert_array_equal(index.target_matrix(), [[-1, -1, 0], [0, 1, -1]])
    assert index.skipped == {"unknown category id": 1} and index.dropped == 0
    index.save(tmp_path / "i.npz")
    back = BoxIndex.load(tmp_path / "i.npz")
    np.testing.assert_array_equal(back.target_matrix(), index.target_matrix())
    assert back.skipped == index.skipped and back.path(1) == "train2017/000000000002.jpg"
    plain = BoxIndex.from_coco(_coco(tmp_path / "c.json", {k: (100, 100) for k in OBJECTS}))
    assert not plain.federated and plain.negative_labels(0).size == 0
    np.testing.assert_array_equal(plain.target_matrix(), plain.label_matrix())


def test_coco_crowd_and_unknown_categories_are_not_counted_as_dropped(tmp_path):
    path = _coco(tmp_path / "c.json", {k: (100, 100) for k in OBJECTS})
    coco = json.loads(path.read_text())
    coco["annotations"] += [{"id": 50, "image_id": 100, "category_id": 7, "bbox": [0, 0, 10, 10], "iscrowd": 1},
                            {"id": 51, "image_id": 100, "category_id": 1234, "bbox": [0, 0, 10, 10]},
                            {"id": 52, "image_id": 100, "category_id": 7, "bbox": [5, 5, -1, 10]}]  # invalid box
    path.write_text(json.dumps(coco))
    index = BoxIndex.from_coco(path)
    assert index.num_boxes == 3 and index.dropped == 1
    assert index.skipped == {"crowd": 1, "unknown category id": 1}
    assert BoxIndex.from_coco(path, include_crowd=True).num_boxes == 4


def test_subset_and_with_classes(tmp_path):
    index = BoxIndex.from_coco(_lvis(tmp_path / "lvis.json"))
    sub = index.subset([1])
    assert len(sub) == 1 and sub.path(0) == "train2017/000000000002.jpg" and sub.box_labels(0).tolist() == [1]
    np.testing.assert_array_equal(sub.target_matrix(), index.target_matrix()[1:])
    assert len(index.subset(np.array([True, False]))) == 1
    other = index.with_classes(["bus", "cat", "dog"])
    assert other.classes == ["bus", "cat", "dog"] and other.out_of_vocabulary == 2  # the apple label and box
    np.testing.assert_array_equal(other.target_matrix(), [[-1, 0, -1], [1, -1, -1]])
    assert other.num_boxes == 1 and other.box_labels(1).tolist() == [0]
    assert index.with_classes(index.classes) is index


def test_pixel_coordinates_in_the_dicts_stop_with_one_line(tmp_path):
    """OpenImages dicts holding pixel coordinates: most boxes lie outside [0, 1]; instead of
    dropping nearly all of them and clipping the rest to the whole image, the reader stops."""
    lab, _ = _dicts(True, True)
    pixels = {k: [_rows(k, [(n, tuple(v * 640 for v in box))], False)[0] for n, box in objs]
              for k, objs in OBJECTS.items()}
    np.save(tmp_path / "boxes.npy", pixels, allow_pickle=True)
    with pytest.raises(ValueError) as err:
        BoxIndex.from_openimages(lab, tmp_path / "boxes.npy")
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / "boxes.npy") in msg and "3 of 3 boxes lie outside [0, 1]" in msg
    assert "pixel coordinates" in msg and "divide x by the image width" in msg
    # a COCO json whose image sizes are wrong (here 10x too small) gives the same kind of stop
    path = _coco(tmp_path / "c.json", {k: (640, 480) for k in OBJECTS})
    coco = json.loads(path.read_text())
    for im in coco["images"]:
        im["width"], im["height"] = 64, 48
    path.write_text(json.dumps(coco))
    with pytest.raises(ValueError, match=r"c.json: 3 of 3 boxes lie outside \[0, 1\].*width and height"):
        BoxIndex.from_coco(path)


def test_coco_boxes_outside_their_image_are_counted(tmp_path):
    """A COCO box wholly outside its image is dropped and one partly outside clipped: both are
    counted, said in a warning, kept through save/load and in describe()."""
    path = _coco(tmp_path / "c.json", {k: (100, 100) for k in OBJECTS})
    coco = json.loads(path.read_text())
    coco["annotations"] += [{"id": 60, "image_id": 100, "category_id": 7, "bbox": [120, 10, 10, 10]},  # outside
                            {"id": 61, "image_id": 100, "category_id": 7, "bbox": [90, 90, 20, 20]},  # partly
                            {"id": 62, "image_id": 100, "category_id": 7, "bbox": [0, 0, 100.0004, 50]}]  # rounding
    path.write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match=r"c.json: 1 of 6 boxes dropped \(1 outside the image\); 1 of 6 boxes "
                                         r"partly outside the image, clipped to it"):
        index = BoxIndex.from_coco(path)
    assert index.num_boxes == 5 and index.dropped_reasons == {"outside the image": 1} and index.clipped == 1
    index.save(tmp_path / "i.npz")
    back = BoxIndex.load(tmp_path / "i.npz")
    assert (back.dropped_reasons, back.clipped) == (index.dropped_reasons, index.clipped)
    assert back.describe().startswith(f"{tmp_path / 'i.npz'} (saved index of {path})")
    assert index.describe() == (f"{path}: 3 images, 5 boxes, 3 classes; 1 of 6 boxes dropped (1 outside the "
                                "image); 1 of 6 boxes partly outside the image, clipped to it")
    assert index.subset([0]).clipped == 1 and index.with_classes(["/m/cat"]).dropped_reasons == index.dropped_reasons


def test_coco_classes_are_numbered_in_category_id_order(tmp_path):
    path = tmp_path / "c.json"
    cats = [{"id": 3, "name": "apple"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    images = [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    index = BoxIndex.from_coco(path)
    assert index.classes == ["person", "bicycle", "apple"]
    assert index.box_labels(0).tolist() == [0] and index.labels(0).tolist() == [0]


def test_folder_counts_the_files_it_leaves_out(tmp_path):
    from PIL import Image

    (tmp_path / "txt").mkdir()
    for k in range(3):
        (tmp_path / "txt" / f"{k}.txt").write_text("not an image")
    with pytest.raises(ValueError, match=r"txt: no images .*found 3 other files, e.g. 0.txt"):
        BoxIndex.from_folder(tmp_path / "txt")
    Image.new("RGB", (8, 8)).save(tmp_path / "txt" / "x.jpg")
    index = BoxIndex.from_folder(tmp_path / "txt")
    assert len(index) == 1 and index.skipped == {"files that are not images": 3}
    assert index.describe() == (f"{tmp_path / 'txt'} (image folder, no boxes): 1 images, 0 boxes, 0 classes; "
                                "left out: 3 files that are not images")


def test_random_boxes_like_keep_sizes_inside_the_image():
    boxes = np.array([[0.1, 0.2, 0.5, 0.4], [0, 0, 1, 1], [0.3, 0.3, 0.35, 0.9], [-0.1, 0.5, 0.2, 1.2]])
    out = random_boxes_like(boxes, np.random.default_rng(0))
    sizes = np.clip(boxes[:, 2:] - boxes[:, :2], 0, 1)
    np.testing.assert_allclose(out[:, 2:] - out[:, :2], sizes, atol=1e-12)
    assert (out >= 0).all() and (out <= 1).all() and not np.allclose(out[0], boxes[0])
    np.testing.assert_array_equal(out, random_boxes_like(boxes, np.random.default_rng(0)))
    assert random_boxes_like(np.zeros((0, 4)), np.random.default_rng(0)).shape == (0, 4)


def test_with_images_appends_images_without_boxes(tmp_path):
    index = BoxIndex.from_openimages({"a": ["c1"], "b": ["c2"]}, {"a": [[0, 0, "c1", 0, 0.1, 0.5, 0.2, 0.6]]})
    more = index.with_images(["sub/x.jpg", "y.png"])
    assert len(more) == 4 and more.num_boxes == index.num_boxes and more.classes == index.classes
    assert [more.path(i) for i in range(4)] == ["a.jpg", "b.jpg", "sub/x.jpg", "y.png"]
    assert [more.image_id(i) for i in (2, 3)] == ["sub/x", "y"] and more.num_boxes_per_image().tolist() == [1, 0, 0, 0]
    assert np.array_equal(more.boxes(0), index.boxes(0)) and more.labels(3).tolist() == []
