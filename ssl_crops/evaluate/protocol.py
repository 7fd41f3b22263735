"""The ``linear_eval.py`` command line: the cached protocol and the original MoCo protocol."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ..checkpoint import write_checkpoint
from ..cli import plain_warnings
from ..config import Config
from ..distributed import broadcast_object, print0
from ..metrics import batch_mean_average_precision, topk_accuracy
from ..sources import add_annotation_args
from ..transforms import eval_transform, linear_train_transform
from .checkpoints import (LINEAR_LAST, backbone_from_checkpoint, build_backbone, checkpoint_fingerprint,
                          find_linear_resume, read_checkpoint)
from .features import (AMP_DTYPES, FeatureCache, MultiView, autocast, default_cache_dir, extract_features,
                       feature_loader, index_digest, is_multilabel, rank_and_world)
from .knn import knn_classify
from .probe import linear_probe
from .report import PAPER_BATCH_SIZE, PAPER_LABEL, build_report, format_table, scoring_targets, write_report
from .splits import Splits, leave_out_unreadable, unseen_notes, load_splits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Linear evaluation of a frozen backbone (cached features by default, "
                                            "or the original MoCo protocol with --protocol moco)")
    p.add_argument("data", metavar="DATA", help="train image folder (OpenImages-subset dicts beside it, or "
                                                "--coco/--index), or a folder with train/ and val/ class sub-folders")
    p.add_argument("--pretrained", default="", help="checkpoint (main_moco.py, original MoCo, or a torchvision "
                                                    "state dict); empty: random-init backbone")
    p.add_argument("-a", "--arch", default=None, help="torchvision arch (default: from the checkpoint, else resnet50)")
    add_annotation_args(p, what="train annotations")
    add_annotation_args(p, prefix="test-", kinds=("labels", "coco", "index"), what="test annotations")
    p.add_argument("--test-images", help="test image folder (default: DATA, or DATA/val for class folders)")
    p.add_argument("--include-crowd", action="store_true", help="COCO: also count iscrowd boxes as labels")
    p.add_argument("--task", choices=("auto", "multilabel", "singlelabel"), default="auto")
    p.add_argument("--protocol", choices=("cached", "moco"), default="cached")
    p.add_argument("--image-size", type=int, default=None,
                   help="crop size (default: the checkpoint's pretraining --image-size, else 224)")
    p.add_argument("-j", "--workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument("-b", "--batch-size", type=int, default=256, help="images per batch, total over all processes")
    p.add_argument("--amp", choices=tuple(AMP_DTYPES), default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--device", default=None, help="single process only (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", help="report folder (default: linear_eval/ beside the checkpoint)")
    p.add_argument("--head-min", type=int, default=100, help="head classes: more train images than this")
    p.add_argument("--tail-max", type=int, default=20, help="tail classes: fewer train images than this")
    p.add_argument("--paper-batch-size", type=int, default=PAPER_BATCH_SIZE,
                   help="test batch of the batch-mean mAP reported beside the whole-set mAP (original "
                        "main_lincls.py: 256 divided by the GPUs; comparable with the paper only)")
    p.add_argument("--bad-image", choices=["skip", "error"], default="skip",
                   help="an unreadable image (missing, truncated, empty, not an image): leave it out (named, and "
                        "counted in report.json) or stop with an error naming it")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (none without a terminal)")
    c = p.add_argument_group("cached protocol")
    c.add_argument("--cache-dir", default=None, help=f"feature cache (default {default_cache_dir()})")
    c.add_argument("--no-cache", action="store_true")
    c.add_argument("--train-crops", type=int, default=2,
                   help="augmented views (RandomResizedCrop + flip) per train image, added to the center "
                        "crops; decoded once with them (0: center crops only)")
    c.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    c.add_argument("--wds", type=float, nargs="+", default=[0.0, 1e-3, 1e-2, 1e-1])
    c.add_argument("--widen", type=int, default=3,
                   help="times the lr/wd grid grows past an edge that holds the best setting")
    c.add_argument("--val-fraction", type=float, default=0.2)
    c.add_argument("--probe-epochs", type=int, default=100)
    c.add_argument("--probe-batch-size", type=int, default=1024)
    c.add_argument("--knn", action="store_true", help="also report kNN (k=20, 200) on the cached features")
    m = p.add_argument_group("moco protocol (original main_lincls.py settings)")
    m.add_argument("--epochs", type=int, default=100)
    m.add_argument("--lr", type=float, default=30.0)
    m.add_argument("--schedule", type=int, nargs="*", default=None,
                   help="epochs at which lr drops 10x (default: 60%% and 80%% of --epochs)")
    m.add_argument("--momentum", type=float, default=0.9)
    m.add_argument("--wd", "--weight-decay", type=float, default=0.0, dest="weight_decay")
    m.add_argument("--resume", default="", help="linear head checkpoint to continue from, or 'auto' "
                   "(linear_last.pth in the out dir, if readable)")
    d = p.add_argument_group("distributed (as main_moco.py)")
    d.add_argument("--world-size", type=int, default=-1)
    d.add_argument("--rank", type=int, default=-1)
    d.add_argument("--dist-url", default=None, help="default: a free port on one node, derived from the job under srun")
    d.add_argument("--dist-backend", default=None)
    d.add_argument("--gpu", type=int, default=None)
    d.add_argument("--multiprocessing-distributed", action="store_true")
    return p


def _one_line(error: Exception) -> str:
    """The message of an exception, also when a DataLoader worker raised it (traceback cut off)."""
    last = str(error).strip().splitlines()[-1]
    return last.split(f"{type(error).__name__}: ", 1)[-1]


def _setup(args, info):
    """``(backbone, its identity, device, args)``: the args with the backbone's arch and the image
    size resolved (from the checkpoint when not given)."""
    device = torch.device(args.device if args.device and not info.distributed else info.device)
    torch.manual_seed(args.seed)
    pretrain_size = None
    if args.pretrained:
        ckpt = read_checkpoint(args.pretrained)
        recorded = ckpt.get("args")
        pretrain_size = recorded.get("image_size") if isinstance(recorded, dict) else None
        backbone = backbone_from_checkpoint(ckpt, args.arch, args.pretrained)
        ident = checkpoint_fingerprint(args.pretrained)
    else:
        backbone = build_backbone(args.arch or "resnet50")
        ident = {"random_init": args.arch or "resnet50", "seed": args.seed}
    size, source = _image_size(args, pretrain_size)
    args = Config.of(args, arch=backbone.arch, image_size=size, image_size_source=source)
    print0(f"image size {size} px ({source})")
    for prm in backbone.parameters():
        prm.requires_grad_(False)
    backbone.to(device).eval()
    return backbone, ident, device, args


def _image_size(args, pretrain_size) -> tuple[int, str]:
    """``(image size, where it came from)``: ``--image-size``, else the checkpoint's pretraining
    size, else 224."""
    if args.image_size is not None:
        return args.image_size, "--image-size" + (f"; pretrained at {pretrain_size}"
                                                  if pretrain_size not in (None, args.image_size) else "")
    if pretrain_size:
        return int(pretrain_size), "the checkpoint's pretraining --image-size"
    return 224, ("default; the checkpoint does not record its pretraining size, give --image-size"
                 if args.pretrained else "default")


def _per_process_batch(batch_size: int, world: int) -> int:
    """``-b/--batch-size`` is the total over all processes (as in ``main_moco.py``)."""
    if batch_size % world:
        raise ValueError(f"--batch-size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


def _targets(y, multilabel: bool):
    return y.astype(np.float32) if multilabel else y.argmax(1)


def _out_dir(args) -> Path:
    if args.out_dir:
        return Path(args.out_dir)
    base = Path(args.pretrained).parent if args.pretrained else Path("linear_eval_runs")
    name = Path(args.pretrained).stem if args.pretrained else f"random_{args.arch or 'resnet50'}"
    return base / "linear_eval" / f"{name}_{args.protocol}"


def run_cached(info, args) -> dict | None:
    """Cached protocol (one process or each rank of a distributed launch); report on rank 0."""
    from ..data import LabeledImageDataset
    rank, world = rank_and_world()
    batch_size = _per_process_batch(args.batch_size, world)
    multilabel, splits = _load(args)
    train_root, train_index, test_root, test_index = splits.train_root, splits.train, splits.test_root, splits.test
    backbone, ident, device, args = _setup(args, info)
    cache = None if args.no_cache else FeatureCache(args.cache_dir or default_cache_dir())
    timing = {}

    def features(root, index, entries, seed=0):
        """``entries``: name -> (transform, views, key); returns name -> (features (N, views, D),
        targets), from the cache, or from one pass over the images for all missing entries."""
        base = {"checkpoint": ident, "arch": args.arch, "amp": args.amp, "root": str(Path(root).resolve()),
                **index_digest(index)}
        keys = {name: {**base, "split": name, "transform": key} for name, (_, _, key) in entries.items()}
        # rank 0 decides hit or miss for all ranks (a node-local cache may differ between nodes)
        out = {name: cache.load(keys[name]) if cache and rank == 0 else None for name in entries}
        todo = [name for name, hit in out.items() if hit is None]
        if cache and world > 1:
            todo = broadcast_object(todo)
        for name in (n for n in entries if n not in todo):
            print0(f"{name}: cached features {cache.path(keys[name])}")
        if not todo:
            return out
        tfs = [tf for name in todo for tf in [entries[name][0]] * entries[name][1]]
        t = time.perf_counter()
        torch.manual_seed(seed)  # augmentation in the main process (workers=0) is reproducible too
        loader = feature_loader(LabeledImageDataset(root, index, MultiView(tfs), _on_corrupt(args)),
                                max(1, batch_size // len(tfs)), args.workers, seed=seed)
        feats, targets = extract_features(backbone, loader, device, args.amp, args.channels_last,
                                          not args.no_progress)
        timing[f"extract_{'+'.join(todo)}_s"] = round(time.perf_counter() - t, 2)
        print0(f"{'+'.join(todo)}: extracted {feats.shape[0]} images x {feats.shape[1]} views, "
             f"{feats.shape[2]}-d, in {time.perf_counter() - t:.2f}s")
        start = 0
        for name in todo:
            out[name] = feats[:, start:start + entries[name][1]], targets
            start += entries[name][1]
            if cache and rank == 0:
                cache.save(keys[name], *out[name])
        return out

    center = (eval_transform(args.image_size), 1, {"kind": "center", "size": args.image_size})
    train = {"train": center}
    if args.train_crops:
        train["train-crops"] = (linear_train_transform(args.image_size), args.train_crops,
                                {"kind": "rrc-flip", "size": args.image_size, "views": args.train_crops,
                                 "seed": args.seed})
    train = features(train_root, train_index, train, seed=args.seed + 1)
    test_x, test_served = features(test_root, test_index, {"test": center})["test"]
    if rank != 0:  # other ranks only helped extracting (and lack the cache hits)
        return None
    train_x, train_y = train["train"][0][:, 0], train["train"][1]
    crops = [*train["train-crops"][0].transpose(1, 0, 2)] if args.train_crops else []
    keep, keep_test = leave_out_unreadable(splits, "train", train_y), leave_out_unreadable(splits, "test", test_served)
    train_x, train_y, crops = train_x[keep], train_y[keep], [c[keep] for c in crops]
    test_x, train_index, test_index = test_x[keep_test, 0], splits.train, splits.test
    rows = [train_x] + crops
    groups = np.tile(np.arange(len(train_x)), len(rows))
    train_y, test_y = _targets(train_y, multilabel), _test_targets(test_index, multilabel)
    t = time.perf_counter()
    probe = linear_probe(np.concatenate(rows), np.concatenate([train_y] * len(rows)), test_x, multilabel,
                         args.lrs, args.wds, args.val_fraction, args.probe_epochs, args.probe_batch_size,
                         args.seed, device, train_groups=groups, num_classes=train_index.num_classes,
                         widen=args.widen, log=print0)
    timing["probe_s"] = round(time.perf_counter() - t, 2)
    extra = {}
    if args.knn:
        extra["knn"] = knn_classify(train_x, train_y, test_x, test_y, multilabel=multilabel)
    return _finish(args, splits, test_y, probe["test_scores"], multilabel, ident, sweep=probe["sweep"],
                   best=probe["best"], sweep_notes=probe["notes"], timing=timing, **extra)


def _load(args) -> tuple[bool, Splits]:
    """``(multilabel, splits)``; notes about unseen test classes are printed on rank 0."""
    forced = None if args.task == "auto" else args.task == "multilabel"
    splits = load_splits(args, forced)
    print0(f"train annotations: {splits.train.describe()}")
    print0(f"test annotations: {splits.test.describe()}")
    for note in unseen_notes(splits.notes):
        print0(f"warning: {note}")
    return (is_multilabel(splits.train) if forced is None else forced), splits


def _test_targets(index, multilabel: bool) -> np.ndarray:
    """Test targets from the index: multi-hot (federated for LVIS: -1 not scored) or int
    labels. Classes without a training image are left out of the scores by the report."""
    if multilabel:
        return index.target_matrix().astype(np.float32)
    return np.array([index.labels(i)[0] for i in range(len(index))], np.int64)


def _finish(args, splits: Splits, test_y, scores, multilabel, ident, **extra) -> dict:
    train = splits.train
    report = build_report(scores, test_y, train.class_counts(), train.classes, multilabel, args.head_min,
                          args.tail_max, args.paper_batch_size, protocol=args.protocol, checkpoint=ident,
                          arch=args.arch, image_size=args.image_size,
                          image_size_source=args.image_size_source, num_train=len(train),
                          federated=bool(splits.test.federated), **splits.notes, **extra)
    report["notes"] = unseen_notes(splits.notes)
    files = write_report(report, _out_dir(args))
    print(format_table(report, notes=False))  # its notes were printed as they came
    print("\n".join(f"{name}: {path}" for name, path in files.items()), flush=True)
    return report


def _epoch_figure(scores, test_y, scored_y, multilabel: bool, batch_size: int) -> float:
    """The original ``main_lincls.py`` test figure of one epoch: batch-mean mAP over
    ``scored_y`` (:func:`scoring_targets`), top-1 of ``test_y`` when single-label."""
    if multilabel:
        return batch_mean_average_precision(scores, scored_y, batch_size)
    return topk_accuracy(scores, test_y, (1,))[1]


def run_moco(info, args) -> dict | None:
    """The original MoCo linear protocol: frozen backbone (BN in eval mode), a linear layer
    trained with SGD on augmented images every epoch, step schedule; report on rank 0.

    As the backbone is frozen and the test transform fixed, test features are extracted
    once and the head scores them after every epoch: the report holds the final epoch's
    whole-set mAP (``map``) and, labelled, the original code's figure, the best epoch's
    batch-mean mAP on the test set (``best_epoch``; the original evaluates before each
    epoch's training, so it sees the states after 0 to E-1 epochs, we see 1 to E)."""
    from torch.nn.parallel import DistributedDataParallel

    from ..data import LabeledImageDataset
    rank, world = rank_and_world()
    batch_size = _per_process_batch(args.batch_size, world)
    multilabel, splits = _load(args)
    train_index = splits.train
    backbone, ident, device, args = _setup(args, info)
    if args.channels_last:
        backbone.to(memory_format=torch.channels_last)
    test = LabeledImageDataset(splits.test_root, splits.test, eval_transform(args.image_size), _on_corrupt(args))
    test_x, test_served = extract_features(backbone, feature_loader(test, batch_size, args.workers), device,
                                           args.amp, args.channels_last, not args.no_progress)
    test_x = torch.from_numpy(test_x[leave_out_unreadable(splits, "test", test_served)]).to(device)
    test_y = _test_targets(splits.test, multilabel)
    scored_y = scoring_targets(test_y, train_index.class_counts(), multilabel)
    fc = nn.Linear(backbone.num_features, train_index.num_classes).to(device)
    nn.init.normal_(fc.weight, 0.0, 0.01), nn.init.zeros_(fc.bias)
    head = DistributedDataParallel(fc, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else fc
    opt = torch.optim.SGD(fc.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = args.schedule if args.schedule is not None else [int(0.6 * args.epochs), int(0.8 * args.epochs)]
    out_dir = _out_dir(args)
    start, history = 0, []
    auto = args.resume == "auto"
    state = find_linear_resume(args.resume, out_dir) if args.resume and (rank == 0 or not auto) else None
    if auto and world > 1:  # rank 0's choice for all ranks (the out dir may be node-local)
        state = broadcast_object(state)
    if state is not None:
        _head_in_class_order(state, train_index.classes)
        fc.load_state_dict(state["fc"]), opt.load_state_dict(state["optimizer"])
        start, history = state["epoch"], list(state.get("history", []))
        print0(f"resumed the linear head at epoch {start}")
    dataset = LabeledImageDataset(splits.train_root, train_index, linear_train_transform(args.image_size),
                                  _on_corrupt(args))
    sampler = DistributedSampler(dataset, seed=args.seed) if world > 1 else None
    loader = DataLoader(dataset, batch_size, shuffle=sampler is None, sampler=sampler, drop_last=False,
                        num_workers=args.workers, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(args.seed))
    t0 = time.perf_counter()
    for epoch in range(start, args.epochs):
        lr = args.lr * 0.1 ** sum(epoch >= m for m in schedule)
        for g in opt.param_groups:
            g["lr"] = lr
        if sampler is not None:
            sampler.set_epoch(epoch)
        total, n, unreadable = 0.0, 0, 0
        for i, (images, target) in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False,
                                                   disable=args.no_progress or rank != 0)):
            readable = ~torch.isnan(target).flatten(1).any(1)  # --bad-image skip: NaN targets
            if not readable.all():
                images, target, unreadable = images[readable], target[readable], unreadable + int((~readable).sum())
                if not len(images):
                    continue
            images = images.to(device, non_blocking=True)
            if args.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            target = target.to(device)
            with torch.no_grad(), autocast(device, args.amp):
                f = backbone(images)
            logits = head(f.float())
            loss = F.binary_cross_entropy_with_logits(logits, target) if multilabel \
                else F.cross_entropy(logits, target.argmax(1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(images), n + len(images)
        with torch.no_grad():
            figure = _epoch_figure(fc(test_x).cpu().numpy(), test_y, scored_y, multilabel,
                                   args.paper_batch_size)
        history.append({"epoch": epoch + 1, "test_batch_mean": figure})
        print0(f"epoch {epoch + 1}/{args.epochs} lr {lr:g} loss {total / max(n, 1):.4f} "
             f"test {'batch-mean mAP' if multilabel else 'top-1'} {100 * figure:.2f}"
             + (f" ({unreadable} unreadable train images left out)" if unreadable else ""))
        if rank == 0:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_checkpoint({"epoch": epoch + 1, "fc": fc.state_dict(), "optimizer": opt.state_dict(),
                              "arch": args.arch, "history": history, "classes": train_index.classes},
                             out_dir / LINEAR_LAST)
    train_s = time.perf_counter() - t0
    if rank != 0:
        return None
    with torch.no_grad():
        scores = fc.eval()(test_x).cpu().numpy()
    extra = {}
    if history:
        best = max(history, key=lambda h: h["test_batch_mean"])
        extra["best_epoch"] = {"epoch": best["epoch"], "value": best["test_batch_mean"],
                               "metric": f"batch-mean mAP at batch {args.paper_batch_size}" if multilabel else "top1",
                               "note": f"best epoch chosen on the test set, as the original main_lincls.py; "
                                       f"{PAPER_LABEL}"}
    return _finish(args, splits, test_y, scores, multilabel, ident, epochs=args.epochs, lr=args.lr,
                   schedule=schedule, history=history, timing={"train_s": round(train_s, 2)}, **extra)


def _on_corrupt(args) -> str:
    return {"error": "raise"}.get(getattr(args, "bad_image", "skip"), "skip")


def _head_in_class_order(state: dict, classes: list[str]) -> None:
    """Put the rows of a saved linear head (and their momentum) in the order of ``classes``. A
    head saved without its classes predates COCO classes numbered in category-id order: its rows
    follow the sorted class names."""
    saved = list(state.get("classes") or sorted(classes))
    if sorted(saved) != sorted(classes):
        raise ValueError(f"--resume: the linear head was trained on {len(saved)} other classes than these "
                         f"{len(classes)}; start afresh without --resume")
    row = {c: i for i, c in enumerate(saved)}
    perm = torch.tensor([row[c] for c in classes])
    if torch.equal(perm, torch.arange(len(classes))):
        return
    state["fc"] = {k: v[perm] for k, v in state["fc"].items()}
    for buffers in state["optimizer"].get("state", {}).values():
        if torch.is_tensor(buffers.get("momentum_buffer")):
            buffers["momentum_buffer"] = buffers["momentum_buffer"][perm]
    state["classes"] = list(classes)


def quiet_map(info, data, pretrained: str, arch: str, image_size: int, out_dir) -> float:
    """Whole-set test mAP of the default cached linear evaluation of ``pretrained`` (``""``: a
    random-init ``arch``) in this process, its printing silenced (the report goes to ``out_dir``)."""
    args = Config.of(build_parser().parse_args([str(data), "--pretrained", pretrained, "-a", arch, "--image-size",
                                                str(image_size), "--no-cache", "--no-progress", "--out-dir",
                                                str(out_dir)]))
    with contextlib.redirect_stdout(io.StringIO()):
        return run_cached(info, args)["map"]


def _worker(info, args):
    return (run_moco if args.protocol == "moco" else run_cached)(info, args)


def main(argv=None) -> dict | None:
    """CLI entry: parse, launch (single process, torchrun, or legacy multiprocessing) and
    return the report of rank 0 (``None`` in spawned workers)."""
    plain_warnings()
    args = build_parser().parse_args(argv)
    args = Config.of(args, no_progress=args.no_progress or not sys.stderr.isatty())  # no \r redraws in piped logs
    from ..data import CorruptImageError
    from ..distributed import launch
    try:
        return launch(_worker, args)
    except CorruptImageError as e:  # --bad-image error, raised in a loader worker or here: one line
        raise CorruptImageError(f"{_one_line(e)} (--bad-image skip leaves unreadable images out)") from None
