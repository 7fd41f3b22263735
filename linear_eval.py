#!/usr/bin/env python
"""Linear evaluation of a pretrained backbone (see ``python linear_eval.py -h``).

Cached features and a swept linear probe by default; ``--protocol moco`` runs the original
MoCo protocol. Reads checkpoints of main_moco.py, of the original MoCo code and plain
torchvision state dicts. Examples (demo layout, dicts beside the image folder; COCO json):

    python linear_eval.py demo_data/images --pretrained checkpoints/demo/checkpoint_last.pth
    python linear_eval.py coco/train2017 --coco instances_train2017.json \
        --test-images coco/val2017 --test-coco instances_val2017.json --pretrained CKPT
"""
import pickle

from ssl_crops.cli import user_errors
from ssl_crops.evaluate import main

if __name__ == "__main__":
    with user_errors(FileNotFoundError, ValueError, pickle.UnpicklingError, prog="linear_eval.py"):
        main()
