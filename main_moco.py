#!/usr/bin/env python
"""MoCo v2 pretraining with object-aware crops (the original MoCo command line, plus extras).

    python main_moco.py --demo
    python main_moco.py DATA -a resnet50 --lr 0.015 --batch-size 128 --dist-url tcp://localhost:10005 \
        --world-size 1 --rank 0 -j 8 --moco-t 0.2 --mlp --aug-plus --cos --save_name NAME \
        --multiprocessing-distributed --bing_crops
    torchrun --nproc_per_node 8 main_moco.py DATA -a resnet50 ...

See ``python main_moco.py --help`` and ``ssl_crops/train/``.
"""
from ssl_crops.train import main

if __name__ == "__main__":
    main()
