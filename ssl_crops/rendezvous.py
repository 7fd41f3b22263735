"""What ``distributed.launch`` needs around the process group, no collectives: the group's store
as a channel between ranks (one rank's failure ends the others: :class:`FailureWatch`),
rendezvous ports (free, or derived from a SLURM job id), and ``mp.spawn``'s parent under a stop signal."""
import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from urllib.parse import urlparse

import torch.distributed as dist

__all__ = ["FAILURE_POLL_S", "FailureWatch", "free_port", "job_port", "parent_outlives_stop_signals",
           "url_port"]

FAILURE_POLL_S = 1.0  # how often each rank looks for another rank's failure in the store
_FAILED_KEY = "failed"


class FailureWatch:
    """The failure channel of one process group: :meth:`report` writes this rank's error to the
    store; a daemon thread ends this process (with the failed rank's exit code) when another rank
    reported one, or (exit 1) when the store itself is gone (the process or agent holding it ended)."""

    def __init__(self, store, rank):
        self.store, self.rank = dist.PrefixStore("ssl_crops/failure/", store), rank
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ssl_crops-failure-watch", daemon=True)
        self.thread.start()

    def _watch(self):
        while not self.done.wait(FAILURE_POLL_S):
            try:
                if not self.store.check([_FAILED_KEY]):
                    continue
                code, _, why = self.store.get(_FAILED_KEY).decode(errors="replace").partition("|")  # "2|rank 1 ..."
            except Exception as e:  # noqa: BLE001 (any store error: the job's store is gone)
                code, why = "1", f"the job's store is unreachable ({type(e).__name__}: {e}): a process ended"
            if self.done.wait(FAILURE_POLL_S):  # this rank is failing or ending by itself: its own message
                return
            print(f"rank {self.rank}: ending the job: {why}", file=sys.stderr, flush=True)
            os._exit(int(code) if code.isdigit() else 1)

    def report(self, exc, code: int = 1):
        """Tell every rank that this one failed (called once, before it exits); they exit with
        ``code`` (2: a user mistake, as the command line's)."""
        self.done.set()
        try:
            self.store.set(_FAILED_KEY, f"{code}|rank {self.rank} failed: {type(exc).__name__}: {exc}"[:2000])
        except Exception:  # noqa: BLE001 (the store is gone too: the others find out by themselves)
            return
        time.sleep(3 * FAILURE_POLL_S)  # this process may hold the store: the others see it (poll + grace) first

    def stop(self):
        self.done.set()
        self.thread.join()


def free_port() -> int:
    """A TCP port free on this machine now."""
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def job_port(job_id: str) -> int:
    """A rendezvous port derived from a SLURM job id: the jobs sharing a node differ."""
    return 20000 + int(job_id) % 20000 if job_id.isdigit() else 29500


def url_port(url):
    """The port of a ``tcp://HOST:PORT`` URL, ``None`` without one."""
    try:
        return urlparse(url).port if url and "://" in url else None
    except ValueError:
        return None


@contextmanager
def parent_outlives_stop_signals():
    """While ``mp.spawn``'s parent waits, a stop signal to the whole job (SLURM, ``timeout``) is
    the ranks' to handle: the parent notes it instead of dying, which would SIGINT the ranks
    (their death signal) while they save."""
    def note(signum, frame):
        print(f"{signal.Signals(signum).name}: waiting for the processes to save and stop", flush=True)

    names = ("SIGTERM", "SIGUSR1", "SIGINT")
    previous = {sig: signal.signal(sig, note) for sig in (getattr(signal, n) for n in names if hasattr(signal, n))}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
