"""Bookkeeping of a training run: stop signals, loader workers that die, one epoch's tallies,
the run's log files, and actions done by rank 0 that every rank must hear about."""
import atexit
import itertools
import contextlib
import json
import math
import multiprocessing
import multiprocessing.util  # registers its exit handler first, so ours (below) runs before it
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

from . import distributed as du
from .files import atomic_write, json_text

__all__ = ["EVENTS", "STOP_LAG", "StopSignal", "ignore_stop_signals", "stop_workers", "LoaderDied", "loader_died", "EpochTally",
           "RunLog", "TensorBoardLog", "die_with_parent", "finite_or_none", "on_rank0"]

EVENTS = ("bad_images", "scene_fallbacks", "truncated_images")  # per-item counts, summed over workers and ranks


STOP_LAG = 2  # steps from a signal's arrival to the agreed stop when distributed (see StopSignal)


class StopSignal:
    """SIGTERM, SIGUSR1 (SLURM's notice before preemption or the time limit) and SIGINT (Ctrl-C;
    a second one interrupts at once) ask the run to stop at a step boundary.

    ``requested()`` is called once a step on every rank and turns true at the same step on all.
    In one process that is the step the signal arrived in. With several, each step starts an
    asynchronous agreement on the flag and reads the one started ``STOP_LAG`` steps earlier
    (long done by then): no host-device sync per step, and the run stops ``STOP_LAG`` steps
    after the signal reached a rank (a signal to the whole job reaches all at once).
    ``settle()`` (at an epoch end) agrees on everything still pending. Handlers are installed in
    the main thread only and restored on exit; DataLoader workers ignore these signals
    (:func:`ignore_stop_signals`), so a signal to the whole process group does not kill them.
    The first signal says so at once (rank 0, on stderr); a second Ctrl-C during a checkpoint
    write (:meth:`finishing_save`) lets the atomic write finish, and the run then stops."""

    SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

    def __init__(self, lag=STOP_LAG):
        self.received, self.lag, self._previous, self._pending, self._interrupts = None, lag, {}, [], 0
        self._saving = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in _signals():
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
            if self._interrupts > 1 and self._saving:
                _say(f"{name} again during the checkpoint write: letting the atomic write finish, then stopping")
                return
            if self._interrupts > 1:
                raise KeyboardInterrupt  # a second Ctrl-C: no waiting for the step
        if self.received is None:  # the first: what stopped the run
            self.received = name
            _say(f"{name}: stopping after this step and saving; Ctrl-C again stops at once without this save "
                 "(the last checkpoint stays)")

    @contextlib.contextmanager
    def finishing_save(self):
        """A block writing a checkpoint: a second Ctrl-C in it does not interrupt the write."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False

    def requested(self):
        if du.get_world_size() == 1:
            return self.received is not None
        self._pending.append(du.any_async(self.received is not None))
        return len(self._pending) > self.lag and self._pending.pop(0).result()

    def settle(self):
        """Whether any rank has received a signal by now (a collective; clears the pending ones)."""
        pending, self._pending = self._pending, []
        now = du.any_async(self.received is not None)
        return any([p.result() for p in pending]) | now.result()


def _say(line):
    """One line on stderr from rank 0, fit for a signal handler: written to the file descriptor
    (the buffered stream may be in the middle of a write), or the stream where it has none."""
    if not du.is_main_process():
        return
    try:
        os.write(sys.stderr.fileno(), f"{line}\n".encode())
    except (AttributeError, OSError, ValueError):  # e.g. a captured stream
        with contextlib.suppress(RuntimeError):  # a reentrant write: the line is lost, not the run
            print(line, file=sys.stderr, flush=True)


def finite_or_none(record, where):
    """``record`` with its NaN and infinite numbers as ``None`` (``null`` in the log), each named in a warning."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        warnings.warn(f"{where}: {', '.join(f'{k} is {record[k]}' for k in bad)} (logged as null)")
    return {k: None if k in bad else v for k, v in record.items()}


def _signals():
    return [getattr(signal, name) for name in StopSignal.SIGNALS if hasattr(signal, name)]


def ignore_stop_signals(worker_id=None):
    """``worker_init_fn`` of DataLoaders: the worker ignores the stop signals (the main process
    handles them). Torch's own worker handler would let SIGTERM from anyone but the parent kill
    the worker mid-batch; ``kill -TERM -- -PGID``, SLURM and ``timeout`` send it to every process.
    The worker ends with its parent (:func:`die_with_parent`): a SIGKILLed run leaves none behind."""
    for sig in _signals():
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()


def die_with_parent(poll=0.2):
    """End this process when its parent dies: on Linux the kernel SIGKILLs it (``prctl``
    ``PR_SET_PDEATHSIG``); elsewhere a daemon thread checks the parent every ``poll`` seconds.
    (Torch's own worker check waits for a 5 s queue timeout first.)"""
    parent = os.getppid()
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1: PR_SET_PDEATHSIG
            if os.getppid() != parent:  # it died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):  # not Linux
        pass

    def watch():
        while os.getppid() == parent:
            time.sleep(poll)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def stop_workers(loader_or_iterator):
    """Shut down the workers of a DataLoader (its persistent iterator) or of a loader iterator
    now, not whenever the last reference goes (an exception's traceback can hold it for long)."""
    it = loader_or_iterator
    if hasattr(it, "_iterator"):  # a DataLoader with persistent workers
        it, loader_or_iterator._iterator = it._iterator, None
    if hasattr(it, "_shutdown_workers"):
        it._shutdown_workers()


@atexit.register
def _kill_leftover_workers():
    """At exit multiprocessing stops daemonic children with SIGTERM and waits for them; workers
    that ignore it (:func:`ignore_stop_signals`) would make it wait forever, so kill them first."""
    children = [p for p in multiprocessing.active_children() if p.daemon]
    for p in children:
        p.terminate()
    for p in children:
        p.join(1)
        if p.is_alive():
            p.kill()
            p.join()


class LoaderDied(RuntimeError):
    """A DataLoader worker died (killed, out of memory) during an epoch."""


def loader_died(error, it, run_dir):
    """:class:`LoaderDied` naming the dead workers of loader iterator ``it`` if ``error`` (raised
    in an epoch, by the loader or by torch's SIGCHLD handler) comes from a dead worker, else
    ``None``. Torch may report only a broken pipe."""
    if not isinstance(error, (EOFError, ConnectionError)) and "DataLoader worker (pid" not in str(error):
        return None  # e.g. an unreadable image under --bad-image error
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler would raise again while we look
    workers, deadline = getattr(it, "_workers", []), time.monotonic() + 2
    while not (dead := [w for w in workers if w.exitcode is not None]) and workers and time.monotonic() < deadline:
        time.sleep(0.05)  # a killed worker's pipe closes just before it can be waited for
    how = ", ".join(f"pid {w.pid} " + (f"killed by {signal.Signals(-w.exitcode).name}" if w.exitcode < 0
                                        else f"exit code {w.exitcode}") for w in dead)
    return LoaderDied(f"DataLoader worker died ({how or error}; {type(error).__name__}); nothing was saved since "
                      f"the last checkpoint in {run_dir}: continue with --resume auto")


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
            if info.rank == 0:  # a checkpoint from before an event was counted has fewer
                self.events[:len(state["events"])] += state["events"]
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
        self.file.write(json_text({**rec, "time": time.time()}) + "\n")
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
