"""The process group's store as a failure channel, and rendezvous ports."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from ssl_crops import rendezvous

REPO = Path(__file__).resolve().parents[1]


def test_ports():
    assert rendezvous.job_port("4711") == 24711 and rendezvous.job_port("") == 29500
    assert rendezvous.job_port("123456") != rendezvous.job_port("123457")  # two jobs on one node
    assert rendezvous.url_port("tcp://h:1234") == 1234 and rendezvous.url_port(None) is None
    assert rendezvous.url_port("env://") is None and 0 < rendezvous.free_port() < 65536


def test_a_report_writes_the_error_and_stands_its_own_watch_down(monkeypatch):
    monkeypatch.setattr(rendezvous, "FAILURE_POLL_S", 0.05)
    store = dist.HashStore()
    watch = rendezvous.FailureWatch(store, 2)
    watch.report(ValueError("bad image x.jpg"))
    assert dist.PrefixStore("ssl_crops/failure/", store).get("failed") == b"1|rank 2 failed: ValueError: bad image x.jpg"
    time.sleep(0.2)  # its own thread saw the key and did not end this process
    assert not watch.thread.is_alive()


WATCHED = textwrap.dedent("""
    import sys, time
    import torch.distributed as dist
    from ssl_crops import rendezvous
    store = dist.TCPStore("127.0.0.1", 0, 1, True)
    rendezvous.FailureWatch(store, 0)
    dist.PrefixStore("ssl_crops/failure/", store).set("failed", sys.argv[1])
    time.sleep(30)
    print("still running")
""")


@pytest.mark.parametrize("code, error", [(1, "RuntimeError: out of memory"), (2, "FileExistsError: run folder held")])
def test_another_ranks_failure_ends_this_process_in_seconds(tmp_path, code, error):
    """With the failed rank's exit code: 2 for a user mistake, as the command line's."""
    script = tmp_path / "watched.py"
    script.write_text(WATCHED)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(script), f"{code}|rank 3 failed: {error}"], capture_output=True,
                          text=True, timeout=60, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == code and "still running" not in proc.stdout
    assert f"rank 0: ending the job: rank 3 failed: {error}" in proc.stderr
    assert time.monotonic() - start < 20
