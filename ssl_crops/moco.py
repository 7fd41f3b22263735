"""MoCo v2 (He et al. 2020, Chen et al. 2020) as one nn.Module.

Follows facebookresearch/moco's ``builder.py``: a query encoder trained by SGD, a key encoder
updated as an exponential moving average of it, and a queue of past keys as negatives.
Differences: works without a process group (single process: no shuffle, see ``forward``),
checks the queue size, and computes the logits in fp32 under autocast.
"""
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_gather_cat


def _world_size():
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class MoCo(nn.Module):
    """MoCo with a query encoder, a momentum key encoder and a queue of ``K`` keys.

    ``base_encoder(num_classes=dim)`` builds an encoder (e.g. ``torchvision.models.resnet50``);
    ``mlp=True`` puts a hidden layer in front of its ``fc`` (MoCo v2 head).
    """

    def __init__(self, base_encoder, dim=128, K=65536, m=0.999, T=0.07, mlp=False):
        super().__init__()
        self.K, self.m, self.T = K, m, T
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if mlp:
            for enc in (self.encoder_q, self.encoder_k):
                hidden = enc.fc.weight.shape[1]
                enc.fc = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), enc.fc)
        for p_q, p_k in zip(self.encoder_q.parameters(), self.encoder_k.parameters()):
            p_k.data.copy_(p_q.data)
            p_k.requires_grad = False
        # random unit keys from a fixed generator: every rank starts with the same queue
        queue = torch.randn(dim, K, generator=torch.Generator().manual_seed(0))
        self.register_buffer("queue", F.normalize(queue, dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        k_params = [p.data for p in self.encoder_k.parameters()]
        q_params = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = all_gather_cat(keys)
        n = keys.shape[0]
        if self.K % n:
            raise ValueError(f"queue size K={self.K} is not divisible by the global batch size {n}")
        ptr = int(self.queue_ptr)
        self.queue[:, ptr:ptr + n] = keys.T.to(self.queue.dtype)
        self.queue_ptr[0] = (ptr + n) % self.K

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x):
        """Shuffle the global batch across ranks; returns this rank's part and the inverse."""
        x_all = all_gather_cat(x)
        n, world = x.shape[0], x_all.shape[0] // x.shape[0]
        idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(idx_shuffle, src=0)
        idx_unshuffle = torch.argsort(idx_shuffle)
        mine = idx_shuffle.view(world, n)[dist.get_rank()]
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        return x_all[mine].contiguous(memory_format=fmt), idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x, idx_unshuffle):
        x_all = all_gather_cat(x)
        n, world = x.shape[0], x_all.shape[0] // x.shape[0]
        return x_all[idx_unshuffle.view(world, n)[dist.get_rank()]]

    def forward(self, im_q, im_k):
        """Returns ``(logits, labels)``: logits ``(N, 1 + K)`` (positive first), labels zeros.

        With several ranks the keys go through shuffle-BN (each rank's key encoder sees a random
        part of the global batch). In a single process no shuffle is done: BatchNorm statistics
        of one batch do not depend on its order, so a permutation would change nothing.
        """
        q = F.normalize(self.encoder_q(im_q), dim=1)
        with torch.no_grad():
            self._momentum_update_key_encoder()
            if _world_size() > 1:
                im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
                k = self._batch_unshuffle_ddp(F.normalize(self.encoder_k(im_k), dim=1), idx_unshuffle)
            else:
                k = F.normalize(self.encoder_k(im_k), dim=1)
        with torch.autocast(q.device.type, enabled=False):
            q, k = q.float(), k.float()
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.clone().detach()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels
