"""The benchmark scripts as modules (they are scripts, not a package): one fixture each."""
import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` imported as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rp():
    return load_benchmark("reproduce")


@pytest.fixture(scope="module")
def rt():
    return load_benchmark("reproduce_retest")


@pytest.fixture(scope="module")
def vp():
    return load_benchmark("view_pairs")


@pytest.fixture(scope="module")
def mv():
    return load_benchmark("multicrop_views")
