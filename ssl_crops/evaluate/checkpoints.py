"""Checkpoint reading: our ``main_moco.py`` checkpoints, the original MoCo ones
(``module.encoder_q.*``), plain torchvision state dicts; the backbone as a torchvision model."""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..checkpoint import encoder_state_dict

ARCH_CANDIDATES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                   "wide_resnet50_2", "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not hold a complete backbone."""


def read_checkpoint(path) -> dict:
    """``torch.load`` on CPU without executing pickled code; errors name the file (and say
    when it is no torch file at all, e.g. a JSON report passed as a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(64)
    if not (head[:2] == b"PK" or head[:1] == b"\x80"):  # torch's zip format (maybe truncated), a legacy pickle
        kind = "a JSON file" if head.lstrip()[:1] in (b"{", b"[") else "not a torch file"
        raise CheckpointError(f"{path}: not a checkpoint ({kind}); give a .pth written by main_moco.py, the "
                              f"original MoCo code or torch.save(model.state_dict())")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: checkpoint holds objects other than tensors and plain "
                              f"data, refusing to unpickle them: {e}") from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint (truncated or not a torch file?): "
                              f"{type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: expected a dict, got {type(ckpt).__name__}")
    return ckpt


def backbone_state_dict(ckpt: dict) -> tuple[dict, str | None]:
    """Backbone weights (torchvision keys, ``fc.*`` dropped) and the arch named in ``ckpt``.

    Reads ``main_moco.py`` checkpoints (``module.encoder_q.*``, or ``encoder_q.*`` of older
    versions), the original MoCo ones and plain (optionally ``module.``-prefixed) state dicts.
    """
    arch = ckpt.get("arch") if isinstance(ckpt.get("arch"), str) else None
    return {k: v for k, v in encoder_state_dict(ckpt).items() if not k.startswith("fc.")}, arch


def infer_arch(state_dict: dict) -> str | None:
    """The torchvision ResNet whose parameter names and shapes match ``state_dict``."""
    import torchvision
    for name in ARCH_CANDIDATES:
        with torch.device("meta"):
            ref = getattr(torchvision.models, name)().state_dict()
        ref = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
        if ref.keys() == state_dict.keys() and all(state_dict[k].shape == s for k, s in ref.items()):
            return name
    return None


def build_backbone(arch: str) -> nn.Module:
    """Random-init torchvision model with ``fc`` replaced by identity (``.num_features`` set)."""
    import torchvision
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision architecture {arch!r}")
    model = getattr(torchvision.models, arch)()
    model.arch, model.num_features = arch, model.fc.in_features
    model.fc = nn.Identity()
    return model


def load_backbone(checkpoint_path, arch: str | None = None) -> nn.Module:
    """Backbone of a checkpoint as a torchvision model with ``fc = nn.Identity()``, in eval mode.

    ``arch`` defaults to the checkpoint's ``arch`` entry, else it is inferred from the
    weights. Every backbone weight must be present (only ``fc`` may be missing).
    """
    return backbone_from_checkpoint(read_checkpoint(checkpoint_path), arch, checkpoint_path)


def backbone_from_checkpoint(ckpt: dict, arch: str | None = None, source="checkpoint") -> nn.Module:
    """:func:`load_backbone` on a checkpoint already read by :func:`read_checkpoint`."""
    sd, ckpt_arch = backbone_state_dict(ckpt)
    if not sd:
        raise CheckpointError(f"{source}: no backbone weights found")
    arch = arch or ckpt_arch or infer_arch(sd)
    if arch is None:
        raise CheckpointError(f"{source}: cannot infer the architecture, pass -a/--arch")
    model = build_backbone(arch)
    expected = model.state_dict()
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    wrong = [k for k in expected.keys() & sd.keys() if expected[k].shape != sd[k].shape]
    if missing or unexpected or wrong:
        held = ckpt_arch or infer_arch(sd)
        if held and held != arch:
            raise CheckpointError(f"{source}: holds a {held} backbone, not {arch}: pass -a {held} (or leave -a out)")
        raise CheckpointError(
            f"{source}: weights do not match {arch}: {len(missing)} missing "
            f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} with other shapes {wrong[:5]}")
    model.load_state_dict(sd)
    return model.eval()


def checkpoint_fingerprint(path) -> dict:
    """Identity of a checkpoint file for cache keys: absolute path, size, mtime."""
    st = Path(path).stat()
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def find_linear_resume(resume: str, out_dir) -> dict | None:
    """The linear-head checkpoint named by ``--resume``: a path, or ``"auto"`` for
    ``out_dir/linear_last.pth`` when it is readable (``None`` if missing; skipped with a
    warning if unreadable, e.g. truncated)."""
    if resume != "auto":
        return read_checkpoint(resume)
    path = Path(out_dir) / "linear_last.pth"
    if not path.is_file():
        return None
    try:
        return read_checkpoint(path)
    except CheckpointError as e:
        warnings.warn(f"skipping unreadable linear head checkpoint {path}, starting afresh: {e}")
        return None

