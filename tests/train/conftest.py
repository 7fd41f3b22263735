"""Fixtures of the trainer's tests: the demo data and an environment without launcher variables."""
import pytest

from ssl_crops.demo import make_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """136 small training images: just above the original command's batch size of 128."""
    return make_demo(tmp_path_factory.mktemp("demo"), num_train=136, num_test=8, min_size=40, max_size=64)


@pytest.fixture
def clean_env(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(v, raising=False)
