"""benchmarks/multicrop_views.py on the generated demo data."""
import json

import pytest



def test_cli_on_generated_data(mv, demo_root, tmp_path, capsys):
    argv = [str(demo_root / "images"), "--coco", str(demo_root / "annotations_train.json"), "--samples", "3",
            "--min-region", "64", "32", "--num-locals", "4"]
    out = mv.main(argv + ["--json", str(tmp_path / "a.json")])
    assert set(out["policies"]) == set(mv.POLICIES) and out["images"] == 24
    for r in out["policies"].values():
        assert all(0 <= r[k] <= 1 for k in ("global_no_object", "local_no_object", "same_instance"))
    assert out["policies"]["object_object"]["local_median_side"] < out["policies"]["dino_scene"]["local_median_side"]
    assert json.loads((tmp_path / "a.json").read_text()) == out == mv.main(argv)  # deterministic
    assert "| dino_scene |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        mv.main(argv + ["--samples", "0"])
