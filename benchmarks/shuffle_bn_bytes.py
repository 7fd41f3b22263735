"""Bytes each rank receives per step for shuffle-BN across ranks: MoCo's original all_gather of
the image batch (every rank receives every other rank's images) against the all_to_all that
``MoCo._batch_shuffle_ddp`` runs (each image travels only to the rank that takes it).

    python benchmarks/shuffle_bn_bytes.py [--image-size 224] [--batch 32] [--worlds 2 8 16 64]

The all_to_all figures come from running the real shuffle and unshuffle of rank 0 on one process,
``ssl_crops.distributed.all_to_all_rows`` replaced by a stand-in that counts the rows it would
receive for a world of W ranks; the all_gather figures are what MoCo's original code receives:
(W - 1) x the batch of images and of keys, and the broadcast permutation.
"""
import argparse
from unittest import mock

import torch

from ssl_crops import distributed as du
from ssl_crops.moco import MoCo


def measure(world, batch, size, dtype, dim=128):
    """``(all_gather bytes, all_to_all bytes)`` received by one rank per step."""
    received = [0]

    def all_to_all(t, send_counts, recv_counts):  # what rank 0 would receive (its own block stays)
        row = t[0].numel() * t.element_size() if len(t) else 0
        received[0] += (sum(recv_counts) - recv_counts[0]) * row
        return t.new_zeros((sum(recv_counts), *t.shape[1:]))

    x = torch.zeros(batch, 3, size, size, dtype=dtype)
    with mock.patch.object(du, "all_to_all_rows", all_to_all), mock.patch.object(du, "get_rank", lambda: 0), \
            mock.patch.object(du, "get_world_size", lambda: world):
        moco = MoCo.__new__(MoCo)
        moco.shuffle_seed, moco._shuffles = 0, 0
        shuffled, plan = MoCo._batch_shuffle_ddp(moco, x)
        MoCo._batch_unshuffle_ddp(moco, torch.zeros(batch, dim), plan)
    image_bytes = x[0].numel() * x.element_size()
    gather = (world - 1) * batch * (image_bytes + dim * 4) + world * batch * 8  # images, keys, the permutation
    return gather, received[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32, help="images per rank")
    p.add_argument("--worlds", type=int, nargs="+", default=[2, 8, 16, 64])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    print(f"{'ranks':>5} {'dtype':>8} {'all_gather MB':>14} {'all_to_all MB':>14} {'ratio':>6}   "
          f"(per rank and step, batch {args.batch} per rank, {args.image_size} px)")
    for world in args.worlds:
        for dtype in (torch.bfloat16, torch.float32):
            gather, to_all = measure(world, args.batch, args.image_size, dtype)
            print(f"{world:>5} {str(dtype).split('.')[1]:>8} {gather / 1e6:>14.1f} {to_all / 1e6:>14.1f} "
                  f"{gather / max(to_all, 1):>6.1f}")


if __name__ == "__main__":
    main()
