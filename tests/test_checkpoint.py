"""Checkpoints: original MoCo key layout, a kept predecessor, one-line write errors, resume rules."""
import errno
import io
import random
from argparse import Namespace

import numpy as np
import pytest
import torch
import torchvision

from ssl_crops import checkpoint as ck
from ssl_crops import files, train
from ssl_crops.evaluate import load_backbone
from ssl_crops.export import export_backbone
from ssl_crops.moco import MoCo


def test_state_dict_has_the_original_moco_layout(moco_checkpoint_at, tmp_path):
    model, state = moco_checkpoint_at(tmp_path / "c.pth")
    keys = state["state_dict"].keys()
    assert {"module.queue", "module.queue_ptr"} <= keys
    assert all(k.startswith(("module.encoder_q.", "module.encoder_k.", "module.queue")) for k in keys)
    # our reader takes both layouts
    other = MoCo(torchvision.models.resnet18, dim=16, K=32, mlp=True)
    for sd in (state["state_dict"], model.state_dict()):
        torch.nn.init.zeros_(other.encoder_q.conv1.weight)
        ck.load_model_state(other, sd)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values()))


def test_official_main_lincls_loader_finds_every_key(moco_checkpoint_at, tmp_path):
    """The loading code of facebookresearch/moco's main_lincls.py, verbatim in substance."""
    moco_checkpoint_at(tmp_path / "c.pth")
    checkpoint = torch.load(tmp_path / "c.pth", map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"]
    for k in list(state_dict.keys()):
        if k.startswith("module.encoder_q") and not k.startswith("module.encoder_q.fc"):
            state_dict[k[len("module.encoder_q."):]] = state_dict[k]
        del state_dict[k]
    model = torchvision.models.resnet18()
    msg = model.load_state_dict(state_dict, strict=False)
    assert set(msg.missing_keys) == {"fc.weight", "fc.bias"} and not msg.unexpected_keys
    # detectron2's convert-pretrain-to-detectron2.py converts the keys starting with "module.encoder_q."
    fresh = torch.load(tmp_path / "c.pth", weights_only=True)["state_dict"]
    assert sum(k.startswith("module.encoder_q.") for k in fresh) == len(model.state_dict()) + 2  # + MLP head


def test_evaluation_reads_the_new_layout(moco_checkpoint_at, tmp_path):
    model, _ = moco_checkpoint_at(tmp_path / "c.pth")
    backbone = load_backbone(tmp_path / "c.pth")
    assert backbone.arch == "resnet18"
    ref = model.encoder_q.state_dict()
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, ref[k]), k


# --------------------------------------------------------------------------- one reader, one error type
@pytest.fixture(scope="module")
def resnet18_checkpoint(tmp_path_factory):
    """A pretraining checkpoint of a resnet18 (query encoder only, original key layout)."""
    torch.manual_seed(0)
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "good.pth"
    torch.save({"epoch": 1, "arch": "resnet18", "state_dict": {f"module.encoder_q.{k}": v for k, v in sd.items()}},
               path)
    return path


def _resume_cli(path, arch):  # main_moco.py --resume PATH -a ARCH: checked before the run folder is touched
    train.check_inputs(train.parse_args([str(path.parent), "--resume", str(path), "-a", arch]))


def _resume_run(path, arch):  # the run: read the checkpoint, check it against the settings
    ck.check_resume(path, ck.locate_resume(str(path), path.parent / "run")[1], Namespace(arch=arch))


ENTRY_POINTS = {"resume (main_moco.py)": _resume_cli, "resume (run)": _resume_run,
                "linear_eval": lambda path, arch: load_backbone(path, arch), "export": export_backbone}


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("kind, problem", [("truncated", "cannot read checkpoint"),
                                           ("notes", "not a checkpoint (not a torch file)"),
                                           ("wrong_arch", "resnet18")])
def test_every_reader_raises_one_error_type_naming_the_file(resnet18_checkpoint, tmp_path, entry, kind, problem):
    path, arch = tmp_path / f"{kind}.pth", "resnet18"
    if kind == "truncated":
        path.write_bytes(resnet18_checkpoint.read_bytes()[:5000])
    elif kind == "notes":
        path.write_text("epoch 1: loss 8.3")
    else:
        path, arch = resnet18_checkpoint, "resnet34"
    with pytest.raises(ck.CheckpointError) as err:
        ENTRY_POINTS[entry](path, arch)
    msg = str(err.value)
    assert path.name in msg and problem in msg and "\n" not in msg, msg
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do
    if entry != "resume (main_moco.py)":  # (which goes on to read the annotations)
        ENTRY_POINTS[entry](resnet18_checkpoint, "resnet18")  # the same reader takes a good file


def test_evaluation_reexports_the_one_reader():
    from ssl_crops.evaluate import checkpoints

    assert checkpoints.CheckpointError is ck.CheckpointError and checkpoints.read_checkpoint is ck.read_checkpoint
    assert issubclass(ck.ResumeMismatch, ck.CheckpointError)


def test_files_of_the_previous_version_still_load(tmp_path):
    """Checkpoints as the code before the one checkpoint module wrote them (torch.save of these
    dicts) are read by resume, evaluation, export and the linear head's resume."""
    torch.manual_seed(0)
    model = MoCo(torchvision.models.resnet18, dim=16, K=32, mlp=True)
    opt = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    state = {"epoch": 2, "step": 8, "arch": "resnet18", "state_dict": ck.to_moco_layout(model.state_dict()),
             "optimizer": opt.state_dict(), "scaler": {}, "rng": ck.capture_rng(), "world_size": 1,
             "args": {"arch": "resnet18", "seed": 3}, "dataset": {"images": 3, "boxes": 4, "ids": "0123"}}
    run = tmp_path / "run"
    run.mkdir()
    for name in ("checkpoint_last.pth", "checkpoint_0002.pth"):
        torch.save(state, run / name)
    path, ckpt = ck.locate_resume("auto", run)
    assert path == run / "checkpoint_last.pth" and ckpt["step"] == 8 and ckpt["args"]["seed"] == 3
    assert ck.locate_resume(str(run / "checkpoint_0002.pth"), run)[1]["epoch"] == 2
    fresh = MoCo(torchvision.models.resnet18, dim=16, K=32, mlp=True)
    assert ck.resume(path, ckpt, fresh, torch.optim.SGD(fresh.parameters(), 0.1, momentum=0.9),
                     torch.amp.GradScaler("cpu", enabled=False))[:2] == (2, 8)
    assert torch.equal(fresh.encoder_q.conv1.weight, model.encoder_q.conv1.weight)
    assert ck.checkpoint_arch(path) == "resnet18"
    assert torch.equal(load_backbone(path).conv1.weight, model.encoder_q.conv1.weight)
    sd, arch = export_backbone(path)
    assert arch == "resnet18" and torch.equal(sd["conv1.weight"], model.encoder_q.conv1.weight)
    # a file in torch's legacy (pre-zip) format: no mmap, read whole
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert ck.checkpoint_arch(tmp_path / "legacy.pth") == "resnet18"
    # the linear head of linear_eval.py --protocol moco
    from ssl_crops.evaluate import find_linear_resume

    fc = torch.nn.Linear(512, 3)
    head = {"epoch": 1, "fc": fc.state_dict(), "optimizer": torch.optim.SGD(fc.parameters(), 1.0).state_dict(),
            "arch": "resnet18", "history": [{"epoch": 1, "test_batch_mean": 0.5}], "classes": ["a", "b", "c"]}
    torch.save(head, tmp_path / "linear_last.pth")
    loaded = find_linear_resume("auto", tmp_path)
    assert loaded["classes"] == ["a", "b", "c"] and torch.equal(loaded["fc"]["weight"], fc.weight)


def test_last_checkpoint_keeps_its_predecessor(tmp_path):
    for epoch in (1, 2, 3):
        state = {"epoch": epoch, "step": 4 * epoch, "state_dict": {"w": torch.ones(2)}}
        ck.save_checkpoint(state, tmp_path, keep=False)
    assert torch.load(tmp_path / "checkpoint_prev.pth", weights_only=True)["epoch"] == 2
    assert torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)["epoch"] == 3
    (tmp_path / "checkpoint_last.pth").write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="checkpoint_last.pth"):
        path, ckpt = ck.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_prev.pth" and ckpt["epoch"] == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_resume_auto_skips_truncated_checkpoint(tmp_path):
    ck.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(3)}}, tmp_path, keep=True)
    ck.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(3)}}, tmp_path, keep=True)
    newest = tmp_path / "checkpoint_last.pth"
    data = newest.read_bytes()
    newest.unlink()  # checkpoint_0002.pth is a hard link to it: replaced, not written into
    newest.write_bytes(data[:100])  # a truncated file (a copy cut short), now the newest one
    with pytest.warns(UserWarning, match="checkpoint_last.pth"):
        path, ckpt = ck.find_resume_checkpoint(tmp_path)
    assert path.name == "checkpoint_0002.pth" and ckpt["epoch"] == 2
    assert not list(tmp_path.glob(".*tmp"))  # no temporary files left behind
    assert ck.find_resume_checkpoint(tmp_path / "missing") == (None, None)


def test_rng_state_round_trip():
    state = ck.capture_rng()
    a = (torch.rand(2), np.random.rand(), random.random())
    ck.restore_rng(state)
    b = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


@pytest.mark.parametrize("max_numbered, kept", [(-1, [5, 4, 3, 2, 1]), (2, [5, 4]), (0, [])])
def test_keep_checkpoints_keeps_the_newest_numbered_ones(tmp_path, max_numbered, kept):
    for epoch in range(1, 6):
        ck.save_checkpoint({"epoch": epoch, "state_dict": {"w": torch.ones(2)}}, tmp_path, True, max_numbered)
    numbered = [p for p in ck.run_checkpoints(tmp_path) if p.name not in (ck.LAST, ck.PREV)]
    assert [int(p.stem.split("_")[-1]) for p in numbered] == kept
    assert (tmp_path / ck.LAST).is_file() and (tmp_path / ck.PREV).is_file()  # always kept


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes."""
    room = 200

    def write(self, b):
        if self.tell() + len(b) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


def _open_full(path, mode="r", *a, **k):
    return _FullDisk(path, mode.replace("b", "")) if "w" in mode else open(path, mode, *a, **k)


@pytest.mark.parametrize("fault", ["ENOSPC", "permission", "directory"])
def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, monkeypatch, fault):
    big = {"epoch": 1, "step": 4, "state_dict": {"w": torch.arange(1000.0)}}
    ck.save_checkpoint(big, tmp_path, keep=True)
    if fault == "ENOSPC":  # torch wraps it as "RuntimeError: [enforce fail at inline_container.cc] unexpected pos"
        monkeypatch.setattr(files, "open", _open_full, raising=False)
        target, cause = "checkpoint_last.pth", "No space left on device (ENOSPC)"
    elif fault == "permission":
        def denied(path, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        monkeypatch.setattr(files, "open", denied, raising=False)
        target, cause = "checkpoint_last.pth", "Permission denied (EACCES)"
    else:
        (tmp_path / "checkpoint_0002.pth").mkdir()
        target, cause = "checkpoint_0002.pth", "a directory is in the way"
    with pytest.raises(ck.OutputError) as err:
        ck.save_checkpoint({**big, "epoch": 2, "step": 8}, tmp_path, keep=True)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / target) in msg and cause in msg, msg
    monkeypatch.undo()
    kept = "checkpoint_last.pth" if fault != "directory" else "checkpoint_prev.pth"
    assert torch.load(tmp_path / kept, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "checkpoint_0001.pth", weights_only=True)["epoch"] == 1
    assert not list(tmp_path.glob(".*tmp"))


def test_check_output_before_training(tmp_path):
    ck.check_output(tmp_path / "run")  # creates it
    assert (tmp_path / "run").is_dir() and not list((tmp_path / "run").iterdir())
    (tmp_path / "run" / "checkpoint_last.pth").mkdir()
    with pytest.raises(ck.OutputError, match="checkpoint_last.pth: a directory is in the way"):
        ck.check_output(tmp_path / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ck.OutputError, match="cannot write .*file/run"):
        ck.check_output(tmp_path / "file" / "run")


def test_resume_never_starts_afresh_over_a_run(tmp_path):
    auto, fresh = "auto", ""
    assert ck.locate_resume(auto, tmp_path / "new") == (None, None)
    assert ck.locate_resume(fresh, tmp_path / "new") == (None, None)
    (tmp_path / "checkpoint_last.pth").write_bytes(b"truncated")
    (tmp_path / "checkpoint_0010.pth").write_bytes(b"")
    with pytest.warns(UserWarning), pytest.raises(FileExistsError, match="no readable checkpoint"):
        ck.locate_resume(auto, tmp_path)
    with pytest.raises(FileExistsError, match="holds a run"):
        ck.locate_resume(fresh, tmp_path)


class Hostile:
    def __reduce__(self):
        return (print, ("this ran",))


def test_hostile_resume_checkpoint_is_refused(tmp_path, capsys):
    torch.save({"state_dict": {}, "epoch": 1, "x": Hostile()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="evil.pth: cannot read checkpoint"):
        ck.locate_resume(str(tmp_path / "evil.pth"), tmp_path)
    assert "this ran" not in capsys.readouterr().out


# --------------------------------------------------------------------------- resume checks
RUN_ARGS = dict(arch="resnet18", moco_dim=128, moco_k=64, mlp=True, image_size=32, bn_splits=None, lr=0.03, epochs=2,
                workers=4, batch_size=32, moco_t=0.2, resume="auto", start_epoch=0, allow_new_data=False)
DATA = {"images": 929, "boxes": 4000, "ids": "0123456789abcdef"}


def _ckpt(**changes):
    return {"arch": "resnet18", "state_dict": {}, "args": {**RUN_ARGS, "bn_splits": 8, **changes}, "dataset": DATA,
            "world_size": 1}


def test_mismatched_resume_is_one_line_naming_both_values(capsys):
    with pytest.raises(ck.ResumeMismatch) as err:
        ck.check_resume("c.pth", _ckpt(), Namespace(**{**RUN_ARGS, "arch": "resnet34", "mlp": False}), DATA)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("cannot resume c.pth: ")
    assert "-a resnet18 in the checkpoint, resnet34 now" in msg and "--mlp on in the checkpoint, off now" in msg
    assert "another --save_name" in msg
    for key, value in (("moco_dim", 64), ("moco_k", 128), ("image_size", 64), ("bn_splits", 2)):
        with pytest.raises(ck.ResumeMismatch, match=f"{ck.MUST_MATCH[key]} {_ckpt()['args'][key]} in the checkpoint, "
                                                    f"{value} now"):
            ck.check_resume("c.pth", _ckpt(), Namespace(**{**RUN_ARGS, key: value}), DATA)
    assert capsys.readouterr().out == ""


def test_random_boxes_must_match_on_resume(capsys):
    """Half a random-box control run and half the method is neither: refused both ways."""
    for saved, now in ((True, False), (False, True)):
        with pytest.raises(ck.ResumeMismatch, match=f"--random-boxes {'on' if saved else 'off'} in the checkpoint"):
            ck.check_resume("c.pth", _ckpt(random_boxes=saved), Namespace(**{**RUN_ARGS, "random_boxes": now}), DATA)
    ck.check_resume("c.pth", _ckpt(), Namespace(**{**RUN_ARGS, "random_boxes": True}), DATA)  # older: not recorded
    assert "random_boxes" not in capsys.readouterr().out


def test_resume_prints_what_changed(capsys):
    args = Namespace(**{**RUN_ARGS, "lr": 0.06, "epochs": 4, "workers": 8, "resume": "c.pth", "allow_new_data": True})
    ck.check_resume("c.pth", _ckpt(), args, DATA, world_size=2, main=False)  # other ranks print nothing
    assert capsys.readouterr().out == ""
    ck.check_resume("c.pth", _ckpt(), args, DATA, world_size=2)
    assert capsys.readouterr().out == ("resuming c.pth with changed settings: lr 0.03 -> 0.06, epochs 2 -> 4, "
                                       "workers 4 -> 8, world size 1 -> 2\n")  # not resume, nor bn_splits unset
    ck.check_resume("c.pth", _ckpt(), Namespace(**RUN_ARGS), DATA)
    assert capsys.readouterr().out == ""


def test_dataset_change_is_an_error_unless_allowed(capsys):
    other = {"images": 898, "boxes": 3900, "ids": "fedcba9876543210"}
    with pytest.raises(ck.ResumeMismatch) as err:
        ck.check_resume("c.pth", _ckpt(), Namespace(**RUN_ARGS), other)
    assert ("dataset of 929 images, 4000 boxes, ids 0123456789abcdef in the checkpoint, 898 images, 3900 boxes, "
            "ids fedcba9876543210 now (--allow-new-data continues on it)") in str(err.value)
    ck.check_resume("c.pth", _ckpt(), Namespace(**{**RUN_ARGS, "allow_new_data": True}), other)
    out = capsys.readouterr().out
    assert "on other data (--allow-new-data): 929 images" in out and "898 images" in out


def test_older_checkpoints_are_checked_on_what_they_record(capsys):
    old = _ckpt()
    del old["dataset"], old["world_size"]
    ck.check_resume("c.pth", old, Namespace(**RUN_ARGS), DATA)
    assert "records no dataset fingerprint" in capsys.readouterr().out
    original = {"arch": "resnet50", "epoch": 200, "state_dict": {}}  # facebookresearch/moco: no args
    with pytest.raises(ck.ResumeMismatch, match="-a resnet50 in the checkpoint, resnet18 now"):
        ck.check_resume("moco_v2_200ep.pth", original, Namespace(**RUN_ARGS), DATA)
    ck.check_resume("moco_v2_200ep.pth", original, Namespace(**{**RUN_ARGS, "arch": "resnet50"}), DATA)


def test_dataset_fingerprint_counts_and_hashes_the_ids(tmp_path):
    import json

    from ssl_crops.boxes import BoxIndex

    def index(ids, boxes=1):
        coco = {"categories": [{"id": 1, "name": "a"}],
                "images": [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in ids],
                "annotations": [{"id": 10 * i + j, "image_id": i, "category_id": 1, "bbox": [0, 0, 5, 5]}
                                for i in ids for j in range(boxes)]}
        (tmp_path / "c.json").write_text(json.dumps(coco))
        return BoxIndex.from_coco(tmp_path / "c.json")

    fp = ck.dataset_fingerprint(index([1, 2, 3]))
    assert (fp["images"], fp["boxes"]) == (3, 3) and fp == ck.dataset_fingerprint(index([1, 2, 3]))
    assert ck.dataset_fingerprint(index([1, 2, 4]))["ids"] != fp["ids"]
    assert ck.dataset_fingerprint(index([1, 2, 3], boxes=2))["boxes"] == 6


def test_a_numbered_checkpoint_is_the_last_one_not_a_copy(tmp_path):
    """Identical weights are stored once: the numbered file is a hard link to the last one it was
    written with (and becomes the predecessor's storage when the next epoch is saved)."""
    ck.save_checkpoint({"epoch": 1, "state_dict": {"w": torch.ones(2)}}, tmp_path, keep=True)
    last, numbered = tmp_path / "checkpoint_last.pth", tmp_path / "checkpoint_0001.pth"
    assert last.stat().st_ino == numbered.stat().st_ino and last.stat().st_nlink == 2
    ck.save_checkpoint({"epoch": 2, "state_dict": {"w": torch.ones(2)}}, tmp_path, keep=False)
    assert (tmp_path / "checkpoint_prev.pth").stat().st_ino == numbered.stat().st_ino
    assert torch.load(numbered, weights_only=True)["epoch"] == 1 and torch.load(last, weights_only=True)["epoch"] == 2


def test_a_resume_mismatch_names_the_flags_that_work():
    ckpt = {"arch": "resnet18", "args": {"moco_k": 896, "mlp": True}}
    with pytest.raises(ck.ResumeMismatch, match=r"--moco-k 896 in the checkpoint, 864 now; .*; resume with the "
                                                r"checkpoint's settings \(-a resnet18 --moco-k 896\)"):
        ck.check_resume("c.pth", ckpt, Namespace(arch="resnet34", moco_k=864, mlp=False))


def test_the_docs_give_the_detectron2_conversion_command():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "pretraining.md").read_text()
    assert "python moco/detection/convert-pretrain-to-detectron2.py RUN/checkpoint_last.pth" in docs
    # what that converter reads: state_dict entries module.encoder_q.* (loadable with weights_only)
    assert ck.to_moco_layout({"encoder_q.conv1.weight": 1}) == {"module.encoder_q.conv1.weight": 1}
