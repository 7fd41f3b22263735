"""The knob groups of a BING model: old keyword arguments, attributes, validation, model files."""
import dataclasses
import json
import pickle

import numpy as np
import pytest

from ssl_crops.demo import synthetic_scenes
from ssl_crops.proposals import Bing, FitConfig, RankingConfig, ScoringConfig
from ssl_crops.proposals.knobs import split_knobs

SIZES = [(w, h) for w in (16, 32, 64) for h in (16, 32, 64)]
FILTER = np.random.default_rng(0).standard_normal((8, 8)) / 100
CALIB = np.tile([1.0, 0.0], (len(SIZES), 1))
# what a model file of main (before the configs) holds as params, in its order
OLD_PARAMS = {"per_size": 40, "nms_iou": None, "top_k": 300, "color": "hsv", "max_side": 320, "sparse_top": 60,
              "gradient_shift": 0, "maxima": "grid", "fine_share": 0.15, "fine_after": 80, "snap": 0.12}


@pytest.fixture(scope="module")
def scenes():
    return synthetic_scenes(12, 128, 96, seed=4)


def test_old_keyword_arguments_fill_the_configs():
    model = Bing(FILTER, SIZES, CALIB, **OLD_PARAMS)
    assert model.scoring == ScoringConfig(color="hsv", max_side=320, maxima="grid", per_size=40)
    assert model.ranking == RankingConfig(top_k=300, sparse_top=60, fine_share=0.15, fine_after=80, snap=0.12)
    assert model.params == OLD_PARAMS and list(model.params) == list(OLD_PARAMS)
    same = Bing(FILTER, SIZES, CALIB, scoring=model.scoring, ranking=model.ranking)
    img = synthetic_scenes(1, 128, 96, seed=5)[0][0]
    np.testing.assert_array_equal(same.propose(img), model.propose(img))
    # a knob by name on top of a config
    assert Bing(FILTER, SIZES, CALIB, ranking=model.ranking, top_k=7).ranking == dataclasses.replace(
        model.ranking, top_k=7)
    with pytest.raises(TypeError, match="unexpected keyword argument.*snapp"):
        Bing(FILTER, SIZES, CALIB, snapp=0.1)
    with pytest.raises(TypeError):
        Bing(FILTER, SIZES, CALIB, 40)                        # the knobs are keywords


def test_knobs_are_attributes_set_through_the_config():
    model = Bing(FILTER, SIZES, CALIB)
    model.nms_iou, model.color = 0.5, "gray"
    assert model.ranking.nms_iou == 0.5 and model.scoring.color == "gray" and model.nms_iou == 0.5
    with pytest.raises(ValueError, match="snap must be None or in"):
        model.snap = 0.7
    assert model.snap is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.ranking.top_k = 5
    back = pickle.loads(pickle.dumps(model))                  # what propose_folder's workers get
    assert back.scoring == model.scoring and back.ranking == model.ranking


@pytest.mark.parametrize("kwargs, message", [
    ({"color": "lab"}, "unknown colour space"), ({"maxima": "5x5"}, "unknown candidate maxima"),
    ({"max_side": 4}, "max_side must be at least 8"), ({"gradient_shift": 8}, "gradient_shift must be in 0..7"),
    ({"fine_share": 1.5}, r"fine_share must be in \[0, 1\]"), ({"snap": 0.5}, "snap must be None or in"),
])
def test_configs_refuse_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Bing(FILTER, SIZES, CALIB, **kwargs)


def test_configs_normalize_types():
    assert ScoringConfig(max_side=320.0, per_size=0).max_side == 320 and ScoringConfig(per_size=0).per_size == 0
    r = RankingConfig(top_k=np.int64(5), fine_share=np.float32(0.25), snap=np.float32(0.125))
    assert type(r.top_k) is int and type(r.fine_share) is float and type(r.snap) is float
    assert json.dumps(dataclasses.asdict(r))                  # saved as JSON
    assert FitConfig(sides=[16, 32]).sides == (16, 32)
    fit, ranking = split_knobs({"seed": 3, "snap": None}, FitConfig(), RankingConfig(snap=0.1))
    assert fit.seed == 3 and ranking.snap is None


def test_saved_files_round_trip_and_old_files_load(tmp_path):
    model = Bing(FILTER, SIZES, CALIB, **OLD_PARAMS)
    model.save(tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as z:
        assert json.loads(str(z["params"])) == OLD_PARAMS and str(z["params"]) == json.dumps(OLD_PARAMS)
    back = Bing.load(tmp_path / "new.npz")
    assert back.scoring == model.scoring and back.ranking == model.ranking
    # a file as main wrote it (format /2, flat params) loads into the same configs
    np.savez(tmp_path / "old.npz", format=np.array("ssl_crops.bing/2"), filter=FILTER, sizes=np.array(SIZES),
             calib=CALIB, params=np.array(json.dumps(OLD_PARAMS)))
    old = Bing.load(tmp_path / "old.npz")
    assert old.scoring == model.scoring and old.ranking == model.ranking and old.rescorer is None


def test_fit_takes_its_knobs_by_name_or_in_configs(scenes):
    images, boxes = [im for im, _ in scenes], [b for _, b in scenes]
    by_name = Bing.fit(images, boxes, seed=1, min_positives=3, rescore_top=None, snap=None, max_side=96)
    grouped = Bing.fit(images, boxes, config=FitConfig(seed=1, min_positives=3, rescore_top=None),
                       scoring=ScoringConfig(color="hsv", max_side=96), ranking=RankingConfig(fine_share=0.15))
    np.testing.assert_array_equal(by_name.filter, grouped.filter)
    np.testing.assert_array_equal(by_name.calib, grouped.calib)
    assert by_name.scoring == grouped.scoring and by_name.ranking == grouped.ranking
    assert by_name.color == "hsv" and by_name.fine_share == 0.15 and by_name.rescorer is None
    with pytest.raises(TypeError, match="unexpected keyword argument.*seeds"):
        Bing.fit(images, boxes, seeds=1)
