import hashlib


from ssl_crops.boxes import load_npy_dict
from ssl_crops.demo import DEMO_FILES, main, make_demo


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_demo_is_deterministic_and_in_openimages_form(tmp_path):
    a = make_demo(tmp_path / "a", num_train=6, num_test=3, seed=1, min_size=96, max_size=160)
    b = make_demo(tmp_path / "b", num_train=6, num_test=3, seed=1, min_size=96, max_size=160)
    c = make_demo(tmp_path / "c", num_train=6, num_test=3, seed=2, min_size=96, max_size=160)
    assert _digest(a) == _digest(b) != _digest(c)
    labels = load_npy_dict(a / DEMO_FILES["labels"])
    boxes = load_npy_dict(a / DEMO_FILES["boxes"])
    test_boxes = load_npy_dict(a / DEMO_FILES["test_boxes"])
    assert len(labels) == 6 and len(load_npy_dict(a / DEMO_FILES["test_labels"])) == 3
    image_id, entry = next(iter(boxes.items()))
    row = entry["data"][0]
    assert isinstance(row[4], str) and row[2] in labels[image_id] and len(image_id) == 16
    assert 0 <= float(row[4]) < float(row[5]) <= 1 and 0 <= float(row[6]) < float(row[7]) <= 1
    assert isinstance(next(iter(test_boxes.values())), list)
    assert all(len(set(v)) >= 2 for v in labels.values())
    assert len(list((a / "images").glob("*.jpg"))) == 9


def test_cli(tmp_path, capsys):
    main([str(tmp_path / "d"), "--num-train", "2", "--num-test", "1"])
    assert "2 train + 1 test" in capsys.readouterr().out
    assert (tmp_path / "d" / DEMO_FILES["coco_test"]).is_file()
