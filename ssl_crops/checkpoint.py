"""Pretraining checkpoints: layout, atomic writes with a kept predecessor, resume, RNG states.

A run folder holds ``checkpoint_last.pth`` (every epoch end, and at the step where a
SIGTERM/SIGUSR1 stopped the run), ``checkpoint_prev.pth`` (the one it replaced) and
``checkpoint_<epoch:04d>.pth`` every ``--save-freq`` epochs (the newest ``--keep-checkpoints``).
``state_dict`` keys follow the original MoCo layout (``module.encoder_q.*``, ``module.encoder_k.*``,
``module.queue``, ``module.queue_ptr``) so the official ``main_lincls.py`` and detectron2's
conversion read them; :func:`load_model_state` takes both layouts.
"""
import errno
import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import distributed as du
from .files import atomic_write

__all__ = ["OutputError", "capture_rng", "restore_rng", "step_seed", "seed_step", "to_moco_layout", "load_model_state",
           "encoder_state_dict", "check_output", "save_checkpoint", "load_checkpoint", "find_resume_checkpoint",
           "run_checkpoints", "locate_resume", "resume", "ResumeMismatch",
           "dataset_fingerprint", "check_resume"]

LAST, PREV = "checkpoint_last.pth", "checkpoint_prev.pth"


class OutputError(OSError):
    """A file of the run folder cannot be written; the message names the path and the cause."""


# --------------------------------------------------------------------------- randomness
def capture_rng():
    """RNG states as tensors and builtins (readable with ``torch.load(weights_only=True)``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state):
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


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


# --------------------------------------------------------------------------- key layout
def to_moco_layout(state_dict):
    """``MoCo.state_dict()`` keys in the original layout: ``module.`` in front of each."""
    return {f"module.{k}": v for k, v in state_dict.items()}


def load_model_state(model, state_dict):
    """Load a MoCo state dict of either layout (``module.encoder_q.*`` or ``encoder_q.*``)."""
    model.load_state_dict({k.removeprefix("module."): v for k, v in state_dict.items()})


def encoder_state_dict(ckpt, encoder="encoder_q"):
    """The torchvision weights of ``encoder`` in a checkpoint of either layout (or of a plain,
    optionally ``module.``-prefixed, state dict, also under a ``model`` entry), ``fc.*`` included."""
    if not isinstance(ckpt, dict):
        raise ValueError("no state dict in the checkpoint")
    sd = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), dict)), ckpt)
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(f"{encoder}.") for k in sd):
        sd = {k[len(encoder) + 1:]: v for k, v in sd.items() if k.startswith(f"{encoder}.")}
    return sd


# --------------------------------------------------------------------------- writing
def _cause(exc):
    """The first ``OSError`` in the chain of ``exc`` (torch wraps ENOSPC in a RuntimeError)."""
    seen = exc
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return exc


def _output_error(path, exc):
    cause = _cause(exc)
    if isinstance(cause, OSError) and cause.errno:
        reason = f"{os.strerror(cause.errno)} ({errno.errorcode.get(cause.errno, cause.errno)})"
        if cause.errno in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST) or Path(path).is_dir():
            reason = f"a directory is in the way ({errno.errorcode.get(cause.errno, cause.errno)})"
    else:
        reason = f"{type(cause).__name__}: {cause}".splitlines()[0]
    return OutputError(f"cannot write {path}: {reason}")


def check_output(run_dir):
    """Raise :class:`OutputError` unless the run folder can be created and written, and its
    checkpoint and log names are free of directories (checked before training starts)."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(run_dir, e) from None
    for name in (LAST, PREV, "log.jsonl", "bad_images.txt"):
        if (run_dir / name).is_dir():
            raise OutputError(f"cannot write {run_dir / name}: a directory is in the way")
    probe = run_dir / ".write_test"
    try:
        with atomic_write(probe) as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        raise _output_error(run_dir, e) from None


def save_checkpoint(state, run_dir, keep, max_numbered=-1):
    """Write ``checkpoint_last.pth`` atomically, keeping the one it replaces as
    ``checkpoint_prev.pth``; with ``keep`` also ``checkpoint_<epoch:04d>.pth``, then delete all
    but the newest ``max_numbered`` numbered checkpoints (-1: keep all; 0: write none). A failed
    write (disk full, permission, a directory in the way) raises :class:`OutputError` naming the
    path and the cause, and leaves the previous checkpoints as they were."""
    last = Path(run_dir) / LAST
    try:
        with atomic_write(last, backup=last.with_name(PREV)) as f:
            torch.save(state, f)
    except (OSError, RuntimeError) as e:
        raise _output_error(last, e) from None
    if keep and max_numbered != 0:
        numbered = last.with_name(f"checkpoint_{state['epoch']:04d}.pth")
        try:
            with open(last, "rb") as src, atomic_write(numbered) as f:
                shutil.copyfileobj(src, f)
        except OSError as e:
            raise _output_error(numbered, e) from None
        if max_numbered > 0:
            for old in _numbered(run_dir)[max_numbered:]:
                old.unlink()


# --------------------------------------------------------------------------- reading
def load_checkpoint(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError("not a checkpoint of main_moco.py (no 'state_dict')")
    return ckpt


def run_checkpoints(run_dir):
    """The checkpoint files of a run, newest first: last, prev, then numbered by epoch."""
    run_dir = Path(run_dir)
    return [p for p in [run_dir / LAST, run_dir / PREV, *_numbered(run_dir)] if p.is_file()]


def _numbered(run_dir):
    """``checkpoint_<epoch>.pth`` files of a run, newest epoch first."""
    return sorted(Path(run_dir).glob("checkpoint_[0-9]*.pth"), key=lambda p: int(p.stem.split("_")[-1]), reverse=True)


def find_resume_checkpoint(run_dir):
    """``(path, checkpoint)`` of the newest readable checkpoint in ``run_dir`` (see
    :func:`run_checkpoints`), or ``(None, None)``; unreadable (e.g. truncated) files are
    skipped with a warning."""
    best = None
    for path in run_checkpoints(run_dir):
        try:
            ckpt = load_checkpoint(path)
        except Exception as e:  # truncated zip, bad pickle, wrong content: try an older one
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(e).__name__}: {e}")
            continue
        order = ckpt.get("step", -1), ckpt.get("epoch", -1)
        if best is None or order > best[2]:  # prev may be older or newer than the newest numbered one
            best = path, ckpt, order
        if path.name != PREV:  # last, or the newest readable numbered one
            break
    return best[:2] if best else (None, None)


def locate_resume(args, run_dir):
    """``(path, checkpoint)`` that ``--resume`` asks for; ``(None, None)`` for a fresh start.

    A fresh start never writes over a run: with checkpoints in ``run_dir`` but none readable
    (``--resume auto``), or without ``--resume``, it raises ``FileExistsError``."""
    if args.resume and args.resume != "auto":
        if not Path(args.resume).is_file():
            raise FileNotFoundError(f"--resume {args.resume}: checkpoint not found")
        try:
            return args.resume, load_checkpoint(args.resume)
        except Exception as e:
            raise ValueError(f"--resume {args.resume}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    existing = run_checkpoints(run_dir)
    if args.resume == "auto":
        path, ckpt = find_resume_checkpoint(run_dir)
        if path is None and existing:
            raise FileExistsError(f"--resume auto: no readable checkpoint in {run_dir} "
                                  f"({', '.join(p.name for p in existing)} unreadable); refusing to start afresh "
                                  "over this run: move it away or resume from an explicit --resume PATH")
        return path, ckpt
    if existing:
        raise FileExistsError(f"{run_dir} holds a run ({existing[0].name}): continue it with --resume auto, "
                              "or choose another --save_name or --output-dir")
    return None, None


def resume(path, ckpt, model, optimizer, scaler):
    """Restore model (either key layout), optimizer, scaler and RNG states; returns
    ``(epoch, step or None, epoch_state or None)`` (``epoch_state``: a mid-epoch stop)."""
    load_model_state(model, ckpt["state_dict"])
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if ckpt.get("scaler") and scaler.is_enabled():
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng"):
        restore_rng(ckpt["rng"])
    state = ckpt.get("epoch_state")
    if du.is_main_process():
        where = f"epoch {ckpt['epoch'] + 1}, batch {state['batches']}" if state else f"end of epoch {ckpt['epoch']}"
        print(f"resumed from {path} ({where}, step {ckpt.get('step')})", flush=True)
    return ckpt["epoch"], ckpt.get("step"), state


# --------------------------------------------------------------------------- resume checks
class ResumeMismatch(ValueError):
    """A checkpoint that this run's settings or data cannot continue; one line naming both values."""


# what shapes the model and its input: a change makes another run (--bn-splits: checked when given)
MUST_MATCH = {"arch": "-a", "moco_dim": "--moco-dim", "moco_k": "--moco-k", "mlp": "--mlp",
              "image_size": "--image-size", "bn_splits": "--bn-splits"}
NOT_COMPARED = ("resume", "start_epoch", "allow_new_data", "gpu", "rank", "dist_url")  # launch details


def dataset_fingerprint(index):
    """``{"images", "boxes", "ids"}`` of a ``BoxIndex``: its counts and a hash of its image ids in order."""
    ids = "\n".join(index.image_id(i) for i in range(len(index)))
    return {"images": len(index), "boxes": int(index.num_boxes), "ids": hashlib.sha1(ids.encode()).hexdigest()[:16]}


def _show(v):
    return ("on" if v else "off") if isinstance(v, bool) else v


def _show_data(fp):
    return f"{fp['images']} images, {fp['boxes']} boxes, ids {fp['ids']}"


def check_resume(path, ckpt, args, fingerprint=None, world_size=1, main=True):
    """Check a checkpoint against this run before anything is loaded from it.

    Raises :class:`ResumeMismatch` when a ``MUST_MATCH`` setting differs, or the dataset
    fingerprint (:func:`dataset_fingerprint`) does without ``args.allow_new_data``. With
    ``main``, prints the other settings that changed (lr, epochs, workers, batch size, world
    size...) and a dataset change allowed. What the checkpoint does not record (older
    checkpoints, the original MoCo's) is not checked."""
    old = {"arch": ckpt.get("arch"), **(ckpt.get("args") or {})}
    new = json.loads(json.dumps(vars(args), default=str))
    bad = [f"{flag} {_show(old[k])} in the checkpoint, {_show(new[k])} now" for k, flag in MUST_MATCH.items()
           if old.get(k) is not None and new.get(k) is not None and old[k] != new[k]]
    data = ckpt.get("dataset")
    other_data = data is not None and fingerprint is not None and data != fingerprint
    if other_data and not new.get("allow_new_data"):
        bad.append(f"dataset of {_show_data(data)} in the checkpoint, {_show_data(fingerprint)} now "
                   "(--allow-new-data continues on it)")
    if bad:
        raise ResumeMismatch(f"cannot resume {path}: {'; '.join(bad)}; resume with the checkpoint's settings, "
                             "or start a new run with another --save_name")
    if not main:
        return
    changed = [f"{k} {_show(old[k])} -> {_show(v)}" for k, v in new.items()
               if k in old and k not in MUST_MATCH and k not in NOT_COMPARED and v is not None and old[k] != v]
    if ckpt.get("world_size", world_size) != world_size:
        changed.append(f"world size {ckpt['world_size']} -> {world_size}")
    if changed:
        print(f"resuming {path} with changed settings: {', '.join(changed)}", flush=True)
    if other_data:
        print(f"resuming {path} on other data (--allow-new-data): {_show_data(data)} in the checkpoint, "
              f"{_show_data(fingerprint)} now", flush=True)
    elif data is None and fingerprint is not None:
        print(f"{path} records no dataset fingerprint (an older checkpoint): the data is not checked", flush=True)
