"""The backbone of a checkpoint as a torchvision model, and the linear head's resume file.

Checkpoints are read and checked by :mod:`ssl_crops.checkpoint` (our ``main_moco.py`` ones, the
original MoCo ones, plain torchvision state dicts); its reading names are importable from here too.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import (ARCH_CANDIDATES, CheckpointError, backbone_state_dict, backbone_weights,
                          find_resume_checkpoint, infer_arch, read_checkpoint)

__all__ = ["ARCH_CANDIDATES", "CheckpointError", "LINEAR_LAST", "backbone_from_checkpoint", "backbone_state_dict",
           "build_backbone", "checkpoint_fingerprint", "find_linear_resume", "infer_arch", "load_backbone",
           "read_checkpoint"]

LINEAR_LAST = "linear_last.pth"


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
    sd, arch = backbone_weights(ckpt, arch, source)
    model = build_backbone(arch)
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
        return read_checkpoint(resume, require="fc")
    return find_resume_checkpoint(out_dir, last=LINEAR_LAST, prev=None, numbered=None, require="fc")[1]

