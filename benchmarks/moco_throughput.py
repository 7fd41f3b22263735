"""MoCo-v2 training throughput on synthetic in-memory data: fp32 vs bf16 + channels_last.

Times the trainer's own ``train_step`` (both encoders, momentum update, queue, backward, SGD)
on random images already on the device, so data loading is not measured.

    python benchmarks/moco_throughput.py                  # GPU: ResNet-50, batch 256, 224 px
    python benchmarks/moco_throughput.py --device cpu --arch resnet18 --batch-size 8 \
        --image-size 64 --steps 2 --warmup 1              # CPU smoke run
"""
import argparse
import datetime
import platform
import time

import torch
import torchvision

from ssl_crops.moco import MoCo
from ssl_crops.train import train_step


def images_per_second(args, device, amp_dtype, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = MoCo(getattr(torchvision.models, args.arch), dim=128, K=args.moco_k, m=0.999, T=0.2, mlp=True)
    model = model.to(device, memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    shape = (args.batch_size, 3, args.image_size, args.image_size)
    im_q = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    im_k = torch.randn(shape, device=device).contiguous(memory_format=fmt)
    for _ in range(args.warmup):
        train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss, _ = train_step(model, im_q, im_k, optimizer, scaler, amp_dtype, fmt)
    loss.item()  # waits for the device
    return args.batch_size * args.steps / (time.perf_counter() - start)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--moco-k", type=int, default=65536)
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
          f"{args.steps} timed steps after {args.warmup} warm-up steps")
    fp32 = images_per_second(args, device, None, False)
    print(f"fp32                 {fp32:10.1f} images/s", flush=True)
    bf16 = images_per_second(args, device, torch.bfloat16, True)
    print(f"bf16+channels_last   {bf16:10.1f} images/s")
    print(f"ratio                {bf16 / fp32:10.2f}x")


if __name__ == "__main__":
    main()
