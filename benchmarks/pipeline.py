"""Input-pipeline throughput on real photos: two-view samples/s for one worker and for all cores.

  (a) the standard MoCo-v2 pipeline of the original code: torchvision transforms on the full
      decoded image (RandomResizedCrop 0.2-1, ColorJitter p=0.8, grayscale, PIL blur, flip);
  (b) ours, scene crops: reduced JPEG decoding + the fast CPU augmentation (MoCoAugment);
  (c) ours, object-object crops from the COCO boxes, original geometry (dilation 0.2, min_region 224);
  (d) (c) with device augmentation: the workers return uint8 crops; the batched augmentation
      (BatchAugment) is timed separately, here on the CPU, per image (two views).

Multi-crop (2 global 224 px views at scale 0.4-1, 8 local 96 px views at 0.05-0.4, DINO's
per-view augmentation, bicubic resizing as DINO's), samples/s of one worker:

  (e) torchvision's DINO multi-crop (``DataAugmentationDINO`` of the DINO code) on the full image;
  (f) ours, scene placement (``ObjectAwareMultiCrop(global_from="scene", local_from="scene")``);
  (g) ours, object-object placement (the default, min_region (224, 96)).

Ratios are to (a), and to (e) for the multi-crop rows, from the same run. The photos are COCO128's, re-encoded at 1024 px on the
long side (OpenImages size) into a temporary folder, or your own folder with ``--images``:

    PYTHONPATH=. python benchmarks/pipeline.py                       # ../shared/data/coco128-train
    PYTHONPATH=. python benchmarks/pipeline.py --images DIR --coco instances.json
    PYTHONPATH=. python benchmarks/pipeline.py --part multicrop --samples 64 --rounds 3
"""
import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode, v2

from ssl_crops.boxes import BoxIndex
from ssl_crops.data import ObjectCropDataset, open_image
from ssl_crops.transforms import (IMAGENET_MEAN, IMAGENET_STD, BatchAugment, ObjectAwareCrop, ObjectAwareMultiCrop,
                                  TwoViews)
from ssl_crops.transforms.augment import GaussianBlur
from ssl_crops.transforms.inputs import resized_crop

COCO128 = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-train"


def original_moco_v2(size):
    """The augmentation of the original MoCo-v2 code (``main_moco.py --aug-plus``), torchvision v1 API."""
    return TwoViews(T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([GaussianBlur((0.1, 2.0))], p=0.5),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ]))


class DinoMultiCrop:
    """DINO's ``DataAugmentationDINO`` (torchvision v1 API, as in the DINO code)."""

    def __init__(self, num_locals=8, global_scale=(0.4, 1.0), local_scale=(0.05, 0.4)):
        flip_jitter = [T.RandomHorizontalFlip(p=0.5), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.2, 0.1)], p=0.8),
                       T.RandomGrayscale(p=0.2)]
        norm = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
        blur = lambda p: T.RandomApply([GaussianBlur((0.1, 2.0))], p=p)  # noqa: E731  (PIL blur, as DINO's)
        bicubic = T.InterpolationMode.BICUBIC
        self.global1 = T.Compose([T.RandomResizedCrop(224, global_scale, interpolation=bicubic), *flip_jitter,
                                  blur(1.0), *norm])
        self.global2 = T.Compose([T.RandomResizedCrop(224, global_scale, interpolation=bicubic), *flip_jitter,
                                  blur(0.1), T.RandomSolarize(128, p=0.2), *norm])
        self.local = T.Compose([T.RandomResizedCrop(96, local_scale, interpolation=bicubic), *flip_jitter,
                                blur(0.5), *norm])
        self.num_locals = num_locals

    def __call__(self, img):
        return [self.global1(img), self.global2(img), *(self.local(img) for _ in range(self.num_locals))]


def reencode(src_images, coco_json, out_dir, long_side):
    """COCO photos resized to ``long_side`` px on the long side, JPEG quality 90; their BoxIndex."""
    index = BoxIndex.from_coco(coco_json)
    for i in range(len(index)):
        with Image.open(Path(src_images) / index.path(i)) as img:
            img = img.convert("RGB")
            s = long_side / max(img.size)
            img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC).save(
                Path(out_dir) / index.path(i), "JPEG", quality=90)
    return index  # boxes are normalized, so they hold for the resized photos


def one_worker(dataset, n):
    """Samples/s of one process on one thread."""
    dataset[0]
    start = time.perf_counter()
    for i in range(n):
        dataset[i % len(dataset)]
    return n / (time.perf_counter() - start)


def _worker_init(_):
    cv2.setNumThreads(1)


def all_cores(dataset, n, workers, batch_size=32):
    """Samples/s of ``workers`` DataLoader workers (after one warm-up batch per worker)."""
    idx = [i % len(dataset) for i in range(n + workers * batch_size)]
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, idx), batch_size=batch_size,
                                         num_workers=workers, worker_init_fn=_worker_init, prefetch_factor=4)
    it = iter(loader)
    for _ in range(workers):
        next(it)
    start, count = time.perf_counter(), 0
    for (q, _), _ in it:
        count += len(q)
    return count / (time.perf_counter() - start)


def batch_augment_per_second(size, batch=64, repeats=5):
    """Two-view samples/s of BatchAugment on the CPU (one thread): two batches of views per batch of samples."""
    aug = BatchAugment()
    views = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    aug(views)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aug(views), aug(views)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def stage_times(root, index, crop, n):
    """Mean ms per two-view sample of (c)'s stages: sampling, decoding, crop + resize, augmentation."""
    totals = dict(sampling=0.0, decode=0.0, resize=0.0, augment=0.0)
    for i in range(n):
        t0 = time.perf_counter()
        enc = open_image(root / index.path(i % len(index)))
        regions = crop.sample_regions(*enc.size, index.boxes(i % len(index)))
        t1 = time.perf_counter()
        img, boxes = enc.decode_regions(regions, crop.size[::-1])
        t2 = time.perf_counter()
        views = [resized_crop(img, b, crop.size, crop.interpolation) for b in boxes]
        t3 = time.perf_counter()
        [crop.augment(v) for v in views]
        t4 = time.perf_counter()
        for k, dt in zip(totals, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            totals[k] += dt * 1000 / n
    return totals


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=None, help="your own photo folder (used as it is)")
    p.add_argument("--coco", default=None, help="COCO json with the boxes of --images (default: coco128's)")
    p.add_argument("--coco128", default=str(COCO128), help="COCO128 folder (images/, instances.json)")
    p.add_argument("--long-side", type=int, default=1024, help="re-encode COCO128 at this size")
    p.add_argument("--size", type=int, default=224, help="view size")
    p.add_argument("--samples", type=int, default=384, help="two-view samples per measurement")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="workers for 'all cores'")
    p.add_argument("--part", choices=("all", "two-view", "multicrop"), default="all",
                   help="the two-view rows (a)-(d), the multi-crop rows (e)-(g), or both")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    with tempfile.TemporaryDirectory() as tmp:
        if args.images:
            root = Path(args.images)
            index = BoxIndex.from_coco(args.coco) if args.coco else BoxIndex.from_folder(root)
        else:
            src = Path(args.coco128)
            if not (src / "instances.json").is_file():
                p.error(f"{src}: no COCO128 folder (images/, instances.json); give --coco128 or --images")
            root = Path(tmp)
            index = reencode(src / "images", args.coco if args.coco else src / "instances.json", root, args.long_side)
        if index.num_boxes == 0:
            print("warning: no boxes: the object-object pipelines fall back to scene crops")
        size = args.size
        object_crop = dict(mode="object-object", geometry="original", dilation=0.2, min_region=224, size=size)
        pipelines = {
            "(a) MoCo-v2 torchvision, full decode": ObjectCropDataset(root, index, original_moco_v2(size)),
            "(b) ours, scene": ObjectCropDataset(root, index, ObjectAwareCrop(mode="scene", size=size)),
            "(c) ours, object-object": ObjectCropDataset(root, index, ObjectAwareCrop(**object_crop)),
            "(d) (c), workers' uint8 crops": ObjectCropDataset(
                root, index, ObjectAwareCrop(**object_crop, augment=v2.PILToTensor())),
        }
        widths = {Image.open(root / index.path(i)).size for i in range(min(len(index), 20))}
        print(f"{datetime.date.today()}  {platform.processor() or platform.machine()}, "
              f"{len(os.sched_getaffinity(0))} cores (shared machine: compare the ratios, not the rates)")
        print(f"{len(index)} photos ({sorted(widths)[:3]}...), {index.num_boxes} boxes")
        if args.part != "two-view":
            multicrop(root, index, args)
        if args.part == "multicrop":
            return
        print(f"two-view, {size} px views, {args.samples} samples x {args.rounds} rounds, median")
        one = {k: [] for k in pipelines}
        many = {k: [] for k in pipelines}
        batched = []
        for _ in range(args.rounds):
            for name, ds in pipelines.items():
                one[name].append(one_worker(ds, args.samples))
            batched.append(batch_augment_per_second(size))
            for name, ds in pipelines.items():
                many[name].append(all_cores(ds, args.samples * 2, args.workers))
        one = {k: statistics.median(v) for k, v in one.items()}
        many = {k: statistics.median(v) for k, v in many.items()}
        base_one, base_many = next(iter(one.values())), next(iter(many.values()))
        print(f"\n{'pipeline':34s} {'1 worker':>10s} {'ratio':>7s} {f'{args.workers} workers':>11s} {'ratio':>7s}")
        for name in pipelines:
            print(f"{name:34s} {one[name]:8.1f}/s {one[name] / base_one:6.2f}x "
                  f"{many[name]:9.1f}/s {many[name] / base_many:6.2f}x")
        aug = statistics.median(batched)
        d = list(one)[3]
        print(f"(d) BatchAugment on CPU, 1 thread:  {aug:8.1f}/s ({1000 / aug:.2f} ms per sample, two views); "
              f"workers' CPU part {1000 / one[d]:.2f} ms per sample")
        print(f"(d) workers + batched augmentation on the same core: "
              f"{1 / (1 / one[d] + 1 / aug):.1f}/s ({1 / (1 / one[d] + 1 / aug) / base_one:.2f}x)")
        c = list(one)[2]
        print(f"targets per core: (c) {one[c] / base_one:.2f}x (>= 1.6x), CPU part of (d) {one[d] / base_one:.2f}x (>= 2.5x)")
        crop = pipelines[c].transform
        print("(c) per sample, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in
                                                 stage_times(root, index, crop, args.samples).items()))


def multicrop(root, index, args):
    """The multi-crop rows (e)-(g): samples/s of one worker, ratios to (e) from the same run."""
    ours = dict(interpolation=InterpolationMode.BICUBIC)
    pipelines = {
        "(e) DINO multi-crop, torchvision": ObjectCropDataset(root, index, DinoMultiCrop()),
        "(f) ours, scene multi-crop": ObjectCropDataset(root, index, ObjectAwareMultiCrop(
            global_from="scene", local_from="scene", **ours)),
        "(g) ours, object-object multi-crop": ObjectCropDataset(root, index, ObjectAwareMultiCrop(**ours)),
    }
    rates = {k: [] for k in pipelines}
    for _ in range(args.rounds):
        for name, ds in pipelines.items():
            rates[name].append(one_worker(ds, args.samples))
    rates = {k: statistics.median(v) for k, v in rates.items()}
    base = next(iter(rates.values()))
    print(f"\nmulti-crop, 2 x 224 px + 8 x 96 px views, {args.samples} samples x {args.rounds} rounds, median, "
          f"1 worker (1 thread)")
    for name, rate in rates.items():
        print(f"{name:40s} {rate:8.1f}/s {rate / base:6.2f}x")
    print(f"target per core: ours >= 1.5x DINO's torchvision multi-crop: (f) {list(rates.values())[1] / base:.2f}x, "
          f"(g) {list(rates.values())[2] / base:.2f}x")


if __name__ == "__main__":
    main()
