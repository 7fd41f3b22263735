"""Process-group setup, and MoCo / the trainer on 2 CPU ranks (gloo) under torchrun."""
import os
import signal
import socket
import subprocess
import sys
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from ssl_crops import distributed as du
from ssl_crops.demo import make_demo

REPO = Path(__file__).resolve().parents[1]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NNODES", "SLURM_JOB_NODELIST")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for v in LAUNCH_VARS:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_single_process_without_process_group(clean_env):
    info = du.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.distributed) == (0, 1, 0, False)
    assert info.device == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert du.get_world_size() == 1 and du.get_rank() == 0 and du.is_main_process()
    x = torch.arange(6.0).view(3, 2)
    assert du.all_gather_cat(x) is x
    du.barrier()


def test_single_slurm_task_is_a_single_process(clean_env):
    clean_env.setenv("SLURM_PROCID", "0")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert du.init_distributed().distributed is False


def test_launch_runs_plain_single_process(clean_env):
    args = Namespace(multiprocessing_distributed=False, world_size=-1, rank=-1, dist_url="unused", gpu=None)
    assert du.launch(lambda info, a: (info.world_size, info.distributed), args) == (1, False)


SPAWNED = textwrap.dedent("""
    import os, signal, sys, time
    from argparse import Namespace
    import torch
    from ssl_crops import distributed as du

    def work(info, args):
        if info.rank == 0:
            os.kill(os.getppid(), signal.SIGTERM)  # as SLURM or timeout would: the parent is signalled too
        time.sleep(1)
        du.barrier()
        print(f"rank {info.rank} done", flush=True)

    if __name__ == "__main__":
        torch.cuda.device_count = lambda: 2  # two ranks on the CPU (gloo) through the mp.spawn path
        du.launch(work, Namespace(multiprocessing_distributed=True, world_size=1, rank=0, gpu=None,
                                  dist_url=sys.argv[1]))
        print("parent returned", flush=True)
""")


@pytest.mark.slow
def test_legacy_spawn_parent_outlives_a_stop_signal(tmp_path):
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED)
    out = subprocess.run([sys.executable, str(script), f"tcp://127.0.0.1:{_free_port()}"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "rank 0 done" in out.stdout and "rank 1 done" in out.stdout and "parent returned" in out.stdout
    assert "SIGTERM: waiting for the processes to save and stop" in out.stdout


SPAWNED_MISTAKE = textwrap.dedent("""
    import sys
    from argparse import Namespace
    import torch
    from ssl_crops import distributed as du

    def work(info, args):
        if info.rank == 1:
            raise FileExistsError("run folder out/r is held by another run")
        du.barrier()  # rank 0 would wait here for --dist-timeout without the failure channel

    if __name__ == "__main__":
        torch.cuda.device_count = lambda: 2
        du.launch(work, Namespace(multiprocessing_distributed=True, world_size=1, rank=0, gpu=None,
                                  dist_url=sys.argv[1]), user_errors=(FileExistsError,), prog="main_moco.py")
""")


@pytest.mark.slow
def test_a_user_mistake_in_a_spawned_rank_is_one_line_and_exit_2(tmp_path):
    """Under mp.spawn (the original flags on a GPU node) a user mistake on one rank ends every
    rank with exit 2 and one error line, as in one process (mp.spawn alone gives a traceback, exit 1)."""
    script = tmp_path / "spawned.py"
    script.write_text(SPAWNED_MISTAKE)
    out = subprocess.run([sys.executable, str(script), f"tcp://127.0.0.1:{_free_port()}"], capture_output=True,
                         text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert out.returncode == 2, out.stderr[-2000:]
    assert "main_moco.py: error: run folder out/r is held by another run" in out.stderr
    assert "Traceback" not in out.stderr, out.stderr[-2000:]


def test_legacy_multiprocessing_flags_fall_back_to_one_gloo_process(clean_env, capsys):
    if torch.cuda.is_available():
        pytest.skip("CPU fallback only")
    args = Namespace(multiprocessing_distributed=True, world_size=1, rank=0,
                     dist_url=f"tcp://127.0.0.1:{_free_port()}", gpu=None)
    result = du.launch(lambda info, a: (info.rank, info.world_size, info.distributed, dist.get_backend()), args)
    assert result == (0, 1, True, "gloo")
    assert not dist.is_initialized()  # cleaned up
    assert "gloo" in capsys.readouterr().out


COLLECTIVES = {"all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_object", "all_reduce",
               "broadcast", "broadcast_object_list", "reduce", "reduce_scatter", "reduce_scatter_tensor", "all_to_all",
               "all_to_all_single", "gather", "gather_object", "scatter", "scatter_object_list", "barrier",
               "monitored_barrier", "send", "recv", "isend", "irecv", "batch_isend_irecv", "_all_gather_base"}


def test_only_the_distributed_module_calls_collectives():
    """One funnel: no module of the package but ssl_crops/distributed.py calls a
    torch.distributed collective (under any alias, or imported by name)."""
    import ast
    offenders = []
    for path in sorted((REPO / "ssl_crops").rglob("*.py")):
        if path == REPO / "ssl_crops" / "distributed.py":
            continue
        tree = ast.parse(path.read_text())
        aliases = {"torch.distributed"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name == "torch.distributed" and a.asname}
            elif isinstance(node, ast.ImportFrom) and node.module == "torch":
                aliases |= {a.asname or a.name for a in node.names if a.name == "distributed"}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
                offenders += [f"{path.name}:{node.lineno} imports {a.name}" for a in node.names if a.name in COLLECTIVES]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in COLLECTIVES and ast.unparse(node.value) in aliases:
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders


SLOW_CACHE = textwrap.dedent("""
    # the trainer, with rank 0's proposal caching made slower than --dist-timeout
    import sys, time
    import ssl_crops.proposals as proposals
    from ssl_crops import train
    propose_folder = proposals.propose_folder
    def slow(*a, **k):
        time.sleep(12)
        return propose_folder(*a, **k)
    proposals.propose_folder = slow
    train.main(sys.argv[1:])
""")


def test_two_ranks_train_on_proposals_cached_by_rank0_beyond_the_dist_timeout(tmp_path, clean_env):
    """No boxes, a BING model: rank 0 caches the folder's proposals (12 s here) while the other
    rank waits past --dist-timeout (6 s); both then train on the cache."""
    from ssl_crops.proposals import ProposalCache
    from ssl_crops.proposals.__main__ import main as proposals_main
    data = make_demo(tmp_path / "demo", num_train=24, num_test=4, min_size=48, max_size=72)
    proposals_main(["fit", "--images", str(data / "images"), "--out", str(tmp_path / "bing.npz"),
                    "--min-positives", "3", "--max-images", "8", "--rescore-top", "0"])
    photos = tmp_path / "photos" / "images"   # the same images, no annotations anywhere near
    photos.mkdir(parents=True)
    for f in (data / "images").glob("*.jpg"):    # train and test images: 28
        (photos / f.name).write_bytes(f.read_bytes())
    script = tmp_path / "slow_cache.py"
    script.write_text(SLOW_CACHE)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), str(photos), "-a", "resnet18", "--epochs", "1", "-b", "8",
           "--moco-k", "16", "--image-size", "32", "-j", "0", "--bing_crops", "--sampling", "image", "--seed", "0",
           "--proposals", str(tmp_path / "bing.npz"), "--bing-topk", "5", "--dist-timeout", "0.1",
           "--output-dir", str(out), "--save_name", "bing"]
    proc = subprocess.run(cmd, cwd=tmp_path / "photos", env={**os.environ, "OMP_NUM_THREADS": "1",
                          "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("caching BING proposals of the 28 images") == 1
    assert len(ProposalCache.load(out / "bing" / "proposals.npz")) == 28
    assert torch.load(out / "bing" / "checkpoint_last.pth", weights_only=True)["epoch"] == 1


def test_device_ordinal_wraps_over_the_visible_gpus(clean_env, monkeypatch):
    """`srun --gpus-per-task=1`: each task sees one GPU whatever its SLURM_LOCALID."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    assert du.init_distributed(local_rank=3).device == torch.device("cuda", 0)


def test_legacy_launch_of_one_process_per_node_keeps_all_workers(clean_env, monkeypatch):
    seen = {}
    monkeypatch.setattr(du, "init_distributed", lambda *a, **k: seen.update(k) or du.DistInfo())
    args = Namespace(multiprocessing_distributed=False, world_size=2, rank=1, dist_url="tcp://x:1", gpu=None)
    du.launch(lambda info, a: None, args)
    assert seen["local_world_size"] == 1  # -j is per node, and this node runs one process


WORKER = textwrap.dedent("""
    import os
    import sys
    import torch, torch.nn as nn, torch.nn.functional as F
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from ssl_crops import distributed as du
    from ssl_crops.moco import MoCo
    from ssl_crops.train import NO_BUFFER_BROADCAST, main

    torch.set_num_threads(1)

    class Net(nn.Module):  # BatchNorm, so that shuffle-BN is exercised
        def __init__(self, num_classes):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, num_classes)
        def forward(self, x):
            return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))

    info = du.init_distributed()
    assert info.distributed and info.world_size == 2 and dist.get_backend() == "gloo"
    torch.manual_seed(100 + info.rank)  # different init per rank: DDP must sync it
    model = MoCo(Net, dim=8, K=12, m=0.9, T=0.2, mlp=True)
    ddp = DistributedDataParallel(model, **NO_BUFFER_BROADCAST)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(4):
        x = torch.randn(3, 3, 8, 8)  # different data on each rank
        logits, labels = ddp(x, x + 0.1 * torch.randn_like(x))
        loss = F.cross_entropy(logits, labels)
        opt.zero_grad(); loss.backward(); opt.step()
        assert torch.isfinite(loss), loss
        assert logits.shape == (3, 13)
        assert int(model.queue_ptr) == (step + 1) * 6 % 12
        for t in [model.queue, model.queue_ptr.float(), *model.encoder_k.parameters(), *model.encoder_q.parameters()]:
            gathered = du.all_gather_cat(t.detach().reshape(1, -1))
            assert torch.equal(gathered[0], gathered[1]), "ranks differ after step %d" % step
    # eval-mode BatchNorm has no batch statistics, so shuffle-BN must give each query its own key
    # (running statistics are per rank, as buffers are not broadcast: use rank 0's everywhere)
    for b in model.buffers():
        dist.broadcast(b, 0)
    model.eval()
    ptr = int(model.queue_ptr)
    x, xk = torch.randn(3, 3, 8, 8), torch.randn(3, 3, 8, 8)
    logits, _ = model(x, xk)
    with torch.no_grad():
        q, k = F.normalize(model.encoder_q(x), dim=1), F.normalize(model.encoder_k(xk), dim=1)
    assert torch.allclose(logits[:, 0], (q * k).sum(1) / 0.2, atol=1e-5), "keys paired with the wrong queries"
    assert torch.allclose(model.queue[:, ptr:ptr + 6], du.all_gather_cat(k).T, atol=1e-6)
    # shuffle-BN by all_to_all: rank r takes rows perm[r*n:(r+1)*n] of the global batch (the
    # permutation drawn on the host, the same on both ranks), and the keys come back in order
    model.shuffle_seed = 5
    xs = torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last)
    mine, plan = model._batch_shuffle_ddp(xs)
    takes = torch.randperm(8, generator=torch.Generator().manual_seed(5)).view(2, 4)
    assert torch.equal(mine, du.all_gather_cat(xs)[takes[info.rank]]), "shuffle"
    assert mine.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(model._batch_unshuffle_ddp(mine.flatten(1), plan), xs.flatten(1)), "unshuffle"
    print("rank", info.rank, "queues identical", flush=True)

    # the funnel: results on the caller's device, objects of different sizes
    r = info.rank
    assert torch.equal(du.all_gather_cat(torch.tensor([[r, 2 * r]])), torch.tensor([[0, 0], [1, 2]]))
    b = torch.full((2, 3), float(r)).t()  # not contiguous
    assert torch.equal(du.broadcast_(b, src=1), torch.ones(3, 2))
    assert du.all_gather_objects({"r": r, "pad": "x" * 10 * r}) == [{"r": 0, "pad": ""}, {"r": 1, "pad": "x" * 10}]
    assert du.broadcast_object(["from", r]) == ["from", 0]
    assert du.any_async(r == 1).result() and not du.any_async(False).result()
    os.environ[du.CUDA_COLLECTIVES_ENV] = "1"  # NCCL's rule under gloo: needs CUDA
    try:
        du.all_gather_cat(torch.zeros(1))
        raise AssertionError("CUDA collectives without CUDA")
    except RuntimeError as e:
        assert not torch.cuda.is_available() and du.CUDA_COLLECTIVES_ENV in str(e), e
    del os.environ[du.CUDA_COLLECTIVES_ENV]

    main(sys.argv[1:])  # the trainer, under the same torchrun (reusing the process group)
""")


def test_two_ranks_under_torchrun(tmp_path, clean_env):
    data = make_demo(tmp_path / "demo", num_train=24, num_test=4, min_size=48, max_size=72)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(script), str(data / "images"), "-a", "resnet18", "--epochs", "1",
           "-b", "8", "--moco-k", "16", "--image-size", "32", "-j", "0", "--mlp", "--aug-plus", "--cos",
           "--bing_crops", "--sampling", "image", "--seed", "0", "--output-dir", str(out), "--save_name", "ddp"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("queues identical") == 2
    ckpt = torch.load(out / "ddp" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 3  # 24 images / global batch 8
    assert ckpt["state_dict"]["module.queue"].shape == (128, 16)  # the original MoCo key layout
    assert int(ckpt["state_dict"]["module.queue_ptr"]) == 3 * 8 % 16
    assert ckpt["args"]["moco_k"] == 16
    assert (out / "ddp" / "checkpoint_0001.pth").is_file() and (out / "ddp" / "log.jsonl").is_file()


FAULTY_WORKER = textwrap.dedent("""
    # the trainer, with a fault injected on one rank at its n-th step: FAULT=sigterm|sigkill,
    # FAULT_RANK, FAULT_STEP (sigkill only in the first attempt of a torchrun job)
    import os, signal, sys, time
    from ssl_crops import train
    from ssl_crops.train import loop

    fault, rank = os.environ.get("FAULT"), int(os.environ["RANK"])
    if fault and rank == int(os.environ["FAULT_RANK"]) and (
            fault == "sigterm" or os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"):
        step, calls = loop.train_step, []
        def train_step(*a, **k):
            calls.append(1)
            if len(calls) == int(os.environ["FAULT_STEP"]):
                os.kill(os.getpid(), signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
            return step(*a, **k)
        loop.train_step = train_step
    if os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0" and fault and rank != int(os.environ["FAULT_RANK"]):
        time.sleep(3)  # the killed rank comes back first, while its peer's old keys are still in the store
    if os.environ.get("AUG_LOG"):  # record the device-augmentation parameters of each step of this rank
        import json, ssl_crops.transforms.augment as aug
        seed_step, sample, current = loop.seed_step, aug.AugmentSpec.sample, {}
        def logged_seed_step(seed, step, rank=0):
            current["step"] = step
            return seed_step(seed, step, rank)
        def logged_sample(self, n, generator=None):
            p = sample(self, n, generator)
            with open(os.path.join(os.environ["AUG_LOG"], f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": current["step"], "factors": p["factors"].tolist()}) + "\\n")
            return p
        loop.seed_step, aug.AugmentSpec.sample = logged_seed_step, logged_sample
    train.main(sys.argv[1:])
    if os.environ.get("EXIT_DIR"):
        open(os.path.join(os.environ["EXIT_DIR"], f"rank{rank}.returned"), "w").close()
""")


def _train_args(data, out):
    return [str(data / "images"), "-a", "resnet18", "--epochs", "2", "-b", "8", "--moco-k", "16", "--image-size", "32",
            "-j", "0", "--mlp", "--aug-plus", "--cos", "--bing_crops", "--sampling", "image", "--seed", "0",
            "--output-dir", str(out), "--save_name", "ddp", "--log-freq", "1", "--dist-timeout", "2"]


def _torchrun(tmp_path, data, out, *extra, env=None, restarts=0):
    script = tmp_path / "faulty_worker.py"
    script.write_text(FAULTY_WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--max-restarts", str(restarts),
           "--master_port", str(_free_port()), str(script), *_train_args(data, out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _records(run_dir):
    import json
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _augment_params(log_dir, rank):
    """``{step: [factors of view q, of view k]}`` of one rank (a redone step: its last record)."""
    import json
    params = {}
    for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines():
        rec = json.loads(line)
        params.setdefault(rec["step"], []).append(rec["factors"])
    return {step: views[-2:] for step, views in params.items()}


@pytest.mark.slow
def test_two_ranks_stopped_by_sigterm_to_the_process_group_resume_exactly(tmp_path, clean_env):
    """2 gloo ranks under torchrun with a loader worker each and device augmentation; SIGTERM to
    torchrun's process group mid-epoch (torchrun passes it on to each rank's own group, workers
    included): both ranks stop at the same step, save once and return; resumed, the run equals
    an uninterrupted one (weights, queue, losses, augmentation of every step), and the
    augmentation differs between the ranks."""
    data = make_demo(tmp_path / "demo", num_train=32, num_test=4, min_size=48, max_size=72)
    extra = ("-b", "4", "-j", "2", "--augment-on", "device", "--epochs", "1")  # 8 steps
    for run in ("a", "b"):
        (tmp_path / f"aug_{run}").mkdir()
    _torchrun(tmp_path, data, tmp_path / "a", *extra, env={"AUG_LOG": str(tmp_path / "aug_a")})
    script = tmp_path / "faulty_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), *_train_args(data, tmp_path / "b"), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "AUG_LOG": str(tmp_path / "aug_b"),
           "EXIT_DIR": str(tmp_path)}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " step 1 " in line:
            os.killpg(proc.pid, signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=300)
    out = "".join(lines) + out
    assert sorted(p.name for p in tmp_path.glob("rank*.returned")) == ["rank0.returned", "rank1.returned"], out + err
    assert "stopped after step" in out and "DataLoader worker" not in err, out + err
    stopped = torch.load(tmp_path / "b" / "ddp" / "checkpoint_last.pth", weights_only=True)
    assert stopped["epoch"] == 0 and 1 < stopped["step"] < 8 and stopped["epoch_state"]["batches"] == stopped["step"]
    _torchrun(tmp_path, data, tmp_path / "b", *extra, "--resume", "auto", env={"AUG_LOG": str(tmp_path / "aug_b")})
    a = torch.load(tmp_path / "a" / "ddp" / "checkpoint_last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "ddp" / "checkpoint_last.pth", weights_only=True)
    assert a["step"] == b["step"] == 8
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    ra, rb = _records(tmp_path / "a" / "ddp"), _records(tmp_path / "b" / "ddp")
    assert [r["step"] for r in rb if r["type"] == "step"] == list(range(1, 9))
    for kind in ("step", "epoch"):
        assert [r["loss"] for r in ra if r["type"] == kind] == [r["loss"] for r in rb if r["type"] == kind]
    pa, pb = ([_augment_params(tmp_path / f"aug_{run}", rank) for rank in (0, 1)] for run in ("a", "b"))
    assert pa == pb and sorted(pa[0]) == list(range(8))  # the same parameters after the resume
    assert all(pa[0][step] != pa[1][step] for step in pa[0])  # and different ones per rank


@pytest.mark.slow
def test_elastic_restart_resumes_after_a_rank_dies(tmp_path, clean_env):
    """torchrun --max-restarts 1, rank 1 SIGKILLed at step 5 (epoch 2): the restarted workers
    rendezvous again, resume from the end of epoch 1 by themselves and finish the job."""
    data = make_demo(tmp_path / "demo", num_train=24, num_test=4, min_size=48, max_size=72)
    proc = _torchrun(tmp_path, data, tmp_path / "a", restarts=1,
                     env={"FAULT": "sigkill", "FAULT_RANK": "1", "FAULT_STEP": "5"})
    assert "torchrun restart 1" in proc.stdout and "(end of epoch 1, step 3)" in proc.stdout
    ckpt = torch.load(tmp_path / "a" / "ddp" / "checkpoint_last.pth", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["step"] == 6
    records = _records(tmp_path / "a" / "ddp")
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(1, 7))  # step 4 redone, once
    assert [r["epoch"] for r in records if r["type"] == "epoch"] == [0, 1]


# --------------------------------------------------------------------------- launches as clusters make them
def _srun_env(rank, ntasks, node=0, nnodes=1, job="20999", nodelist="127.0.0.1"):
    """The variables srun gives one task of a step of `ntasks` tasks over `nnodes` nodes."""
    per_node = ntasks // nnodes
    return {"SLURM_JOB_ID": job, "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_NTASKS": str(ntasks),
            "SLURM_STEP_NUM_TASKS": str(ntasks), "SLURM_LOCALID": str(rank % per_node), "SLURM_NODEID": str(node),
            "SLURM_STEP_NUM_NODES": str(nnodes), "SLURM_NNODES": str(nnodes),
            "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nnodes})", "SLURM_STEP_NODELIST": nodelist}


def _legacy(**kw):
    return du.LaunchSettings.of(Namespace(**{"multiprocessing_distributed": True, "world_size": -1, "rank": -1,
                                             "dist_url": None, **kw}))


def test_legacy_flags_take_the_node_rank_from_srun():
    from ssl_crops import slurm
    step = slurm.slurm_step(_srun_env(1, 2, node=1, nnodes=2, job="4711", nodelist="gpu[07-08]"))
    assert du.legacy_node(_legacy(world_size=2), step) == (2, 1, "tcp://gpu07:24711")  # port from the job id
    assert du.legacy_node(_legacy(), step)[:2] == (2, 1)  # --world-size: the step's nodes
    assert du.legacy_node(_legacy(world_size=2, rank=0, dist_url="tcp://m:1"), step) == (2, 0, "tcp://m:1")
    nodes, node, url = du.legacy_node(_legacy(world_size=1), None)  # one node: a free port
    assert (nodes, node) == (1, 0) and url.startswith("tcp://127.0.0.1:")


@pytest.mark.parametrize("kw,env,match", [
    (dict(world_size=2), None, "needs --rank"),
    (dict(world_size=2, rank=1), None, "needs --dist-url"),
    (dict(world_size=2, rank=2, dist_url="tcp://m:1"), None, "not a node index"),
    (dict(world_size=3), _srun_env(1, 2, node=1, nnodes=2), "runs on 2 node"),
    (dict(world_size=1), _srun_env(1, 8, nnodes=1), "tasks on this node")])
def test_legacy_flags_that_make_no_launch_are_one_error(kw, env, match):
    from ssl_crops import slurm
    with pytest.raises(du.LaunchError, match=match):
        du.legacy_node(_legacy(**kw), slurm.slurm_step(env) if env else None)


def test_legacy_launch_spawns_the_node_ranks_under_srun(clean_env, monkeypatch):
    """`srun --ntasks-per-node 1 python main_moco.py ... --multiprocessing-distributed --world-size 2`
    (no --rank) on the second node: its processes are global ranks 2 and 3 of 4, not 0 and 1."""
    for k, v in _srun_env(1, 2, node=1, nnodes=2).items():
        clean_env.setenv(k, v)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    spawned = {}
    monkeypatch.setattr(du.mp, "spawn", lambda fn, nprocs, args: spawned.update(nprocs=nprocs, args=args))
    du.launch(lambda info, a: None, Namespace(multiprocessing_distributed=True, world_size=2, rank=-1, gpu=None,
                                              dist_url=None))
    worker_fn, args, how, nprocs, world, node, url, user_errors, prog = spawned["args"]
    assert (spawned["nprocs"], world, node, url) == (2, 4, 1, "tcp://127.0.0.1:20999")


def test_batch_step_runs_one_process(clean_env, capsys):
    """A plain `python main_moco.py` in an sbatch script of 4 tasks: one process, at once."""
    for k, v in {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_NODEID": "0"}.items():
        clean_env.setenv(k, v)
    args = Namespace(multiprocessing_distributed=False, world_size=-1, rank=-1, dist_url=None, gpu=None)
    assert du.launch(lambda info, a: (info.world_size, info.distributed), args) == (1, False)
    assert "srun" in capsys.readouterr().out


FAILING = textwrap.dedent("""
    # one rank of an srun step fails; the others are busy (as in an NCCL collective, which a dead
    # peer never ends) for longer than the test waits
    import os, sys, time
    from argparse import Namespace
    from ssl_crops import distributed as du

    def work(info, args):
        du.barrier()
        if info.rank == int(sys.argv[1]):
            raise RuntimeError("bad image on this rank")
        time.sleep(120)

    du.launch(work, Namespace(dist_timeout=10))
""")


@pytest.mark.slow
@pytest.mark.parametrize("failing", [1, 0])  # rank 0 holds the store
def test_one_failing_rank_ends_an_srun_job_in_seconds(tmp_path, failing):
    """3 tasks started as srun starts them (plain python, no torchrun agent): rank `failing`
    raises; every process exits non-zero within seconds, the others naming it and its error."""
    import time
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(script), str(failing)], env={**env, **_srun_env(r, 3)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(3)]
    outs = [p.communicate(timeout=90) for p in procs]
    elapsed = time.monotonic() - start
    assert all(p.returncode != 0 for p in procs), [p.returncode for p in procs]
    assert elapsed < 60, elapsed
    assert "RuntimeError: bad image on this rank" in outs[failing][1]
    for r in set(range(3)) - {failing}:
        assert f"ending the job: rank {failing} failed: RuntimeError: bad image on this rank" in outs[r][1], outs[r][1]


def _main_moco(data, out, *extra):
    return [sys.executable, str(REPO / "main_moco.py"), str(data / "images"), "-a", "resnet18", "--epochs", "1",
            "--moco-k", "16", "--image-size", "32", "-j", "0", "--bing_crops", "--sampling", "image", "--seed", "0",
            "--output-dir", str(out), *extra]


@pytest.mark.slow
def test_main_moco_in_a_batch_step_trains_as_one_process(tmp_path):
    """`python main_moco.py` in an sbatch script (SLURM_PROCID=0, SLURM_NTASKS=4, no step) trains."""
    data = make_demo(tmp_path / "demo", num_train=16, num_test=4, min_size=48, max_size=72)
    env = {**{k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), "SLURM_JOB_ID": "5", "SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    proc = subprocess.run(_main_moco(data, tmp_path / "runs", "-b", "8", "--save_name", "b"), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "no srun step" in proc.stdout and "1 process(es)" in proc.stdout


@pytest.mark.slow
def test_two_slurm_nodes_with_the_original_flags_get_ranks_0_and_1(tmp_path):
    """Two "nodes" (SLURM_NODEID 0 and 1, one srun task each) run `--multiprocessing-distributed
    --world-size 2` without --rank: ranks 0 and 1 (gloo, no GPU), both finish; --batch-size is per
    node, so the run's batch is 2 x 4."""
    data = make_demo(tmp_path / "demo", num_train=24, num_test=4, min_size=48, max_size=72)
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    cmd = _main_moco(data, tmp_path / "runs", "-b", "4", "--save_name", "nodes", "--multiprocessing-distributed",
                     "--world-size", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}", "--dist-timeout", "2")
    procs = [subprocess.Popen(cmd, env={**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
                                        **_srun_env(node, 2, node=node, nnodes=2)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for node in (0, 1)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "2 process(es) on cpu (1 per node, 2 node(s)), batch 8 in total, 4 per process" in outs[0][0]
    ckpt = torch.load(tmp_path / "runs" / "nodes" / "checkpoint_last.pth", weights_only=True)
    assert (ckpt["world_size"], ckpt["args"]["batch_size"], ckpt["step"]) == (2, 8, 3)


RAISING = textwrap.dedent("""
    # the trainer; rank 1 raises at its 5th step (epoch 2)
    import os, sys
    from ssl_crops import train
    from ssl_crops.train import loop
    if os.environ["SLURM_PROCID"] == "1":
        step, calls = loop.train_step, []
        def train_step(*a, **k):
            calls.append(1)
            if len(calls) == 5:
                raise RuntimeError("CUDA out of memory (injected)")
            return step(*a, **k)
        loop.train_step = train_step
    train.main(sys.argv[1:])
""")


@pytest.mark.slow
def test_a_rank_failing_mid_run_ends_the_srun_job_and_keeps_the_last_checkpoint(tmp_path):
    """Two srun tasks train (plain python, no agent); rank 1 raises in epoch 2: both exit non-zero
    within seconds, the output names rank 1 and its error, and epoch 1's checkpoint is intact."""
    from ssl_crops.checkpoint import read_checkpoint
    data = make_demo(tmp_path / "demo", num_train=24, num_test=4, min_size=48, max_size=72)
    script = tmp_path / "raising.py"
    script.write_text(RAISING)
    cmd = [sys.executable, str(script), *_main_moco(data, tmp_path / "runs", "-b", "8", "--save_name", "f",
                                                    "--epochs", "2", "--dist-timeout", "10")[2:]]
    base = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    procs = [subprocess.Popen(cmd, env={**env, **_srun_env(r, 2)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode != 0 for p in procs), outs
    assert "rank 1 failed: RuntimeError: CUDA out of memory (injected)" in outs[1][1]
    assert "rank 0: ending the job: rank 1 failed: RuntimeError: CUDA out of memory (injected)" in outs[0][1]
    assert read_checkpoint(tmp_path / "runs" / "f" / "checkpoint_last.pth", require="state_dict")["epoch"] == 1
