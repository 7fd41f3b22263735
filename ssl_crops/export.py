"""Export the query encoder of a pretraining checkpoint as a plain torchvision state dict.

    python -m ssl_crops.export run/checkpoint_last.pth --out backbone.pth

The result loads into ``torchvision.models.<arch>()`` with ``strict=True`` once its ``fc`` is
replaced (``model.fc = nn.Identity()``) or ``strict=False`` reports only ``fc.weight`` and
``fc.bias`` missing: the MoCo projection head is not a classifier and is left out. Reads
checkpoints of ``main_moco.py`` (both key layouts) and of the original MoCo code.
"""
import argparse

from .checkpoint import backbone_weights, read_checkpoint, write_checkpoint
from .cli import user_errors

__all__ = ["export_backbone"]


def export_backbone(checkpoint, arch=None):
    """``(state_dict, arch)``: the query encoder's weights without ``fc``, checked against the
    torchvision ``arch`` (default: the checkpoint's ``arch``, else inferred from the weights);
    :class:`~ssl_crops.checkpoint.CheckpointError` names what does not fit."""
    return backbone_weights(read_checkpoint(checkpoint), arch, checkpoint)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m ssl_crops.export", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="checkpoint of main_moco.py or of the original MoCo code")
    p.add_argument("--out", required=True, help="output .pth (a torchvision state dict without fc)")
    p.add_argument("-a", "--arch", default=None,
                   help="torchvision architecture (default: the checkpoint's, else inferred from the weights)")
    args = p.parse_args(argv)
    with user_errors(ValueError, OSError):
        sd, arch = export_backbone(args.checkpoint, args.arch)
        write_checkpoint(sd, args.out)
    print(f"{args.out}: {arch} backbone, {len(sd)} tensors (fc left out: load with model.fc = nn.Identity() "
          "or strict=False)")


if __name__ == "__main__":
    main()
