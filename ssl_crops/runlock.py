"""The lock of a run folder: one run writes into it at a time.

``RunLock(run_dir).acquire()`` makes ``run_dir/run.lock``, a JSON record of the process that
holds it (host, pid, start, its SLURM job / torchrun run and attempt). It is made atomically with
a hard link, which is atomic on NFS and Lustre as on local disks (``fcntl``/``flock`` are not
reliable there); ``O_CREAT | O_EXCL`` where hard links are unsupported. A thread refreshes its
mtime (the heartbeat) every ``heartbeat`` seconds.

A lock that a killed run left behind is taken over, with a printed line, when

- its process has ended (same host and pid namespace: the pid is gone, a zombie or reused), or
- no heartbeat came for ``stale_after`` seconds (another host, e.g. a crashed node), or
- this process is a later attempt of the job that holds it: a requeued SLURM job
  (``SLURM_JOB_ID`` equal, ``SLURM_RESTART_COUNT`` higher) or restarted torchrun workers
  (``TORCHELASTIC_RUN_ID`` equal, ``TORCHELASTIC_RESTART_COUNT`` higher). Both start a new
  attempt only once the earlier one has ended.

Otherwise ``acquire`` raises :class:`RunLocked` (one line: who holds it, since when) having
written nothing.
"""
import contextlib
import errno
import json
import os
import signal
import socket
import threading
import time
import warnings
from pathlib import Path

from .checkpoint import OutputError
from .files import json_text

__all__ = ["RunLock", "RunLocked"]


class RunLocked(FileExistsError):
    """Another live run holds the run folder; the message names its host, pid and start."""


def _job():
    """This process's SLURM job and torchrun run (None outside them; torchrun's default run id
    "none" names no job) and which attempt of each it is."""
    env = os.environ
    run_id = env.get("TORCHELASTIC_RUN_ID")
    return {"slurm": env.get("SLURM_JOB_ID"), "slurm_restart": int(env.get("SLURM_RESTART_COUNT", 0)),
            "torchrun": None if run_id in (None, "", "none") else run_id,
            "torchrun_restart": int(env.get("TORCHELASTIC_RESTART_COUNT", 0))}


def _later_attempt(mine, theirs):
    """Whether job ``mine`` is a later attempt of job ``theirs`` (both from :func:`_job`)."""
    if mine["slurm"] or theirs.get("slurm"):
        if mine["slurm"] != theirs.get("slurm"):
            return False
        if mine["slurm_restart"] != theirs.get("slurm_restart", 0):
            return mine["slurm_restart"] > theirs.get("slurm_restart", 0)
    elif mine["torchrun"] is None:
        return False
    return mine["torchrun"] == theirs.get("torchrun") and mine["torchrun_restart"] > theirs.get("torchrun_restart", 0)


def _process_space():
    """Boot id and pid namespace of this process: pids compare only within one (not across
    containers of one host, nor across a reboot); None without /proc."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() + os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _started(pid):
    """``(start time in clock ticks since boot, state letter)`` of a process, or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]), fields[0]
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid, started):
    """Whether process ``pid`` that started at ``started`` still runs (not a zombie, pid not reused)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    now = _started(pid)
    return now is None or (now[1] != "Z" and (started is None or now[0] == started))


EXIT_SIGNALS = ("SIGTERM", "SIGUSR1")  # their default action ends the process without unwinding


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through RunLock.release


class RunLock:
    """``run.lock`` of ``run_dir`` (see the module docstring). A context manager, or
    :meth:`acquire` and :meth:`release`. While held, SIGTERM or SIGUSR1 without a handler of its
    own (before training installs one) exits through :meth:`release`."""

    NAME = "run.lock"

    def __init__(self, run_dir, heartbeat=30.0, stale_after=300.0):
        self.run_dir, self.path = Path(run_dir), Path(run_dir) / self.NAME
        self.heartbeat, self.stale_after = heartbeat, stale_after
        self._record, self._stop, self._thread, self._previous = None, threading.Event(), None, {}
        self._made_dir = False  # made by this lock: removed on release when nothing else was written

    def _read(self):
        """``(text, holder, age in seconds)`` of the lock file, or None when there is none. The
        holder of a lock being written (without hard links) or garbled is ``{}``."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except ValueError:
            holder = None
        return text, holder if isinstance(holder, dict) else {}, age

    def _stale(self, holder, age):
        """Why the holder's lock may be taken over, or None while its run goes on."""
        if _later_attempt(_job(), holder.get("job") or {}):
            return "this process is a later attempt of its job"
        space = _process_space()
        if space is not None and (holder.get("host"), holder.get("space")) == (socket.gethostname(), space):
            return None if _alive(holder.get("pid", -1), holder.get("started")) else "that process has ended"
        return f"no heartbeat for {age:.0f} s" if age > self.stale_after else None

    @staticmethod
    def _describe(holder, age):
        since = holder.get("since")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "an unknown time"
        job = holder.get("job") or {}
        job = "".join(f", {k} job {job[k]}" for k in ("slurm", "torchrun") if job.get(k))
        return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}{job}, "
                f"heartbeat {age:.0f} s ago")

    def _create(self):
        """Make the lock file with this process's record; False when another one exists."""
        record = json_text({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": (_started(os.getpid()) or (None,))[0], "space": _process_space(),
                             "since": time.time(), "job": _job()})
        tmp = self.path.with_name(f".{self.NAME}.{socket.gethostname()}.{os.getpid()}.tmp")
        tmp.write_text(record)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            pass  # on NFS also when the reply to a link that was made got lost: st_nlink decides
        except OSError as e:
            tmp.unlink()
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            return self._create_exclusive(record)  # a file system without hard links
        try:
            made = os.stat(tmp).st_nlink == 2
        finally:
            tmp.unlink()
        self._record = record if made else None
        return made

    def _create_exclusive(self, record):
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(record)
        self._record = record
        return True

    def _break(self, text):
        """Remove the stale lock file that read ``text``, unless another process replaced it meanwhile."""
        aside = self.path.with_name(f".{self.NAME}.{socket.gethostname()}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_text() != text:  # the fresh lock of a process that took over first: put it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
        aside.unlink()

    def _owned(self):
        try:
            return self._record is not None and self.path.read_text() == self._record
        except FileNotFoundError:
            return False

    def acquire(self):
        """Take the lock, or raise :class:`RunLocked` having written nothing (:class:`OutputError`
        when the folder cannot be written); returns self."""
        try:
            self._take()
        except RunLocked:
            raise
        except OSError as e:
            raise OutputError(f"cannot write {self.run_dir}: {e.strerror or e}") from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            for sig in (getattr(signal, name) for name in EXIT_SIGNALS if hasattr(signal, name)):
                if signal.getsignal(sig) == signal.SIG_DFL:
                    self._previous[sig] = signal.signal(sig, _exit_on_signal)
        return self

    def _take(self):
        for _ in range(10):  # each round: another process made or broke the lock in between
            found = self._read()
            if found is not None:
                text, holder, age = found
                why = self._stale(holder, age)
                if why is None:
                    raise RunLocked(f"{self.run_dir} is in use by another run ({self._describe(holder, age)}): "
                                    "wait for it to end, or choose another --save_name")
                print(f"taking over the lock of {self.run_dir} from {self._describe(holder, age)}: {why}", flush=True)
                self._break(text)
            if not self.run_dir.exists():
                self.run_dir.mkdir(parents=True, exist_ok=True)
                self._made_dir = True
            if self._create():
                break
        else:
            raise RunLocked(f"{self.path}: cannot take the lock, other processes keep taking it")

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            try:
                if not self._owned():
                    warnings.warn(f"{self.path} was taken over by another run while this one held it")
                    return
                os.utime(self.path)
            except OSError:
                pass  # a file server hiccup: the next beat tries again

    def release(self):
        """Remove the lock if this process holds it (idempotent)."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) is _exit_on_signal:
                signal.signal(sig, handler)
        if self._owned():
            self.path.unlink(missing_ok=True)
            if self._made_dir:
                with contextlib.suppress(OSError):  # not empty: the run wrote into it
                    self.run_dir.rmdir()
        self._record, self._thread, self._previous = None, None, {}

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
