"""Unit tests of ssl_crops.box_rows: row parsing, box validation and counts, the builder."""
import warnings

import numpy as np
import pytest

from ssl_crops.box_rows import RowBuilder, box_changes, format_counts, parse_rows, to_float
from ssl_crops.boxes import BoxIndex


def _row(name, xmin, xmax, ymin, ymax, image_id="img"):
    """One OpenImages box CSV row: ImageID, Source, LabelName, Confidence, XMin, XMax, YMin, YMax, flags."""
    return [image_id, "xclick", name, "1", xmin, xmax, ymin, ymax, "0", "0", "0", "0", "0"]


def _build(builder):
    """``builder.build()``, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return builder.build()


def test_to_float_reads_numbers_and_numeric_text_and_gives_nan_otherwise():
    assert to_float("0.25") == 0.25 and to_float(" 1e-1 ") == 0.1 and to_float(b"0.5") == 0.5
    assert to_float(3) == 3.0 and isinstance(to_float(3), float) and to_float(np.float32(0.5)) == 0.5
    for bad in ("abc", "", None, [0.1], {}):
        assert np.isnan(to_float(bad)), bad


def test_parse_rows_reorders_openimages_columns_to_xyxy():
    rows = [_row("/m/cat", "0.1", "0.5", "0.2", "0.6"), _row("/m/dog", 0.0, 1.0, 0.25, 0.75)]
    coords, names = parse_rows(rows)
    assert names == ["/m/cat", "/m/dog"]
    assert [list(c) for c in coords] == [["0.1", "0.2", "0.5", "0.6"], [0.0, 0.25, 1.0, 0.75]]
    # a numpy array of rows (as np.load gives back) and a tuple read the same way
    as_array, array_names = parse_rows(np.array(rows[:1], dtype=object))
    assert [list(c) for c in as_array] == [["0.1", "0.2", "0.5", "0.6"]] and list(array_names) == ["/m/cat"]
    assert [list(c) for c in parse_rows(tuple(rows))[0]] == [list(c) for c in coords]
    assert parse_rows([]) == ([], []) and parse_rows(np.zeros((0, 13), dtype=object)) == ([], [])


def test_parse_rows_turns_rows_too_short_for_a_box_into_nan():
    rows = [_row("/m/cat", "0.1", "0.5", "0.2", "0.6"),
            ["img", "xclick"],                          # no class, no box
            ["img", "xclick", "/m/dog", "1", "0.1"],    # class but a cut box
            None,                                       # not a row at all
            _row("/m/car", "0.3", "0.4", "0.3", "0.4")]
    coords, names = parse_rows(rows)
    assert names == ["/m/cat", "", "/m/dog", "", "/m/car"]
    assert len(coords) == 5 and [list(coords[k]) for k in (0, 4)] == [["0.1", "0.2", "0.5", "0.6"],
                                                                      ["0.3", "0.3", "0.4", "0.4"]]
    assert all(np.isnan(coords[k]).all() for k in (1, 2, 3))


def test_format_counts_keeps_order_and_leaves_out_zeros():
    assert format_counts({"crowd": 2, "unknown category id": 0, "unknown image id": 1}) == \
        "2 crowd, 1 unknown image id"
    assert format_counts({"crowd": 0}) == "" and format_counts({}) == ""


def test_box_changes_names_what_was_dropped_and_clipped():
    assert box_changes(929, {"outside the image": 2, "not a number": 1}, 5) == (
        "3 of 929 boxes dropped (2 outside the image, 1 not a number); "
        "5 of 929 boxes partly outside the image, clipped to it")
    assert box_changes(10, {"zero width or height": 4}, 0) == "4 of 10 boxes dropped (4 zero width or height)"
    assert box_changes(7, {}, 1) == "1 of 7 boxes partly outside the image, clipped to it"
    assert box_changes(7, {}, 0) == ""
    assert box_changes(10, {"outside the image": 0}, 0) == ""  # a zero count is no drop


def test_builder_gives_the_arrays_of_a_box_index():
    builder = RowBuilder(None, "test rows")
    a_rows = [_row("/m/dog", "0.5", "0.9", "0.5", "1.0"), _row("/m/cat", "0.1", "0.5", "0.2", "0.6")]
    builder.add("a", "a.jpg", ["/m/dog", "/m/cat"], *parse_rows(a_rows))
    builder.add("b", "b.jpg", ["/m/car"], *parse_rows([]))   # labelled, no boxes
    builder.add("c", "c.jpg", ["/m/cat"], *parse_rows([_row("/m/cat", 0.0, 1.0, 0.0, 0.5)]))
    out = _build(builder)
    assert out["classes"].tolist() == ["/m/car", "/m/cat", "/m/dog"]   # sorted by name
    assert out["ids"].tolist() == ["a", "b", "c"] and out["files"].tolist() == ["a.jpg", "b.jpg", "c.jpg"]
    assert out["box_offsets"].tolist() == [0, 2, 2, 3] and out["box_labels"].tolist() == [2, 1, 1]
    assert out["boxes"].dtype == np.float32
    np.testing.assert_allclose(out["boxes"], [[0.5, 0.5, 0.9, 1.0], [0.1, 0.2, 0.5, 0.6], [0, 0, 1, 0.5]], atol=1e-7)
    assert out["label_offsets"].tolist() == [0, 2, 3, 4] and out["label_values"].tolist() == [1, 2, 0, 1]
    assert (out["dropped"], out["clipped"], out["dropped_reasons"], out["out_of_vocabulary"]) == (0, 0, {}, 0)
    assert out["source"] == "test rows" and "neg_offsets" not in out
    index = BoxIndex(**out)
    assert len(index) == 3 and index.num_boxes == 3 and [index.classes[c] for c in index.box_labels(0)] == \
        ["/m/dog", "/m/cat"]


def test_malformed_boxes_are_dropped_clipped_and_counted_by_reason():
    rows = [_row("/m/cat", "0.1", "0.5", "0.1", "0.5"),       # kept
            _row("/m/cat", "inf", "0.5", "0.1", "0.5"),       # not finite
            _row("/m/cat", "0.1", "0.5", "n/a", "0.5"),       # not a number
            _row("/m/dog", "0.1", "0.5", "0.7", "0.3"),       # inverted y
            _row("/m/dog", "0.1", "0.5", "0.4", "0.4"),       # zero height
            _row("/m/dog", "1.0", "1.4", "0.1", "0.5"),       # starts at the right edge: outside
            _row("/m/dog", "0.1", "0.5", "-0.4", "0.0"),      # ends at the top edge: outside
            _row("/m/car", "0.5", "1.2", "-0.1", "0.5"),      # partly outside: clipped, counted
            _row("/m/car", "0.2", "1.0005", "0.2", "0.9")]    # overshoot within rounding: clipped, not counted
    builder = RowBuilder(None, "rows.npy")
    builder.add("i", "i.jpg", ["/m/cat"], *parse_rows(rows))
    with pytest.warns(UserWarning) as record:
        out = builder.build()
    reasons = {"not a number": 2, "inverted (x1 < x0 or y1 < y0)": 1, "zero width or height": 1,
               "outside the image": 2}
    assert out["dropped_reasons"] == reasons and out["dropped"] == 6 and out["clipped"] == 1
    assert len(record) == 1 and str(record[0].message) == "rows.npy: " + box_changes(9, reasons, 1)
    np.testing.assert_allclose(out["boxes"], [[0.1, 0.1, 0.5, 0.5], [0.5, 0.0, 1.0, 0.5], [0.2, 0.2, 1.0, 0.9]],
                               atol=1e-7)
    assert out["box_offsets"].tolist() == [0, 3]
    assert out["classes"].tolist() == ["/m/car", "/m/cat"]   # a class seen only on dropped boxes is no class


def test_pixel_coordinates_stop_with_the_hint_but_a_minority_outside_does_not():
    pixels = [_row("/m/cat", 10, 200, 30, 90), _row("/m/cat", 0, 640, 0, 480), _row("/m/cat", "0.1", "0.5", "0.1", "0.5")]
    builder = RowBuilder(None, "boxes.npy", "divide by the image size")
    builder.add("i", "i.jpg", ["/m/cat"], *parse_rows(pixels))
    with pytest.raises(ValueError) as err:
        builder.build()
    assert str(err.value) == "boxes.npy: 2 of 3 boxes lie outside [0, 1] of the image: divide by the image size"
    # boxes that are not numbers do not count among the boxes looked at
    nan_rows = [_row("/m/cat", 10, 200, 30, 90), _row("/m/cat", "x", "y", "z", "w"), ["short"]]
    builder = RowBuilder(None, "nan.npy", "hint")
    builder.add("i", "i.jpg", [], *parse_rows(nan_rows))
    with pytest.raises(ValueError, match=r"nan.npy: 1 of 1 boxes lie outside"):
        builder.build()
    # exactly half outside: a mistake in some rows, not a unit error; dropped and counted instead
    half = [_row("/m/cat", 1.5, 2.0, 0.1, 0.5), _row("/m/cat", 0.5, 1.5, 0.1, 0.5),
            _row("/m/cat", 0.1, 0.5, 0.1, 0.5), _row("/m/cat", 0.2, 0.6, 0.2, 0.6)]
    builder = RowBuilder(None, "half.npy", "hint")
    builder.add("i", "i.jpg", [], *parse_rows(half))
    with pytest.warns(UserWarning, match=r"half.npy: 1 of 4 boxes dropped \(1 outside the image\); 1 of 4 boxes"):
        out = builder.build()
    assert len(out["boxes"]) == 3 and out["boxes"].max() == 1.0


def test_fixed_vocabulary_keeps_its_order_and_counts_unknown_classes():
    builder = RowBuilder(["/m/dog", b"/m/cat", "/m/dog"])   # bytes names and repeats as np.load may give them
    rows = [_row("/m/cat", 0.1, 0.5, 0.1, 0.5), _row(b"/m/dog", 0.5, 0.9, 0.5, 0.9),
            _row("/m/car", 0.1, 0.2, 0.1, 0.2),            # valid box, class not in the vocabulary
            _row("/m/car", "nan", 0.2, 0.1, 0.2)]          # invalid: dropped, not out of vocabulary
    builder.add("a", "a.jpg", [np.str_("/m/cat"), "/m/bird", "/m/cat"], *parse_rows(rows))
    with pytest.warns(UserWarning, match="1 of 4 boxes dropped"):
        out = builder.build()
    assert out["classes"].tolist() == ["/m/dog", "/m/cat"]
    assert out["box_labels"].tolist() == [1, 0] and out["label_values"].tolist() == [1]
    assert out["out_of_vocabulary"] == 2 and out["dropped"] == 1   # the car box and the bird label
    empty = RowBuilder([])
    empty.add("b", "b.jpg", ["/m/cat"], *parse_rows([_row("/m/cat", 0.1, 0.5, 0.1, 0.5)]))
    out = _build(empty)
    assert out["classes"].size == 0 and len(out["boxes"]) == 0 and out["out_of_vocabulary"] == 2


def test_open_vocabulary_unifies_str_bytes_and_numpy_names():
    builder = RowBuilder(None)
    builder.add("a", "a.jpg", [b"/m/cat", np.str_("/m/dog")], *parse_rows([_row(b"/m/cat", "0.1", "0.5", "0.1", "0.5")]))
    builder.add(7, "7.jpg", ["/m/cat"], *parse_rows([_row(np.str_("/m/dog"), b"0.2", b"0.6", b"0.2", b"0.6")]))
    out = _build(builder)
    assert out["classes"].tolist() == ["/m/cat", "/m/dog"] and out["ids"].tolist() == ["a", "7"]
    assert out["box_labels"].tolist() == [0, 1] and out["label_values"].tolist() == [0, 1, 0]
    np.testing.assert_allclose(out["boxes"], [[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.6, 0.6]], atol=1e-7)


def test_negatives_and_not_exhaustive_classes_are_kept_apart_from_labels():
    builder = RowBuilder(["apple", "bus", "cat"], "lvis.json")
    builder.add("1", "1.jpg", ["apple"], [[0.1, 0.1, 0.3, 0.3]], ["apple"], negatives=["cat", "zebra"],
                not_exhaustive=["apple"])
    builder.add("2", "2.jpg", ["bus"], [[0.0, 0.0, 0.5, 0.5]], ["bus"], negatives=["apple"])
    out = _build(builder)
    assert out["neg_offsets"].tolist() == [0, 1, 2] and out["neg_values"].tolist() == [2, 0]
    assert out["nex_offsets"].tolist() == [0, 1, 1] and out["nex_values"].tolist() == [0]
    assert out["out_of_vocabulary"] == 0   # 'zebra' among the negatives is not a label left out
    assert BoxIndex(**out).federated
    arrays = RowBuilder(["apple", "bus", "cat"], "lvis.json")  # the lists may be numpy arrays
    arrays.add("1", "1.jpg", np.array(["apple"]), [[0.1, 0.1, 0.3, 0.3]], ["apple"], negatives=np.array(["cat", "bus"]))
    assert _build(arrays)["neg_values"].tolist() == [1, 2]


def test_builder_without_images_or_boxes_and_with_skipped_counts():
    out = _build(RowBuilder(None, "nothing"))
    assert len(out["ids"]) == 0 and out["boxes"].shape == (0, 4) and out["box_offsets"].tolist() == [0]
    assert out["classes"].size == 0 and out["label_offsets"].tolist() == [0]
    builder = RowBuilder(None, "folder")
    builder.skipped = {"files that are not images": 2}
    builder.add("x", "cls/x.jpg", ["cls"], np.zeros((0, 4)), [])
    out = _build(builder)
    assert out["skipped"] == {"files that are not images": 2} and out["classes"].tolist() == ["cls"]
    assert out["boxes"].shape == (0, 4) and out["box_offsets"].tolist() == [0, 0]
