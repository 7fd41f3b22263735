"""Checkpoints, the one place that reads and writes them: reading (one error type,
:class:`CheckpointError`), the backbone and its architecture check, atomic writes with a kept
predecessor, the newest readable file of a run, resume, RNG states.

A run folder holds ``checkpoint_last.pth`` (every epoch end, and at the step where a
SIGTERM/SIGUSR1 stopped the run), ``checkpoint_prev.pth`` (the one it replaced) and
``checkpoint_<epoch:04d>.pth`` every ``--save-freq`` epochs (the newest ``--keep-checkpoints``), a
hard link to the ``checkpoint_last.pth`` written with it (so ``prev`` and a numbered file share
storage too: identical weights are stored once).
``state_dict`` keys follow the original MoCo layout (``module.encoder_q.*``, ``module.encoder_k.*``,
``module.queue``, ``module.queue_ptr``) so the official ``main_lincls.py`` and detectron2's
conversion read them; :func:`load_model_state` takes both layouts.
"""
import errno
import hashlib
import json
import os
import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import torch

from . import distributed as du
from .files import atomic_link, atomic_write

__all__ = ["CheckpointError", "OutputError", "capture_rng", "restore_rng", "to_moco_layout", "load_model_state",
           "encoder_state_dict", "ARCH_CANDIDATES", "backbone_state_dict", "infer_arch", "backbone_weights",
           "read_checkpoint", "load_checkpoint", "checkpoint_arch", "write_checkpoint", "check_output",
           "save_checkpoint", "run_checkpoints", "find_resume_checkpoint", "locate_resume", "resume",
           "ResumeMismatch", "dataset_fingerprint", "check_resume"]

LAST, PREV = "checkpoint_last.pth", "checkpoint_prev.pth"
ARCH_CANDIDATES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                   "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, is not the kind asked for, or does not fit the
    architecture; the message names the file and the problem."""


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
        raise CheckpointError("no state dict in the checkpoint")
    sd = next((ckpt[k] for k in ("state_dict", "model") if isinstance(ckpt.get(k), dict)), ckpt)
    sd = {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if any(k.startswith(f"{encoder}.") for k in sd):
        sd = {k[len(encoder) + 1:]: v for k, v in sd.items() if k.startswith(f"{encoder}.")}
    return sd


def backbone_state_dict(ckpt):
    """Backbone weights (torchvision keys, ``fc.*`` dropped) and the arch named in ``ckpt``
    (``None`` if none), not checked: see :func:`backbone_weights`."""
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), str) else None
    return {k: v for k, v in encoder_state_dict(ckpt).items() if not k.startswith("fc.")}, arch


def _backbone_shapes(arch):
    """Parameter and buffer shapes of torchvision's ``arch`` without ``fc`` (built on the meta device)."""
    import torchvision
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision architecture {arch!r}")
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)().state_dict()
    return {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}


def infer_arch(state_dict):
    """The torchvision ResNet (of :data:`ARCH_CANDIDATES`) whose names and shapes match ``state_dict``."""
    for name in ARCH_CANDIDATES:
        ref = _backbone_shapes(name)
        if ref.keys() == state_dict.keys() and all(state_dict[k].shape == s for k, s in ref.items()):
            return name
    return None


def backbone_weights(ckpt, arch=None, source="checkpoint"):
    """``(state_dict, arch)``: the query encoder's weights without ``fc``, checked against
    torchvision's ``arch`` (default: the checkpoint's ``arch`` entry, else inferred from the
    weights). Every backbone weight must be there with its shape, else :class:`CheckpointError`
    naming ``source`` and what does not fit."""
    sd, held = backbone_state_dict(ckpt)
    if not sd:
        raise CheckpointError(f"{source}: no backbone weights found")
    arch = arch or held or infer_arch(sd)
    if arch is None:
        raise CheckpointError(f"{source}: cannot infer the architecture, pass -a/--arch")
    ref = _backbone_shapes(arch)
    missing, unexpected = sorted(ref.keys() - sd.keys()), sorted(sd.keys() - ref.keys())
    wrong = sorted(k for k in ref.keys() & sd.keys() if sd[k].shape != ref[k])
    if missing or unexpected or wrong:
        held = held or infer_arch(sd)
        if held and held != arch:
            raise CheckpointError(f"{source}: holds a {held} backbone, not {arch}: pass -a {held} (or leave -a out)")
        raise CheckpointError(f"{source}: weights do not match {arch}: {len(missing)} missing {missing[:5]}, "
                              f"{len(unexpected)} unexpected {unexpected[:5]}, {len(wrong)} with other shapes "
                              f"{wrong[:5]}")
    return sd, arch


# --------------------------------------------------------------------------- reading
_KINDS = {"state_dict": "checkpoint of main_moco.py", "fc": "linear head checkpoint of linear_eval.py"}


def read_checkpoint(path, require=None, mmap=False):
    """The dict in a checkpoint file, read on CPU without executing pickled code.

    ``require``: an entry it must hold (``"state_dict"``: pretraining, ``"fc"``: linear head).
    ``mmap``: tensors stay on disk until used (zip files). A missing file raises
    ``FileNotFoundError``; a file that cannot be read (truncated, no torch file, pickled code, no
    dict, without ``require``) raises :class:`CheckpointError`, one line naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(64)
    if not (head[:2] == b"PK" or head[:1] == b"\x80"):  # torch's zip format (maybe truncated), a legacy pickle
        kind = "a JSON file" if head.lstrip()[:1] in (b"{", b"[") else "not a torch file"
        raise CheckpointError(f"{path}: not a checkpoint ({kind}); give a .pth written by main_moco.py, the "
                              f"original MoCo code or torch.save(model.state_dict())")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and head[:2] == b"PK")
    except pickle.UnpicklingError as e:
        detail = next((f" ({ln.split('error: ', 1)[-1].split('. ')[0]})" for ln in str(e).splitlines()
                       if "WeightsUnpickler" in ln), "")  # e.g. "Unsupported global: GLOBAL builtins.print ..."
        raise CheckpointError(f"{path}: cannot read checkpoint: it holds objects other than tensors and plain data, "
                              f"refusing to unpickle them{detail}") from None
    except Exception as e:  # truncated zip, bad pickle stream: torch's errors vary with the damage
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file?): "
                              f"{type(e).__name__}: {first_line}") from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, not a dict)")
    if require is not None and require not in ckpt:
        raise CheckpointError(f"{path}: not a {_KINDS.get(require, 'checkpoint')} (no {require!r} entry)")
    return ckpt


def load_checkpoint(path):
    """A pretraining checkpoint (one with a ``state_dict``): :func:`read_checkpoint`."""
    return read_checkpoint(path, require="state_dict")


def checkpoint_arch(path):
    """The ``arch`` entry of a checkpoint (``None`` if it has none), its tensors left on disk."""
    arch = read_checkpoint(path, mmap=True).get("arch")
    return arch if isinstance(arch, str) else None


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


def write_checkpoint(obj, path, backup=None):
    """``torch.save(obj)`` to ``path`` atomically (with ``backup``: the file it replaces is kept
    there); a failed write raises :class:`OutputError` naming the path and the cause, and
    leaves ``path`` as it was."""
    try:
        with atomic_write(path, backup=backup) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:  # torch wraps ENOSPC in a RuntimeError
        raise _output_error(path, e) from None


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
    ``checkpoint_prev.pth``; with ``keep`` also ``checkpoint_<epoch:04d>.pth`` (a hard link to
    it: identical checkpoints take the disk space of one; a copy where links fail), then delete all
    but the newest ``max_numbered`` numbered checkpoints (-1: keep all; 0: write none). A failed
    write (disk full, permission, a directory in the way) raises :class:`OutputError` naming the
    path and the cause, and leaves the previous checkpoints as they were."""
    last = Path(run_dir) / LAST
    write_checkpoint(state, last, backup=last.with_name(PREV))
    if keep and max_numbered != 0:
        numbered = last.with_name(f"checkpoint_{state['epoch']:04d}.pth")
        try:
            atomic_link(last, numbered)  # the same file, not a second copy
        except OSError as e:
            raise _output_error(numbered, e) from None
        if max_numbered > 0:
            for old in _numbered(run_dir)[max_numbered:]:
                old.unlink()


# --------------------------------------------------------------------------- finding, resuming
def run_checkpoints(run_dir, last=LAST, prev=PREV, numbered="checkpoint"):
    """The checkpoint files of a run, newest first: ``last``, ``prev``, then
    ``<numbered>_<epoch>.pth`` by epoch (``prev``, ``numbered``: ``None`` for none)."""
    run_dir = Path(run_dir)
    paths = [run_dir / last] + ([run_dir / prev] if prev else []) + (_numbered(run_dir, numbered) if numbered else [])
    return [p for p in paths if p.is_file()]


def _numbered(run_dir, stem="checkpoint"):
    """``<stem>_<epoch>.pth`` files of a run, newest epoch first."""
    return sorted(Path(run_dir).glob(f"{stem}_[0-9]*.pth"), key=lambda p: int(p.stem.split("_")[-1]), reverse=True)


def find_resume_checkpoint(run_dir, last=LAST, prev=PREV, numbered="checkpoint", require="state_dict"):
    """``(path, checkpoint)`` of the newest readable checkpoint in ``run_dir``, or ``(None, None)``:
    ``last``, else the newer (by step, then epoch) of ``prev`` and the newest readable numbered one
    (file names as in :func:`run_checkpoints`; ``require`` as in :func:`read_checkpoint`).
    Unreadable files (truncated, not a checkpoint) are skipped with a warning."""
    best = None
    for path in run_checkpoints(run_dir, last, prev, numbered):
        try:
            ckpt = read_checkpoint(path, require=require)
        except (CheckpointError, OSError) as e:  # e.g. killed while copying: try an older one
            warnings.warn(f"skipping unreadable checkpoint {e}")
            continue
        order = ckpt.get("step", -1), ckpt.get("epoch", -1)
        if best is None or order > best[2]:  # prev may be older or newer than the newest numbered one
            best = path, ckpt, order
        if path.name != prev:  # last, or the newest readable numbered one
            break
    return best[:2] if best else (None, None)


def locate_resume(resume_arg, run_dir):
    """``(path, checkpoint)`` that ``--resume`` (``resume_arg``: a path, ``"auto"`` or ``""``) asks
    for; ``(None, None)`` for a fresh start. An unreadable path raises :class:`CheckpointError`.

    A fresh start never writes over a run: with checkpoints in ``run_dir`` but none readable
    (``--resume auto``), or without ``--resume``, it raises ``FileExistsError``."""
    if resume_arg and resume_arg != "auto":
        if not Path(resume_arg).is_file():
            raise FileNotFoundError(f"--resume {resume_arg}: checkpoint not found")
        try:
            return resume_arg, read_checkpoint(resume_arg, require="state_dict")
        except CheckpointError as e:
            raise CheckpointError(f"--resume {e}") from None
    existing = run_checkpoints(run_dir)
    if resume_arg == "auto":
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
class ResumeMismatch(CheckpointError):
    """A checkpoint that this run's settings or data cannot continue; one line naming both values."""


# what shapes the model and its input: a change makes another run (--bn-splits: checked when given)
MUST_MATCH = {"arch": "-a", "moco_dim": "--moco-dim", "moco_k": "--moco-k", "mlp": "--mlp",
              "image_size": "--image-size", "bn_splits": "--bn-splits",
              "random_boxes": "--random-boxes"}  # half a control run, half the method, is neither
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
    differ = [(k, flag) for k, flag in MUST_MATCH.items()
              if old.get(k) is not None and new.get(k) is not None and old[k] != new[k]]
    bad = [f"{flag} {_show(old[k])} in the checkpoint, {_show(new[k])} now" for k, flag in differ]
    flags = " ".join(f"{flag} {old[k]}" for k, flag in differ if not isinstance(old[k], bool))
    data = ckpt.get("dataset")
    other_data = data is not None and fingerprint is not None and data != fingerprint
    if other_data and not new.get("allow_new_data"):
        bad.append(f"dataset of {_show_data(data)} in the checkpoint, {_show_data(fingerprint)} now "
                   "(--allow-new-data continues on it)")
    if bad:
        raise ResumeMismatch(f"cannot resume {path}: {'; '.join(bad)}; resume with the checkpoint's settings"
                             f"{f' ({flags})' if flags else ''}, or start a new run with another --save_name")
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
