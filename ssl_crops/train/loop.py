"""One training step and one epoch of MoCo pretraining (the model: ``ssl_crops.moco``)."""
import inspect
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as models
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import AMP_DTYPES
from ..moco import MoCo

__all__ = ["NO_BUFFER_BROADCAST", "adjust_learning_rate", "build_model", "seed_step", "step_seed", "train_one_epoch",
           "train_step", "warn_slow_loader"]

# buffers (queue, BN statistics) are synced once at start; the queue then stays equal across ranks
# by construction, so DDP need not broadcast 32 MB of it every step
NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})


def step_seed(seed, step, rank=0):
    """The seed of training step ``step`` on rank ``rank`` (see :func:`seed_step`); rank 0's is
    that of a single process (and of runs saved before seeds had a rank)."""
    key = [int(seed), int(step)] + ([int(rank)] if rank else [])
    return int(np.random.SeedSequence(key).generate_state(1, dtype=np.uint64)[0] >> 1)


def seed_step(seed, step, rank=0):
    """Reseed torch's CPU and CUDA generators from ``(seed, step, rank)`` before a training step,
    so shuffle-BN and on-device augmentation depend on nothing else (not on resuming, nor on what
    drew from the generators before) and differ between ranks. ``torch.manual_seed`` without its
    lazy-CUDA bookkeeping (about 1 ms a call on a CPU machine); no host-device sync."""
    s = step_seed(seed, step, rank)
    torch.default_generator.manual_seed(s)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(s)


def build_model(args):
    return MoCo(getattr(models, args.arch), args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp,
                bn_splits=args.bn_splits or 1)


def adjust_learning_rate(optimizer, epoch, args):
    """Cosine (``--cos``) or step (``--schedule``) decay per epoch, as in the original code."""
    lr = args.lr
    if args.cos:
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    else:
        lr *= 0.1 ** sum(epoch >= m for m in args.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_step(model, im_q, im_k, optimizer, scaler, amp_dtype=None, memory_format=torch.contiguous_format,
               augment=None):
    """One SGD step on a batch of view pairs; returns ``(loss, top-1 accuracy)`` tensors (no sync).
    With ``augment`` (a :class:`BatchAugment`) the views are uint8 crops, augmented on the device."""
    device = next(model.parameters()).device
    im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
    if augment is not None:
        im_q, im_k = augment(im_q), augment(im_k)
    im_q, im_k = im_q.contiguous(memory_format=memory_format), im_k.contiguous(memory_format=memory_format)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, labels = model(im_q, im_k)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.detach().argmax(1) == 0).float().mean()


def train_one_epoch(model, loader, optimizer, scaler, epoch, step, tally, args, info, log, stop, augment=None):
    """Train until the epoch ends or a stop is requested; returns ``(global step, stopped)``.

    Before each step torch's generators are seeded from ``(seed, step, rank)``. Every
    ``--log-freq`` steps rank 0 writes a ``step`` record and, without a terminal, one plain line
    (tqdm only on a terminal): the only host-device syncs of the loop."""
    model.train()
    amp_dtype = AMP_DTYPES[args.amp]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    main = info.rank == 0
    lr = optimizer.param_groups[0]["lr"]
    num_batches = tally.batches + len(loader)
    bar = tqdm(total=num_batches, initial=tally.batches, desc=f"epoch {epoch + 1}/{args.epochs}",
               disable=not (main and sys.stderr.isatty()), dynamic_ncols=True, leave=False)
    last_log = end = time.perf_counter()
    data_time, since_log, stopped = 0.0, 0, False
    waits = []  # (data, compute) seconds per step of each log interval but the first (the loader starting)
    for (im_q, im_k), _, events, skipped in loader:
        data_time += time.perf_counter() - end
        seed_step(args.seed, step, info.rank)
        getattr(model, "module", model).shuffle_seed = hash((args.seed, step))  # shuffle-BN's, the same on every rank
        loss, acc = train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt, augment)
        tally.add(loss, events, skipped)
        step, since_log = step + 1, since_log + 1
        if step % args.log_freq == 0:
            loss_v, acc_v = loss.item(), acc.item()  # synchronizes, so the interval timing is right
            now = time.perf_counter()
            rec = {"type": "step", "epoch": epoch, "step": step, "loss": loss_v, "acc1": acc_v, "lr": lr,
                   "data_time": data_time / since_log, "compute_time": (now - last_log - data_time) / since_log,
                   "images_per_s": args.batch_size * since_log / (now - last_log)}
            waits.append((rec["data_time"], rec["compute_time"]))
            if main:
                log.write(rec)
                if bar.disable:
                    print(f"epoch {epoch + 1}/{args.epochs} batch {tally.batches}/{num_batches} step {step} "
                          f"loss {loss_v:.4f} acc1 {acc_v:.3f} lr {lr:.4g} data {rec['data_time']:.3f}s "
                          f"compute {rec['compute_time']:.3f}s {rec['images_per_s']:.0f} img/s", flush=True)
                else:
                    bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr:.4f}", img_s=f"{rec['images_per_s']:.0f}")
            last_log, data_time, since_log = now, 0.0, 0
        bar.update()
        if stop.requested():
            stopped = True
            break
        end = time.perf_counter()
    bar.close()
    if main:
        warn_slow_loader(waits[1:], getattr(loader, "num_workers", 0))
    return step, stopped


def warn_slow_loader(waits, workers):
    """Say so when the steps waited longer for data than they computed (``waits``: per log
    interval, ``(data, compute)`` seconds per step)."""
    if not waits:
        return
    data, compute = (sum(w[i] for w in waits) / len(waits) for i in (0, 1))
    if data > compute:
        print(f"warning: the loader is the bottleneck: {data:.3f} s/step waiting for data, {compute:.3f} s/step "
              f"computing, with {workers} loader workers per process; raise -j (--workers) if the CPUs allow",
              flush=True)
