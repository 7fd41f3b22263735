"""Export: a pretraining checkpoint's backbone as a plain torchvision state dict (``python -m ssl_crops.export``)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from ssl_crops.export import export_backbone, main
from ssl_crops.moco import MoCo

REPO = Path(__file__).resolve().parents[1]


def test_export_writes_a_plain_torchvision_state_dict(moco_checkpoint_at, tmp_path, capsys):
    model, _ = moco_checkpoint_at(tmp_path / "c.pth")
    proc = subprocess.run([sys.executable, "-m", "ssl_crops.export", str(tmp_path / "c.pth"), "--out",
                           str(tmp_path / "backbone.pth")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "resnet18" in proc.stdout and "fc" in proc.stdout
    sd = torch.load(tmp_path / "backbone.pth", weights_only=True)
    net = torchvision.models.resnet18()
    net.fc = torch.nn.Identity()  # the projection head is not exported
    net.load_state_dict(sd, strict=True)
    assert torch.equal(net.conv1.weight, model.encoder_q.conv1.weight)
    # a file that is not a checkpoint: one line naming it, nothing written
    (tmp_path / "junk.pth").write_bytes(b"not a zip")
    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "junk.pth"), "--out", str(tmp_path / "x.pth")])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "junk.pth: not a checkpoint (not a torch file)" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "x.pth").exists()


def test_export_reads_the_old_layout_and_checks_the_arch(tmp_path):
    torch.manual_seed(0)
    model = MoCo(torchvision.models.resnet18, dim=16, K=32)
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": model.state_dict()}, tmp_path / "old.pth")
    sd, arch = export_backbone(tmp_path / "old.pth")
    assert arch == "resnet18" and "conv1.weight" in sd and not any(k.startswith("fc.") for k in sd)
    with pytest.raises(ValueError, match="resnet50"):
        export_backbone(tmp_path / "old.pth", arch="resnet50")
