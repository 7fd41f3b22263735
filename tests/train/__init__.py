"""The trainer's tests (``ssl_crops.train``)."""
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


ORIGINAL = ("python main_moco.py DATA -a resnet50 --lr 0.015 --batch-size 128 --dist-url tcp://localhost:10005 "
            "--world-size 1 --rank 0 -j 8 --moco-t 0.2 --mlp --aug-plus --cos --save_name NAME "
            "--multiprocessing-distributed --bing_crops")
