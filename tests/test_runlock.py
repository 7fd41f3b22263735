"""The run folder's lock: one holder, a one-line refusal that writes nothing, stale locks taken over."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ssl_crops import runlock
from ssl_crops.checkpoint import OutputError
from ssl_crops.runlock import RunLock, RunLocked

REPO = Path(__file__).resolve().parents[1]
JOB_VARS = ("SLURM_JOB_ID", "SLURM_RESTART_COUNT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")


@pytest.fixture(autouse=True)
def no_job(monkeypatch):
    for v in JOB_VARS:
        monkeypatch.delenv(v, raising=False)


def _snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def _plant(run_dir, age=0.0, **record):
    """A lock file as another process would have left it, last refreshed ``age`` seconds ago."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RunLock.NAME
    path.write_text(json.dumps({"host": socket.gethostname(), "space": runlock._process_space(),
                                "since": time.time() - age, **record}))
    os.utime(path, (time.time() - age,) * 2)
    return path


def _ended_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_second_holder_is_refused_in_one_line_and_writes_nothing(tmp_path):
    run = tmp_path / "r"
    with RunLock(run) as first:
        (run / "log.jsonl").write_text("{}\n")
        before = _snapshot(run)
        with pytest.raises(RunLocked) as err:
            RunLock(run).acquire()
        msg = str(err.value)
        assert "\n" not in msg and str(run) in msg and f"pid {os.getpid()} on {socket.gethostname()} since " in msg
        assert "--save_name" in msg
        assert _snapshot(run) == before  # nothing written, moved or refreshed
        assert json.loads((run / "run.lock").read_text())["pid"] == os.getpid()
        assert first._owned()
    assert not (run / "run.lock").exists()  # released
    with RunLock(run):  # free again
        pass
    assert sorted(p.name for p in run.iterdir()) == ["log.jsonl"]  # no temporary files left


@pytest.mark.parametrize("holder", ["ended", "zombie", "pid reused"])
def test_lock_of_an_ended_process_on_this_host_is_taken_over(tmp_path, capsys, holder):
    if holder == "ended":
        record = {"pid": _ended_pid()}
    elif holder == "zombie":  # killed, not yet reaped by its parent
        proc = subprocess.Popen(["sleep", "60"])
        proc.kill()
        while runlock._started(proc.pid)[1] != "Z":
            time.sleep(0.01)
        record = {"pid": proc.pid}
    else:  # a live pid that now belongs to another process than the one that took the lock
        record = {"pid": os.getppid(), "started": runlock._started(os.getppid())[0] + 1}
    _plant(tmp_path / "r", **record)
    with RunLock(tmp_path / "r"):
        assert json.loads((tmp_path / "r" / "run.lock").read_text())["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert "taking over the lock" in out and "that process has ended" in out
    if holder == "zombie":
        proc.wait()


def test_lock_of_another_host_is_taken_over_only_without_heartbeat(tmp_path, capsys):
    _plant(tmp_path / "r", age=60, host="node7", pid=123)  # a live run elsewhere: heartbeat 60 s ago
    with pytest.raises(RunLocked, match="pid 123 on node7 since .* heartbeat 60 s ago"):
        RunLock(tmp_path / "r", stale_after=300).acquire()
    _plant(tmp_path / "r", age=400, host="node7", pid=123)  # a crashed node
    with RunLock(tmp_path / "r", stale_after=300):
        pass
    assert "from pid 123 on node7" in capsys.readouterr().out
    # same host name, other pid namespace (another container): pids cannot be checked, the heartbeat decides
    _plant(tmp_path / "r", age=10, pid=_ended_pid(), space="other-container")
    with pytest.raises(RunLocked):
        RunLock(tmp_path / "r").acquire()


def test_a_later_attempt_of_the_same_job_takes_its_lock_over(tmp_path, monkeypatch, capsys):
    """A requeued SLURM job (higher SLURM_RESTART_COUNT) or restarted torchrun workers take the
    lock of their earlier attempt even while it looks alive (e.g. rank 0 moved to another node);
    another job, or the same attempt (a second srun step), is refused."""
    live = {"pid": os.getpid(), "host": "node7"}
    slurm = {"slurm": "42", "slurm_restart": 0, "torchrun": None, "torchrun_restart": 0}
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    _plant(tmp_path / "r", job=slurm, **live)
    with pytest.raises(RunLocked, match="slurm job 42"):  # same job, same attempt
        RunLock(tmp_path / "r").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "43")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(RunLocked):  # another job
        RunLock(tmp_path / "r").acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with RunLock(tmp_path / "r"):
        assert json.loads((tmp_path / "r" / "run.lock").read_text())["job"]["slurm_restart"] == 1
    assert "later attempt of its job" in capsys.readouterr().out

    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun's default id names no job
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    _plant(tmp_path / "r", job={**slurm, "slurm": None, "torchrun": None}, **live)
    with pytest.raises(RunLocked):
        RunLock(tmp_path / "r").acquire()
    _plant(tmp_path / "r", job={**slurm, "slurm": None, "torchrun": "run9"}, **live)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run9")
    with RunLock(tmp_path / "r"):
        pass


def test_heartbeat_refreshes_the_lock_and_notices_a_takeover(tmp_path):
    lock = RunLock(tmp_path / "r", heartbeat=0.02).acquire()
    path = tmp_path / "r" / "run.lock"
    os.utime(path, (time.time() - 100,) * 2)
    deadline = time.time() + 5
    while time.time() - path.stat().st_mtime > 50 and time.time() < deadline:
        time.sleep(0.01)
    assert time.time() - path.stat().st_mtime < 50
    with pytest.warns(UserWarning, match="taken over by another run"):
        path.write_text(json.dumps({"host": "node7", "pid": 1}))  # taken over (e.g. after a long SIGSTOP)
        lock._thread.join(5)
    lock.release()
    assert json.loads(path.read_text())["host"] == "node7"  # the other run's lock stays


def test_without_hard_links_the_lock_is_made_exclusively(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(os, "link", no_link)
    with RunLock(tmp_path / "r"):
        with pytest.raises(RunLocked):
            RunLock(tmp_path / "r").acquire()
    assert not (tmp_path / "r").exists()  # the folder the lock made, left empty, goes with it


def test_release_keeps_a_folder_it_did_not_make_or_that_was_written(tmp_path):
    (tmp_path / "old").mkdir()
    with RunLock(tmp_path / "old"), RunLock(tmp_path / "new"):
        (tmp_path / "new" / "log.jsonl").write_text("{}")
    assert not list((tmp_path / "old").iterdir())
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["log.jsonl"]


def test_unwritable_folder_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write .*file/r"):
        RunLock(tmp_path / "file" / "r").acquire()


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_before_training_releases_the_lock(tmp_path, sig):
    code = ("import sys, time\nfrom ssl_crops.runlock import RunLock\nwith RunLock(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "r")], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline() == "held\n"
    proc.send_signal(sig)
    assert proc.wait(30) == 128 + sig
    assert not (tmp_path / "r" / "run.lock").exists()
