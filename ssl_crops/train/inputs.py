"""What a training run reads: the annotations (checked before anything is written), the
object-crop dataset with its proposal source, and the seeded, resumable sample order."""
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from .. import distributed as du
from ..checkpoint import CheckpointError, checkpoint_arch
from ..data import ObjectCropDataset
from ..run import ignore_stop_signals
from ..sources import AnnotationSpec, folder_match, load_index
from ..transforms import ObjectAwareCrop
from ..transforms.augment import moco_augment

__all__ = ["BING_FIT_IMAGES", "MISSING_IMAGES", "EpochSampler", "SeededDataset", "build_dataset", "build_loader",
           "check_inputs", "crop_plan", "fitted_proposals", "knn_test_index", "match_folder", "opened_proposals",
           "queue_size"]

BING_FIT_IMAGES = 500  # annotated images a default BING model is fitted on
MISSING_IMAGES = "missing_images.txt"  # run folder: the images the annotations name that the folder lacks


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
    loaded it (``run.EVENTS``: skipped bad images, scene-crop fallbacks of the transform, truncated
    JPEGs decoded) and ``skipped`` holds the skipped images as ``name\treason`` lines. A dataset
    with ``set_epoch`` (``ObjectCropDataset``: its random boxes) is told the item's epoch first."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def _counts(self):
        transform = getattr(self.dataset, "transform", None)
        fallbacks = getattr(transform, "local_scene_fallbacks", getattr(transform, "scene_fallbacks", 0))
        return (getattr(self.dataset, "bad_images", 0), fallbacks,  # this process's counts: the item's own events
                getattr(self.dataset, "truncated_images", 0))

    def __getitem__(self, key):
        epoch, i = key
        s = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1)[0])
        state = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s), np.random.seed(s), torch.default_generator.manual_seed(s)
        before = self._counts()
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
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
        held = checkpoint_arch(args.resume)  # unreadable: CheckpointError naming the file
        if held and held != args.arch:
            raise CheckpointError(f"--resume {args.resume}: holds a {held} checkpoint, not {args.arch}: pass -a {held}")
    with warnings.catch_warnings():
        if int(os.environ.get("RANK", 0)) > 0:  # torchrun: rank 0 says what was dropped or clipped
            warnings.simplefilter("ignore")
        index = load_index(AnnotationSpec.from_args(args, args.data))
        test_index = knn_test_index(args, index) if args.knn_every > 0 else None
        index, missing = match_folder(args, index, test_index)
        if test_index is not None:
            test_index = match_folder(args, test_index, test=True)[0]
    if (args.test_coco or args.test_labels) and args.knn_every <= 0:
        warnings.warn(f"--test-{'coco' if args.test_coco else 'labels'} is read by the kNN monitor only, which is off "
                      "(--knn-every 0): add --knn-every N to score the test images every N epochs")
    mode, sampling = crop_plan(args, index)
    if mode != "scene" and index.num_boxes == 0 and not args.proposals:
        raise ValueError(f"{index.source}: no boxes and no --proposals, so {mode} crops would be scene crops; "
                         "make proposals first (python -m ssl_crops.proposals fit --images DIR_WITH_BOXES --coco "
                         "ANN.json --out bing.npz) and pass --proposals bing.npz, or ask for --crop-mode scene")
    if args.random_boxes and mode == "scene":
        raise ValueError("--random-boxes moves the boxes of object crops: scene crops use no boxes (add --bing_crops "
                         "or --crop-mode object-object / object-scene)")
    samples = index.num_boxes if sampling == "box" else len(index)
    if samples < args.batch_size:
        raise ValueError(f"{index.source}: {samples} {'boxes' if sampling == 'box' else 'images'} to train on "
                         f"(--sampling {sampling}), fewer than the batch size {args.batch_size} (-b)")
    return {"index": index, "test_index": test_index, "missing": missing}


def _names(paths, first=3):
    return ", ".join(paths[:first]) + (", ..." if len(paths) > first else "")


def match_folder(args, index, test_index=None, test=False):
    """``(index, missing)``: the images of ``index`` that are in the image folder (``--data``, or
    ``--test-images`` with ``test``), and the names of those it lacks. None there: ``ValueError``
    with the counts and the first missing names; some: a warning with the count. Training folder
    images that no annotation lists (nor the test annotations) are counted and said; with
    ``--proposals`` or ``--sampling image`` (object crops) they join the index without boxes."""
    root = Path(args.test_images or args.data) if test else Path(args.data)
    present, unlisted = folder_match(index, root)
    missing = [index.path(i) for i in np.flatnonzero(~present)]
    what = f"{'test images (kNN monitor)' if test else 'images'} named by {index.source}"
    if len(index) and not present.any():
        raise ValueError(f"none of the {len(index)} {what} is in {root} ({len(unlisted)} images there); first "
                         f"missing: {_names(missing)}: give the image folder these annotations describe")
    if missing:
        warnings.warn(f"{len(missing)} of the {len(index)} {what} are not in {root} (e.g. {_names(missing)}): "
                      f"using the other {int(present.sum())}"
                      + ("" if test else f"; all named in <run>/{MISSING_IMAGES}"))
        index = index.subset(present)
    if test:
        return index, missing
    if unlisted and test_index is None:  # the test split may share the folder (OpenImages subset layout)
        try:
            test_index = load_index(AnnotationSpec.from_args(args, args.data, prefix="test-"))
        except (FileNotFoundError, ValueError):
            test_index = None
    if unlisted and test_index is not None and not args.test_images:
        test_names = {test_index.path(i) for i in range(len(test_index))}
        unlisted = [p for p in unlisted if p not in test_names]
    if unlisted:
        mode = crop_plan(args, index)[0]
        used = mode != "scene" and (args.proposals or args.sampling == "image")
        why = ("training on them too, object crops from proposals" if used else
               "not used (scene crops of the annotated images)" if mode == "scene" else
               "not used (--sampling box visits boxes only; --sampling image or --proposals crops them from proposals)")
        if int(os.environ.get("RANK", 0)) == 0:  # torchrun: rank 0 says it
            print(f"{len(unlisted)} images of {root} are in no annotation file (e.g. {_names(unlisted)}): {why}",
                  flush=True)
        if used:
            index = index.with_images(unlisted)
    return index, missing


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
    if main and args.random_boxes:
        print("--random-boxes: every image's boxes (and proposals) replaced by boxes of the same sizes at uniformly "
              "random positions, drawn per epoch from the seed (the random-box control)", flush=True)
    on_device = getattr(args, "augment_on", None) == "device"  # workers then return uint8 crops
    crop = ObjectAwareCrop(mode=mode, geometry=args.crop_geometry, dilation=args.dilation,
                           min_scale=args.min_scale, object_min_scale=args.rescale_parameter, size=args.image_size,
                           min_region=args.min_region, anchor=args.anchor,
                           augment=v2.PILToTensor() if on_device else moco_augment(args.aug_plus))
    dataset = ObjectCropDataset(args.data, index, crop, proposals=proposals, sampling=sampling,
                                proposal_topk=args.bing_topk, on_corrupt={"error": "raise"}.get(args.bad_image, "skip"),
                                warn=False,  # the run names skipped images in its log and bad_images.txt
                                random_boxes=args.random_boxes, random_boxes_seed=args.seed or 0)  # None: not via the run
    return dataset, index


def opened_proposals(args, index, run_dir, main=True):
    """``(proposal source, what it is)`` for ``--proposals``: a proposal cache as it is; a BING
    model (``.npz`` or OpenCV model folder) on images none of which has boxes: its proposals,
    cached once by rank 0 in ``<run>/proposals.npz`` (resumed if interrupted, reused on resume)."""
    from ..proposals import Bing, ProposalCache, open_proposals, propose_folder

    source = open_proposals(args.proposals)
    if not isinstance(source, Bing) or index.num_boxes > 0:  # some boxes: BING on the fly for the others
        return source, args.proposals
    path, model = Path(run_dir) / "proposals.npz", str(Path(args.proposals).resolve())
    with du.rank0_first():  # however long it takes, not bounded by --dist-timeout
        cached = ProposalCache.load(path) if main and path.is_file() else None
        if main and (cached is None or len(cached) < len(index) or cached.meta.get("model") != model):
            print(f"caching BING proposals of the {len(index)} images of {args.data} in {path} ...", flush=True)
            propose_folder(args.data, source, path, top_k=args.bing_topk,
                           workers=min(os.cpu_count() if args.workers is None else args.workers, os.cpu_count() or 1),
                           progress=sys.stderr.isatty(),
                           model_name=model)
    return ProposalCache.load(path), f"{path} (model {args.proposals})"


def fitted_proposals(index, root, path, seed, main=True, max_images=BING_FIT_IMAGES):
    """BING proposals for the images without boxes when no ``--proposals`` is given: a model
    fitted by rank 0 on up to ``max_images`` annotated images and saved to ``path`` (reused
    when it exists, e.g. on resume); ``None`` (scene crops, with a warning) when no image has boxes."""
    from ..proposals import Bing

    counts = index.num_boxes_per_image()
    annotated = np.flatnonzero(counts > 0)
    if len(annotated) == 0:
        if main:
            warnings.warn(f"no image of {root} has boxes and no --proposals was given: scene crops for all "
                          "(make proposals with `python -m ssl_crops.proposals`)")
        return None
    path = Path(path)
    with du.rank0_first():
        if main and not path.exists():
            chosen = np.sort(np.random.default_rng(seed).choice(annotated, min(len(annotated), max_images),
                                                                replace=False))
            print(f"{int((counts == 0).sum())} images have no boxes: fitting BING proposals on {len(chosen)} "
                  f"annotated images -> {path}", flush=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            Bing.fit_index(index, root, chosen, seed=seed).save(path)
    return Bing.load(path)


def build_loader(dataset, args, info, batch_size, workers):
    sampler = EpochSampler(dataset, info.world_size, info.rank, args.seed)
    # its own generator: creating an iterator must not draw from the global one; workers leave
    # the stop signals to the main process (a signal to the process group must not kill them)
    return DataLoader(SeededDataset(dataset, args.seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, pin_memory=info.device.type == "cuda",
                      persistent_workers=workers > 0, drop_last=True,
                      generator=torch.Generator().manual_seed(args.seed), worker_init_fn=ignore_stop_signals)


def queue_size(args, num_samples, global_batch, main=True, saved=None):
    """``--moco-k`` checked against the global batch; smaller (with a warning) when the queue
    would hold every sample of the dataset (the positive would sit among the negatives).
    ``saved``: a resumed checkpoint's ``(K, K asked for)``; when ``--moco-k`` is either, the
    checkpoint's K (and queue) is kept, also on a dataset of another size."""
    if num_samples < global_batch:
        raise ValueError(f"the dataset has {num_samples} samples, fewer than the global batch size {global_batch}")
    if saved is not None and args.moco_k in saved and saved[0] % global_batch == 0:
        if saved[0] >= num_samples and main:
            warnings.warn(f"resumed queue K={saved[0]} >= {num_samples} samples: kept (the checkpoint's queue)")
        return saved[0]
    k = args.moco_k
    if k >= num_samples:
        k = max(global_batch, (num_samples - 1) // global_batch * global_batch)
        if main:
            warnings.warn(f"queue size --moco-k {args.moco_k} >= {num_samples} samples: using K={k} "
                          "so that the queue does not hold the whole dataset")
    if k % global_batch:
        raise ValueError(f"--moco-k {k} is not divisible by the global batch size {global_batch}")
    return k
