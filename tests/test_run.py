"""Run bookkeeping: log.jsonl without duplicates or truncation, bad_images.txt, epoch tallies, stop signals."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from ssl_crops import distributed as du
from ssl_crops.distributed import DistInfo
from ssl_crops.run import STOP_LAG, EpochTally, RunLog, StopSignal, ignore_stop_signals, stop_workers


def test_resumed_log_drops_the_records_past_the_resumed_step(tmp_path):
    log = RunLog(tmp_path)
    for step in (1, 2, 3, 4):
        log.write({"type": "step", "step": step})
    log.write({"type": "epoch", "epoch": 0, "step": 4})
    log.write({"type": "step", "step": 5})
    log.close()
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"type": "step", "st')  # a line cut by a kill
    log = RunLog(tmp_path, resumed_step=4)
    log.write({"type": "step", "step": 5})
    log.close()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r["type"], r["step"]) for r in records] == [("step", 1), ("step", 2), ("step", 3), ("step", 4),
                                                        ("epoch", 4), ("step", 5)]


def test_fresh_log_moves_an_old_one_aside(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "log.1.jsonl").write_text('{"step": 7}\n')
    with pytest.warns(UserWarning, match="log.2.jsonl"):
        RunLog(tmp_path).close()
    assert (tmp_path / "log.2.jsonl").read_text() == '{"step": 1}\n'
    assert (tmp_path / "log.1.jsonl").read_text() == '{"step": 7}\n'
    assert (tmp_path / "log.jsonl").read_text() == ""


def test_bad_images_are_named_once_across_resumes(tmp_path):
    log = RunLog(tmp_path)
    log.add_bad_images({"b.jpg": "truncated", "a.jpg": "not found"})
    log.add_bad_images({"a.jpg": "not found"})
    log.close()
    log = RunLog(tmp_path, resumed_step=0)
    log.add_bad_images({"a.jpg": "not found", "c.jpg": "empty"})
    log.close()
    assert (tmp_path / "bad_images.txt").read_text().splitlines() == [
        "a.jpg\tnot found", "b.jpg\ttruncated", "c.jpg\tempty"]


def test_epoch_tally_sums_and_continues_from_its_state():
    info = DistInfo()
    tally = EpochTally(info)
    tally.add(torch.tensor(2.0), torch.tensor([[1, 0, 0], [0, 2, 1]]), ["x.jpg\tmissing\n", ""])
    tally.add(torch.tensor(4.0), torch.tensor([[1, 1, 0]]), ["y.jpg\tempty\nx.jpg\tmissing\n"])
    assert tally.take_skipped() == {"x.jpg": "missing", "y.jpg": "empty"} and tally.take_skipped() == {}
    state = tally.state()
    assert state["batches"] == 2 and state["events"].tolist() == [2, 3, 1]
    resumed = EpochTally(info, state)
    resumed.add(torch.tensor(6.0), torch.tensor([[1, 0, 0]]), [""])
    assert resumed.summary(3) == (4.0, {"bad_images": 3, "scene_fallbacks": 3, "truncated_images": 1})
    older = EpochTally(info, {**state, "events": torch.tensor([2, 3])})  # saved before truncated JPEGs were counted
    assert older.events.tolist() == [2, 3, 0]
    # written by 2 ranks, continued by 1: the per-rank mean of the sums carries over
    two = {**state, "loss_sums": torch.tensor([6.0, 10.0])}
    assert EpochTally(info, two).loss_sum.item() == 8.0


def test_stop_signal_is_caught_and_the_old_handler_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)}
    with StopSignal() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested() and stop.received == "SIGUSR1"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_ctrl_c_stops_at_a_step_and_a_second_one_interrupts(capfd):
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # without the handler: KeyboardInterrupt here
        assert stop.requested() and stop.received == "SIGINT"
        assert capfd.readouterr().err == ("SIGINT: stopping after this step and saving; Ctrl-C again stops at once "
                                          "without this save (the last checkpoint stays)\n")  # said at once
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_second_ctrl_c_during_the_checkpoint_write_lets_it_finish(capfd):
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        with stop.finishing_save():
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: says nothing more, SIGTERM stopped the run
            os.kill(os.getpid(), signal.SIGINT)  # not a KeyboardInterrupt inside the write
            written = True
        assert written and stop.received == "SIGTERM"
        err = capfd.readouterr().err
        assert err.startswith("SIGTERM: stopping after this step and saving") and err.count("\n") == 2
        assert "SIGINT again during the checkpoint write: letting the atomic write finish, then stopping" in err
        with pytest.raises(KeyboardInterrupt):  # outside the write: at once
            os.kill(os.getpid(), signal.SIGINT)


def test_non_finite_numbers_are_named_and_logged_as_null(tmp_path):
    from ssl_crops.run import finite_or_none

    with pytest.warns(UserWarning, match="epoch 3: knn20_map_pct is nan"):
        rec = finite_or_none({"type": "epoch", "loss": 1.5, "knn20_map_pct": float("nan")}, "epoch 3")
    log = RunLog(tmp_path)
    log.write({**rec, "step": 1, "lr": float("inf")})
    log.close()
    line = (tmp_path / "log.jsonl").read_text()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line)["knn20_map_pct"] is None and json.loads(line)["lr"] is None


def test_loader_workers_end_within_a_second_of_the_main_process(tmp_path):
    """The main process SIGKILLed (OOM killer, scancel -s KILL): its DataLoader workers, which
    ignore the stop signals, go too, at once (torch's own check waits 5 s for a queue timeout)."""
    import time

    code = ("import os, sys, time, torch; from torch.utils.data import DataLoader; "
            "from ssl_crops.run import ignore_stop_signals\n"
            "class Items(torch.utils.data.Dataset):\n"
            "    def __len__(self): return 1000\n"
            "    def __getitem__(self, i): return i\n"
            "it = iter(DataLoader(Items(), num_workers=2, worker_init_fn=ignore_stop_signals))\n"
            "next(it); time.sleep(0.5)\n"  # the workers idle, waiting for indices
            "print(' '.join(str(w.pid) for w in it._workers), flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    time.sleep(1.0)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and
             "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()]  # a zombie has ended
    assert alive == []


def test_the_first_signal_names_the_stop():
    # SLURM sends SIGTERM; a legacy mp.spawn rank then also gets its parent's death signal (SIGINT)
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C still interrupts at once
            os.kill(os.getpid(), signal.SIGINT)


def test_distributed_stop_is_agreed_a_fixed_lag_after_the_signal(monkeypatch):
    """With several ranks, step t reads the agreement started at step t - STOP_LAG (no sync per
    step): every rank stops at the same step; settle() resolves what is still pending."""
    monkeypatch.setattr(du, "get_world_size", lambda: 2)
    started = []
    monkeypatch.setattr(du, "any_async", lambda flag: started.append(flag) or du.AnyPending(flag))
    stop = StopSignal()
    answers = []
    for step in range(6):
        if step == 2:
            stop.received = "SIGTERM"  # arrives during step 2
        answers.append(stop.requested())
    assert answers == [False] * (2 + STOP_LAG) + [True] * (4 - STOP_LAG)
    assert started == [False, False, True, True, True, True]
    late = StopSignal()
    late.requested(), late.requested()
    late.received = "SIGUSR1"
    assert late.settle() and late._pending == []


def test_worker_init_ignores_the_stop_signals():
    """A DataLoader worker, as torch leaves it (SIGTERM from anyone but its parent kills it)
    and after ``ignore_stop_signals``: a signal to the process group leaves it running."""
    import subprocess
    import sys
    code = ("import os, signal, time; from ssl_crops.run import ignore_stop_signals; ignore_stop_signals(); "
            "[os.kill(os.getpid(), s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]; print('alive')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "alive", out.stderr


def test_a_worker_error_is_not_taken_for_a_dead_worker(tmp_path):
    """An exception raised in a worker (e.g. --bad-image error) passes through unchanged; a dead
    worker's (torch's message or a broken pipe) becomes LoaderDied naming the run folder."""
    from ssl_crops.run import LoaderDied, loader_died
    handler = signal.getsignal(signal.SIGCHLD)  # loader_died resets torch's, as the run then ends
    assert loader_died(ValueError("Caught CorruptImageError in DataLoader worker process 0."), None, tmp_path) is None
    died = loader_died(RuntimeError("DataLoader worker (pid(s) 123) exited unexpectedly"), None, tmp_path)
    assert isinstance(died, LoaderDied) and "pid(s) 123" in str(died) and str(tmp_path) in str(died)
    assert isinstance(loader_died(EOFError(), None, tmp_path), LoaderDied)
    signal.signal(signal.SIGCHLD, handler)


LEAKED_LOADER = """
import sys, torch
from torch.utils.data import DataLoader
from ssl_crops.run import ignore_stop_signals
loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,
                    worker_init_fn=ignore_stop_signals)
next(iter(loader))
KEEP = [loader]  # never shut down: the workers live until the interpreter exits
print("ready", flush=True)
"""


def test_workers_that_ignore_sigterm_do_not_hang_the_exit(tmp_path):
    # multiprocessing's exit handler stops daemonic children with SIGTERM and waits: without
    # run's own exit handler this process would wait forever for the two workers
    script = tmp_path / "leak.py"
    script.write_text(LEAKED_LOADER)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert out.returncode == 0, out.stderr
    assert "ready" in out.stdout


def test_stop_workers_shuts_a_persistent_loader_down():
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=1, persistent_workers=True,
                        worker_init_fn=ignore_stop_signals)
    next(iter(loader))
    workers = list(loader._iterator._workers)
    stop_workers(loader)
    assert loader._iterator is None and not any(w.is_alive() for w in workers)
