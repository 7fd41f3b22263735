"""The old module name ssl_crops/proposals/features.py still imports, with a deprecation warning."""
import importlib
import sys

import pytest

from ssl_crops.proposals import gradients


def test_old_path_warns_and_gives_the_same_objects():
    sys.modules.pop("ssl_crops.proposals.features", None)
    with pytest.warns(DeprecationWarning, match="ssl_crops.proposals.gradients"):
        features = importlib.import_module("ssl_crops.proposals.features")
    for name in features.__all__:
        assert getattr(features, name) is getattr(gradients, name)
    assert {"normed_gradient", "local_maxima", "grid_maxima", "Layout"} <= set(features.__all__)
