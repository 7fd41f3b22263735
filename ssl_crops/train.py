"""MoCo-v2 pretraining with object-aware crops: the loop behind ``main_moco.py``.

One worker function (``train_worker``) runs in every process that ``ssl_crops.distributed.launch``
starts. Every sample's augmentation is seeded by (seed, epoch, sample) and every step's torch
randomness (shuffle-BN, on-device augmentation) by (seed, step, rank), so a resumed run repeats
an uninterrupted one whatever the number of loader workers. Checkpoints (``ssl_crops.checkpoint``)
are written at epoch ends, and at a step boundary when SIGTERM, SIGUSR1 or SIGINT reaches any
process of the run (``ssl_crops.run.StopSignal``; every rank then exits 0); ``--resume auto``
continues from the newest readable one, mid-epoch with the same sample order. A restart under
torchrun resumes by itself.
"""
import argparse
import functools
import inspect
import json
import math
import os
import pickle
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.models as models
from torchvision.transforms import v2
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from . import distributed as du
from .checkpoint import (LAST, OutputError, ResumeMismatch, capture_rng, check_output, check_resume,
                         dataset_fingerprint, locate_resume, resume, run_checkpoints, save_checkpoint, seed_step,
                         to_moco_layout)
from .checkpoint import find_resume_checkpoint, load_checkpoint, restore_rng  # noqa: F401 (ssl_crops.train names)
from .data import ObjectCropDataset
from .demo import make_demo
from .formats import SUBSET_FILES
from .moco import MoCo, default_bn_splits
from .run import (EpochTally, RunLog, StopSignal, TensorBoardLog, ignore_stop_signals, loader_died, on_rank0,
                  summary_writer)
from .runlock import RunLock
from .sources import AnnotationSpec, add_annotation_args, load_index
from .transforms import GEOMETRIES, BatchAugment, ObjectAwareCrop, moco_augment

ARCHS = sorted(n for n in models.list_models(module=models) if n.startswith(("resnet", "resnext", "wide_resnet")))
CROP_MODES = ("scene", "object-object", "object-scene")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# buffers (queue, BN statistics) are synced once at start; the queue then stays equal across ranks
# by construction, so DDP need not broadcast 32 MB of it every step
NO_BUFFER_BROADCAST = ({"forward_sync_buffers": False}
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else {"broadcast_buffers": False})
KEEP_CHECKPOINTS = -1  # numbered checkpoints kept by default: all (one every --save-freq epochs, and the last)
BING_FIT_IMAGES = 500  # annotated images a default BING model is fitted on
# --demo: a small ResNet on the generated data, about two minutes on two CPU cores. The original
# method's epoch is one item per box (~4.6 per demo image): 7 epochs are 154 steps, as many as
# 30 per-image epochs. Its 224 px minimum region is ~22% of an OpenImages photo's side; on the
# 256-448 px demo scenes with 64 px views it is 64 px (224 px would make most object crops scenes).
# Temperature 0.1: at MoCo v2's 0.2 the keys of the random-init network stay nearly parallel (mean
# cosine 0.99 after 154 steps, the loss at ln(K+1)) and pretraining learns nothing in so few steps.
DEMO_DEFAULTS = dict(arch="resnet18", epochs=7, batch_size=32, lr=0.03, moco_k=128, moco_m=0.99, moco_t=0.1,
                     image_size=64, min_region=64, workers=1, mlp=True, aug_plus=True, cos=True, bing_crops=True,
                     save_name="demo", log_freq=1, save_freq=10, knn_every=10, seed=0,
                     resume="auto")  # running the Quick start again continues (or just reloads) the demo run


def default_workers():
    """``-j``'s default: the CPUs this process may use, at most 32 (the original's default)."""
    return min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def build_parser():
    """The original MoCo flags (unchanged meaning), the object-crop flags and the extras."""
    p = argparse.ArgumentParser(description="MoCo v2 pretraining with object-aware crops",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("data", nargs="?", metavar="DIR",
                   help="image folder; annotation dicts are looked for beside it (or --labels/--boxes/--coco)")
    g = p.add_argument_group("MoCo (original flags)")
    g.add_argument("-a", "--arch", default="resnet50", choices=ARCHS, metavar="ARCH",
                   help="torchvision ResNet: " + ", ".join(ARCHS))
    g.add_argument("-j", "--workers", type=int, default=default_workers(),
                   help="data-loading workers per node, shared by its processes (default: the CPUs this process "
                        "may use, at most 32)")
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--start-epoch", type=int, default=0, help="first epoch (overridden by --resume)")
    g.add_argument("-b", "--batch-size", type=int, default=256, help="total batch size over all processes")
    g.add_argument("--lr", "--learning-rate", type=float, default=0.03, dest="lr")
    g.add_argument("--schedule", type=int, nargs="*", default=[120, 160], help="lr x0.1 at these epochs (without --cos)")
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay")
    g.add_argument("-p", "--print-freq", "--log-freq", type=int, default=10, dest="log_freq",
                   help="log every N steps")
    g.add_argument("--resume", default="", help="'auto' (newest readable checkpoint of this run; implied by a "
                                                 "torchrun restart) or a path")
    g.add_argument("--world-size", type=int, default=-1, help="number of nodes (legacy launch)")
    g.add_argument("--rank", type=int, default=-1, help="node rank (legacy launch)")
    g.add_argument("--dist-url", default="tcp://localhost:23456", help="rendezvous URL (legacy launch)")
    g.add_argument("--dist-backend", default=None, choices=["nccl", "gloo"], help="default: nccl on GPU, gloo on CPU")
    g.add_argument("--dist-timeout", type=float, default=30.0,
                   help="minutes a collective (or the rendezvous) may wait for the other processes")
    g.add_argument("--seed", type=int, default=None, help="default: random, recorded in the checkpoint")
    g.add_argument("--gpu", type=int, default=None, help="GPU of a single-process run")
    g.add_argument("--multiprocessing-distributed", action="store_true",
                   help="one process per GPU on each of --world-size nodes (mp.spawn)")
    g.add_argument("--moco-dim", type=int, default=128)
    g.add_argument("--moco-k", type=int, default=65536, help="queue size (a multiple of the batch size)")
    g.add_argument("--moco-m", type=float, default=0.999)
    g.add_argument("--moco-t", type=float, default=0.07)
    g.add_argument("--mlp", action="store_true", help="MLP projection head (MoCo v2)")
    g.add_argument("--aug-plus", action="store_true", help="MoCo v2 augmentation")
    g.add_argument("--cos", action="store_true", help="cosine learning-rate schedule")
    g.add_argument("--bn-splits", type=int, default=None,
                   help="BatchNorm over N sub-batches with the keys shuffled across them (shuffle-BN in one "
                        "process); default: 8 with one process when the batch splits into sub-batches of at least 32 (fewer "
                        "otherwise, 1 below a batch of 64), 1 with several processes")
    g = p.add_argument_group("object-aware crops")
    g.add_argument("--save_name", "--save-name", default="moco", help="run name: <output-dir>/<save_name>/")
    g.add_argument("--bing_crops", "--bing-crops", action="store_true",
                   help="the original method: object-object crops of the original geometry, one item per box "
                        "per epoch (with --sampling image, BING proposals for images without boxes)")
    g.add_argument("--crop-mode", choices=CROP_MODES, default=None,
                   help="default: object-object with --bing_crops, else scene")
    g.add_argument("--crop-geometry", choices=GEOMETRIES, default="original",
                   help="object regions: 'original' (the original code's, clipped to the image) or 'relative' "
                        "(dilation x the box size, grown about the centre to --min-region)")
    g.add_argument("--dilation", type=float, default=0.2, help="context dilation of the object regions")
    g.add_argument("--min-region", type=int, default=224,
                   help="smallest object region side in pixels of the input image: the original's 224 suits "
                        "photos of about 1024 px (OpenImages); scale it with your resolution (e.g. 140 for 640 px)")
    g.add_argument("--min-scale", type=float, default=0.2,
                   help="smallest scale of the RandomResizedCrop of the context (or scene) view")
    g.add_argument("--rescale_parameter", "--rescale-parameter", type=float, default=0.0,
                   help="smallest scale of the RandomResizedCrop of the tight object view")
    g.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=False,
                   help="both object views contain the box centre (default: placed uniformly, as the original)")
    g.add_argument("--sampling", choices=["image", "box"], default=None,
                   help="one item per image or per box (default: box for object crops, the original's epoch, "
                        "unless no image has boxes; image for scene crops)")
    g.add_argument("--proposals", default=None,
                   help="BING model, OpenCV BING model folder or proposal cache (.npz) for images without boxes "
                        "under --sampling image (default: fit BING on the annotated images, saved as "
                        "<run>/bing.npz)")
    g.add_argument("--bing-topk", type=int, default=10, help="proposals used per image without boxes")
    g.add_argument("--image-size", type=int, default=224)
    add_annotation_args(g)
    g.add_argument("--bad-image", choices=["skip", "error"], default="skip",
                   help="an unreadable image (missing, truncated, empty, not an image, decompression bomb): skip it "
                        "(counted per epoch, named once in <run>/bad_images.txt) or stop with an error")
    g = p.add_argument_group("speed, output, monitoring")
    g.add_argument("--amp", choices=list(AMP_DTYPES), default="off", help="mixed precision (fp16 uses a GradScaler)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: on with CUDA)")
    g.add_argument("--compile", action="store_true", help="torch.compile the encoders")
    g.add_argument("--augment-on", choices=["cpu", "device"], default=None,
                   help="MoCo augmentation in the loader workers (cpu) or batched on the training device "
                        "(device: workers return uint8 crops); default: device with CUDA, else cpu")
    g.add_argument("--output-dir", default="checkpoints")
    g.add_argument("--allow-new-data", action="store_true",
                   help="resume on data other than the checkpoint's (its image count, box count and image ids); "
                        "without it that is an error")
    g.add_argument("--save-freq", type=int, default=10, help="keep checkpoint_<epoch>.pth every N epochs")
    g.add_argument("--keep-checkpoints", type=int, default=KEEP_CHECKPOINTS, metavar="N",
                   help="numbered checkpoints kept (the newest N; 0: none, -1: all); checkpoint_last and _prev "
                        "are always kept")
    g.add_argument("--tensorboard", default=None, metavar="DIR",
                   help="also log loss, lr, acc1, images/s, kNN mAP and bad images to TensorBoard in DIR "
                        "(pip install 'ssl-crops[tb]')")
    g.add_argument("--knn-every", type=int, default=0, help="kNN evaluation every N epochs (0: never)")
    add_annotation_args(g, prefix="test-", kinds=("labels", "coco"), what="test annotations for kNN")
    g.add_argument("--test-images", default=None,
                   help="test image folder for kNN (default: DIR; for LVIS the COCO folder holding train2017/val2017)")
    g.add_argument("--demo", action="store_true",
                   help="pretrain a small ResNet on generated data (made in DIR, default ./demo_data, if absent)")
    return p


# --------------------------------------------------------------------------- data
class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` for ``SeededDataset``: this rank's share of the epoch's
    permutation, as ``DistributedSampler(shuffle=True, drop_last=True)`` deals it (rank ``r`` takes
    every ``world``-th index from the ``r``-th). Step ``b`` of the epoch then covers items
    ``b*B .. (b+1)*B`` of the permutation (``B`` the global batch) whatever the number of ranks,
    so ``set_epoch(epoch, skip)`` leaves out the first ``skip`` items of the whole permutation
    (the done steps of a resumed epoch) and a mid-epoch resume with another number of processes
    visits exactly the items not yet visited."""

    def __init__(self, dataset, world_size, rank, seed):
        self.n, self.world, self.rank, self.seed = len(dataset), world_size, rank, seed
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = epoch, skip

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        total = self.n // self.world * self.world
        return ((self.epoch, i) for i in order[self.skip:total][self.rank::self.world])

    def __len__(self):
        return max(0, self.n // self.world * self.world - self.skip) // self.world


class SeededDataset(Dataset):
    """Item ``(epoch, i)`` is ``dataset[i]`` drawn with torch/numpy/random seeded by
    ``(seed, epoch, i)`` (the global RNG states are restored afterwards), as
    ``(views, i, events, skipped)``: ``events`` counts what this item caused in the process that
    loaded it (``run.EVENTS``: skipped bad images, scene-crop fallbacks of the transform) and
    ``skipped`` holds the skipped images as ``name\treason`` lines."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def _counts(self):
        transform = getattr(self.dataset, "transform", None)
        return getattr(self.dataset, "bad_images", 0), getattr(transform, "scene_fallbacks", 0)

    def __getitem__(self, key):
        epoch, i = key
        s = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0])
        state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s), np.random.seed(s), torch.default_generator.manual_seed(s)
        before = self._counts()
        try:
            views, index = self.dataset[i]
        finally:
            random.setstate(state[0]), np.random.set_state(state[1]), torch.set_rng_state(state[2])
        events = torch.tensor([a - b for a, b in zip(self._counts(), before)], dtype=torch.int64)
        skipped = "".join(f"{name}\t{reason}\n" for name, reason in getattr(self.dataset, "last_skipped", ()))
        return views, index, events, skipped


def crop_plan(args, index):
    """``(crop mode, sampling)``: object crops default to one item per box (the original's
    epoch), or per image when the index has no boxes at all (proposals then)."""
    mode = args.crop_mode or ("object-object" if args.bing_crops else "scene")
    return mode, args.sampling or ("box" if mode != "scene" and index.num_boxes > 0 else "image")


def check_inputs(args):
    """Read the annotations and check them against the flags before anything is written (the
    run folder included): a user mistake raises ``FileNotFoundError`` or ``ValueError`` naming
    the file. Returns ``train_worker``'s keyword arguments: the indices, read once here."""
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"{args.data}: image folder not found")
    for flag in ("labels", "boxes", "coco", "index", "proposals", "test_labels", "test_coco", "test_images"):
        path = getattr(args, flag)
        if path and not Path(path).exists():
            raise FileNotFoundError(f"--{flag.replace('_', '-')} {path}: not found")
        if path and flag in ("labels", "test_labels") and Path(path).suffix.lower() == ".json":
            raise ValueError(f"--{flag.replace('_', '-')} {path}: a JSON file (this flag reads the OpenImages-subset "
                             f".npy dicts); pass a COCO or LVIS json as --{flag.replace('labels', 'coco').replace('_', '-')}")
    if args.resume and args.resume != "auto":
        if not Path(args.resume).is_file():
            raise FileNotFoundError(f"--resume {args.resume}: checkpoint not found")
        try:  # mmap: reads the entries, not the tensors
            held = torch.load(args.resume, map_location="cpu", weights_only=True, mmap=True).get("arch")
        except Exception:  # unreadable: locate_resume says why
            held = None
        if held and held != args.arch:
            raise ValueError(f"--resume {args.resume}: holds a {held} checkpoint, not {args.arch}: pass -a {held}")
    with warnings.catch_warnings():
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun: rank 0 says what was dropped or clipped
            warnings.simplefilter("ignore")
        index = load_index(AnnotationSpec.from_args(args, args.data))
        test_index = knn_test_index(args, index) if args.knn_every > 0 else None
    sampling = crop_plan(args, index)[1]
    samples = index.num_boxes if sampling == "box" else len(index)
    if samples < args.batch_size:
        raise ValueError(f"{index.source}: {samples} {'boxes' if sampling == 'box' else 'images'} to train on "
                         f"(--sampling {sampling}), fewer than the batch size {args.batch_size} (-b)")
    return {"index": index, "test_index": test_index}


def build_dataset(args, run_dir, main=True, index=None):
    """``(ObjectCropDataset, BoxIndex)`` from the flags (``index``: already read by
    :func:`check_inputs`). Rank 0 prints where the boxes come from."""
    if index is None:
        index = load_index(AnnotationSpec.from_args(args, args.data))
    mode, sampling = crop_plan(args, index)
    unboxed = int((index.num_boxes_per_image() == 0).sum())
    if main:
        print(f"boxes: {index.describe()}", flush=True)
    proposals = None
    if sampling == "box":  # images without boxes are never visited: no proposals needed
        if main and args.proposals:
            warnings.warn(f"--proposals {args.proposals} is not used under --sampling box (one item per box); "
                          "use --sampling image to crop images without boxes from proposals")
        if main and unboxed:
            print(f"{unboxed} of {len(index)} images have no boxes and are not visited (--sampling box)", flush=True)
    elif mode != "scene" and unboxed and args.proposals:
        proposals, source = opened_proposals(args, index, run_dir, main)
    elif mode != "scene" and unboxed:
        proposals = fitted_proposals(index, args.data, Path(run_dir) / "bing.npz", args.seed, main)
        source = f"{Path(run_dir) / 'bing.npz'} (fitted on the annotated images)"
    if main and proposals is not None:
        print(f"{unboxed} of {len(index)} images have no boxes: object crops from their top {args.bing_topk} "
              f"BING proposals from {source}", flush=True)
    on_device = getattr(args, "augment_on", None) == "device"  # workers then return uint8 crops
    crop = ObjectAwareCrop(mode=mode, geometry=args.crop_geometry, dilation=args.dilation,
                           min_scale=args.min_scale, object_min_scale=args.rescale_parameter, size=args.image_size,
                           min_region=args.min_region, anchor=args.anchor,
                           augment=v2.PILToTensor() if on_device else moco_augment(args.aug_plus))
    dataset = ObjectCropDataset(args.data, index, crop, proposals=proposals, sampling=sampling,
                                proposal_topk=args.bing_topk, on_corrupt={"error": "raise"}.get(args.bad_image, "skip"),
                                warn=False)  # the run names skipped images in its log and bad_images.txt
    return dataset, index


def opened_proposals(args, index, run_dir, main=True):
    """``(proposal source, what it is)`` for ``--proposals``: a proposal cache as it is; a BING
    model (``.npz`` or OpenCV model folder) on images none of which has boxes: its proposals,
    cached once by rank 0 in ``<run>/proposals.npz`` (resumed if interrupted, reused on resume)."""
    from .proposals import Bing, ProposalCache, open_proposals, propose_folder

    source = open_proposals(args.proposals)
    if not isinstance(source, Bing) or index.num_boxes > 0:  # some boxes: BING on the fly for the others
        return source, args.proposals
    path, model = Path(run_dir) / "proposals.npz", str(Path(args.proposals).resolve())
    cached = ProposalCache.load(path) if main and path.is_file() else None
    if main and (cached is None or len(cached) < len(index) or cached.meta.get("model") != model):
        print(f"caching BING proposals of the {len(index)} images of {args.data} in {path} ...", flush=True)
        propose_folder(args.data, source, path, top_k=args.bing_topk, workers=min(args.workers, os.cpu_count() or 1),
                       progress=sys.stderr.isatty(), model_name=model)
    du.barrier()
    return ProposalCache.load(path), f"{path} (model {args.proposals})"


def fitted_proposals(index, root, path, seed, main=True, max_images=BING_FIT_IMAGES):
    """BING proposals for the images without boxes when no ``--proposals`` is given: a model
    fitted by rank 0 on up to ``max_images`` annotated images and saved to ``path`` (reused
    when it exists, e.g. on resume); ``None`` (scene crops, with a warning) when no image has boxes."""
    from .proposals import Bing

    counts = index.num_boxes_per_image()
    annotated = np.flatnonzero(counts > 0)
    if len(annotated) == 0:
        if main:
            warnings.warn(f"no image of {root} has boxes and no --proposals was given: scene crops for all "
                          "(make proposals with `python -m ssl_crops.proposals`)")
        return None
    path = Path(path)
    if main and not path.exists():
        chosen = np.sort(np.random.default_rng(seed).choice(annotated, min(len(annotated), max_images), replace=False))
        print(f"{int((counts == 0).sum())} images have no boxes: fitting BING proposals on {len(chosen)} "
              f"annotated images -> {path}", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        Bing.fit_index(index, root, chosen, seed=seed).save(path)
    du.barrier()
    return Bing.load(path)


def build_loader(dataset, args, info, batch_size, workers):
    sampler = EpochSampler(dataset, info.world_size, info.rank, args.seed)
    # its own generator: creating an iterator must not draw from the global one; workers leave
    # the stop signals to the main process (a signal to the process group must not kill them)
    return DataLoader(SeededDataset(dataset, args.seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=info.device.type == "cuda",
                      persistent_workers=workers > 0, drop_last=True,
                      generator=torch.Generator().manual_seed(args.seed), worker_init_fn=ignore_stop_signals)


def check_queue(args, num_samples, global_batch, main=True):
    """Validate ``--moco-k`` against the global batch; shrink it (with a warning) when the
    queue would hold every sample of the dataset (the positive would sit among the negatives)."""
    if num_samples < global_batch:
        raise ValueError(f"the dataset has {num_samples} samples, fewer than the global batch size {global_batch}")
    if args.moco_k >= num_samples:
        k = max(global_batch, (num_samples - 1) // global_batch * global_batch)
        if main:
            warnings.warn(f"queue size --moco-k {args.moco_k} >= {num_samples} samples: using K={k} "
                          "so that the queue does not hold the whole dataset")
        args.moco_k = k
    if args.moco_k % global_batch:
        raise ValueError(f"--moco-k {args.moco_k} is not divisible by the global batch size {global_batch}")


# --------------------------------------------------------------------------- model and step
def build_model(args):
    return MoCo(getattr(models, args.arch), args.moco_dim, args.moco_k, args.moco_m, args.moco_t, args.mlp,
                bn_splits=args.bn_splits or 1)


def adjust_learning_rate(optimizer, epoch, args):
    """Cosine (``--cos``) or step (``--schedule``) decay per epoch, as in the original code."""
    lr = args.lr
    if args.cos:
        lr *= 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    else:
        lr *= 0.1 ** sum(epoch >= m for m in args.schedule)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def train_step(model, im_q, im_k, optimizer, scaler, amp_dtype=None, memory_format=torch.contiguous_format,
               augment=None):
    """One SGD step on a batch of view pairs; returns ``(loss, top-1 accuracy)`` tensors (no sync).
    With ``augment`` (a :class:`BatchAugment`) the views are uint8 crops, augmented on the device."""
    device = next(model.parameters()).device
    im_q, im_k = im_q.to(device, non_blocking=True), im_k.to(device, non_blocking=True)
    if augment is not None:
        im_q, im_k = augment(im_q), augment(im_k)
    im_q, im_k = im_q.contiguous(memory_format=memory_format), im_k.contiguous(memory_format=memory_format)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, labels = model(im_q, im_k)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), (logits.detach().argmax(1) == 0).float().mean()


def train_one_epoch(model, loader, optimizer, scaler, epoch, step, tally, args, info, log, stop, augment=None):
    """Train until the epoch ends or a stop is requested; returns ``(global step, stopped)``.

    Before each step torch's generators are seeded from ``(seed, step, rank)``. Every
    ``--log-freq`` steps rank 0 writes a ``step`` record and, without a terminal, one plain line
    (tqdm only on a terminal): the only host-device syncs of the loop."""
    model.train()
    amp_dtype = AMP_DTYPES[args.amp]
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    main = info.rank == 0
    lr = optimizer.param_groups[0]["lr"]
    num_batches = tally.batches + len(loader)
    bar = tqdm(total=num_batches, initial=tally.batches, desc=f"epoch {epoch + 1}/{args.epochs}",
               disable=not (main and sys.stderr.isatty()), dynamic_ncols=True, leave=False)
    last_log = end = time.perf_counter()
    data_time, since_log, stopped = 0.0, 0, False
    for (im_q, im_k), _, events, skipped in loader:
        data_time += time.perf_counter() - end
        seed_step(args.seed, step, info.rank)
        loss, acc = train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt, augment)
        tally.add(loss, events, skipped)
        step, since_log = step + 1, since_log + 1
        if step % args.log_freq == 0:
            loss_v, acc_v = loss.item(), acc.item()  # synchronizes, so the interval timing is right
            now = time.perf_counter()
            rec = {"type": "step", "epoch": epoch, "step": step, "loss": loss_v, "acc1": acc_v, "lr": lr,
                   "data_time": data_time / since_log, "compute_time": (now - last_log - data_time) / since_log,
                   "images_per_s": args.batch_size * since_log / (now - last_log)}
            if main:
                log.write(rec)
                if bar.disable:
                    print(f"epoch {epoch + 1}/{args.epochs} batch {tally.batches}/{num_batches} step {step} "
                          f"loss {loss_v:.4f} acc1 {acc_v:.3f} lr {lr:.4g} data {rec['data_time']:.3f}s "
                          f"compute {rec['compute_time']:.3f}s {rec['images_per_s']:.0f} img/s", flush=True)
                else:
                    bar.set_postfix(loss=f"{loss_v:.3f}", lr=f"{lr:.4f}", img_s=f"{rec['images_per_s']:.0f}")
            last_log, data_time, since_log = now, 0.0, 0
        bar.update()
        if stop.requested():
            stopped = True
            break
        end = time.perf_counter()
    bar.close()
    return step, stopped


# --------------------------------------------------------------------------- the run
def _shared_seed(seed, device):
    """``seed``, or a random seed drawn on rank 0 and shared with every rank."""
    if seed is not None:
        return seed
    return int(du.all_gather_cat(torch.tensor([int.from_bytes(os.urandom(4), "big") >> 1], device=device))[0])


def knn_test_index(args, index):
    """The kNN monitor's test index (``--test-coco``, ``--test-labels`` or ``images_test.npy``
    beside DIR), with the training classes."""
    if args.test_coco and args.test_labels:
        raise ValueError("kNN test annotations: give only one of --test-coco, --test-labels")
    try:
        test = load_index(AnnotationSpec.from_args(args, args.data, prefix="test-", classes=index.classes))
    except FileNotFoundError as e:
        raise FileNotFoundError(f"--knn-every needs test annotations: {e}") from None
    if len(test) == 0:
        raise ValueError(f"{test.source}: no test images for the kNN monitor")
    return test


def _knn_monitor(args, index, test_index=None):
    from .evaluate import KNNMonitor

    test_index = knn_test_index(args, index) if test_index is None else test_index
    return KNNMonitor(args.data, index, test_index, image_size=args.image_size,
                      batch_size=args.batch_size // du.get_world_size(), workers=min(args.workers, 4), amp=args.amp,
                      test_root=args.test_images, on_corrupt={"error": "raise"}.get(args.bad_image, "skip"))


def _nothing_to_do(args, resume_path, ckpt):
    if ckpt is None:
        return (f"nothing to do: --epochs {args.epochs} from start epoch {args.start_epoch}; "
                "no checkpoint written")
    return (f"nothing left to do: {resume_path} is already trained {ckpt['epoch']} epochs (--epochs "
            f"{args.epochs}); raise --epochs to train further")


def train_worker(info, args, index=None, test_index=None):
    """Pretrain in this process (rank ``info.rank``); returns the run folder. ``index`` and
    ``test_index``: the annotations read by :func:`check_inputs` (read here when ``None``). Rank 0
    holds the folder's lock (``runlock.RunLock``) from before anything touches the folder to the
    end: a second run naming the folder stops at once."""
    lock = RunLock(Path(args.output_dir) / args.save_name)
    on_rank0(lock.acquire)
    try:
        return _train(info, args, index, test_index)
    finally:
        lock.release()


def _train(info, args, index, test_index):
    """The run of :func:`train_worker`, its folder held."""
    main = info.rank == 0
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if args.channels_last is None:
        args.channels_last = info.device.type == "cuda"
    if args.augment_on is None:
        args.augment_on = "device" if info.device.type == "cuda" else "cpu"
    if args.batch_size % info.world_size:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the {info.world_size} processes")
    run_dir = Path(args.output_dir) / args.save_name
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0))
    if restart > 0 and args.resume != "auto" and (not args.resume or run_checkpoints(run_dir)):
        args.resume = "auto"  # also over an explicit --resume PATH once this run has checkpoints of its own
        if main:
            print(f"torchrun restart {restart}: continuing {run_dir} from its newest checkpoint (--resume auto)",
                  flush=True)
    resume_path, resume_ckpt = locate_resume(args, run_dir)
    if (resume_ckpt["epoch"] if resume_ckpt is not None else args.start_epoch) >= args.epochs:
        if main:
            print(_nothing_to_do(args, resume_path, resume_ckpt), flush=True)
        return run_dir
    if resume_ckpt is not None and args.seed is None:  # the resumed run keeps its seed
        args.seed = (resume_ckpt.get("args") or {}).get("seed")
    args.seed = _shared_seed(args.seed, info.device)
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)
    on_rank0(lambda: check_output(run_dir))  # before any work: an unwritable folder fails now
    demo_root = Path(args.data).parent
    if args.demo and main and not (demo_root / SUBSET_FILES["labels"]).exists():
        print(f"making demo data in {demo_root} ...", flush=True)
        make_demo(demo_root)
    du.barrier()

    dataset, index = build_dataset(args, run_dir, main, index)
    check_queue(args, len(dataset), args.batch_size, main)
    fingerprint = dataset_fingerprint(index)
    if resume_ckpt is not None:  # before anything is loaded; --bn-splits only when given (not yet defaulted)
        check_resume(resume_path, resume_ckpt, args, fingerprint, info.world_size, main)
    workers = math.ceil(args.workers / info.local_world_size)
    if info.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:  # processes of a node share its cores
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // info.local_world_size))
    rank_batch = args.batch_size // info.world_size
    loader = build_loader(dataset, args, info, rank_batch, workers)
    steps_per_epoch = len(loader)
    if args.bn_splits is None:
        args.bn_splits = default_bn_splits(rank_batch, info.world_size)
    model = build_model(args).to(info.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fused = info.device.type == "cuda"  # fused SGD: no sync in the fp16 scaler's step
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
                                fused=fused)
    augment = BatchAugment(args.aug_plus).to(info.device) if args.augment_on == "device" else None
    scaler = torch.amp.GradScaler(info.device.type, enabled=args.amp == "fp16")
    start_epoch, step, epoch_state = args.start_epoch, None, None
    if resume_ckpt is not None:
        start_epoch, step, epoch_state = resume(resume_path, resume_ckpt, model, optimizer, scaler)
        saved_batch = (resume_ckpt.get("args") or {}).get("batch_size", args.batch_size)
        if epoch_state and saved_batch != args.batch_size:  # its done items are batches x its batch size
            raise ValueError(f"--resume {resume_path}: stopped mid-epoch with --batch-size {saved_batch}; resume it "
                             f"with that batch size (any number of processes), or from an epoch end")
        for group in optimizer.param_groups:  # the saved state carries the saving machine's choice
            group["fused"] = fused
        del resume_ckpt
    step = start_epoch * steps_per_epoch if step is None else step
    if args.compile:
        model.encoder_q.compile()
        model.encoder_k.compile()
    ddp = model
    if info.distributed:
        ddp = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None,
                                      **NO_BUFFER_BROADCAST)
    knn = _knn_monitor(args, index, test_index) if args.knn_every > 0 else None  # called on every rank

    log = None
    if main:
        resumed = step if resume_path is not None else None
        tb = TensorBoardLog(args.tensorboard, None if resumed is None else resumed + 1) if args.tensorboard else None
        log = RunLog(run_dir, resumed_step=resumed, tensorboard=tb)
        print(f"{args.arch} MoCo K={args.moco_k} on {len(dataset)} samples ({dataset.transform.mode} crops), "
              f"{info.world_size} process(es) on {info.device.type}, batch {args.batch_size}", flush=True)

    def checkpoint(epoch, keep=False, epoch_state=None):
        state = {"epoch": epoch, "arch": args.arch, "state_dict": to_moco_layout(model.state_dict()),
                 "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "args": json.loads(json.dumps(vars(args), default=str)), "rng": capture_rng(), "step": step,
                 "epoch_state": epoch_state, "dataset": fingerprint, "world_size": info.world_size}
        on_rank0(lambda: save_checkpoint(state, run_dir, keep, args.keep_checkpoints))

    with StopSignal() as stop:
        for epoch in range(start_epoch, args.epochs):
            tally = EpochTally(info, epoch_state if epoch == start_epoch else None)
            loader.sampler.set_epoch(epoch, skip=tally.batches * args.batch_size)
            lr = adjust_learning_rate(optimizer, epoch, args)
            start, first = time.perf_counter(), tally.batches
            try:
                step, stopped = train_one_epoch(ddp, loader, optimizer, scaler, epoch, step, tally, args, info, log,
                                                stop, augment)
            except (RuntimeError, EOFError, ConnectionError) as e:
                died = loader_died(e, getattr(loader, "_iterator", None), run_dir)  # persistent workers' iterator
                if died is None:
                    raise
                raise died from e
            skipped = tally.take_skipped()
            if main:
                log.add_bad_images(skipped)
            if tally.batches < steps_per_epoch:  # stopped mid-epoch
                checkpoint(epoch, epoch_state=tally.state())
                if main:
                    signame = stop.received or "a signal to another process"
                    log.write({"type": "stop", "signal": signame, "epoch": epoch, "step": step})
                    print(f"{signame}: stopped after step {step} (epoch {epoch + 1}, batch {tally.batches}/"
                          f"{steps_per_epoch}); saved {run_dir / LAST}; continue with --resume auto", flush=True)
                break
            loss, events = tally.summary(steps_per_epoch)
            events["bad_images"] = len(skipped)  # images, not items: one with several boxes is skipped per box
            if not math.isfinite(loss):
                raise FloatingPointError(f"mean loss of epoch {epoch} is {loss}")
            done = epoch + 1
            ips = args.batch_size * (tally.batches - first) / (time.perf_counter() - start)
            summary = {"type": "epoch", "epoch": epoch, "step": step, "loss": loss, "lr": lr, "images_per_s": ips,
                       **events}
            if knn is not None and (done % args.knn_every == 0 or done == args.epochs):
                summary.update(knn(model.encoder_q))
            if main:
                log.write(summary)
                print(f"epoch {done}/{args.epochs} " + " ".join(f"{k} {v:.4g}" for k, v in summary.items()
                                                                if k not in ("type", "epoch")), flush=True)
                if events["bad_images"]:
                    print(f"  {events['bad_images']} unreadable images skipped this epoch "
                          f"(named in {log.bad_path})", flush=True)
            checkpoint(done, keep=done % args.save_freq == 0 or done == args.epochs)
            if stopped or stop.settle():  # a signal in the epoch's last steps
                if main:
                    print(f"{stop.received or 'a signal'}: stopped at the end of epoch {done}; saved {run_dir / LAST}; "
                          "continue with --resume auto", flush=True)
                break
    if main:
        log.close()
        print(f"checkpoint: {run_dir / LAST}\nlog: {run_dir / 'log.jsonl'}", flush=True)
        if args.demo and info.world_size == 1 and step == args.epochs * steps_per_epoch:
            _demo_result(info, args, run_dir)
    return run_dir


def _demo_result(info, args, run_dir):
    """The demo's linear evaluation (``linear_eval.py`` defaults) of the pretrained and of a
    random-init network: what pretraining learnt."""
    from .evaluate.protocol import quiet_map

    print("linear evaluation of the demo (pretrained and random init) ...", flush=True)
    out = run_dir / "linear_eval"
    maps = [quiet_map(info, args.data, ckpt, args.arch, args.image_size, out / name)
            for ckpt, name in ((str(run_dir / LAST), "checkpoint_last_cached"), ("", f"random_{args.arch}_cached"))]
    print(f"demo: linear-probe test mAP {100 * maps[0]:.2f} pretrained, {100 * maps[1]:.2f} random-init "
          f"{args.arch} ({100 * (maps[0] - maps[1]):+.2f}); reports in {out}", flush=True)


def parse_args(argv=None):
    """Parse the command line; ``--demo`` changes the defaults (explicit flags still win)
    and makes DIR the demo data's folder (generated by ``train_worker`` when absent)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        parser.set_defaults(**DEMO_DEFAULTS)
        args = parser.parse_args(argv)
        args.data = str(Path(args.data or "demo_data") / SUBSET_FILES["images"])
    elif args.data is None:
        parser.error("the image folder DIR is required (or use --demo)")
    if args.tensorboard:
        try:
            summary_writer()
        except ImportError as e:
            parser.error(str(e))
    return args


def main(argv=None):
    args = parse_args(argv)
    try:  # user mistakes in the inputs: one line, exit 2, before the run folder is touched
        inputs = {} if args.demo else check_inputs(args)
    except (FileNotFoundError, ValueError, pickle.UnpicklingError) as e:
        print(f"main_moco.py: error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    try:
        return du.launch(functools.partial(train_worker, **inputs), args)
    except (OutputError, FileExistsError, ResumeMismatch) as e:  # one line: which file, and why
        raise SystemExit(f"main_moco.py: error: {e}") from None
