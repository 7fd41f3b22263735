"""Checkpoint reading (ssl_crops/evaluate/checkpoints.py)."""
import pytest
import torch
from torch import nn

from ssl_crops.evaluate import CheckpointError, find_linear_resume, load_backbone

pytestmark = pytest.mark.usefixtures("one_thread")


def _resnet18_sd():
    import torchvision
    torch.manual_seed(0)
    return torchvision.models.resnet18().state_dict()


@pytest.mark.parametrize("fmt", ["original_moco", "main_moco", "plain"])
def test_load_backbone_formats(tmp_path, fmt):
    sd = _resnet18_sd()
    if fmt == "original_moco":
        state = {f"module.encoder_q.{k}": v for k, v in sd.items() if not k.startswith("fc")}
        state |= {"module.encoder_q.fc.0.weight": torch.zeros(512, 512), "module.queue": torch.zeros(128, 8)}
        ckpt = {"arch": "resnet18", "epoch": 200, "state_dict": state}
    elif fmt == "main_moco":
        state = {f"encoder_q.{k}": v for k, v in sd.items()} | {f"encoder_k.{k}": v for k, v in sd.items()}
        state |= {"queue": torch.zeros(128, 8), "queue_ptr": torch.zeros(1, dtype=torch.long)}
        ckpt = {"arch": "resnet18", "epoch": 1, "args": {"lr": 0.03}, "state_dict": state,
                "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2), None)}}
    else:
        ckpt = sd  # no arch entry: inferred from the weights
    path = tmp_path / "ckpt.pth"
    torch.save(ckpt, path)
    model = load_backbone(path)
    assert isinstance(model.fc, nn.Identity) and model.num_features == 512 and not model.training
    torch.testing.assert_close(model.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])


def test_load_backbone_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone(tmp_path / "nope.pth")
    sd = _resnet18_sd()
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}, "arch": "resnet18"}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated.pth: cannot read checkpoint"):
        load_backbone(truncated)
    incomplete = tmp_path / "incomplete.pth"
    torch.save({"state_dict": {k: v for k, v in sd.items() if "layer3.0" not in k}, "arch": "resnet18"}, incomplete)
    with pytest.raises(CheckpointError, match=r"incomplete.pth.*missing"):
        load_backbone(incomplete)
    with pytest.raises(CheckpointError, match="good.pth: holds a resnet18 backbone, not resnet50: pass -a resnet18"):
        load_backbone(good, arch="resnet50")


def test_other_architecture_and_non_checkpoint_files_say_what_they_hold(tmp_path):
    plain = tmp_path / "plain.pth"
    torch.save(_resnet18_sd(), plain)  # no arch entry: the error names the arch its weights fit
    with pytest.raises(CheckpointError, match="plain.pth: holds a resnet18 backbone, not resnet34"):
        load_backbone(plain, arch="resnet34")
    (tmp_path / "report.json").write_text('{"map": 0.5}')
    with pytest.raises(CheckpointError) as err:
        load_backbone(tmp_path / "report.json")
    assert "report.json: not a checkpoint (a JSON file)" in str(err.value) and "file an issue" not in str(err.value)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt: not a checkpoint \\(not a torch file\\)"):
        load_backbone(tmp_path / "notes.txt")


def test_find_linear_resume(tmp_path):
    assert find_linear_resume("auto", tmp_path) is None
    state = {"epoch": 3, "fc": {"weight": torch.ones(2, 4)}, "optimizer": {}}
    torch.save(state, tmp_path / "linear_last.pth")
    assert find_linear_resume("auto", tmp_path)["epoch"] == 3
    assert find_linear_resume(str(tmp_path / "linear_last.pth"), tmp_path / "elsewhere")["epoch"] == 3
    data = (tmp_path / "linear_last.pth").read_bytes()
    (tmp_path / "linear_last.pth").write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="skipping unreadable .*linear_last.pth"):
        assert find_linear_resume("auto", tmp_path) is None
    with pytest.raises(CheckpointError, match="linear_last.pth"):
        find_linear_resume(str(tmp_path / "linear_last.pth"), tmp_path)
    # a pretraining checkpoint given as the linear head's --resume: named, not a KeyError later
    torch.save({"epoch": 3, "state_dict": {}}, tmp_path / "checkpoint_last.pth")
    with pytest.raises(CheckpointError, match="checkpoint_last.pth: not a linear head checkpoint"):
        find_linear_resume(str(tmp_path / "checkpoint_last.pth"), tmp_path)
