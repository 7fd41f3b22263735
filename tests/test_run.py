"""Run bookkeeping: log.jsonl without duplicates or truncation, bad_images.txt, epoch tallies, stop signals."""
import json
import os
import signal

import pytest
import torch

from ssl_crops.distributed import DistInfo
from ssl_crops.run import EpochTally, RunLog, StopSignal


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
    tally.add(torch.tensor(2.0), torch.tensor([[1, 0], [0, 2]]), ["x.jpg\tmissing\n", ""])
    tally.add(torch.tensor(4.0), torch.tensor([[1, 1]]), ["y.jpg\tempty\nx.jpg\tmissing\n"])
    assert tally.take_skipped() == {"x.jpg": "missing", "y.jpg": "empty"} and tally.take_skipped() == {}
    state = tally.state()
    assert state["batches"] == 2 and state["events"].tolist() == [2, 3]
    resumed = EpochTally(info, state)
    resumed.add(torch.tensor(6.0), torch.tensor([[1, 0]]), [""])
    assert resumed.summary(3) == (4.0, {"bad_images": 3, "scene_fallbacks": 3})
    # written by 2 ranks, continued by 1: the per-rank mean of the sums carries over
    two = {**state, "loss_sums": torch.tensor([6.0, 10.0])}
    assert EpochTally(info, two).loss_sum.item() == 8.0


def test_stop_signal_is_caught_and_the_old_handler_restored():
    before = signal.getsignal(signal.SIGUSR1)
    with StopSignal() as stop:
        assert not stop.requested(torch.device("cpu"))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested(torch.device("cpu")) and stop.received == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is before
