"""Smoke test of the CUDA paths of pretraining on one GPU, and what limits its throughput, in at
most 9 minutes (a hard deadline; each part's budget is printed before it runs).

    python benchmarks/gpu_smoke.py --json smoke.json         # one CUDA GPU
    python benchmarks/gpu_smoke.py --device cpu --quick --json F   # what runs on the CPU (the test suite's mode)

Parts (each a row of the table it ends with; exit 1 if any row fails):
1. ``BatchAugment`` on CUDA equals the CPU for the same generator, fp32 out, 0 host-device syncs;
2. one ``train_step`` each under fp32, bf16 and fp16: finite loss, unit-norm queue, 0 syncs;
3. ``compile`` keeps the state-dict keys (and a compiled step with split BatchNorm runs, on CUDA);
4. ``SplitBatchNorm`` keeps channels_last; ResNet-50 step time with ``bn_splits`` 1 vs 8;
5. two gloo ranks (on CUDA every collective asserting CUDA tensors, NCCL's rule): a stop signal
   to the process group mid-epoch, then ``--resume auto`` to the end;
6. loader: samples/s of one ``main_moco.py`` loader worker on generated ~1024 px JPEGs with
   object boxes (the original method's crops), no GPU;
7. training: the real epoch loop under DDP in a one-process group (NCCL on CUDA), ResNet-50 at
   224 px MoCo-v2 bf16, uncompiled and compiled: steady-state images/s over the steps after 4x
   the loader's prefetch depth, data wait vs compute per step, peak memory, host-device syncs per
   step over the loop, graphs compiled after step 2 (recompiles), and the loader workers needed;
8. NCCL in one process under torchrun: a stop signal mid-epoch, ``--resume auto`` to the end.
Without CUDA the figures that need it say "skipped: no CUDA". ``--json FILE`` writes the rows and
the figures (the same keys on every device). Needs no faiss.
"""
import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

import train_probe
from moco_throughput import count_syncs, images_per_second
from ssl_crops import distributed as du
from ssl_crops.checkpoint import read_checkpoint
from ssl_crops.distributed import CUDA_COLLECTIVES_ENV
from ssl_crops.demo import make_demo
from ssl_crops.moco import MoCo, SplitBatchNorm, default_bn_splits
from ssl_crops.config import AMP_DTYPES
from ssl_crops.train import train_step
from ssl_crops.transforms import BatchAugment

REPO = Path(__file__).resolve().parents[1]
SKIP = "skipped: no CUDA"
DEADLINE_S = 540  # 9 minutes, everything included
# seconds per part on CUDA (the CPU's quick mode: a fraction); a part past its budget fails
BUDGETS = {"augment": 20, "steps": 50, "compile": 60, "split_bn": 40, "two_ranks": 80, "loader": 45, "training": 170,
           "nccl": 60}
FIGURES = {}  # what --json writes beside the rows


class PartTimeout(Exception):
    pass


def _verdict(good):
    return "ok" if good else "FAIL"


def check_augment(device, size):
    x = torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ref = BatchAugment()(x, torch.Generator().manual_seed(1))
    if device.type != "cuda":
        again = BatchAugment()(x, torch.Generator().manual_seed(1))
        return [("BatchAugment: fp32, same generator same output (cpu)",
                 _verdict(ref.dtype == torch.float32 and torch.equal(ref, again)), ""),
                ("BatchAugment: CUDA = CPU, 0 syncs", SKIP, "")]
    aug = BatchAugment().to(device)
    xd = x.pin_memory().to(device, non_blocking=True)
    aug(xd, torch.Generator().manual_seed(2))  # warm-up: kernels, pinned-memory pool
    torch.cuda.synchronize()
    out, syncs = count_syncs(lambda: aug(xd, torch.Generator().manual_seed(1)))
    err = (out.cpu() - ref).abs().max().item()
    good = out.dtype == torch.float32 and err < 1e-3 and syncs == 0
    return [("BatchAugment: CUDA = CPU, fp32, 0 syncs", _verdict(good), f"max |CUDA - CPU| {err:.1e}, {syncs} syncs")]


def _moco(arch, batch, device, fmt, bn_splits=1):
    torch.manual_seed(0)
    model = MoCo(getattr(torchvision.models, arch), 128, K=4 * batch, m=0.99, T=0.2, mlp=True, bn_splits=bn_splits)
    model = model.to(device, memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), 0.03, momentum=0.9, weight_decay=1e-4, fused=device.type == "cuda")
    return model, opt


def check_steps(device, arch, size, batch):
    rows, fmt = [], torch.channels_last  # main_moco.py's CUDA defaults, the same code paths on the CPU
    splits = default_bn_splits(batch, 1) if device.type == "cuda" else 2
    model, opt = _moco(arch, batch, device, fmt, splits)
    aug = BatchAugment().to(device)
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8).to(device)
    for amp in ("off", "bf16", "fp16"):
        name = f"train_step {amp if amp != 'off' else 'fp32'} ({arch}, {size} px, bn_splits {splits})"
        try:
            scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")

            def step():
                return train_step(model, x, x.flip(-1), opt, scaler, AMP_DTYPES[amp], fmt, aug)
            step()  # warm-up
            ptr = int(model.queue_ptr)
            (loss, _), syncs = count_syncs(step)
            norms = model.queue.norm(dim=0)
            scale = scaler.get_scale() if scaler.is_enabled() else None
            good = (math.isfinite(loss.item()) and model.queue.dtype == torch.float32
                    and torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
                    and int(model.queue_ptr) == (ptr + batch) % model.K
                    and (scale is None or (math.isfinite(scale) and scale > 0)) and syncs == 0)
            detail = (f"loss {loss.item():.3f}, ptr {ptr} -> {int(model.queue_ptr)}, scale {scale}"
                      + (f", {syncs} syncs" if device.type == "cuda" else ""))
            rows.append((name, _verdict(good), detail))
        except Exception as e:  # e.g. fp16 autocast on an old CPU build
            rows.append((name, "FAIL", f"{type(e).__name__}: {e}"[:120]))
    return rows


def check_compile(device, size, batch):
    model, opt = _moco("resnet18", batch, device, torch.channels_last, bn_splits=2)  # split BatchNorm compiled too
    keys = list(model.state_dict())
    model.encoder_q.compile()
    model.encoder_k.compile()
    rows = [("compile keeps the state-dict keys", _verdict(list(model.state_dict()) == keys), f"{len(keys)} keys")]
    if device.type != "cuda":
        return rows + [("compiled train_step", SKIP, "")]
    x = torch.randn(batch, 3, size, size, device=device)
    loss, _ = train_step(model, x, x.flip(-1), opt, torch.amp.GradScaler("cuda", enabled=False), torch.bfloat16,
                         torch.channels_last)
    good = math.isfinite(loss.item()) and list(model.state_dict()) == keys
    return rows + [("compiled train_step (bf16)", _verdict(good), f"loss {loss.item():.3f}")]


def check_split_bn(device, quick):
    torch.manual_seed(0)
    n, c, s = (16, 8, 4) if quick else (256, 64, 8)
    bn = SplitBatchNorm(c, s).to(device)
    x = torch.randn(n, c, 14, 14, device=device).contiguous(memory_format=torch.channels_last)
    out = bn(x)
    ref = torch.empty_like(out)
    for j in range(s):
        ref[j::s] = F.batch_norm(x[j::s], None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    err = (out - ref).abs().max().item()
    rows = [("SplitBatchNorm keeps channels_last, per-split values",
             _verdict(out.is_contiguous(memory_format=torch.channels_last) and err < 1e-4), f"max |diff| {err:.1e}")]
    if device.type != "cuda":
        return rows + [("R50 step, bn_splits 1 vs 8, channels_last", SKIP, "")]
    args = argparse.Namespace(arch="resnet50", batch_size=256, image_size=224, moco_k=65536, steps=10, warmup=3)
    (one, syncs1), (eight, syncs8) = (images_per_second(args, device, torch.bfloat16, True, k) for k in (1, 8))
    ms = [1000 * args.batch_size / v for v in (one, eight)]
    return rows + [("R50 step, bn_splits 1 vs 8, channels_last, bf16", _verdict(syncs1 == syncs8 == 0),
                    f"{ms[0]:.0f} vs {ms[1]:.0f} ms/step (batch 256, 224 px), {syncs1:g} / {syncs8:g} syncs/step")]


# torchrun passes SIGUSR1 on only with torch >= 2.9 (--signals-to-handle); older ones: SIGTERM
_NEW_TORCHRUN = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 9)
_SIGNAL_FLAGS = ["--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1"] if _NEW_TORCHRUN else []
STOP_SIGNAL = signal.SIGUSR1 if _NEW_TORCHRUN else signal.SIGTERM


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_stop_resume(device, tmp, timeout, nprocs=2, backend="gloo"):
    """``nprocs`` ranks on this device under torchrun; a stop signal to the process group
    mid-epoch, then ``--resume auto`` to the end."""
    data = make_demo(tmp / f"demo_{backend}", num_train=64, num_test=4, min_size=48, max_size=72)  # 8 steps of 8
    out = tmp / f"ranks_{backend}"
    cuda = device.type == "cuda"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nprocs), "--master-port",
           str(_free_port()),
           *_SIGNAL_FLAGS, str(REPO / "main_moco.py"), str(data / "images"),
           "-a", "resnet18", "--epochs", "1", "-b", "8", "--moco-k", "16", "--image-size", "32", "-j", "2",
           "--seed", "0", "--log-freq", "1", "--dist-backend", backend, "--augment-on", "device",
           "--output-dir", str(out), "--save_name", "r", "--amp", "bf16", "--channels-last"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", CUDA_COLLECTIVES_ENV: "1" if cuda and backend == "gloo" else "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    name = (f"{nprocs} {backend} rank(s)" + (", CUDA tensors only" if cuda and backend == "gloo" else "")
            + ("" if cuda else " on the CPU") + f": {STOP_SIGNAL.name} to the group, resume")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " step 1 " in line:
            os.killpg(proc.pid, STOP_SIGNAL)
            break
    try:
        stdout, stderr = proc.communicate(timeout=timeout / 2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return [(name, "FAIL", f"not stopped within {timeout / 2:.0f} s")]
    stdout = "".join(lines) + stdout
    ckpt_path = out / "r" / "checkpoint_last.pth"
    if "stopped after step" not in stdout or not ckpt_path.is_file():
        return [(name, "FAIL", (stdout + stderr)[-300:].replace("\n", " | "))]
    stopped = read_checkpoint(ckpt_path, require="state_dict")
    resumed = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=timeout / 2)
    records = [json.loads(line) for line in (out / "r" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "step"]
    good = (stopped["epoch_state"] is not None and resumed.returncode == 0 and steps == list(range(1, 9)))
    detail = (f"stopped at step {stopped['step']} (mid-epoch: {stopped['epoch_state'] is not None}), "
              f"resumed to step {steps[-1] if steps else None}")
    if resumed.returncode:
        detail += " | " + resumed.stderr[-300:].replace("\n", " | ")
    return [(name, _verdict(good), detail)]


def check_loader(device, tmp, quick, seconds):
    """Samples/s of one loader worker on ~1024 px JPEGs (quick: small ones) with object boxes."""
    size, n = ((256, 320), 16) if quick else ((896, 1024), 64)  # ~4.6 boxes each, items repeat
    data = make_demo(tmp / "photos", num_train=n, num_test=2, min_size=size[0], max_size=size[1])
    FIGURES["loader_data"] = data
    rows = []
    for mode in ("device", "cpu"):  # workers only decode and crop / also augment (--augment-on)
        args = train_probe.trainer_args(data / "images", "resnet18", 224, 32, 1, "off", mode, 64 if quick else 224)
        rate = train_probe.loader_rate(args, 3 if quick else seconds / 3)
        FIGURES[f"loader_samples_per_s_per_worker_augment_{mode}"] = rate
        rows.append((f"loader: one worker, {size[1]} px JPEGs, --augment-on {mode}", _verdict(rate > 0),
                     f"{rate:.0f} samples/s"))
    return rows


def check_training(device, quick, workers):
    """The real loop under DDP in a one-process group: rate, data vs compute, memory, syncs, recompiles."""
    cuda = device.type == "cuda"
    arch, size, batch, amp = ("resnet18", 32, 8, "off") if quick else ("resnet50", 224, 128, "bf16")
    args = train_probe.trainer_args(FIGURES["loader_data"] / "images", arch, size, batch, workers, amp,
                                    "device" if cuda else "cpu", 64 if quick else 224, channels_last=cuda)
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    rows = []
    try:
        info = du.init_distributed()  # NCCL on CUDA
        for compiled in (False, True):
            key = "compiled" if compiled else "eager"
            fig = train_probe.training_run(args, info.device, compiled, backend=None if cuda else "eager")
            FIGURES[f"training_{key}"] = fig
            per_worker = FIGURES.get(f"loader_samples_per_s_per_worker_augment_{args.augment_on}", float("nan"))
            need = train_probe.workers_needed(fig["images_per_s"], per_worker)
            FIGURES[f"workers_needed_{key}"] = need
            syncs = SKIP if fig["syncs_per_step"] is None else f"{fig['syncs_per_step']:.2f} syncs/step"
            mem = SKIP if fig["peak_memory_gb"] is None else f"peak {fig['peak_memory_gb']:.1f} GB"
            good = fig["steps"] > 0 and (fig["syncs_per_step"] in (None, 0) or fig["syncs_per_step"] < 0.05) and \
                (not compiled or fig["recompiles_after_step_2"] == 0)
            rows.append((f"training loop, DDP 1 process ({dist_backend()}), {arch} {size} px, {key}", _verdict(good),
                         f"{fig['images_per_s']:.0f} img/s over {fig['steady_steps']} steady steps; data "
                         f"{fig['data_s_per_step']:.3f} vs compute {fig['compute_s_per_step']:.3f} s/step; {mem}; "
                         f"{syncs}; recompiles {fig['recompiles_after_step_2']}; workers needed {need} "
                         f"(of {per_worker:.0f} samples/s each)"))
    finally:
        du.cleanup()
        for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            os.environ.pop(k, None)
    for k in ("peak_memory_gb", "syncs_per_step"):
        FIGURES[k] = FIGURES["training_eager"][k] if cuda else SKIP
    FIGURES["recompiles"] = FIGURES["training_compiled"]["recompiles_after_step_2"]
    FIGURES["workers_needed"] = FIGURES["workers_needed_compiled"]
    return rows


def dist_backend():
    import torch.distributed as dist
    return dist.get_backend() if dist.is_initialized() else "none"


def check_nccl(device, tmp, timeout):
    if device.type != "cuda":
        return [("NCCL, 1 process under torchrun: stop signal, resume", SKIP, "")]
    return check_stop_resume(device, tmp, timeout, nprocs=1, backend="nccl")


def _alarm(signum, frame):
    raise PartTimeout()


def run_parts(parts, deadline, scale):
    """Run ``(key, fn(budget))`` parts, each within its budget (``BUDGETS`` x ``scale``, cut to
    what is left of ``deadline``); returns the rows with seconds and budgets."""
    start, rows = time.perf_counter(), []
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for key, fn in parts:
            left = deadline - (time.perf_counter() - start)
            budget = min(BUDGETS[key] * scale, left)
            print(f"[{key}: budget {budget:.0f} s, {left:.0f} s left of {deadline} s]", flush=True)
            if budget < 3:
                rows.append((key, "FAIL", "skipped: deadline", 0.0, budget))
                continue
            t = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, budget + 5)  # subprocesses stop at the budget; this is the backstop
            try:
                part_rows = fn(budget)
            except PartTimeout:
                part_rows = [(key, "FAIL", f"over its budget of {budget:.0f} s")]
            except Exception as e:  # noqa: BLE001 (a part that breaks is a failed row, the others still run)
                part_rows = [(key, "FAIL", f"{type(e).__name__}: {e}"[:200])]
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            for name, verdict, detail in part_rows:
                rows.append((name, verdict, detail, time.perf_counter() - t, budget))
                print(f"{name:<64} {verdict:<18} {detail}  [{time.perf_counter() - t:.0f} s]", flush=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small models and images (the test suite's mode)")
    p.add_argument("--workers", type=int, default=None, help="loader workers of the training part "
                                                              "(default: main_moco.py's default)")
    p.add_argument("--deadline", type=float, default=DEADLINE_S, help="seconds for everything")
    p.add_argument("--json", default=None, metavar="FILE", help="write the rows and figures here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    quick = args.quick or device.type != "cuda"
    arch, size, batch = ("resnet18", 32, 8) if quick else ("resnet50", 224, 64)
    from ssl_crops.train import default_workers
    workers = args.workers if args.workers is not None else (1 if quick else default_workers("torchrun", 1))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        parts = [("augment", lambda b: check_augment(device, 32 if quick else 224)),
                 ("steps", lambda b: check_steps(device, arch, size, batch)),
                 ("compile", lambda b: check_compile(device, 32 if quick else 64, batch)),
                 ("split_bn", lambda b: check_split_bn(device, quick)),
                 ("two_ranks", lambda b: check_stop_resume(device, tmp, b)),
                 ("loader", lambda b: check_loader(device, tmp, quick, b)),
                 ("training", lambda b: check_training(device, quick, workers)),
                 ("nccl", lambda b: check_nccl(device, tmp, b))]
        rows = run_parts(parts, args.deadline, 1.0 if device.type == "cuda" else 2.0)
    failed = [r for r in rows if r[1] == "FAIL"]
    total = time.perf_counter() - start
    print(f"\n{'part':<64} {'result':<18} {'s':>4}/{'budget':<6} detail")
    for name_, verdict, detail, secs, budget in rows:
        print(f"{name_:<64} {verdict:<18} {secs:>4.0f}/{budget:<6.0f} {detail}")
    print(f"{len(rows) - len(failed)} of {len(rows)} parts ok or skipped, {len(failed)} failed, {total:.0f} s "
          f"(deadline {args.deadline:.0f} s)")
    if args.json:
        FIGURES.pop("loader_data", None)
        out = {"device": name, "torch": torch.__version__, "seconds": total, "deadline_s": args.deadline,
               "rows": [dict(zip(("part", "result", "detail", "seconds", "budget_s"), r)) for r in rows],
               "figures": FIGURES}
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
