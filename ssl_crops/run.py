"""Bookkeeping of a training run: stop signals, one epoch's tallies, the run's log files, and
actions done by rank 0 that every rank must hear about."""
import itertools
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path

import torch

from . import distributed as du
from .files import atomic_write

__all__ = ["EVENTS", "StopSignal", "EpochTally", "RunLog", "TensorBoardLog", "on_rank0"]

EVENTS = ("bad_images", "scene_fallbacks")  # per-item event counts, summed over workers and ranks


class StopSignal:
    """SIGTERM and SIGUSR1 (SLURM's notice before preemption or the time limit) ask the run to
    stop after the current step. ``requested()`` is agreed by all ranks (a one-number
    collective per step when distributed). Handlers are installed in the main thread only and
    restored on exit."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.received, self._previous = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (getattr(signal, name) for name in self.SIGNALS if hasattr(signal, name)):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def requested(self, device):
        if du.get_world_size() == 1:
            return self.received is not None
        flag = torch.tensor([float(self.received is not None)], device=device)
        return bool(du.all_gather_cat(flag).max().item())


class EpochTally:
    """One epoch's sums on this rank: loss, ``EVENTS`` counts, skipped images, batches done.
    ``state()`` (a collective) goes into a mid-epoch checkpoint; ``EpochTally(..., state)``
    continues from it (with any number of ranks)."""

    def __init__(self, info, state=None):
        self.info = info
        self.loss_sum = torch.zeros((), device=info.device)
        self.events = torch.zeros(len(EVENTS), dtype=torch.int64)
        self.skipped, self.batches = {}, 0
        if state:
            sums = state["loss_sums"].to(info.device)
            # the epoch loss is the mean over ranks of each rank's sum: same ranks, same sums
            self.loss_sum += sums[info.rank] if len(sums) == info.world_size else sums.sum() / len(sums)
            if info.rank == 0:
                self.events += state["events"]
            self.batches = int(state["batches"])

    def add(self, loss, events, skipped):
        self.loss_sum += loss
        self.events += events.sum(0)
        for line in "".join(skipped).splitlines():
            name, _, reason = line.partition("\t")
            self.skipped.setdefault(name, reason)
        self.batches += 1

    def take_skipped(self):
        """Skipped images of all ranks since the last call, ``{name: reason}`` (a collective)."""
        merged = {}
        for part in du.all_gather_objects(self.skipped):
            merged.update(part)
        self.skipped = {}
        return merged

    def state(self):
        return {"batches": self.batches, "loss_sums": du.all_gather_cat(self.loss_sum.view(1)).cpu(),
                "events": du.all_gather_cat(self.events.view(1, -1)).sum(0)}

    def summary(self, num_batches):
        """``(mean loss over all ranks and batches, {event: count over all ranks})`` (a collective)."""
        loss = du.all_gather_cat((self.loss_sum / num_batches).view(1)).mean().item()
        events = du.all_gather_cat(self.events.to(self.info.device).view(1, -1)).sum(0).tolist()
        return loss, dict(zip(EVENTS, events))


class RunLog:
    """``log.jsonl`` and ``bad_images.txt`` of a run folder, written by rank 0.

    A resumed run drops the records past the step it resumes from (they are redone), so the
    log holds no duplicates; a fresh start moves an existing ``log.jsonl`` aside
    (``log.<n>.jsonl``): a log is never truncated. ``bad_images.txt`` names each skipped image
    once, with its reason."""

    def __init__(self, run_dir, resumed_step=None, tensorboard=None):
        run_dir = Path(run_dir)
        self.tensorboard = tensorboard  # a TensorBoardLog that gets the same records, or None
        self.path, self.bad_path = run_dir / "log.jsonl", run_dir / "bad_images.txt"
        if self.path.is_file() and resumed_step is None:
            aside = next(p for n in itertools.count(1) if not (p := run_dir / f"log.{n}.jsonl").exists())
            os.replace(self.path, aside)
            warnings.warn(f"{self.path} of an earlier run without checkpoint moved to {aside}")
        elif self.path.is_file():
            self._drop_after(resumed_step)
        self.file = open(self.path, "a")
        self.bad_names = set()
        if self.bad_path.is_file():
            self.bad_names = {line.split("\t")[0] for line in self.bad_path.read_text().splitlines()}

    def _drop_after(self, step):
        lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if rec.get("step", 0) <= step:
                keep.append(line)
        if len(keep) < len(lines):
            with atomic_write(self.path, "w") as f:
                f.writelines(line + "\n" for line in keep)

    def write(self, rec):
        self.file.write(json.dumps({**rec, "time": time.time()}) + "\n")
        self.file.flush()
        if self.tensorboard is not None:
            self.tensorboard.write(rec)

    def add_bad_images(self, skipped):
        new = {k: v for k, v in sorted(skipped.items()) if k not in self.bad_names}
        if new:
            with open(self.bad_path, "a") as f:
                f.writelines(f"{name}\t{reason}\n" for name, reason in new.items())
            self.bad_names.update(new)

    def close(self):
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


class TensorBoardLog:
    """The numbers of the log records as TensorBoard scalars (``--tensorboard DIR``): ``step/loss``,
    ``step/acc1``, ``step/lr``, ``step/images_per_s``, ... and ``epoch/loss``, ``epoch/bad_images``,
    ``epoch/knn20_map``, ..., at the global step. Needs the ``tensorboard`` package."""

    SKIP = ("type", "epoch", "step", "time")

    def __init__(self, log_dir, purge_step=None):
        self.writer = summary_writer()(str(log_dir), purge_step=purge_step)

    def write(self, rec):
        for key, value in rec.items():
            if key not in self.SKIP and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{rec['type']}/{key}", value, rec["step"])
        if rec["type"] != "step":
            self.writer.flush()

    def close(self):
        self.writer.close()


def summary_writer():
    """``torch.utils.tensorboard.SummaryWriter``; ``ImportError`` saying what to install without it."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("--tensorboard needs the tensorboard package: pip install 'ssl-crops[tb]' "
                          "(or pip install tensorboard)") from None
    return SummaryWriter


def on_rank0(fn):
    """Run ``fn`` on rank 0; an exception it raises is raised on every rank (none waits for a
    rank that has failed)."""
    error = None
    if du.is_main_process():
        try:
            fn()
        except Exception as e:
            error = e
    failed = du.all_gather_objects(None if error is None else f"{type(error).__name__}: {error}")[0]
    if error is not None:
        raise error
    if failed is not None:
        raise RuntimeError(f"rank 0 failed: {failed}")
