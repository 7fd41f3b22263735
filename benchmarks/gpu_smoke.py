"""Smoke test of the CUDA paths of pretraining on one GPU, in at most about 8 minutes.

    python benchmarks/gpu_smoke.py                          # one CUDA GPU
    python benchmarks/gpu_smoke.py --device cpu --quick     # what runs on the CPU (the test suite's mode)

Parts (each a row of the table it prints; exit 1 if any row fails):
1. ``BatchAugment`` on CUDA equals the CPU for the same generator, fp32 out, 0 host-device syncs;
2. one ``train_step`` each under fp32, bf16 and fp16 (device augmentation, fused SGD, the
   default ``bn_splits``): finite loss, fp32 unit-norm queue, pointer advanced, fp16 scaler set,
   0 syncs;
3. ``compile`` keeps the state-dict keys (and a compiled step with split BatchNorm in
   channels_last runs, on CUDA);
4. ``SplitBatchNorm`` keeps channels_last with per-split values; ResNet-50 step time with
   ``bn_splits`` 1 vs 8 under channels_last;
5. two ranks on one GPU over gloo, every collective asserting CUDA tensors (NCCL's rule,
   ``SSL_CROPS_CUDA_COLLECTIVES=1``): SIGUSR1 to the process group mid-epoch, then
   ``--resume auto`` to the end with each step logged once;
6. ResNet-50 at 224 px, images/s of ``main_moco.py`` with ``--augment-on cpu`` and ``device``.
Without CUDA the parts that need it print "skipped: no CUDA". Needs no faiss.
"""
import argparse
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from moco_throughput import count_syncs, images_per_second
from ssl_crops.checkpoint import read_checkpoint
from ssl_crops.distributed import CUDA_COLLECTIVES_ENV
from ssl_crops.demo import make_demo
from ssl_crops.moco import MoCo, SplitBatchNorm, default_bn_splits
from ssl_crops.config import AMP_DTYPES
from ssl_crops.train import train_step
from ssl_crops.transforms import BatchAugment

REPO = Path(__file__).resolve().parents[1]
SKIP = "skipped: no CUDA"


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


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_two_ranks(device, tmp):
    """Two gloo ranks on this device under torchrun; SIGUSR1 to the process group mid-epoch."""
    data = make_demo(tmp / "demo2", num_train=64, num_test=4, min_size=48, max_size=72)  # 8 steps of 8
    out = tmp / "ranks"
    cuda = device.type == "cuda"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
           "--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1", str(REPO / "main_moco.py"), str(data / "images"),
           "-a", "resnet18", "--epochs", "1", "-b", "8", "--moco-k", "16", "--image-size", "32", "-j", "2",
           "--seed", "0", "--log-freq", "1", "--dist-backend", "gloo", "--augment-on", "device",
           "--output-dir", str(out), "--save_name", "r", "--amp", "bf16", "--channels-last"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", CUDA_COLLECTIVES_ENV: "1" if cuda else "0",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    name = "2 gloo ranks" + (", CUDA tensors only" if cuda else " on the CPU") + ": SIGUSR1 to the group, resume"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if " step 1 " in line:
            os.killpg(proc.pid, signal.SIGUSR1)
            break
    stdout, stderr = proc.communicate(timeout=300)
    stdout = "".join(lines) + stdout
    ckpt_path = out / "r" / "checkpoint_last.pth"
    if "stopped after step" not in stdout or not ckpt_path.is_file():
        return [(name, "FAIL", (stdout + stderr)[-300:].replace("\n", " | "))]
    stopped = read_checkpoint(ckpt_path, require="state_dict")
    resumed = subprocess.run(cmd + ["--resume", "auto"], env=env, capture_output=True, text=True, timeout=300)
    records = [json.loads(line) for line in (out / "r" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["type"] == "step"]
    good = (stopped["epoch_state"] is not None and resumed.returncode == 0 and steps == list(range(1, 9)))
    detail = (f"stopped at step {stopped['step']} (mid-epoch: {stopped['epoch_state'] is not None}), "
              f"resumed to step {steps[-1] if steps else None}")
    if resumed.returncode:
        detail += " | " + resumed.stderr[-300:].replace("\n", " | ")
    return [(name, _verdict(good), detail)]


def check_pipeline(device, tmp, images, batch, workers):
    if device.type != "cuda":
        return [("R50 224 px img/s, --augment-on cpu vs device", SKIP, "")]
    data = make_demo(tmp / "demo_pipeline", num_train=images, num_test=4, min_size=256, max_size=400)
    rates = {}
    for mode in ("cpu", "device"):
        cmd = [sys.executable, str(REPO / "main_moco.py"), str(data / "images"), "-a", "resnet50", "-b", str(batch),
               "--image-size", "224", "-j", str(workers), "--epochs", "1", "--bing_crops", "--min-region", "64", "--mlp", "--aug-plus", "--amp", "bf16", "--augment-on", mode, "--seed", "0",
               "--log-freq", "1", "--output-dir", str(tmp / "pipeline"), "--save_name", mode]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
        if proc.returncode:
            return [("R50 224 px img/s, --augment-on " + mode, "FAIL", proc.stderr[-300:].replace("\n", " | "))]
        log = tmp / "pipeline" / mode / "log.jsonl"
        rec = [json.loads(line) for line in log.read_text().splitlines()]
        ips = [r["images_per_s"] for r in rec if r["type"] == "step"][2:]  # after cudnn's autotuning
        rates[mode] = statistics.median(ips)
    return [("R50 224 px img/s, --augment-on cpu vs device", "ok",
             f"{rates['cpu']:.0f} vs {rates['device']:.0f} (batch {batch}, {workers} workers, bf16)")]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="small models and images (the test suite's mode)")
    p.add_argument("--pipeline-images", type=int, default=256, help="~4.6 boxes each: one item per box")
    p.add_argument("--pipeline-batch", type=int, default=128)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            p.error("--device cuda: no CUDA device")
        torch.backends.cudnn.benchmark = True
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}", flush=True)
    else:
        print(f"device: cpu, torch {torch.__version__}", flush=True)
    quick = args.quick or device.type != "cuda"
    arch, size, batch = ("resnet18", 32, 8) if quick else ("resnet50", 224, 64)
    start, rows = time.perf_counter(), []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for part in (lambda: check_augment(device, 32 if quick else 224),
                     lambda: check_steps(device, arch, size, batch),
                     lambda: check_compile(device, 32 if quick else 64, batch),
                     lambda: check_split_bn(device, quick),
                     lambda: check_two_ranks(device, tmp),
                     lambda: check_pipeline(device, tmp, args.pipeline_images, args.pipeline_batch,
                                            min(16, len(os.sched_getaffinity(0))))):
            t = time.perf_counter()
            for row in part():
                rows.append(row)
                print(f"{row[0]:<58} {row[1]:<18} {row[2]}  [{time.perf_counter() - t:.0f} s]", flush=True)
    failed = [r for r in rows if r[1] == "FAIL"]
    print(f"{len(rows) - len(failed)} of {len(rows)} parts ok or skipped, {len(failed)} failed, "
          f"{time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
