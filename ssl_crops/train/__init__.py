"""MoCo-v2 pretraining with object-aware crops: the package behind ``main_moco.py``.

One worker function (``train_worker``) runs in every process that ``ssl_crops.distributed.launch``
starts. Every sample's augmentation is seeded by (seed, epoch, sample) and every step's torch
randomness (shuffle-BN, on-device augmentation) by (seed, step, rank), so a resumed run repeats
an uninterrupted one whatever the number of loader workers. Checkpoints (``ssl_crops.checkpoint``)
are written at epoch ends, and at a step boundary when SIGTERM, SIGUSR1 or SIGINT reaches any
process of the run (``ssl_crops.run.StopSignal``; every rank then exits 0); ``--resume auto``
continues from the newest readable one, mid-epoch with the same sample order. A restart under
torchrun resumes by itself.

Modules: :mod:`.options` (the command line), :mod:`.inputs` (annotations, dataset, sample order),
:mod:`.loop` (model, step, epoch), :mod:`.worker` (the run and ``main``).
"""
from .inputs import (BING_FIT_IMAGES, EpochSampler, SeededDataset, build_dataset, build_loader, check_inputs,
                     crop_plan, fitted_proposals, knn_test_index, opened_proposals, queue_size)
from .loop import NO_BUFFER_BROADCAST, adjust_learning_rate, build_model, train_one_epoch, train_step
from .options import ARCHS, CROP_MODES, DEMO_DEFAULTS, KEEP_CHECKPOINTS, build_parser, default_workers, parse_args
from .worker import main, train_worker

__all__ = ["ARCHS", "BING_FIT_IMAGES", "CROP_MODES", "DEMO_DEFAULTS", "EpochSampler", "KEEP_CHECKPOINTS",
           "NO_BUFFER_BROADCAST", "SeededDataset", "adjust_learning_rate", "build_dataset", "build_loader",
           "build_model", "build_parser", "check_inputs", "crop_plan", "default_workers", "fitted_proposals",
           "knn_test_index", "main", "opened_proposals", "parse_args", "queue_size", "train_one_epoch", "train_step",
           "train_worker"]
