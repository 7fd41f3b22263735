"""``ssl_crops.transforms`` exports only its public names; the helpers live in their submodules."""
import pytest

import ssl_crops.transforms as T


def test_transforms_export_only_public_names():
    assert {"ObjectAwareCrop", "ObjectAwareMultiCrop", "BatchAugment"} <= set(T.__all__)
    namespace = {}
    exec("from ssl_crops.transforms import *", namespace)
    assert {k for k in namespace if not k.startswith("__")} == set(T.__all__)
    assert not {"MODES", "GEOMETRIES", "Region", "object_regions", "GaussianBlur", "moco_augment"} & set(T.__all__)


@pytest.mark.parametrize("name, module", sorted(T._MOVED.items()))
def test_internal_names_still_import_from_transforms_with_a_warning(name, module):
    with pytest.warns(DeprecationWarning, match=f"ssl_crops.transforms.{module}"):
        old = getattr(T, name)
    assert old is getattr(getattr(T, module), name)
    with pytest.raises(AttributeError):
        T.no_such_name
