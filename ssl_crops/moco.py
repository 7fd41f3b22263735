"""MoCo v2 (He et al. 2020, Chen et al. 2020) as one nn.Module.

Follows facebookresearch/moco's ``builder.py``: a query encoder trained by SGD, a key encoder
updated as an exponential moving average of it, and a queue of past keys as negatives.
Differences: works without a process group, where shuffle-BN is done with split BatchNorm as
in MoCo's single-GPU demo (``bn_splits``); checks the queue size; computes the logits in fp32
under autocast.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed as du


class SplitBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d that, in training, normalizes ``num_splits`` sub-batches separately (sample
    ``i`` belongs to sub-batch ``i % num_splits``); the running statistics are the mean over the
    sub-batches and evaluation is plain BatchNorm. The output keeps the input's memory format
    (a channels-last batch is normalized in its own layout, without copies). Parameters and
    buffers are those of ``BatchNorm2d``, so state dicts are interchangeable with it."""

    def __init__(self, num_features, num_splits=1, **kwargs):
        super().__init__(num_features, **kwargs)
        self.num_splits = int(num_splits)

    def forward(self, x):
        s = self.num_splits
        if not self.training or s == 1:
            return super().forward(x)
        n, c, h, w = x.shape
        if n % s:
            raise ValueError(f"batch of {n} does not split into {s} BatchNorm sub-batches (bn_splits)")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in BatchNorm2d
                factor = 1.0 / float(self.num_batches_tracked)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return self._forward_channels_last(x, s, factor)
        mean = self.running_mean.repeat(s) if self.track_running_stats else None
        var = self.running_var.repeat(s) if self.track_running_stats else None
        weight = self.weight.repeat(s) if self.affine else None
        bias = self.bias.repeat(s) if self.affine else None
        out = F.batch_norm(x.reshape(n // s, c * s, h, w), mean, var, weight, bias, True, factor, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(mean.view(s, c).mean(0))
                self.running_var.copy_(var.view(s, c).mean(0))
        return out.reshape(n, c, h, w)

    def _forward_channels_last(self, x, s, factor):
        """The same on a channels-last batch, in its layout: the (n/s, c*s, h, w) view of the
        NCHW path would be a copy there, and its result NCHW (a layout change per BatchNorm)."""
        c = x.shape[1]
        weight = self.weight if self.affine else x.new_ones(c, dtype=torch.float32)
        bias = self.bias if self.affine else x.new_zeros(c, dtype=torch.float32)
        out, (mean, var) = _SplitNormChannelsLast.apply(x, weight, bias, s, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                count = x.numel() // (s * c)
                self.running_mean.lerp_(mean.mean(0).to(self.running_mean.dtype), factor)
                self.running_var.lerp_((var * (count / max(count - 1, 1))).mean(0).to(self.running_var.dtype), factor)
        return out

    def extra_repr(self):
        return f"{super().extra_repr()}, num_splits={self.num_splits}"


def _split_sums(t, s):
    """Sums of a channels-last ``(n, c, h, w)`` tensor per sub-batch ``i % s`` and channel, fp32
    ``(s, c)``: a column sum over ``n / s`` rows of its memory, then over the pixels (two
    contiguous reductions, several times faster than one over the strided dimensions)."""
    n, c, h, w = t.shape
    rows = t.permute(0, 2, 3, 1).reshape(n // s, s * h * w * c)  # a view of channels-last memory
    return rows.sum(0, dtype=torch.float32).view(s, h * w, c).sum(1)


def _per_sample(t, n):
    """``(s, c)`` -> ``(n, c, 1, 1)``: sample ``i`` takes the row of its sub-batch ``i % s``."""
    return t.expand(n // t.shape[0], *t.shape).reshape(n, t.shape[1], 1, 1)


class _SplitNormChannelsLast(torch.autograd.Function):
    """Training BatchNorm of sub-batches ``i % s`` on a channels-last ``(n, c, h, w)`` batch in
    its layout (no layout copies, output channels-last); statistics in fp32 whatever the input
    dtype. Returns ``(out, stats)``: ``stats`` ``(2, s, c)`` the mean and biased variance."""

    @staticmethod
    def forward(ctx, x, weight, bias, s, eps):
        n, c, h, w = x.shape
        count = n // s * h * w
        mean = _split_sums(x, s) / count
        dev = x.float() - _per_sample(mean, n)  # two passes: no cancellation in the variance
        var = _split_sums(dev.square_(), s) / count
        del dev
        rstd = torch.rsqrt(var + eps)
        scale = rstd * weight.float()
        shift = bias.float() - mean * scale
        # computed in fp32 (x * scale and shift cancel where the mean is large against the std), stored
        # in x's dtype and layout by the same kernel
        out = torch.addcmul(_per_sample(shift, n), x, _per_sample(scale, n), out=torch.empty_like(x))
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.s = s
        stats = torch.stack([mean, var])
        ctx.mark_non_differentiable(stats)
        return out, stats

    @staticmethod
    def backward(ctx, grad, _stats):
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        s, count = ctx.s, x.numel() // (ctx.s * x.shape[1])
        grad = grad.contiguous(memory_format=torch.channels_last)
        prod = grad * x if grad.dtype == torch.float32 else grad.float().mul_(x)  # fp16: no overflow, no rounding
        sum_g, sum_gx = _split_sums(grad, s), _split_sums(prod, s)
        sum_gxhat = (sum_gx - mean * sum_g) * rstd  # sum of grad * (x - mean) * rstd
        a = rstd * weight.float()
        b = -a * rstd * sum_gxhat / count
        d = -a * sum_g / count - b * mean
        gx = torch.addcmul(_per_sample(d, n), x, _per_sample(b, n), out=torch.empty_like(x))  # fp32 math
        return (gx.addcmul_(grad, _per_sample(a, n)), sum_gxhat.sum(0).to(weight.dtype),         # as above
                sum_g.sum(0).to(weight.dtype), None, None)


def split_batch_norm(module, num_splits):
    """Replace every ``BatchNorm2d`` in ``module`` by a :class:`SplitBatchNorm` holding the same
    parameters and buffers (in place); returns ``module``."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SplitBatchNorm):
            like = next(iter(child.state_dict().values()), None)
            bn = SplitBatchNorm(child.num_features, num_splits, eps=child.eps, momentum=child.momentum,
                                affine=child.affine, track_running_stats=child.track_running_stats,
                                device=None if like is None else like.device)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            split_batch_norm(child, num_splits)
    return module


def default_bn_splits(per_process_batch, world_size, splits=8, min_split=32):
    """``splits`` sub-batches in a single process when the batch divides into sub-batches of at
    least ``min_split`` samples (MoCo's single-GPU demo: 512 in 8 of 64), else the largest such
    count below it, else 1; 1 with several processes (their shuffle across ranks is already
    shuffle-BN). Smaller sub-batches make BatchNorm statistics too noisy."""
    if world_size > 1:
        return 1
    fits = [n for n in range(2, splits + 1) if per_process_batch % n == 0 and per_process_batch // n >= min_split]
    return max(fits, default=1)


class MoCo(nn.Module):
    """MoCo with a query encoder, a momentum key encoder and a queue of ``K`` keys.

    ``base_encoder(num_classes=dim)`` builds an encoder (e.g. ``torchvision.models.resnet50``);
    ``mlp=True`` puts a hidden layer in front of its ``fc`` (MoCo v2 head). ``bn_splits > 1``
    makes every ``BatchNorm2d`` a :class:`SplitBatchNorm` over that many sub-batches, and
    ``forward`` shuffles the key batch across them: shuffle-BN within one process.
    """

    def __init__(self, base_encoder, dim=128, K=65536, m=0.999, T=0.07, mlp=False, bn_splits=1):
        super().__init__()
        if bn_splits < 1:
            raise ValueError(f"bn_splits must be >= 1, got {bn_splits}")
        self.K, self.m, self.T, self.bn_splits = K, m, T, int(bn_splits)
        self.encoder_q = base_encoder(num_classes=dim)
        self.encoder_k = base_encoder(num_classes=dim)
        if self.bn_splits > 1:
            split_batch_norm(self.encoder_q, self.bn_splits)
            split_batch_norm(self.encoder_k, self.bn_splits)
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
        # shuffle-BN across ranks draws its permutation on the host, the same on every rank, from
        # shuffle_seed (set per step by the trainer; else a count of the shuffles so far)
        self.shuffle_seed, self._shuffles = None, 0

    @torch.no_grad()
    def _momentum_update_key_encoder(self):
        k_params = [p.data for p in self.encoder_k.parameters()]
        q_params = [p.data for p in self.encoder_q.parameters()]
        torch._foreach_mul_(k_params, self.m)
        torch._foreach_add_(k_params, q_params, alpha=1.0 - self.m)

    @torch.no_grad()
    def _dequeue_and_enqueue(self, keys):
        keys = du.all_gather_cat(keys)
        n = keys.shape[0]
        if self.K % n:
            raise ValueError(f"queue size K={self.K} is not divisible by the global batch size {n}")
        # the pointer stays on the device: no host sync (it advances by n, a divisor of K)
        cols = self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)
        self.queue.index_copy_(1, cols, keys.T.to(self.queue.dtype))
        self.queue_ptr.add_(n).remainder_(self.K)

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x):
        """Shuffle the global batch across ranks; returns this rank's part and what
        :meth:`_batch_unshuffle_ddp` needs. Rank ``r`` takes the images at ``perm[r*n:(r+1)*n]``
        of a uniform permutation of the global batch (as MoCo), but each image travels only to
        the rank that takes it (one all_to_all, not an all_gather of every batch: world-size times
        fewer bytes); the permutation is drawn on the host, identical on every rank, so the split
        sizes need no host-device sync. Under autocast the images travel in its dtype."""
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        rank, world, n = du.get_rank(), du.get_world_size(), x.shape[0]
        seed = self._shuffles if self.shuffle_seed is None else self.shuffle_seed
        self._shuffles += 1
        takes = torch.randperm(world * n, generator=torch.Generator().manual_seed(seed)).view(world, n)
        send = [takes[r][takes[r] // n == rank] - rank * n for r in range(world)]  # my rows, in r's slot order
        slots = [(takes[rank] // n == r).nonzero().squeeze(1) for r in range(world)]  # my slots, by source
        send_rows, my_slots = torch.cat(send), torch.cat(slots)
        counts = ([len(t) for t in send], [len(t) for t in slots])
        if x.is_cuda:  # one pinned, non-blocking copy of both index lists
            both = torch.cat([send_rows, my_slots]).pin_memory().to(x.device, non_blocking=True)
            send_rows, my_slots = both[:n], both[n:]
        got = du.all_to_all_rows(x[send_rows], *counts)
        out = torch.empty_like(got)
        out[my_slots] = got
        channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        return out.contiguous(memory_format=fmt), (send_rows, my_slots, counts)

    @torch.no_grad()
    def _key_features(self, im_k):
        """Normalized keys, computed on a shuffled batch (across ranks, or across the BatchNorm
        sub-batches of one process) and returned in the original order."""
        if du.get_world_size() > 1:
            im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
            return self._batch_unshuffle_ddp(F.normalize(self.encoder_k(im_k).float(), dim=1), idx_unshuffle)
        if self.bn_splits > 1:  # torch's default generator: seeded runs stay reproducible
            idx_shuffle = torch.randperm(im_k.shape[0], device=im_k.device)
            k = F.normalize(self.encoder_k(im_k[idx_shuffle]).float(), dim=1)
            return k[torch.argsort(idx_shuffle)]
        return F.normalize(self.encoder_k(im_k).float(), dim=1)

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x, plan):
        """This rank's keys back in its own order: each key returns to the rank it came from."""
        send_rows, my_slots, (sent, received) = plan
        back = du.all_to_all_rows(x[my_slots], received, sent)
        out = torch.empty_like(back)
        out[send_rows] = back
        return out

    def forward(self, im_q, im_k):
        """Returns ``(logits, labels)``: logits ``(N, 1 + K)`` (positive first), labels zeros.

        The keys go through shuffle-BN: with several ranks each rank's key encoder sees a random
        part of the global batch; in one process with ``bn_splits > 1`` each BatchNorm
        sub-batch does. Otherwise the BatchNorm statistics of the query and its key come from
        the same images, the leak that shuffle-BN closes.
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)  # fp32 under autocast: unit-norm queue keys
        with torch.no_grad():
            self._momentum_update_key_encoder()
            k = self._key_features(im_k)
        with torch.autocast(q.device.type, enabled=False):
            q, k = q.float(), k.float()
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.clone().detach()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.T
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        self._dequeue_and_enqueue(k)
        return logits, labels
