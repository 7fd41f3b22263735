"""Shared fixtures: a small demo dataset generated once per test session."""
import pytest
import torch

from ssl_crops.demo import make_demo

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A small demo dataset (24 train, 8 test images of 128-224 px); treat it as read-only."""
    return make_demo(tmp_path_factory.mktemp("demo"), num_train=24, num_test=8, seed=0,
                     min_size=128, max_size=224)


@pytest.fixture
def one_thread():
    """One torch thread for tests of many tiny ops, where more threads only add contention."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
