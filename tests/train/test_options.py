"""main_moco.py's command line: the original flags, --demo's defaults, optional packages."""
import os
import shlex
import sys

import pytest

from ssl_crops import train

from . import ORIGINAL


def test_original_command_line_parses():
    args = train.build_parser().parse_args(shlex.split(ORIGINAL)[2:])
    assert (args.data, args.arch, args.lr, args.batch_size, args.dist_url) == (
        "DATA", "resnet50", 0.015, 128, "tcp://localhost:10005")
    assert (args.world_size, args.rank, args.workers, args.moco_t, args.save_name) == (1, 0, 8, 0.2, "NAME")
    assert args.mlp and args.aug_plus and args.cos and args.multiprocessing_distributed and args.bing_crops
    assert (args.moco_k, args.moco_m, args.moco_dim, args.epochs, args.schedule) == (65536, 0.999, 128, 200, [120, 160])
    args = train.build_parser().parse_args(["D", "-p", "5", "--wd", "0.5", "--rescale_parameter", "0.3",
                                            "--resume", "auto", "--start-epoch", "3", "--gpu", "1", "--seed", "7"])
    assert (args.log_freq, args.weight_decay, args.rescale_parameter, args.resume, args.start_epoch,
            args.gpu, args.seed) == (5, 0.5, 0.3, "auto", 3, 1, 7)


def test_demo_defaults_and_explicit_flags_win(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images_selected_new.npy").touch()  # pretend the demo data exists
    args = train.parse_args(["--demo", str(tmp_path), "--epochs", "2"])
    assert args.arch == "resnet18" and args.moco_k < 160 and args.epochs == 2
    assert args.data == str(tmp_path / "images")
    assert args.resume == "auto"  # the Quick start command can be run again
    assert train.parse_args(["--demo", str(tmp_path), "--resume", ""]).resume == ""
    with pytest.raises(SystemExit):
        train.parse_args([])  # DIR is required without --demo


def test_workers_default_to_the_cpus_of_the_process(monkeypatch):
    """Per process: its CPUs less one for itself. torchrun's and mp.spawn's processes see the
    node's 64 CPUs and share them; an srun task bound to its 16 (or given --cpus-per-task)
    keeps them, not divided again by the node's 4 tasks."""
    for v in ("SLURM_CPUS_PER_TASK", "SLURM_STEP_ID", "SLURM_PROCID"):
        monkeypatch.delenv(v, raising=False)
    assert train.build_parser().parse_args(["D"]).workers is None  # resolved per process by the run
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert train.default_workers() == 32 and train.default_workers("torchrun", 8) == 7
    assert train.default_workers("srun", 4) == 15  # an srun that does not bind: the node's, shared
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert train.default_workers("srun", 4) == 15 and train.default_workers("spawn", 1) == 15
    for k, v in {"SLURM_CPUS_PER_TASK": "6", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"}.items():
        monkeypatch.setenv(k, v)
    assert train.default_workers("srun", 4) == 5
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert train.default_workers("torchrun", 8) == 1  # never none


def test_demo_scales_the_minimum_region(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images_selected_new.npy").touch()
    args = train.parse_args(["--demo", str(tmp_path)])
    assert args.min_region == args.image_size == 64 and args.bing_crops and args.sampling is None
    assert train.parse_args(["--demo", str(tmp_path), "--min-region", "100"]).min_region == 100


def test_tensorboard_without_the_package_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    with pytest.raises(SystemExit) as e:
        train.parse_args(["D", "--tensorboard", "tb"])
    assert e.value.code == 2
    assert "error: --tensorboard needs the tensorboard package: pip install 'ssl-crops[tb]'" in capsys.readouterr().err


def test_workers_help_shows_one_default():
    from ssl_crops.train import options

    text = " ".join(options.build_parser().format_help().split())
    start = text.index("-j WORKERS, --workers WORKERS")
    j = text[start:text.index("--epochs EPOCHS", start)]
    assert j.count("default") == 1 and f"less one, {options.default_workers()} here" in j
