#!/usr/bin/env python
"""Linear evaluation of a pretrained backbone (see ``python linear_eval.py -h``).

Cached features and a swept linear probe by default; ``--protocol moco`` runs the original
MoCo protocol. Reads checkpoints of main_moco.py, of the original MoCo code and plain
torchvision state dicts. Example (demo layout, dicts beside the image folder):

    python linear_eval.py demo_data/images --pretrained checkpoints/demo/checkpoint_last.pth
"""
import sys

from ssl_crops.evaluate import CheckpointError, main

if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, CheckpointError) as e:
        sys.exit(f"linear_eval.py: error: {e}")
