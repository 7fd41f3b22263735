"""What limits pretraining throughput, measured on the trainer's own code (used by ``gpu_smoke.py``):

- :func:`loader_rate`: samples/s of ONE loader worker of ``main_moco.py`` (decode, object crops,
  augmentation on the CPU or not), no GPU involved;
- :func:`training_run`: the real epoch loop (``train.train_one_epoch``) under DDP in a process
  group of one process (NCCL on CUDA, gloo on the CPU), compiled or not: steady-state images/s
  over at least 4x the loader's prefetch depth (and 20 steps) after the prefetched batches, data
  wait against compute time, peak device memory, host-device syncs per step over the loop's
  steady steps, and graphs compiled after the first steps (recompiles).
"""
import math
import os
import time
import warnings

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from ssl_crops import distributed as du
from ssl_crops.moco import default_bn_splits
from ssl_crops.run import EpochTally
from ssl_crops.train import (NO_BUFFER_BROADCAST, build_dataset, build_loader, build_model, parse_args,
                             train_one_epoch)
from ssl_crops.transforms import BatchAugment

PREFETCH = 2  # DataLoader's default prefetch_factor: batches in flight per worker


def trainer_args(data, arch, size, batch, workers, amp, augment_on, min_region, channels_last=False):
    """``main_moco.py``'s settings for this data (the original method's crops), no logging."""
    return parse_args([str(data), "-a", arch, "-b", str(batch), "--image-size", str(size), "-j", str(workers),
                       "--bing_crops", "--mlp", "--aug-plus", "--cos", "--moco-k", str(4 * batch), "--seed", "0",
                       "--amp", amp, "--augment-on", augment_on, "--min-region", str(min_region),
                       "--channels-last" if channels_last else "--no-channels-last",
                       "--log-freq", str(10 ** 9), "--output-dir", os.devnull])


class Repeated(Sampler):
    """``(epoch 0, item)`` keys over the dataset again and again: ``samples`` in all."""

    def __init__(self, n, samples):
        self.n, self.samples = n, samples

    def __iter__(self):
        return ((0, i % self.n) for i in range(self.samples))

    def __len__(self):
        return self.samples


def make_loader(dataset, args, batch, workers, samples):
    """``train.build_loader``'s loader (same dataset wrapper, workers, pinning, prefetch) over
    ``samples`` items, the data repeated as needed."""
    loader = build_loader(dataset, args, du.DistInfo(), batch, workers)
    return DataLoader(loader.dataset, batch_size=batch, sampler=Repeated(len(dataset), samples),
                      num_workers=workers, pin_memory=torch.cuda.is_available(), drop_last=True,
                      persistent_workers=False, worker_init_fn=loader.worker_init_fn, prefetch_factor=PREFETCH if
                      workers else None)


def loader_rate(args, seconds):
    """Samples/s of one loader worker, over ``seconds`` after its first batch."""
    dataset, _ = build_dataset(args, os.devnull, main=False)
    batches, start, n = iter(make_loader(dataset, args, args.batch_size, 1, 10 ** 7)), None, 0
    for _ in batches:
        if start is None:
            start = time.perf_counter()
            continue
        n += args.batch_size
        if time.perf_counter() - start > seconds:
            break
    del batches
    return n / max(time.perf_counter() - start, 1e-9) if n else float("nan")


class TimedLoader:
    """The loader as ``train_one_epoch`` sees it, noting when each batch reached the loop and how
    long the loop waited for it."""

    def __init__(self, loader):
        self.loader, self.num_workers = loader, loader.num_workers
        self.sampler, self.arrivals, self.waits = loader.sampler, [], []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            now = time.perf_counter()
            self.waits.append(now - start)
            self.arrivals.append(now)
            yield batch


class _NoStop:
    received = None

    def requested(self):
        return False


def _graphs():
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


def training_run(args, device, compiled, backend=None):
    """One epoch of the real loop (DDP, one process); returns a dict of figures."""
    info = du.DistInfo(device=device, distributed=True, launcher="torchrun")
    dataset, _ = build_dataset(args, os.devnull, main=False)
    depth = PREFETCH * max(1, args.workers)  # batches the loader holds ready
    warm = depth + (10 if device.type == "cuda" else 2)  # prefetched batches, cuDNN's search, compiling
    steps = warm + max(4 * depth, 20)  # measured over at least 4x the prefetch depth, 20+ steps
    loader = TimedLoader(make_loader(dataset, args, args.batch_size, args.workers, steps * args.batch_size))
    torch.manual_seed(0)
    args = args.replace(bn_splits=default_bn_splits(args.batch_size, 1))  # the trainer's default for one process
    model = build_model(args).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    augment = BatchAugment(args.aug_plus).to(device) if args.augment_on == "device" else None
    if compiled:
        model.encoder_q.compile(backend=backend or "inductor")
        model.encoder_k.compile(backend=backend or "inductor")
    ddp = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None, **NO_BUFFER_BROADCAST)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    graphs, cuda = [], device.type == "cuda"
    step_fn = train_one_epoch.__globals__["train_step"]

    def counted_step(*a, **k):  # graphs compiled so far after each step; syncs counted past the warm-up
        out = step_fn(*a, **k)
        graphs.append(_graphs() if compiled else 0)
        if cuda and len(graphs) == warm:
            torch.cuda.set_sync_debug_mode("warn")
        return out
    train_one_epoch.__globals__["train_step"] = counted_step
    start = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_one_epoch(ddp, loader, opt, scaler, 0, 0, EpochTally(info), args, info, None, _NoStop(), augment)
    finally:
        train_one_epoch.__globals__["train_step"] = step_fn
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - start
    steps = len(loader.arrivals)
    steady = loader.arrivals[warm:] if steps > warm + 1 else loader.arrivals[steps // 2:]
    rate = args.batch_size * (len(steady) - 1) / max(steady[-1] - steady[0], 1e-9) if len(steady) > 1 else float("nan")
    data = sum(loader.waits[warm:] or loader.waits)
    return {"steps": steps, "steady_steps": len(steady), "images_per_s": rate,
            "data_s_per_step": data / max(1, len(loader.waits[warm:] or loader.waits)),
            "compute_s_per_step": (total - sum(loader.waits)) / max(1, steps),
            "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None,
            "syncs_per_step": syncs / max(1, steps - warm) if cuda else None,
            "recompiles_after_step_2": (graphs[-1] - graphs[1]) if compiled and len(graphs) > 2 else None,
            "graphs": graphs[-1] if compiled and graphs else None}


def workers_needed(images_per_s, per_worker):
    """Loader workers per process that feed ``images_per_s`` at ``per_worker`` samples/s each."""
    return math.ceil(images_per_s / per_worker) if per_worker > 0 and math.isfinite(images_per_s) else None
