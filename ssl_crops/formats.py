"""The OpenImages-subset file layout of the original object-cropping-ssl code.

``images_selected_new.npy`` maps image id -> list of class ids;
``images_selected_with_all_features.npy`` maps image id -> ``{'data': rows}`` or a list of rows
of the OpenImages box CSV (``[2]`` class id, ``[4]`` XMin, ``[5]`` XMax, ``[6]`` YMin,
``[7]`` YMax, normalized, sometimes strings). The test dicts have the same form.
"""

SUBSET_FILES = {
    "images": "images",
    "labels": "images_selected_new.npy",
    "boxes": "images_selected_with_all_features.npy",
    "test_labels": "images_test.npy",
    "test_boxes": "images_test_with_all_features.npy",
    "coco_train": "annotations_train.json",
    "coco_test": "annotations_test.json",
}
