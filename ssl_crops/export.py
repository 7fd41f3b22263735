"""Export the query encoder of a pretraining checkpoint as a plain torchvision state dict.

    python -m ssl_crops.export run/checkpoint_last.pth --out backbone.pth

The result loads into ``torchvision.models.<arch>()`` with ``strict=True`` once its ``fc`` is
replaced (``model.fc = nn.Identity()``) or ``strict=False`` reports only ``fc.weight`` and
``fc.bias`` missing: the MoCo projection head is not a classifier and is left out. Reads
checkpoints of ``main_moco.py`` (both key layouts) and of the original MoCo code.
"""
import argparse
import sys

import torch
import torchvision

from .checkpoint import encoder_state_dict
from .files import atomic_write

__all__ = ["export_backbone"]


def export_backbone(checkpoint, arch=None):
    """``(state_dict, arch)``: the query encoder's weights without ``fc``, checked against the
    torchvision ``arch`` (default: the checkpoint's ``arch``; errors name what does not match)."""
    try:
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise ValueError(f"{checkpoint}: cannot read checkpoint ({type(e).__name__}: {first_line})") from None
    if not isinstance(ckpt, dict):
        raise ValueError(f"{checkpoint}: not a checkpoint (a {type(ckpt).__name__})")
    sd = {k: v for k, v in encoder_state_dict(ckpt).items() if not k.startswith("fc.")}
    arch = arch or ckpt.get("arch")
    if not isinstance(arch, str):
        raise ValueError(f"{checkpoint}: no 'arch' entry; give --arch")
    if not hasattr(torchvision.models, arch):
        raise ValueError(f"unknown torchvision architecture {arch!r}")
    with torch.device("meta"):
        ref = getattr(torchvision.models, arch)().state_dict()
    ref = {k: v.shape for k, v in ref.items() if not k.startswith("fc.")}
    missing, unexpected = sorted(ref.keys() - sd.keys()), sorted(sd.keys() - ref.keys())
    wrong = sorted(k for k in ref.keys() & sd.keys() if sd[k].shape != ref[k])
    if missing or unexpected or wrong:
        raise ValueError(f"{checkpoint}: the weights do not fit torchvision's {arch}: {len(missing)} missing "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another "
                         f"shape {wrong[:3]}")
    return sd, arch


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ssl_crops.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint of main_moco.py or of the original MoCo code")
    p.add_argument("--out", required=True, help="output .pth (a torchvision state dict without fc)")
    p.add_argument("--arch", default=None, help="torchvision architecture (default: the checkpoint's)")
    args = p.parse_args(argv)
    try:
        sd, arch = export_backbone(args.checkpoint, args.arch)
        with atomic_write(args.out) as f:
            torch.save(sd, f)
    except (ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"{args.out}: {arch} backbone, {len(sd)} tensors (fc left out: load with model.fc = nn.Identity() "
          "or strict=False)")


if __name__ == "__main__":
    main()
