import pickle
from argparse import Namespace

import pytest

from ssl_crops.config import Config


def test_config_is_frozen_and_replace_makes_a_changed_copy():
    cfg = Config.of(Namespace(lr=0.03, seed=None))
    with pytest.raises(AttributeError, match="frozen"):
        cfg.lr = 0.1
    with pytest.raises(AttributeError, match="frozen"):
        del cfg.seed
    new = cfg.replace(seed=7)
    assert (cfg.seed, new.seed, new.lr) == (None, 7, 0.03)
    assert vars(new) == new.to_dict() == {"lr": 0.03, "seed": 7}


def test_config_refuses_unknown_settings():
    with pytest.raises(TypeError, match="sede"):
        Config.of({"seed": 1}).replace(sede=2)


def test_config_pickles_for_spawned_processes():
    cfg = Config.of({"arch": "resnet18", "schedule": [120, 160]})
    back = pickle.loads(pickle.dumps(cfg))
    assert back == cfg and isinstance(back, Config)
    with pytest.raises(AttributeError):
        back.arch = "resnet50"
