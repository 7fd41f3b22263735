"""The run: :func:`train_worker` in every process that ``ssl_crops.distributed.launch`` starts,
and :func:`main` (``main_moco.py``)."""
import functools
import json
import math
import os
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from .. import distributed as du
from ..checkpoint import (LAST, OutputError, ResumeMismatch, capture_rng, check_output, check_resume,
                          dataset_fingerprint, locate_resume, resume, run_checkpoints, save_checkpoint, to_moco_layout)
from ..cli import plain_warnings, user_errors
from ..demo import make_demo
from ..formats import SUBSET_FILES
from ..moco import default_bn_splits
from ..files import atomic_write
from ..run import EpochTally, RunLog, StopSignal, TensorBoardLog, finite_or_none, loader_died, on_rank0, stop_workers
from ..runlock import RunLock
from ..transforms import BatchAugment
from .inputs import MISSING_IMAGES, build_dataset, build_loader, check_inputs, knn_test_index, queue_size
from .loop import NO_BUFFER_BROADCAST, adjust_learning_rate, build_model, train_one_epoch
from .options import default_workers, parse_args, process_cpus

__all__ = ["agreed_resume", "cuda_determinism", "main", "train_worker"]

def _shared_seed(seed, device):
    """``seed``, or a random seed drawn on rank 0 and shared with every rank."""
    if seed is not None:
        return seed
    return int(du.all_gather_cat(torch.tensor([int.from_bytes(os.urandom(4), "big") >> 1], device=device))[0])


def cuda_determinism(deterministic):
    """``--deterministic``: deterministic kernels and cuDNN algorithms, no autotuning (which may
    choose other algorithms after a restart); otherwise cuDNN's autotuning, the fastest."""
    if deterministic:  # before the first cuBLAS call of this process
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def agreed_resume(resume_arg, run_dir):
    """:func:`locate_resume` with ``--resume auto`` decided by rank 0 (a node's file system cache
    may show another newest checkpoint after a restart): the other ranks read the file it chose
    and refuse (``ResumeMismatch``) when theirs holds another step."""
    if resume_arg != "auto" or du.get_world_size() == 1:
        return locate_resume(resume_arg, run_dir)
    found = path = ckpt = None
    if du.is_main_process():
        try:
            path, ckpt = locate_resume("auto", run_dir)
            found = (None if path is None else str(path), None if ckpt is None else ckpt.get("step"))
        except FileExistsError as e:  # the same one-line refusal on every rank
            found = str(e)
    found = du.broadcast_object(found)
    if isinstance(found, str):
        raise FileExistsError(found)
    if du.is_main_process() or found[0] is None:
        return path, ckpt
    path, ckpt = locate_resume(found[0], run_dir)
    if ckpt.get("step") != found[1]:
        raise ResumeMismatch(f"--resume auto: rank {du.get_rank()} reads step {ckpt.get('step')} in {path}, rank 0 "
                             f"step {found[1]}: the nodes see different files (a stale network file system cache?)")
    return path, ckpt


def _knn_monitor(args, index, test_index=None):
    from ..evaluate import KNNMonitor

    test_index = knn_test_index(args, index) if test_index is None else test_index
    return KNNMonitor(args.data, index, test_index, image_size=args.image_size,
                      batch_size=args.batch_size // du.get_world_size(),
                      workers=min(default_workers() if args.workers is None else args.workers, 4), amp=args.amp,
                      test_root=args.test_images, on_corrupt={"error": "raise"}.get(args.bad_image, "skip"))


def _nothing_to_do(args, resume_path, ckpt):
    if ckpt is None:
        return (f"nothing to do: --epochs {args.epochs} from start epoch {args.start_epoch}; "
                "no checkpoint written")
    return (f"nothing left to do: {resume_path} is already trained {ckpt['epoch']} epochs (--epochs "
            f"{args.epochs}); raise --epochs to train further")


def _saved_queue(ckpt):
    """``(K, K asked for)`` of a checkpoint (``None`` if it records no K): K may have been cut to the data."""
    k = (ckpt.get("args") or {}).get("moco_k") if ckpt is not None else None
    return None if k is None else (k, ckpt.get("moco_k_asked", k))


def train_worker(info, args, index=None, test_index=None, missing=()):
    """Pretrain in this process (rank ``info.rank``); returns the run folder. ``index`` and
    ``test_index``: the annotations read by :func:`check_inputs` (read here when ``None``);
    ``missing``: the images they name that the folder lacks (``missing_images.txt``). Rank 0
    holds the folder's lock (``runlock.RunLock``) from before anything touches the folder to the
    end: a second run naming the folder stops at once."""
    lock = RunLock(Path(args.output_dir) / args.save_name)
    on_rank0(lock.acquire)
    try:
        return _train(info, args, index, test_index, missing)
    finally:
        lock.release()


def _train(info, args, index, test_index, missing):
    """The run of :func:`train_worker`, its folder held."""
    main = info.rank == 0
    if info.device.type == "cuda":
        cuda_determinism(bool(getattr(args, "deterministic", False)))
    cuda = info.device.type == "cuda"  # resolved per device: the defaults of these flags
    args = args.replace(channels_last=cuda if args.channels_last is None else args.channels_last,
                        augment_on=args.augment_on or ("device" if cuda else "cpu"))
    if info.per_node_flags:  # the original flags: --batch-size per node, as the official code
        args = args.replace(batch_size=args.batch_size * info.nodes)
    if args.batch_size % info.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {info.world_size} processes")
    run_dir = Path(args.output_dir) / args.save_name
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restart > 0 and args.resume != "auto" and (not args.resume or run_checkpoints(run_dir)):
        args = args.replace(resume="auto")  # also over an explicit --resume PATH once this run has checkpoints
        du.print0(f"torchrun restart {restart}: continuing {run_dir} from its newest checkpoint (--resume auto)")
    resume_path, resume_ckpt = agreed_resume(args.resume, run_dir)
    saved_queue, asked_k = _saved_queue(resume_ckpt), args.moco_k
    if (resume_ckpt["epoch"] if resume_ckpt is not None else args.start_epoch) >= args.epochs:
        if resume_ckpt is not None:  # a finished run is checked as one to continue
            kept = saved_queue[0] if saved_queue and asked_k in saved_queue else asked_k
            check_resume(resume_path, resume_ckpt, args.replace(moco_k=kept),
                         None if index is None else dataset_fingerprint(index), info.world_size, main=False)
        du.print0(_nothing_to_do(args, resume_path, resume_ckpt))
        return run_dir
    seed = args.seed
    if resume_ckpt is not None and seed is None:  # the resumed run keeps its seed
        seed = (resume_ckpt.get("args") or {}).get("seed")
    args = args.replace(seed=_shared_seed(seed, info.device))
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    on_rank0(lambda: check_output(run_dir))  # before any work: an unwritable folder fails now
    if missing:
        on_rank0(lambda: _write_lines(run_dir / MISSING_IMAGES, missing))
    demo_root = Path(args.data).parent
    if args.demo and main and not (demo_root / SUBSET_FILES["labels"]).exists():
        print(f"making demo data in {demo_root} ...", flush=True)
        make_demo(demo_root)
    du.barrier()

    dataset, index = build_dataset(args, run_dir, main, index)
    args = args.replace(moco_k=queue_size(args, len(dataset), args.batch_size, main, saved_queue))
    fingerprint = dataset_fingerprint(index)
    if resume_ckpt is not None:  # before anything is loaded; --bn-splits only when given (not yet defaulted)
        check_resume(resume_path, resume_ckpt, args, fingerprint, info.world_size, main)
    workers = (default_workers(info.launcher, info.local_world_size) if args.workers is None
               else math.ceil(args.workers / info.local_world_size))
    if info.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # processes of a node share its cores
        torch.set_num_threads(process_cpus(info.launcher, info.local_world_size))
    rank_batch = args.batch_size // info.world_size
    loader = build_loader(dataset, args, info, rank_batch, workers)
    steps_per_epoch = len(loader)
    if args.bn_splits is None:
        args = args.replace(bn_splits=default_bn_splits(rank_batch, info.world_size))
    model = build_model(args).to(info.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = info.device.type == "cuda"  # fused SGD: no sync in the fp16 scaler's step
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                fused=fused)
    augment = BatchAugment(args.aug_plus).to(info.device) if args.augment_on == "device" else None
    scaler = torch.amp.GradScaler(info.device.type, enabled=args.amp == "fp16")
    start_epoch, step, epoch_state = args.start_epoch, None, None
    if resume_ckpt is not None:
        start_epoch, step, epoch_state = resume(resume_path, resume_ckpt, model, optimizer, scaler)
        saved_batch = (resume_ckpt.get("args") or {}).get("batch_size", args.batch_size)
        if epoch_state and saved_batch != args.batch_size:  # its done items are batches x its batch size
            raise ValueError(f"--resume {resume_path}: stopped mid-epoch with a batch of {saved_batch} in total, this "
                             f"run's is {args.batch_size}"
                             + (" (--batch-size per node x the nodes: the original flags)" if info.per_node_flags else "")
                             + "; resume it with that total batch (any number of processes), or from an epoch end")
        for group in optimizer.param_groups:  # the saved state carries the saving machine's choice
            group["fused"] = fused
        del resume_ckpt
    step = start_epoch * steps_per_epoch if step is None else step
    if args.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    ddp = model
    if info.distributed:
        ddp = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None,
                                      **NO_BUFFER_BROADCAST)
    knn = _knn_monitor(args, index, test_index) if args.knn_every > 0 else None  # called on every rank

    log = None
    if main:
        resumed = step if resume_path is not None else None
        tb = TensorBoardLog(args.tensorboard, None if resumed is None else resumed + 1) if args.tensorboard else None
        log = RunLog(run_dir, resumed_step=resumed, tensorboard=tb)
        print(f"{args.arch} MoCo K={args.moco_k} on {len(dataset)} samples ({dataset.transform.mode} crops"
              f"{', random boxes (--random-boxes)' if args.random_boxes else ''}), "
              f"{info.world_size} process(es) on {info.device.type} ({info.local_world_size} per node, {info.nodes} "
              f"node(s)), batch {args.batch_size} in total, {rank_batch} per process"
              + (" (--batch-size per node: the original flags)" if info.per_node_flags else "")
              + f", {workers} loader workers per process", flush=True)

    def checkpoint(epoch, keep=False, epoch_state=None):
        state = {"epoch": epoch, "arch": args.arch, "state_dict": to_moco_layout(model.state_dict()),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "args": json.loads(json.dumps(vars(args), default=str)), "rng": capture_rng(), "step": step,
                 "epoch_state": epoch_state, "dataset": fingerprint, "world_size": info.world_size,
                 "moco_k_asked": asked_k}
        with stop.finishing_save():  # a second Ctrl-C now waits for the atomic write
            on_rank0(lambda: save_checkpoint(state, run_dir, keep, args.keep_checkpoints))

    try:
        with StopSignal() as stop:
            for epoch in range(start_epoch, args.epochs):
                tally = EpochTally(info, epoch_state if epoch == start_epoch else None)
                loader.sampler.set_epoch(epoch, skip=tally.batches * args.batch_size)
                lr = adjust_learning_rate(optimizer, epoch, args)
                start, first = time.perf_counter(), tally.batches
                try:
                    step, stopped = train_one_epoch(ddp, loader, optimizer, scaler, epoch, step, tally, args, info, log,
                                                    stop, augment)
                except (RuntimeError, EOFError, ConnectionError) as e:
                    died = loader_died(e, getattr(loader, "_iterator", None), run_dir)  # persistent workers' iterator
                    if died is None:
                        raise
                    raise died from e
                skipped = tally.take_skipped()
                if main:
                    log.add_bad_images(skipped)
                if tally.batches < steps_per_epoch:  # stopped mid-epoch
                    checkpoint(epoch, epoch_state=tally.state())
                    if main:
                        signame = stop.received or "a signal to another process"
                        log.write({"type": "stop", "signal": signame, "epoch": epoch, "step": step})
                        print(f"{signame}: stopped after step {step} (epoch {epoch + 1}, batch {tally.batches}/"
                              f"{steps_per_epoch}); saved {run_dir / LAST}; continue with --resume auto", flush=True)
                    break
                loss, events = tally.summary(steps_per_epoch)
                events["bad_images"] = len(skipped)  # images, not items: one with several boxes is skipped per box
                if not math.isfinite(loss):
                    raise FloatingPointError(f"mean loss of epoch {epoch} is {loss}")
                done = epoch + 1
                ips = args.batch_size * (tally.batches - first) / (time.perf_counter() - start)
                summary = {"type": "epoch", "epoch": epoch, "step": step, "loss": loss, "lr": lr, "images_per_s": ips,
                           **events, **({"random_boxes": True} if args.random_boxes else {})}
                if knn is not None and (done % args.knn_every == 0 or done == args.epochs):
                    summary.update(knn(model.encoder_q))
                if main:
                    summary = finite_or_none(summary, f"epoch {done}")
                    log.write(summary)
                    print(f"epoch {done}/{args.epochs} " + " ".join(f"{k} {'n/a' if v is None else f'{v:.4g}'}"
                                                                    for k, v in summary.items()
                                                                    if k not in ("type", "epoch", "random_boxes")), flush=True)
                    if events["bad_images"]:
                        print(f"  {events['bad_images']} unreadable images skipped this epoch "
                              f"(named in {log.bad_path})", flush=True)
                checkpoint(done, keep=done % args.save_freq == 0 or done == args.epochs)
                if stopped or stop.settle():  # a signal in the epoch's last steps
                    if main:
                        print(f"{stop.received or 'a signal'}: stopped at the end of epoch {done}; saved {run_dir / LAST}; "
                              "continue with --resume auto", flush=True)
                    break
    finally:
        stop_workers(loader)  # now: they ignore SIGTERM, and a traceback may hold the loader
    if main:
        log.close()
        print(f"checkpoint: {run_dir / LAST}\nlog: {run_dir / 'log.jsonl'}", flush=True)
        if args.demo and info.world_size == 1 and step == args.epochs * steps_per_epoch:
            _demo_result(info, args, run_dir)
    return run_dir


def _demo_result(info, args, run_dir):
    """The demo's linear evaluation (``linear_eval.py`` defaults) of the pretrained and of a
    random-init network: what pretraining learnt."""
    from ..evaluate.protocol import quiet_map

    print("linear evaluation of the demo (pretrained and random init) ...", flush=True)
    out = run_dir / "linear_eval"
    maps = [quiet_map(info, args.data, ckpt, args.arch, args.image_size, out / name)
            for ckpt, name in ((str(run_dir / LAST), "checkpoint_last_cached"), ("", f"random_{args.arch}_cached"))]
    print(f"demo: linear-probe test mAP {100 * maps[0]:.2f} pretrained, {100 * maps[1]:.2f} random-init "
          f"{args.arch} ({100 * (maps[0] - maps[1]):+.2f}); reports in {out}", flush=True)


def _write_lines(path, lines):
    with atomic_write(path, "w") as f:
        f.writelines(f"{line}\n" for line in lines)


def main(argv=None):
    plain_warnings()
    args = parse_args(argv)
    with user_errors(FileNotFoundError, ValueError, pickle.UnpicklingError, prog="main_moco.py"):
        inputs = {} if args.demo else check_inputs(args)  # before the run folder is touched
    try:
        with user_errors(du.LaunchError, FileExistsError, ResumeMismatch, prog="main_moco.py"):
            return du.launch(functools.partial(train_worker, **inputs), args,  # bad launch, held or finished run folder
                             user_errors=(FileExistsError, ResumeMismatch), prog="main_moco.py")
    except OutputError as e:  # one line: which file, and why
        raise SystemExit(f"main_moco.py: error: {e}") from None
    except KeyboardInterrupt:
        print("main_moco.py: interrupted by a second Ctrl-C: stopped without saving this step; the last checkpoint "
              "stays (continue with --resume auto)", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
