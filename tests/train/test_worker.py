"""Whole runs: resume, stop signals, bad images, user mistakes, kNN monitor, logs and checkpoints."""
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_crops import checkpoint, train
from ssl_crops import data as data_module
from ssl_crops.data import CorruptImageError, load_index
from ssl_crops.train import loop, options, worker

from . import ORIGINAL, REPO


def _run(demo, out, *extra, seed=3):
    argv = [str(demo / "images"), "-a", "resnet18", "-b", "32", "--moco-k", "64", "--image-size", "32",
            "-j", "0", "--lr", "0.05", "--mlp", "--aug-plus", "--cos", "--bing_crops",
            "--sampling", "image", "--epochs", "2", "--save-freq", "1", "--log-freq", "2", "--output-dir", str(out),
            "--save_name", "r",
            *(["--seed", str(seed)] if seed is not None else []), *extra]
    return train.main(argv)


@pytest.mark.slow
def test_resume_keeps_the_seed_of_an_unseeded_run(demo, tmp_path, clean_env, monkeypatch, capsys):
    torch.set_num_threads(1)
    with monkeypatch.context() as m:  # on a terminal: a progress bar on stderr, no plain step lines
        m.setattr(sys.stderr, "isatty", lambda: True)
        _run(demo, tmp_path, "--epochs", "1", seed=None)
    out, err = capsys.readouterr()
    assert "batch 2/4" not in out and "epoch 1/1" in err and "\r" in err
    first = torch.load(tmp_path / "r" / "checkpoint_last.pth", weights_only=True)["args"]["seed"]
    _run(demo, tmp_path, "--resume", "auto", seed=None)
    ckpt = torch.load(tmp_path / "r" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["args"]["seed"] == first
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "r" / "log.jsonl").read_text().splitlines()
              if '"type": "epoch"' in line]
    assert epochs == [0, 1]  # the resumed run appends to the log
    log = (tmp_path / "r" / "log.jsonl").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:  # never starts afresh over a run: a user mistake, exit 2
        _run(demo, tmp_path, "--epochs", "1")
    assert err.value.code == 2 and re.search("error: .* holds a run .*--resume auto", capsys.readouterr().err)
    assert (tmp_path / "r" / "log.jsonl").read_text() == log
    with pytest.raises(SystemExit) as err:
        _run(demo, tmp_path, "--resume", str(tmp_path / "nope.pth"))
    assert err.value.code == 2 and "nope.pth: checkpoint not found" in capsys.readouterr().err


def _signal_at(monkeypatch, *steps, sig=signal.SIGTERM):
    """Make the process send itself ``sig`` during its ``steps``-th training steps (counted from 1)."""
    calls = []
    step = loop.train_step

    def train_step(*a, **k):
        calls.append(1)
        if len(calls) in steps:
            os.kill(os.getpid(), sig)
        return step(*a, **k)
    monkeypatch.setattr(loop, "train_step", train_step)


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(demo, tmp_path, clean_env, monkeypatch, capsys):
    """Stopped by SIGTERM mid-epoch, by SIGUSR1 in the next epoch, then its newest checkpoint
    truncated: resumed three times, the run ends bit-identical to an uninterrupted one."""
    torch.set_num_threads(1)
    _run(demo, tmp_path / "a")
    run = tmp_path / "b" / "r"
    with monkeypatch.context() as m:
        _signal_at(m, 3)
        _run(demo, tmp_path / "b")  # 4 steps per epoch: stops after step 3, mid epoch 1
    assert "SIGTERM: stopped after step 3 (epoch 1, batch 3/4)" in capsys.readouterr().out
    stopped = torch.load(run / "checkpoint_last.pth", weights_only=True)
    assert (stopped["epoch"], stopped["step"], stopped["epoch_state"]["batches"]) == (0, 3, 3)
    with monkeypatch.context() as m:
        _signal_at(m, 3, sig=signal.SIGUSR1)
        _run(demo, tmp_path / "b", "--resume", "auto")  # steps 4, 5, 6: stops at batch 2 of epoch 2
    assert "resumed from" in capsys.readouterr().out
    assert torch.load(run / "checkpoint_last.pth", weights_only=True)["step"] == 6
    assert torch.load(run / "checkpoint_prev.pth", weights_only=True)["step"] == 4
    last = run / "checkpoint_last.pth"
    last.write_bytes(last.read_bytes()[:1000])  # killed while copying: resume falls back to checkpoint_prev
    with pytest.warns(UserWarning, match="skipping unreadable checkpoint"):
        _run(demo, tmp_path / "b", "--resume", "auto")

    a = torch.load(tmp_path / "a" / "r" / "checkpoint_last.pth", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 8
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert "module.encoder_q.conv1.weight" in a["state_dict"] and "module.queue" in a["state_dict"]
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert not torch.equal(a["state_dict"]["module.queue"], torch.load(
        run / "checkpoint_0001.pth", weights_only=True)["state_dict"]["module.queue"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])

    ra, rb = _records(tmp_path / "a" / "r"), _records(run)
    steps = [r for r in rb if r["type"] == "step"]
    assert [r["step"] for r in steps] == [2, 4, 6, 8]  # no duplicates after three resumes
    assert {"loss", "lr", "data_time", "compute_time", "images_per_s", "epoch", "step"} <= steps[0].keys()
    assert [(r["epoch"], r["step"]) for r in rb if r["type"] == "epoch"] == [(0, 4), (1, 8)]
    assert [r["signal"] for r in rb if r["type"] == "stop"] == ["SIGTERM"]  # the SIGUSR1 stop was redone
    for key in ("loss", "bad_images", "scene_fallbacks"):  # the epoch losses too, to the last bit
        assert [r[key] for r in ra if r["type"] == "epoch"] == [r[key] for r in rb if r["type"] == "epoch"]
    assert [r["loss"] for r in ra if r["type"] == "step"] == [r["loss"] for r in steps]


@pytest.mark.slow
def test_mid_epoch_resume_with_another_batch_size_is_refused(demo, tmp_path, clean_env, monkeypatch):
    torch.set_num_threads(1)
    with monkeypatch.context() as m:
        _signal_at(m, 1)
        _run(demo, tmp_path, "--epochs", "1")  # stops after step 1 of 4
    with pytest.raises(ValueError, match="stopped mid-epoch with a batch of 32 in total, this run.s is 16; "
                                         "resume it with that total batch"):
        _run(demo, tmp_path, "--epochs", "1", "-b", "16", "--resume", "auto")


def _children(pid):
    return [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]


def _run_until(cmd, env, marker, act):
    """Start ``cmd`` in a process group of its own; at the first stdout line containing
    ``marker`` call ``act(proc)``; returns ``(proc, stdout, stderr)`` once it has exited."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            act(proc)
            break
    out, err = proc.communicate(timeout=300)
    return proc, "".join(lines) + out, err


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_and_resumes(demo, tmp_path):
    """SIGTERM to the whole process group (SLURM, scancel, timeout): the loader worker ignores it,
    the run finishes the step, saves mid-epoch, exits 0. A loader worker SIGKILLed in the resumed
    run: an error naming it, the checkpoint untouched. Resumed again, the run ends with each
    step logged once. Without a terminal the log is one plain line per interval."""
    cmd = [sys.executable, "main_moco.py", str(demo / "images"), "-a", "resnet18", "-b", "8", "--moco-k", "64",
           "--image-size", "32", "-j", "1", "--epochs", "1", "--log-freq", "1", "--seed", "0",
           "--output-dir", str(tmp_path), "--save_name", "r", "--resume", "auto"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID")},
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc, out, err = _run_until(cmd, env, " step 1 ", lambda p: os.killpg(p.pid, signal.SIGTERM))
    assert proc.returncode == 0, out + err
    assert "SIGTERM: stopped after step" in out and "continue with --resume auto" in out
    assert "\r" not in out + err and "DataLoader worker" not in err
    last = tmp_path / "r" / "checkpoint_last.pth"
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 0 and 1 <= ckpt["step"] < 17 and ckpt["epoch_state"]["batches"] == ckpt["step"]
    stop = _records(tmp_path / "r")[-1]
    assert stop["type"] == "stop" and stop["signal"] == "SIGTERM" and stop["step"] == ckpt["step"]

    saved = last.read_bytes()
    marker = f" step {ckpt['step'] + 1} "
    proc, out, err = _run_until(cmd, env, marker, lambda p: [os.kill(c, signal.SIGKILL) for c in _children(p.pid)])
    assert proc.returncode == 1 and "DataLoader worker died (pid" in err and "killed by SIGKILL" in err, out + err
    assert "continue with --resume auto" in err.splitlines()[-1]
    assert last.read_bytes() == saved

    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = _records(tmp_path / "r")
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 18))
    assert [r["step"] for r in records if r["type"] == "epoch"] == [17]


@pytest.mark.slow
def test_bad_images_counted_over_workers_and_named_once(bad_images, tmp_path, clean_env, capsys):
    torch.set_num_threads(1)
    argv = [str(bad_images.images), "--coco", str(bad_images.coco), "-a", "resnet18", "-b", "4", "--moco-k", "40",
            "--image-size", "16", "-j", "2", "--epochs", "2", "--crop-mode", "scene", "--seed", "0",
            "--output-dir", str(tmp_path), "--save_name", "bad", "--log-freq", "100"]
    with pytest.warns(UserWarning, match="1 of the 44 images named by .* are not in"):  # missing.jpg: before
        train.main(argv)                                                                 # training starts
    out = capsys.readouterr().out
    assert (tmp_path / "bad" / "missing_images.txt").read_text() == "missing.jpg\n"
    epochs = [r for r in _records(tmp_path / "bad") if r["type"] == "epoch"]
    bad = [r["bad_images"] for r in epochs]  # 43 items in 10 batches: the 3 others, each at most once
    assert 1 <= min(bad) and max(bad) <= 3 and f"bad_images {bad[0]}" in out and "unreadable images skipped" in out
    lines = (tmp_path / "bad" / "bad_images.txt").read_text().splitlines()
    names = [line.split("\t")[0] for line in lines]
    assert len(set(names)) == len(names) >= max(bad) and set(names) <= set(bad_images.unreadable) - {"missing.jpg"}
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)
    with pytest.raises(CorruptImageError, match="missing.jpg|truncated.jpg|empty.jpg|huge.jpg"):
        train.main([*argv, "--save_name", "strict", "--bad-image", "error", "-j", "0"])


def test_unwritable_output_fails_before_training(demo, tmp_path, clean_env, monkeypatch):
    (tmp_path / "out").write_text("a file where the output folder should be")
    started = []
    monkeypatch.setattr(worker, "build_dataset", lambda *a: started.append(1))
    with pytest.raises(SystemExit) as err:
        _run(demo, tmp_path / "out")
    assert str(tmp_path / "out" / "r") in str(err.value) and "\n" not in str(err.value) and not started
    (tmp_path / "ok" / "r" / "checkpoint_last.pth").mkdir(parents=True)
    with pytest.raises(SystemExit, match="checkpoint_last.pth: a directory is in the way"):
        _run(demo, tmp_path / "ok")
    assert not started


def test_disk_full_at_checkpoint_time_is_one_line(demo, tmp_path, clean_env, monkeypatch):
    """The disk fills up while the epoch's checkpoint is written: the run stops with one line naming
    the file and ENOSPC, and leaves no partial file (tests/test_checkpoint.py: the previous one is kept)."""
    import errno
    import io

    from ssl_crops import files

    class FullDisk(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    torch.set_num_threads(1)
    save = checkpoint.save_checkpoint

    def save_on_a_full_disk(state, run_dir, *keep):
        monkeypatch.setattr(files, "open", lambda p, mode="r": FullDisk(p, mode.replace("b", "")), raising=False)
        save(state, run_dir, *keep)
    monkeypatch.setattr(worker, "save_checkpoint", save_on_a_full_disk)
    with pytest.raises(SystemExit) as err:
        _run(demo, tmp_path, "--epochs", "1")
    msg = str(err.value)
    assert f"cannot write {tmp_path / 'r' / 'checkpoint_last.pth'}: No space left on device (ENOSPC)" in msg, msg
    assert "\n" not in msg
    monkeypatch.undo()
    assert not (tmp_path / "r" / "checkpoint_last.pth").exists() and not list((tmp_path / "r").glob(".*tmp"))


def test_original_command_line_runs_on_cpu(demo, tmp_path):
    """The literal command (with -a resnet18, --epochs 1 and a small --image-size appended)."""
    if torch.cuda.is_available():
        pytest.skip("checks the CPU fallback")
    line = ORIGINAL.replace("DATA", str(demo / "images")).replace("resnet50", "resnet18")
    cmd = [sys.executable, *shlex.split(line)[1:], "--epochs", "1", "--image-size", "32", "--output-dir", str(tmp_path)]
    with socket.socket() as s:
        if s.connect_ex(("localhost", 10005)) == 0:
            pytest.skip("port 10005 of the original --dist-url is in use")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID")}
    proc = subprocess.run(cmd, cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "no CUDA device" in proc.stdout and "gloo" in proc.stdout
    boxes = load_index(str(demo / "images")).num_boxes  # one item per box: the queue is shrunk below them
    assert f"using K={(boxes - 1) // 128 * 128}" in proc.stderr
    ckpt = torch.load(tmp_path / "NAME" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["arch"] == "resnet18" and ckpt["args"]["bing_crops"]
    assert f"checkpoint: {tmp_path / 'NAME' / 'checkpoint_last.pth'}" in proc.stdout


def test_demo_runs_with_knn_monitor(demo, tmp_path, clean_env, capsys):
    """--demo on existing (small) demo data, one epoch: trains, runs the kNN monitor, says where things are."""
    run_dir = train.main(["--demo", str(demo), "--epochs", "1", "--image-size", "32", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert run_dir == tmp_path / "demo" and "making demo data" not in out
    assert f"checkpoint: {run_dir / 'checkpoint_last.pth'}" in out and f"log: {run_dir / 'log.jsonl'}" in out
    shown = re.search(r"demo: linear-probe test mAP ([\d.]+) pretrained, ([\d.]+) random-init resnet18", out)
    reports = run_dir / "linear_eval"  # the demo's own evaluation, as linear_eval.py writes it
    for value, name in zip(shown.groups(), ("checkpoint_last_cached", "random_resnet18_cached")):
        assert float(value) == pytest.approx(100 * json.loads((reports / name / "report.json").read_text())["map"],
                                             abs=0.006)
    summary = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()][-1]
    assert summary["type"] == "epoch" and 0.0 <= summary["knn20_map_pct"] <= 100.0  # percent
    ckpt = torch.load(run_dir / "checkpoint_0001.pth", weights_only=True)
    assert ckpt["args"]["moco_k"] == 128 and ckpt["arch"] == "resnet18"
    train.main(["--demo", str(demo), "--epochs", "1", "--image-size", "32", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out  # the Quick start run again: says so, trains nothing
    assert f"nothing left to do: {run_dir / 'checkpoint_last.pth'} is already trained 1 epochs" in out
    assert "resumed" not in out and "epoch 1/1" not in out


@pytest.mark.parametrize("flags", [["--epochs", "0"], ["--start-epoch", "2", "--epochs", "2"]])
def test_nothing_to_do_says_so_and_names_no_checkpoint(demo, tmp_path, clean_env, capsys, flags):
    run_dir = _run(demo, tmp_path, *flags)
    out = capsys.readouterr().out
    assert "nothing to do" in out and "no checkpoint written" in out and "checkpoint:" not in out
    assert not run_dir.exists()


def test_bn_splits_checkpoint_loads_into_torchvision(demo, tmp_path, clean_env):
    import torchvision
    torch.set_num_threads(1)
    assert train.build_parser().parse_args(["D", "--bn-splits", "4"]).bn_splits == 4
    _run(demo, tmp_path, "--epochs", "1", "--bn-splits", "4")
    ckpt = torch.load(tmp_path / "r" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["args"]["bn_splits"] == 4
    state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}  # original MoCo layout
    backbone = {k.removeprefix("encoder_q."): v for k, v in state.items()
                if k.startswith("encoder_q.") and ".fc." not in k}
    missing, unexpected = torchvision.models.resnet18().load_state_dict(backbone, strict=False)
    assert unexpected == [] and sorted(missing) == ["fc.bias", "fc.weight"]
    assert not torch.equal(backbone["bn1.running_mean"], torch.zeros_like(backbone["bn1.running_mean"]))


def test_training_runs_with_device_augmentation(demo, tmp_path, clean_env):
    torch.set_num_threads(1)
    run_dir = _run(demo, tmp_path, "--epochs", "1", "--augment-on", "device")
    ckpt = torch.load(run_dir / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["args"]["augment_on"] == "device"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)


def test_random_boxes_reach_the_dataset_header_log_and_checkpoint(demo, tmp_path, clean_env, capsys, monkeypatch):
    """--random-boxes in a real run: the crops get the moved boxes (sizes kept), drawn for each
    epoch; the header line, every epoch record and the checkpoint's args say it is on."""
    torch.set_num_threads(1)
    drawn = []
    placed = data_module.ObjectCropDataset.placed_boxes

    def recording(self, image, boxes):
        out = placed(self, image, boxes)
        drawn.append((self.epoch, image, np.asarray(boxes).copy(), out))
        return out

    monkeypatch.setattr(data_module.ObjectCropDataset, "placed_boxes", recording)
    run_dir = _run(demo, tmp_path, "--random-boxes", "--image-size", "16")
    assert "crops, random boxes (--random-boxes))" in capsys.readouterr().out
    assert {e for e, *_ in drawn} == {0, 1} and len(drawn) == 2 * 4 * 32  # 2 epochs of 4 batches of 32 images
    for _, _, boxes, out in drawn:
        np.testing.assert_allclose(out[:, 2:] - out[:, :2], boxes[:, 2:] - boxes[:, :2], atol=1e-6)
        assert not np.allclose(out, boxes)
    epochs = [r for r in _records(run_dir) if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(r["random_boxes"] is True for r in epochs)
    assert torch.load(run_dir / "checkpoint_last.pth", weights_only=True)["args"]["random_boxes"] is True


def test_scene_fallbacks_of_the_crop_are_logged_per_epoch(demo, tmp_path, clean_env, capsys):
    """Object crops on images without boxes (and no proposals) fall back to scene crops: the real
    ObjectAwareCrop counts each one, and the epoch record and line report the count."""
    torch.set_num_threads(1)
    images = tmp_path / "unboxed"
    images.mkdir()
    for path in sorted((demo / "images").iterdir())[:16]:
        (images / path.name).write_bytes(path.read_bytes())
    argv = [str(images), "-a", "resnet18", "-b", "8", "--moco-k", "8", "--image-size", "16", "-j", "0",
            "--epochs", "1", "--crop-mode", "object-object", "--seed", "0", "--output-dir", str(tmp_path / "out"),
            "--save_name", "fb", "--log-freq", "100"]
    with pytest.raises(SystemExit):  # main_moco.py: object crops need boxes or proposals
        train.main(argv)
    from ssl_crops import distributed
    with pytest.warns(UserWarning, match="no image of .* has boxes"):  # the library's train_worker falls back
        distributed.launch(worker.train_worker, options.parse_args(argv))
    epochs = [r for r in _records(tmp_path / "out" / "fb") if r["type"] == "epoch"]
    assert [r["scene_fallbacks"] for r in epochs] == [16]
    assert "scene_fallbacks 16" in capsys.readouterr().out


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_refuses_and_the_first_finishes_intact(demo, tmp_path):
    """The same command twice (a second terminal, a job submitted twice): the second stops at
    once with one line naming the holder, having touched nothing; the first is not disturbed."""
    cmd = [sys.executable, "main_moco.py", str(demo / "images"), "-a", "resnet18", "-b", "16", "--moco-k", "64",
           "--image-size", "32", "-j", "0", "--epochs", "2", "--log-freq", "1", "--seed", "0",
           "--output-dir", str(tmp_path), "--save_name", "same"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_JOB_ID")},
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in first.stdout:  # training: it holds the folder
        lines.append(line)
        if " step 1 " in line:
            break
    run = tmp_path / "same"
    first.send_signal(signal.SIGSTOP)  # still running (stopped) while the second one starts
    try:
        before = {p.name: p.read_bytes() for p in run.iterdir()}
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and second.stdout == ""  # a user mistake
    err = second.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("main_moco.py: error: ") and "in use by another run" in err[0], err
    assert f"pid {first.pid} on {socket.gethostname()} since " in err[0]
    out, errs = first.communicate(timeout=300)
    assert first.returncode == 0, errs
    assert "moved" not in out + errs
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_0002.pth", "checkpoint_last.pth",
                                                     "checkpoint_prev.pth", "log.jsonl"]  # lock released
    records = _records(run)
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 17))  # one run's log, whole
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]
    assert torch.load(run / "checkpoint_last.pth", weights_only=True)["step"] == 16


def _subset_annotations(demo, folder, drop):
    """The demo's annotation dicts without their first ``drop`` images, in ``folder``."""
    from ssl_crops.files import load_npy_dict

    folder.mkdir()
    for name in ("images_selected_new.npy", "images_selected_with_all_features.npy"):
        d = load_npy_dict(demo / name)
        np.save(folder / name, {k: d[k] for k in list(d)[drop:]}, allow_pickle=True)
    return folder / "images_selected_new.npy"


@pytest.mark.slow
def test_resume_checks_the_model_settings_and_the_data(demo, tmp_path, clean_env, capsys):
    torch.set_num_threads(1)
    _run(demo, tmp_path, "--epochs", "1")
    run = tmp_path / "r"
    files = {p.name: p.read_bytes() for p in run.iterdir()}
    assert torch.load(run / "checkpoint_last.pth", weights_only=True)["dataset"]["images"] == 136
    capsys.readouterr()
    for epochs in ("2", "1"):  # another architecture: one line, exit 2, nothing loaded or written; also
        with pytest.raises(SystemExit) as err:  # when the run is finished (--epochs 1): not "nothing to do"
            _run(demo, tmp_path, "--resume", "auto", "-a", "resnet34", "--image-size", "48", "--epochs", epochs)
        msg = capsys.readouterr().err
        assert err.value.code == 2 and msg.count("\n") == 1 and "-a resnet18 in the checkpoint, resnet34 now" in msg
        assert "--image-size 32 in the checkpoint, 48 now" in msg and "another --save_name" in msg
        assert "(-a resnet18 --image-size 32)" in msg  # the flags that work
        assert {p.name: p.read_bytes() for p in run.iterdir()} == files

    labels = _subset_annotations(demo, tmp_path / "val", drop=6)  # other data: 130 of the images
    box = ("--sampling", "box")  # the 6 others stay unused (under --sampling image they would be cropped too)
    with pytest.raises(SystemExit) as err:
        _run(demo, tmp_path, "--resume", "auto", "--labels", str(labels), *box)
    assert err.value.code == 2
    assert re.search("dataset of 136 images, .* in the checkpoint, 130 images, .* now", capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    _run(demo, tmp_path, "--resume", "auto", "--labels", str(labels), "--allow-new-data", "--lr", "0.1", *box)
    out = capsys.readouterr().out
    assert "on other data (--allow-new-data): 136 images" in out and "lr 0.05 -> 0.1" in out
    ckpt = torch.load(run / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["dataset"]["images"] == 130  # the run goes on with the new data


def _mistakes(tmp_path, demo):
    """``(name, argv)`` of the mistakes a newcomer makes with the data flags."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "txt").mkdir()
    for k in range(3):
        (tmp_path / "txt" / f"{k}.txt").write_text("notes")
    (tmp_path / "blank.json").write_text("")
    (tmp_path / "braces.json").write_text("{}")
    images = str(demo / "images")
    other = json.loads((demo / "annotations_train.json").read_text())
    for im in other["images"]:
        im["file_name"] = "other_" + im["file_name"]  # a json of photos that are not in the folder
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "photos").mkdir()
    for name in sorted(os.listdir(demo / "images"))[:3]:  # photos without annotations
        shutil.copy(demo / "images" / name, tmp_path / "photos" / name)
    return [("other photos' json", [images, "--coco", str(tmp_path / "other.json")],
             "none of the 136 images named by"),
            ("object crops, no boxes", [str(tmp_path / "photos"), "--bing_crops"], "no boxes and no --proposals"),
            ("wrong path", [str(tmp_path / "nope")], "nope: image folder not found"),
            ("empty folder", [str(tmp_path / "empty")], "empty: no images"),
            ("folder of .txt", [str(tmp_path / "txt")], "found 3 other files, e.g. 0.txt"),
            ("empty json", [images, "--coco", str(tmp_path / "blank.json")], "blank.json: not a COCO detection json"),
            ("{} json", [images, "--coco", str(tmp_path / "braces.json")], "braces.json: not a COCO detection json"),
            ("batch > dataset", [images, "-b", "1024"], "fewer than the batch size 1024 (-b)"),
            ("json as --labels", [images, "--labels", str(tmp_path / "braces.json")], "pass a COCO or LVIS json as --coco"),
            ("missing proposals", [images, "--proposals", str(tmp_path / "bing.npz")], "--proposals"),
            ("random boxes of scene crops", [images, "--random-boxes"], "scene crops use no boxes")]


def test_user_mistakes_are_one_error_line_exit_2_and_leave_no_run_folder(demo, tmp_path, clean_env, capsys):
    for name, argv, message in _mistakes(tmp_path, demo):
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        with pytest.raises(SystemExit) as err:
            train.main([*argv, "--output-dir", str(out), "-j", "0"])
        stderr = capsys.readouterr().err.strip()
        assert err.value.code == 2, name
        assert stderr.startswith("main_moco.py: error: ") and "\n" not in stderr and message in stderr, (name, stderr)
        assert not out.exists(), name


def test_resume_from_another_architecture_says_which(demo, tmp_path, clean_env, capsys):
    torch.save({"arch": "resnet50", "epoch": 3, "state_dict": {}}, tmp_path / "r50.pth")
    with pytest.raises(SystemExit) as err:
        train.main([str(demo / "images"), "-a", "resnet18", "--resume", str(tmp_path / "r50.pth"), "--output-dir",
                    str(tmp_path / "out")])
    assert err.value.code == 2 and not (tmp_path / "out").exists()
    assert "r50.pth: holds a resnet50 checkpoint, not resnet18: pass -a resnet50" in capsys.readouterr().err


@pytest.mark.slow
def test_user_mistake_from_the_command_line(demo, tmp_path):
    """The same from a shell: no traceback, and the demo's parent folder is left as it was."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "main_moco.py", str(demo / "images"), "-b", "1024", "--output-dir",
                           str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("main_moco.py: error: ") and not (tmp_path / "out").exists()


def test_pixel_coordinates_in_the_dicts_stop_main_moco(demo_root, tmp_path, clean_env, capsys):
    from ssl_crops.boxes import load_npy_dict

    boxes = load_npy_dict(demo_root / "images_selected_with_all_features.npy")
    for entry in boxes.values():
        for row in entry["data"]:
            row[4:8] = [str(float(v) * 300) for v in row[4:8]]
    np.save(tmp_path / "boxes.npy", boxes, allow_pickle=True)
    with pytest.raises(SystemExit) as err:
        train.main([str(demo_root / "images"), "--boxes", str(tmp_path / "boxes.npy"), "--labels",
                    str(demo_root / "images_selected_new.npy"), "--output-dir", str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert err.value.code == 2 and "boxes.npy" in stderr and "look like pixel coordinates" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bad_images_are_counted_per_image_without_warnings(bad_images, tmp_path, clean_env, capsys):
    """Unreadable images holding several boxes each, one item per box: the epoch counts images, not
    items, and the run names them in its log instead of warning once per worker."""
    coco = json.loads(bad_images.coco.read_text())
    ids = {im["file_name"]: im["id"] for im in coco["images"]}
    for name in bad_images.unreadable:
        for k in range(3):
            coco["annotations"].append({"id": 1000 + 10 * ids[name] + k, "image_id": ids[name], "category_id": 1,
                                        "bbox": [k, k, 10, 10]})
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    argv = [str(bad_images.images), "--coco", str(tmp_path / "coco.json"), "--bing_crops", "-a", "resnet18",
            "-b", "8", "--moco-k", "40", "--image-size", "16", "-j", "2", "--epochs", "1", "--seed", "0",
            "--output-dir", str(tmp_path), "--save_name", "bad", "--log-freq", "100", "--min-region", "8"]
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train.main(argv)
    epochs = [r for r in _records(tmp_path / "bad") if r["type"] == "epoch"]
    assert [r["bad_images"] for r in epochs] == [3]  # 12 items of 3 images (missing.jpg: left out beforehand)
    assert "3 unreadable images skipped" in capsys.readouterr().out
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.slow
def test_knn_monitor_reads_a_coco_test_json(demo, tmp_path, clean_env, capsys):
    torch.set_num_threads(1)
    argv = [str(demo / "images"), "-a", "resnet18", "-b", "32", "--moco-k", "64", "--image-size", "32", "-j", "0",
            "--bing_crops", "--epochs", "1", "--knn-every", "1", "--test-coco", str(demo / "annotations_test.json"),
            "--test-images", str(demo / "images"), "--output-dir", str(tmp_path), "--save_name", "k", "--seed", "0"]
    train.main(argv)
    summary = [r for r in _records(tmp_path / "k") if r["type"] == "epoch"][-1]
    assert 0.0 <= summary["knn20_map_pct"] <= 100.0


class _FakeWriter:
    """Stands in for torch.utils.tensorboard.SummaryWriter (tensorboard is an optional extra)."""
    made = []

    def __init__(self, log_dir, purge_step=None):
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_tensorboard_and_keep_checkpoints(demo, tmp_path, clean_env, monkeypatch, one_thread):
    from ssl_crops import run
    monkeypatch.setattr(run, "summary_writer", lambda: _FakeWriter)
    monkeypatch.setattr(options, "summary_writer", lambda: _FakeWriter)
    _run(demo, tmp_path, "--tensorboard", str(tmp_path / "tb"), "--knn-every", "2", "--keep-checkpoints", "1")
    writer = _FakeWriter.made[-1]
    assert writer.log_dir == str(tmp_path / "tb") and writer.purge_step is None and writer.closed
    tags = {tag for tag, _, _ in writer.scalars}
    assert {"step/loss", "step/acc1", "step/lr", "step/images_per_s", "epoch/loss", "epoch/lr",
            "epoch/images_per_s", "epoch/bad_images", "epoch/knn20_map_pct"} <= tags
    logged = [(r["step"], r["loss"]) for r in _records(tmp_path / "r") if r["type"] == "epoch"]
    assert [(s, v) for tag, v, s in writer.scalars if tag == "epoch/loss"] == logged
    assert sorted(p.name for p in (tmp_path / "r").glob("checkpoint_*.pth")) == [
        "checkpoint_0002.pth", "checkpoint_last.pth", "checkpoint_prev.pth"]  # --save-freq 1, newest one kept


@pytest.mark.slow
def test_a_queue_cut_to_the_data_resumes_on_fewer_images(demo, tmp_path, clean_env, capsys):
    """K is cut to the dataset (65536 -> 128 for 136 images); 10 images then go missing from the
    folder: the run warns, trains on the 126 left, names the 10 in missing_images.txt, and
    --allow-new-data resumes with the checkpoint's K and queue (a cut to 96 would be refused)."""
    torch.set_num_threads(1)
    shutil.copytree(demo, tmp_path / "d")  # images and annotations: its folder loses images below
    argv = [str(tmp_path / "d" / "images"), "-a", "resnet18", "-b", "32", "--image-size", "32", "-j", "0",
            "--bing_crops", "--sampling", "image", "--seed", "0", "--output-dir", str(tmp_path / "out"), "--save_name", "r"]
    with pytest.warns(UserWarning, match="queue size --moco-k 65536 >= 136 samples: using K=128"):
        train.main([*argv, "--epochs", "1"])
    index = load_index(tmp_path / "d" / "images", labels=demo / "images_selected_new.npy")
    gone = sorted(index.path(i) for i in range(10))
    for name in gone:
        (tmp_path / "d" / "images" / name).unlink()
    capsys.readouterr()
    with pytest.warns(UserWarning, match=r"10 of the 136 images named by .* are not in .*: using the other 126"):
        train.main([*argv, "--epochs", "2", "--resume", "auto", "--allow-new-data"])
    out = capsys.readouterr().out
    assert "resnet18 MoCo K=128 on 126 samples" in out and "136 images, " in out
    ckpt = torch.load(tmp_path / "out" / "r" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["args"]["moco_k"] == 128 and ckpt["moco_k_asked"] == 65536
    assert sorted((tmp_path / "out" / "r" / "missing_images.txt").read_text().split()) == gone


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_save_leaves_a_readable_checkpoint(demo, tmp_path):
    """Ctrl-C to the process group says at once that the run stops and saves; a second one while
    the checkpoint is being written lets the atomic write finish: no write error, the run stops
    as after one signal and resumes. A second one right after the first (in the step) stops at
    once with one line, the previous checkpoint intact."""
    cmd = [sys.executable, "main_moco.py", str(demo / "images"), "-a", "resnet18", "-b", "8", "--moco-k", "64",
           "--image-size", "32", "-j", "1", "--epochs", "1", "--log-freq", "1", "--seed", "0",
           "--output-dir", str(tmp_path), "--save_name", "r", "--resume", "auto"]
    env = {**{k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID")},
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "r"

    def twice_during_the_save(proc):
        os.killpg(proc.pid, signal.SIGINT)
        deadline = time.monotonic() + 60
        while not (writing := list(run.glob(".checkpoint_last.pth.*.tmp"))) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert writing, "no checkpoint write seen"
        os.killpg(proc.pid, signal.SIGINT)

    proc, out, err = _run_until(cmd, env, " step 1 ", twice_during_the_save)
    assert proc.returncode == 0, out + err
    assert "SIGINT: stopping after this step and saving; Ctrl-C again stops at once" in err, err
    assert "letting the atomic write finish, then stopping" in err and "cannot write" not in err
    assert "Traceback" not in err and "SIGINT: stopped after step" in out
    saved = torch.load(run / "checkpoint_last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["epoch_state"]["batches"] == saved["step"] >= 1
    assert not list(run.glob(".*.tmp"))

    before = (run / "checkpoint_last.pth").read_bytes()
    proc, out, err = _run_until(cmd, env, f" step {saved['step'] + 1} ",
                                lambda p: [os.killpg(p.pid, signal.SIGINT) for _ in range(2)])
    lines = err.strip().splitlines()
    if proc.returncode == 130:  # the second arrived in the step: no save, the last checkpoint stays
        assert lines[-1].startswith("main_moco.py: interrupted by a second Ctrl-C") and "Traceback" not in err
        assert (run / "checkpoint_last.pth").read_bytes() == before
    else:  # both arrived before the handler ran a step boundary check: one stop, saved
        assert proc.returncode == 0 and "cannot write" not in err, err
    torch.load(run / "checkpoint_last.pth", weights_only=True)  # readable either way
    assert not list(run.glob(".*.tmp"))


def test_resume_auto_is_rank_0s_choice_on_every_rank(tmp_path, monkeypatch):
    """Rank 1 of 2, whose file system shows checkpoint_last at step 6 while rank 0 chose
    checkpoint_prev (step 3): it loads rank 0's file; a file of another step there is refused."""
    from ssl_crops import distributed as du
    from ssl_crops.checkpoint import ResumeMismatch, write_checkpoint
    from ssl_crops.train.worker import agreed_resume
    for name, step in (("checkpoint_last.pth", 6), ("checkpoint_prev.pth", 3)):
        write_checkpoint({"state_dict": {}, "epoch": step // 3, "step": step}, tmp_path / name)
    monkeypatch.setattr(du, "get_world_size", lambda: 2)
    monkeypatch.setattr(du, "get_rank", lambda: 1)
    monkeypatch.setattr(du, "is_main_process", lambda: False)
    chosen = str(tmp_path / "checkpoint_prev.pth")
    monkeypatch.setattr(du, "broadcast_object", lambda obj: (chosen, 3))
    path, ckpt = agreed_resume("auto", tmp_path)
    assert path == chosen and ckpt["step"] == 3
    monkeypatch.setattr(du, "broadcast_object", lambda obj: (chosen, 4))  # rank 0 read step 4 in that file
    with pytest.raises(ResumeMismatch, match="rank 1 reads step 3 .* rank 0 step 4"):
        agreed_resume("auto", tmp_path)
    monkeypatch.setattr(du, "broadcast_object", lambda obj: "--resume auto: no readable checkpoint")
    with pytest.raises(FileExistsError, match="no readable checkpoint"):
        agreed_resume("auto", tmp_path)


def test_deterministic_flag_sets_the_cuda_kernels(monkeypatch):
    import torch
    from ssl_crops.train.worker import cuda_determinism
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert train.build_parser().parse_args(["D", "--deterministic"]).deterministic
    try:
        cuda_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        cuda_determinism(False)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
