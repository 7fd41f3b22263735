"""The trainer: command line, queue checks, schedules, checkpoints, exact resume, original CLI."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from ssl_crops import checkpoint, train
from ssl_crops.data import CorruptImageError, load_index
from ssl_crops.moco import MoCo
from ssl_crops.train import loop, options, worker
from ssl_crops.demo import make_demo

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = ("python main_moco.py DATA -a resnet50 --lr 0.015 --batch-size 128 --dist-url tcp://localhost:10005 "
            "--world-size 1 --rank 0 -j 8 --moco-t 0.2 --mlp --aug-plus --cos --save_name NAME "
            "--multiprocessing-distributed --bing_crops")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """136 small training images: just above the original command's batch size of 128."""
    return make_demo(tmp_path_factory.mktemp("demo"), num_train=136, num_test=8, min_size=40, max_size=64)


@pytest.fixture
def clean_env(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(v, raising=False)


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
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert train.build_parser().parse_args(["D"]).workers == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)
    assert train.build_parser().parse_args(["D"]).workers == 32
    assert "in pixels of the input image" in " ".join(train.build_parser().format_help().split())  # --min-region


def test_queue_size():
    args = Namespace(moco_k=96)
    with pytest.raises(ValueError, match="not divisible"):
        train.queue_size(args, 1000, 64)
    with pytest.raises(ValueError, match="fewer than"):
        train.queue_size(args, 10, 64)
    with pytest.warns(UserWarning, match="whole dataset"):
        assert train.queue_size(Namespace(moco_k=65536), 160, 32) == 128
    with pytest.warns(UserWarning):
        assert train.queue_size(Namespace(moco_k=65536), 136, 128) == 128
    assert train.queue_size(Namespace(moco_k=128), 1000, 64) == 128


@pytest.mark.parametrize("world,resumed_world", [(2, 1), (2, 4), (3, 3), (1, 2)])
def test_mid_epoch_resume_with_another_number_of_processes_visits_the_rest(world, resumed_world):
    """A global batch of 12 over ``world`` ranks, stopped after 2 steps, resumed over
    ``resumed_world`` ranks: every item of the epoch is visited once, and the ranks' first
    steps are the uninterrupted epoch's steps (the same items, whatever the ranks)."""
    data, batch, done = range(100), 12, 2
    def steps(w, skip):
        shares = []
        for r in range(w):
            s = train.EpochSampler(data, w, r, seed=5)
            s.set_epoch(0, skip)
            assert len(s) == len(list(s))
            shares.append([i for _, i in s])
        b = batch // w
        return [sorted(i for sh in shares for i in sh[k * b:(k + 1) * b]) for k in range(len(shares[0]) // b)]
    whole = steps(world, 0)
    resumed = steps(resumed_world, done * batch)
    assert resumed == whole[done:done + len(resumed)] and len(resumed) >= len(whole) - done - 1
    seen = [i for step in whole[:done] + resumed for i in step]
    assert len(seen) == len(set(seen))


def test_learning_rate_schedules():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cos = Namespace(lr=0.4, cos=True, epochs=10, schedule=[])
    assert train.adjust_learning_rate(opt, 0, cos) == pytest.approx(0.4)
    assert train.adjust_learning_rate(opt, 5, cos) == pytest.approx(0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    step = Namespace(lr=1.0, cos=False, epochs=10, schedule=[3, 6])
    assert [train.adjust_learning_rate(opt, e, step) for e in (2, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])


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
    with pytest.raises(SystemExit, match="holds a run .*--resume auto"):  # never starts afresh over a run
        _run(demo, tmp_path, "--epochs", "1")
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


class _CountingCrop:
    """A box-aware transform that falls back to a scene crop for every third call (per process)."""
    uses_boxes = True

    def __init__(self):
        self.scene_fallbacks, self.calls = 0, 0

    def __call__(self, img, boxes):
        self.calls += 1
        self.scene_fallbacks += self.calls % 3 == 0
        return torch.zeros(1), torch.zeros(1)


def test_event_counts_from_loader_workers_add_up(bad_images):
    """Each item reports what it caused in the worker that loaded it; the sums over two workers
    are the totals of one process loading everything."""
    from torch.utils.data import DataLoader

    from ssl_crops.boxes import BoxIndex
    from ssl_crops.data import ObjectCropDataset

    dataset = ObjectCropDataset(bad_images.images, BoxIndex.from_coco(bad_images.coco), _CountingCrop())
    seeded = train.SeededDataset(dataset, seed=0)
    keys = [(0, i) for i in range(len(dataset))]
    with pytest.warns(RuntimeWarning):
        alone = [seeded[k] for k in keys]
    assert sum(item[2] for item in alone).tolist() == [4, 44 // 3]
    fresh = ObjectCropDataset(bad_images.images, BoxIndex.from_coco(bad_images.coco), _CountingCrop())
    loader = DataLoader(train.SeededDataset(fresh, seed=0), batch_size=4, sampler=keys, num_workers=2)
    batches = list(loader)  # 11 batches: worker 0 loads 6 (24 items), worker 1 loads 5 (20 items)
    assert sum(b[2].sum(0) for b in batches).tolist() == [4, 24 // 3 + 20 // 3]
    skipped = "".join("".join(b[3]) for b in batches)
    assert sorted(line.split("\t")[0] for line in skipped.splitlines()) == sorted(bad_images.unreadable)


@pytest.mark.slow
def test_mid_epoch_resume_with_another_batch_size_is_refused(demo, tmp_path, clean_env, monkeypatch):
    torch.set_num_threads(1)
    with monkeypatch.context() as m:
        _signal_at(m, 1)
        _run(demo, tmp_path, "--epochs", "1")  # stops after step 1 of 4
    with pytest.raises(ValueError, match="stopped mid-epoch with --batch-size 32; resume it with that batch size"):
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
    train.main(argv)
    out = capsys.readouterr().out
    epochs = [r for r in _records(tmp_path / "bad") if r["type"] == "epoch"]
    assert [r["bad_images"] for r in epochs] == [4, 4]  # 44 items in 11 batches: each bad one visited once
    assert "bad_images 4" in out and "4 unreadable images skipped" in out
    lines = (tmp_path / "bad" / "bad_images.txt").read_text().splitlines()
    assert sorted(line.split("\t")[0] for line in lines) == sorted(bad_images.unreadable)  # named once
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
    assert summary["type"] == "epoch" and 0.0 <= summary["knn20_map"] <= 1.0
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


def test_bing_crops_fit_proposals_for_images_without_boxes(tmp_path, demo_root):
    from ssl_crops.boxes import load_npy_dict
    from ssl_crops.proposals import Bing
    from ssl_crops.train import build_dataset, parse_args

    labels = load_npy_dict(demo_root / "images_selected_new.npy")
    boxes = load_npy_dict(demo_root / "images_selected_with_all_features.npy")
    unboxed = sorted(labels)[::2]
    for image_id in unboxed:
        del boxes[image_id]
    np.save(tmp_path / "labels.npy", labels, allow_pickle=True)
    np.save(tmp_path / "boxes.npy", boxes, allow_pickle=True)
    argv = [str(demo_root / "images"), "--bing_crops", "--labels", str(tmp_path / "labels.npy"),
            "--boxes", str(tmp_path / "boxes.npy"), "--image-size", "32", "--seed", "0"]
    # the original method (one item per box) never visits images without boxes: no BING model
    dataset, index = build_dataset(parse_args(argv), tmp_path / "run")
    assert dataset.sampling == "box" and dataset.proposals is None and not (tmp_path / "run").exists()
    assert len(dataset) == index.num_boxes
    args = parse_args(argv + ["--sampling", "image"])
    dataset, index = build_dataset(args, tmp_path / "run")
    assert isinstance(dataset.proposals, Bing) and (tmp_path / "run" / "bing.npz").is_file()
    i = next(j for j in range(len(index)) if index.image_id(j) in unboxed)
    assert index.boxes(i).shape[0] == 0
    (q, k), _ = dataset[i]
    assert q.shape == (3, 32, 32)
    img = Image.open(demo_root / "images" / index.path(i))
    props = dataset.proposals.proposals_for(index.image_id(i), img)
    assert props.shape[1] == 4 and len(props) >= args.bing_topk and (props >= 0).all() and (props <= 1).all()
    # a run without any boxes falls back to scene crops with a warning
    args = args.replace(labels=None, boxes=None, data=str(tmp_path / "flat"))
    (tmp_path / "flat").mkdir()
    img.save(tmp_path / "flat" / "a.jpg")
    with pytest.warns(UserWarning, match="no image .* has boxes"):
        flat, _ = build_dataset(args, tmp_path / "run2")
    assert flat.proposals is None


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


def test_bing_crops_alone_is_the_original_method(demo_root, tmp_path, capsys):
    from ssl_crops.train import build_dataset, parse_args

    dataset, index = build_dataset(parse_args([str(demo_root / "images"), "--bing_crops"]), tmp_path)
    crop = dataset.transform
    assert (crop.mode, crop.geometry, crop.dilation, crop.min_region, crop.anchor) == (
        "object-object", "original", 0.2, 224, False)
    assert (crop.scale, crop.object_scale, crop.size, crop.swap) == ((0.2, 1.0), (0.0, 1.0), (224, 224), True)
    assert dataset.sampling == "box" and len(dataset) == index.num_boxes > len(index)
    seen = np.concatenate([dataset._image_and_boxes(i)[1] for i in range(len(dataset))])  # one box per item
    np.testing.assert_array_equal(seen, index.flat_boxes)
    with pytest.warns(UserWarning, match="not used under --sampling box"):
        build_dataset(parse_args([str(demo_root / "images"), "--bing_crops", "--proposals", "p.npz"]), tmp_path)
    scene, _ = build_dataset(parse_args([str(demo_root / "images")]), tmp_path)
    assert scene.transform.mode == "scene" and scene.sampling == "image" and len(scene) == len(index)


def test_crop_flags_reach_the_transform(demo_root, tmp_path):
    from ssl_crops.train import build_dataset, parse_args

    args = parse_args([str(demo_root / "images"), "--bing_crops", "--crop-geometry", "relative", "--min-region", "96",
                       "--min-scale", "0.3", "--rescale_parameter", "0.1", "--dilation", "0.5", "--anchor",
                       "--sampling", "image", "--image-size", "48", "--crop-mode", "object-scene"])
    dataset, index = build_dataset(args, tmp_path)
    crop = dataset.transform
    assert (crop.mode, crop.geometry, crop.min_region, crop.scale, crop.object_scale, crop.dilation, crop.anchor,
            crop.size) == ("object-scene", "relative", 96, (0.3, 1.0), (0.1, 1.0), 0.5, True, (48, 48))
    assert dataset.sampling == "image" and len(dataset) == len(index)
    assert not parse_args(["D", "--anchor", "--no-anchor"]).anchor
    with pytest.raises(SystemExit):
        parse_args(["D", "--crop-geometry", "paper"])


def test_demo_scales_the_minimum_region(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images_selected_new.npy").touch()
    args = train.parse_args(["--demo", str(tmp_path)])
    assert args.min_region == args.image_size == 64 and args.bing_crops and args.sampling is None
    assert train.parse_args(["--demo", str(tmp_path), "--min-region", "100"]).min_region == 100


def test_augment_on_device_gives_uint8_crops_and_augments_in_the_step(demo, tmp_path, one_thread):
    from ssl_crops.transforms import BatchAugment

    assert train.parse_args(["D"]).augment_on is None  # resolved per device: cpu here, device with CUDA
    args = train.parse_args([str(demo / "images"), "--bing_crops", "--aug-plus", "--image-size", "32",
                             "--augment-on", "device", "--seed", "0"])
    dataset, _ = train.build_dataset(args, tmp_path / "run")
    (q, k), _ = dataset[0]
    assert q.dtype == k.dtype == torch.uint8 and q.shape == (3, 32, 32)
    args = args.replace(augment_on="cpu")
    (q_cpu, _), _ = train.build_dataset(args, tmp_path / "run")[0][0]
    assert q_cpu.dtype == torch.float32 and q_cpu.shape == (3, 32, 32)

    batch = torch.stack([dataset[i][0][0] for i in range(8)]), torch.stack([dataset[i][0][1] for i in range(8)])
    losses = []
    for on_device in (True, False):
        torch.manual_seed(0)
        model = MoCo(resnet18, dim=16, K=32, m=0.99, T=0.2, mlp=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        torch.manual_seed(1)
        if on_device:
            loss, _ = train.train_step(model, *batch, opt, scaler, memory_format=torch.channels_last,
                                       augment=BatchAugment())
        else:  # the same augmentation done by hand before the step
            aug = BatchAugment()
            im_q, im_k = aug(batch[0]), aug(batch[1])
            loss, _ = train.train_step(model, im_q, im_k, opt, scaler)
        losses.append(loss.item())
    assert np.isfinite(losses[0]) and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_training_runs_with_device_augmentation(demo, tmp_path, clean_env):
    torch.set_num_threads(1)
    run_dir = _run(demo, tmp_path, "--epochs", "1", "--augment-on", "device")
    ckpt = torch.load(run_dir / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["args"]["augment_on"] == "device"
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)


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
    with pytest.warns(UserWarning, match="no image of .* has boxes"):
        train.main(argv)
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
    assert second.returncode != 0 and second.stdout == ""
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
    with pytest.raises(SystemExit) as err:  # another architecture: one line, nothing loaded or written
        _run(demo, tmp_path, "--resume", "auto", "-a", "resnet34", "--image-size", "48")
    msg = str(err.value)
    assert "\n" not in msg and "-a resnet18 in the checkpoint, resnet34 now" in msg
    assert "--image-size 32 in the checkpoint, 48 now" in msg and "another --save_name" in msg
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files

    labels = _subset_annotations(demo, tmp_path / "val", drop=6)  # other data: 130 of the images
    with pytest.raises(SystemExit, match="dataset of 136 images, .* in the checkpoint, 130 images, .* now"):
        _run(demo, tmp_path, "--resume", "auto", "--labels", str(labels))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == files
    _run(demo, tmp_path, "--resume", "auto", "--labels", str(labels), "--allow-new-data", "--lr", "0.1")
    out = capsys.readouterr().out
    assert "on other data (--allow-new-data): 136 images" in out and "lr 0.05 -> 0.1" in out
    ckpt = torch.load(run / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["dataset"]["images"] == 130  # the run goes on with the new data


# --------------------------------------------------------------------------- user mistakes, box sources
def _mistakes(tmp_path, demo):
    """``(name, argv)`` of the mistakes a newcomer makes with the data flags."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "txt").mkdir()
    for k in range(3):
        (tmp_path / "txt" / f"{k}.txt").write_text("notes")
    (tmp_path / "blank.json").write_text("")
    (tmp_path / "braces.json").write_text("{}")
    images = str(demo / "images")
    return [("wrong path", [str(tmp_path / "nope")], "nope: image folder not found"),
            ("empty folder", [str(tmp_path / "empty")], "empty: no images"),
            ("folder of .txt", [str(tmp_path / "txt")], "found 3 other files, e.g. 0.txt"),
            ("empty json", [images, "--coco", str(tmp_path / "blank.json")], "blank.json: not a COCO detection json"),
            ("{} json", [images, "--coco", str(tmp_path / "braces.json")], "braces.json: not a COCO detection json"),
            ("batch > dataset", [images, "-b", "1024"], "fewer than the batch size 1024 (-b)"),
            ("json as --labels", [images, "--labels", str(tmp_path / "braces.json")], "pass a COCO or LVIS json as --coco"),
            ("missing proposals", [images, "--proposals", str(tmp_path / "bing.npz")], "--proposals")]


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


def test_every_run_says_where_its_boxes_come_from(demo_root, tmp_path, capsys):
    """Dicts found beside DIR are named (item 7), and what was dropped or left out with them."""
    train.build_dataset(train.parse_args([str(demo_root / "images"), "--bing_crops"]), tmp_path / "run")
    out = capsys.readouterr().out
    assert f"boxes: {demo_root / 'images_selected_new.npy'} + {demo_root / 'images_selected_with_all_features.npy'}: " \
           f"24 images" in out


def test_bing_proposals_recipe_for_images_without_boxes(demo_root, tmp_path, capsys):
    """README's recipe: a BING model (fitted on any annotated images) and a folder without boxes;
    the run caches the folder's proposals once in <run>/proposals.npz and says so."""
    from ssl_crops.proposals import Bing, ProposalCache

    index = load_index(demo_root / "images")
    Bing.fit_index(index, demo_root / "images", range(8), seed=0).save(tmp_path / "bing.npz")
    (tmp_path / "photos").mkdir()
    for name in sorted(os.listdir(demo_root / "images"))[:6]:
        Image.open(demo_root / "images" / name).save(tmp_path / "photos" / name)
    argv = [str(tmp_path / "photos"), "--bing_crops", "--proposals", str(tmp_path / "bing.npz"), "--image-size", "32",
            "--seed", "0", "-j", "1"]
    dataset, _ = train.build_dataset(train.parse_args(argv), tmp_path / "run")
    out = capsys.readouterr().out
    assert isinstance(dataset.proposals, ProposalCache) and len(dataset.proposals) == 6
    assert "(image folder, no boxes): 6 images, 0 boxes" in out
    assert f"6 of 6 images have no boxes: object crops from their top 10 BING proposals from " \
           f"{tmp_path / 'run' / 'proposals.npz'} (model {tmp_path / 'bing.npz'})" in out
    (q, k), _ = dataset[0]
    assert q.shape == (3, 32, 32) and dataset.transform.scene_fallbacks == 0
    mtime = (tmp_path / "run" / "proposals.npz").stat().st_mtime_ns
    train.build_dataset(train.parse_args(argv), tmp_path / "run")  # a resumed run reuses the cache
    assert (tmp_path / "run" / "proposals.npz").stat().st_mtime_ns == mtime


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
    assert [r["bad_images"] for r in epochs] == [4]  # 16 items of 4 images
    assert "4 unreadable images skipped" in capsys.readouterr().out
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.slow
def test_knn_monitor_reads_a_coco_test_json(demo, tmp_path, clean_env, capsys):
    torch.set_num_threads(1)
    argv = [str(demo / "images"), "-a", "resnet18", "-b", "32", "--moco-k", "64", "--image-size", "32", "-j", "0",
            "--bing_crops", "--epochs", "1", "--knn-every", "1", "--test-coco", str(demo / "annotations_test.json"),
            "--test-images", str(demo / "images"), "--output-dir", str(tmp_path), "--save_name", "k", "--seed", "0"]
    train.main(argv)
    summary = [r for r in _records(tmp_path / "k") if r["type"] == "epoch"][-1]
    assert 0.0 <= summary["knn20_map"] <= 1.0


def test_knn_test_index_of_an_lvis_json_is_federated(demo_root, tmp_path):
    """The LVIS form: ``coco_url`` paths under the COCO folder, federated targets, training classes."""
    coco = json.loads((demo_root / "annotations_test.json").read_text())
    for im in coco["images"]:
        im["coco_url"] = f"http://images.cocodataset.org/images/{im.pop('file_name')}"
        im["neg_category_ids"], im["not_exhaustive_category_ids"] = [coco["categories"][0]["id"]], []
    for a in coco["annotations"]:
        a.pop("iscrowd", None)
    (tmp_path / "lvis.json").write_text(json.dumps(coco))
    args = train.parse_args([str(demo_root / "images"), "--knn-every", "1", "--test-coco", str(tmp_path / "lvis.json"),
                             "--test-images", str(demo_root)])
    index = load_index(demo_root / "images")
    test = train.knn_test_index(args, index)
    assert test.federated and test.classes == index.classes and len(test) == 8
    monitor = worker._knn_monitor(args, index, test)
    assert monitor.test.root == demo_root and (demo_root / test.path(0)).is_file()
    assert (monitor.test_targets == -1).any()
    with pytest.raises(ValueError, match="only one of"):
        train.knn_test_index(train.parse_args([*sys.argv[:0], str(demo_root / "images"), "--test-coco", "a.json",
                                               "--test-labels", "b.npy"]), index)


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
            "epoch/images_per_s", "epoch/bad_images", "epoch/knn20_map"} <= tags
    logged = [(r["step"], r["loss"]) for r in _records(tmp_path / "r") if r["type"] == "epoch"]
    assert [(s, v) for tag, v, s in writer.scalars if tag == "epoch/loss"] == logged
    assert sorted(p.name for p in (tmp_path / "r").glob("checkpoint_*.pth")) == [
        "checkpoint_0002.pth", "checkpoint_last.pth", "checkpoint_prev.pth"]  # --save-freq 1, newest one kept


def test_tensorboard_without_the_package_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    with pytest.raises(SystemExit) as e:
        train.parse_args(["D", "--tensorboard", "tb"])
    assert e.value.code == 2
    assert "error: --tensorboard needs the tensorboard package: pip install 'ssl-crops[tb]'" in capsys.readouterr().err
