"""Top-level exports of ``ssl_crops``: lazy, so that the torch-free parts stay torch-free."""
import subprocess
import sys

import pytest

import ssl_crops


def test_import_and_box_index_do_not_import_torch():
    code = ("import sys, ssl_crops; assert 'torch' not in sys.modules, 'import ssl_crops'\n"
            "from ssl_crops import BoxIndex; import ssl_crops.boxes\n"
            "assert BoxIndex is ssl_crops.boxes.BoxIndex\n"
            "assert 'torch' not in sys.modules, 'from ssl_crops import BoxIndex'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_top_level_names_are_the_modules_objects():
    from ssl_crops import BoxIndex, MoCo, ObjectAwareCrop, open_image
    from ssl_crops.boxes import BoxIndex as boxes_BoxIndex
    from ssl_crops.images import open_image as images_open_image
    from ssl_crops.moco import MoCo as moco_MoCo
    from ssl_crops.transforms.crop import ObjectAwareCrop as crop_ObjectAwareCrop

    assert (BoxIndex, MoCo, ObjectAwareCrop, open_image) == (boxes_BoxIndex, moco_MoCo, crop_ObjectAwareCrop,
                                                              images_open_image)
    assert set(ssl_crops.__all__) == {"BoxIndex", "MoCo", "ObjectAwareCrop", "ObjectAwareMultiCrop", "open_image"}
    from ssl_crops import ObjectAwareMultiCrop
    from ssl_crops.transforms.multicrop import ObjectAwareMultiCrop as multicrop_ObjectAwareMultiCrop
    assert ObjectAwareMultiCrop is multicrop_ObjectAwareMultiCrop
    assert set(ssl_crops.__all__) <= set(dir(ssl_crops))
    with pytest.raises(AttributeError, match="no attribute 'Bogus'"):
        ssl_crops.Bogus
