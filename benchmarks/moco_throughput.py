"""MoCo-v2 training throughput on synthetic in-memory data: fp32 vs bf16 + channels_last.

Times the trainer's own ``train_step`` (both encoders, momentum update, queue, backward, SGD,
fused on CUDA as in training) on random images already on the device, so data loading is not
measured. On CUDA it also counts the host-device syncs per step
(``torch.cuda.set_sync_debug_mode``): the step should have none.

    python benchmarks/moco_throughput.py                  # GPU: ResNet-50, batch 256, 224 px
    python benchmarks/moco_throughput.py --device cpu --arch resnet18 --batch-size 8 \
        --image-size 64 --steps 2 --warmup 1              # CPU smoke run
"""
import argparse
import datetime
import platform
import time
import warnings

import torch
import torchvision

from ssl_crops.moco import MoCo
from ssl_crops.train import train_step


def count_syncs(fn):
    """``(fn(), host-device syncs it made)``; the count is 0 off CUDA (nothing to count)."""
    if not torch.cuda.is_available():
        return fn(), 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            out = fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return out, sum("synchroniz" in str(w.message) for w in caught)


def images_per_second(args, device, amp_dtype, channels_last, bn_splits=1):
    """``(images/s, host-device syncs per step)`` of ``train_step``."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MoCo(getattr(torchvision.models, args.arch), dim=128, K=args.moco_k, m=0.999, T=0.2, mlp=True,
                 bn_splits=bn_splits)
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4,
                                fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    im_q = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    im_k = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    for _ in range(args.warmup):
        train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()

    def steps():
        for _ in range(args.steps):
            loss, _ = train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt)
        return loss
    loss, syncs = count_syncs(steps) if device.type == "cuda" else (steps(), 0)
    loss.item()  # waits for the device
    return args.batch_size * args.steps / (time.perf_counter() - start), syncs / args.steps


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--moco-k", type=int, default=65536)
    p.add_argument("--bn-splits", type=int, default=1)
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"{datetime.date.today()}  device: {device} ({name})  torch {torch.__version__}")
    print(f"MoCo v2 {args.arch}, batch {args.batch_size}, {args.image_size} px, K={args.moco_k}, "
          f"bn_splits {args.bn_splits}, {args.steps} timed steps after {args.warmup} warm-up steps")
    syncs = "" if device.type != "cuda" else "  {:.1f} syncs/step"
    fp32, s32 = images_per_second(args, device, None, False, args.bn_splits)
    print(f"fp32                 {fp32:10.1f} images/s" + syncs.format(s32), flush=True)
    bf16, s16 = images_per_second(args, device, torch.bfloat16, True, args.bn_splits)
    print(f"bf16+channels_last   {bf16:10.1f} images/s" + syncs.format(s16))
    print(f"ratio                {bf16 / fp32:10.2f}x")


if __name__ == "__main__":
    main()
