"""MoCo against a hand-computed InfoNCE step (single process, no process group)."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ssl_crops.moco import MoCo


class TinyNet(nn.Module):
    """A two-layer encoder with a torchvision-style ``fc`` head."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.body = nn.Linear(6, 5)
        self.fc = nn.Linear(5, num_classes)

    def forward(self, x):
        return self.fc(torch.relu(self.body(x.flatten(1))))


def _model(K=6, m=0.9, T=0.5, **kw):
    torch.manual_seed(0)
    model = MoCo(TinyNet, dim=4, K=K, m=m, T=T, **kw)
    with torch.no_grad():  # make the query encoder differ from the key encoder
        for p in model.encoder_q.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


def _apply(encoder, params, x):
    enc = copy.deepcopy(encoder)
    enc.load_state_dict(params)
    return F.normalize(enc(x), dim=1)


def test_forward_matches_hand_computed_infonce():
    model = _model()
    q_params = copy.deepcopy(model.encoder_q.state_dict())
    k_params = copy.deepcopy(model.encoder_k.state_dict())
    queue0, x_q, x_k = model.queue.clone(), torch.randn(2, 6), torch.randn(2, 6)

    logits, labels = model(x_q, x_k)

    # the key encoder is updated first: k <- m k + (1 - m) q, then computes the keys
    k_new = {n: 0.9 * k_params[n] + 0.1 * q_params[n] for n in k_params}
    for n, p in model.encoder_k.state_dict().items():
        torch.testing.assert_close(p, k_new[n])
    q, k = _apply(model.encoder_q, q_params, x_q), _apply(model.encoder_k, k_new, x_k)
    expected = torch.cat([(q * k).sum(1, keepdim=True), q @ queue0], dim=1) / 0.5
    torch.testing.assert_close(logits, expected)
    assert logits.shape == (2, 7) and labels.tolist() == [0, 0]
    loss = F.cross_entropy(logits, labels)
    by_hand = (-expected[:, 0] + torch.log(torch.exp(expected).sum(1))).mean()
    torch.testing.assert_close(loss, by_hand)

    # queue: the new keys (as columns) at the old pointer, the rest untouched
    torch.testing.assert_close(model.queue[:, :2], k.T)
    assert torch.equal(model.queue[:, 2:], queue0[:, 2:])
    assert int(model.queue_ptr) == 2

    # gradients reach the query encoder only
    loss.backward()
    assert all(p.grad is not None for p in model.encoder_q.parameters())
    assert all(p.grad is None and not p.requires_grad for p in model.encoder_k.parameters())


def test_queue_pointer_wraps_around():
    model = _model(K=6)
    for expected_ptr in (2, 4, 0, 2):
        model(torch.randn(2, 6), torch.randn(2, 6))
        assert int(model.queue_ptr) == expected_ptr
    assert torch.allclose(model.queue.norm(dim=0), torch.ones(6))


def test_queue_not_divisible_by_batch_raises():
    model = _model(K=5)
    with pytest.raises(ValueError, match="not divisible"):
        model(torch.randn(2, 6), torch.randn(2, 6))


def test_mlp_head_and_encoders_start_equal():
    model = MoCo(TinyNet, dim=4, K=8, mlp=True)
    for enc in (model.encoder_q, model.encoder_k):
        assert isinstance(enc.fc, nn.Sequential) and enc.fc[0].in_features == 5 and enc.fc[2].out_features == 4
    for p_q, p_k in zip(model.encoder_q.parameters(), model.encoder_k.parameters()):
        assert torch.equal(p_q, p_k)
    assert set(model.state_dict()) >= {"queue", "queue_ptr", "encoder_q.fc.0.weight", "encoder_k.fc.2.bias"}
    assert {n for n, _ in model.named_buffers()} >= {"queue", "queue_ptr"}


def test_resnet_with_batchnorm_without_process_group():
    torch.manual_seed(0)
    model = MoCo(torchvision.models.resnet18, dim=8, K=8, mlp=True)
    x = torch.randn(4, 3, 32, 32)
    logits, labels = model(x, x.flip(3))
    assert logits.shape == (4, 9) and torch.isfinite(logits).all()


def test_logits_are_fp32_under_autocast():
    model = _model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(torch.randn(2, 6), torch.randn(2, 6))
    assert logits.dtype == torch.float32 and model.queue.dtype == torch.float32


# --------------------------------------------------------------------------- split BatchNorm
from ssl_crops.moco import SplitBatchNorm, default_bn_splits, split_batch_norm  # noqa: E402


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_split_batchnorm_normalizes_each_sub_batch_like_its_own_batchnorm(fmt):
    """Values, gradients and running statistics of per-split ``batch_norm`` in both layouts;
    the output keeps the input's layout (channels_last in, channels_last out)."""
    torch.manual_seed(0)
    x = (torch.randn(12, 5, 3, 4) * 3 + 1).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(12, 5, 3, 4).contiguous(memory_format=fmt)
    split = SplitBatchNorm(5, num_splits=3)
    with torch.no_grad():
        split.weight.uniform_(0.5, 2), split.bias.uniform_(-1, 1)
    refs = [copy.deepcopy(nn.BatchNorm2d(5)) for _ in range(3)]
    for ref in refs:
        ref.load_state_dict(split.state_dict())
    out = split(x)
    assert out.is_contiguous(memory_format=fmt)
    out.backward(grad)
    x_ref = x.detach().clone().requires_grad_()
    for j, ref in enumerate(refs):  # sub-batch j holds samples j, j + 3, j + 6, ...
        y = F.batch_norm(x_ref[j::3], ref.running_mean, ref.running_var, ref.weight, ref.bias, True, 0.1, ref.eps)
        torch.testing.assert_close(out[j::3], y)
        y.backward(grad[j::3])
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(split.weight.grad, sum(r.weight.grad for r in refs))
    torch.testing.assert_close(split.bias.grad, sum(r.bias.grad for r in refs))
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert int(split.num_batches_tracked) == 1
    assert not torch.allclose(out[0::3], nn.BatchNorm2d(5).train()(x)[0::3])  # differs from whole-batch BN
    split.eval()
    plain = nn.BatchNorm2d(5).eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))


@pytest.mark.parametrize("offset", [5.0, 20.0])
def test_split_batchnorm_in_bf16_is_as_precise_in_both_layouts(offset):
    """bf16 with a mean large against the std: the channels-last path (its own kernel) is as
    close to the float64 result as the NCHW path (``F.batch_norm``), values and input gradients."""
    torch.manual_seed(0)
    x32, g32 = torch.randn(32, 16, 8, 8) * 2 + offset, torch.randn(32, 16, 8, 8).bfloat16()
    bn = SplitBatchNorm(16, num_splits=4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    exact = x32.bfloat16().double().requires_grad_()
    bn_ref = copy.deepcopy(bn).double()
    out_ref = bn_ref(exact)
    out_ref.backward(g32.double())
    errors = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = x32.bfloat16().contiguous(memory_format=fmt).requires_grad_()
        out = copy.deepcopy(bn)(x)
        out.backward(g32.contiguous(memory_format=fmt))
        errors[fmt] = [((a.double() - b).norm() / b.norm()).item() for a, b in ((out, out_ref), (x.grad, exact.grad))]
    for cl, nchw in zip(errors[torch.channels_last], errors[torch.contiguous_format]):
        assert cl < 1.25 * nchw, errors


def test_bn_splits_step_in_channels_last_equals_nchw():
    """A ResNet with split BatchNorm (in-place ReLU after each) trains the same in both layouts."""
    torch.manual_seed(0)
    a = MoCo(torchvision.models.resnet18, dim=8, K=16, bn_splits=2)
    b = copy.deepcopy(a).to(memory_format=torch.channels_last)
    x, xk = torch.randn(8, 3, 64, 64), torch.randn(8, 3, 64, 64)
    grads = []
    for model, fmt in ((a, torch.contiguous_format), (b, torch.channels_last)):
        torch.manual_seed(1)  # the same key shuffle
        logits, labels = model(x.contiguous(memory_format=fmt), xk.contiguous(memory_format=fmt))
        F.cross_entropy(logits, labels).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder_q.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(b.queue, a.queue, rtol=1e-4, atol=1e-5)


def test_split_batchnorm_without_affine_in_channels_last():
    x = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    split, ref = SplitBatchNorm(3, num_splits=2, affine=False), nn.BatchNorm2d(3, affine=False)
    out = split(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[1::2], ref(x[1::2]))


def test_split_batchnorm_rejects_a_batch_that_does_not_split():
    with pytest.raises(ValueError, match="does not split into 4"):
        SplitBatchNorm(3, num_splits=4)(torch.randn(6, 3, 2, 2))


def test_split_batch_norm_keeps_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=8)
    net.bn1.running_mean.uniform_(-1, 1)
    before = copy.deepcopy(net.state_dict())
    split_batch_norm(net, 4)
    assert isinstance(net.bn1, SplitBatchNorm) and isinstance(net.layer2[0].downsample[1], SplitBatchNorm)
    after = net.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_bn_splits_checkpoint_loads_into_plain_torchvision_model():
    torch.manual_seed(0)
    model = MoCo(torchvision.models.resnet18, dim=8, K=16, bn_splits=4)
    x = torch.randn(8, 3, 32, 32)
    model(x, x.flip(3))  # one step: running statistics change
    plain = torchvision.models.resnet18(num_classes=8)
    plain.load_state_dict(model.encoder_q.state_dict())  # strict: same keys and shapes
    assert not any(isinstance(m, SplitBatchNorm) for m in plain.modules())
    model.eval(), plain.eval()
    torch.testing.assert_close(plain(x), model.encoder_q(x))


def test_bn_splits_shuffles_keys_with_torchs_default_generator():
    torch.manual_seed(0)
    model = MoCo(torchvision.models.resnet18, dim=8, K=16, m=0.5, bn_splits=4)
    x_q, x_k = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    ref = copy.deepcopy(model)
    torch.manual_seed(7)
    logits, _ = model(x_q, x_k)
    torch.manual_seed(7)
    perm = torch.randperm(8)  # the one draw of forward
    ref._momentum_update_key_encoder()
    with torch.no_grad():
        q = F.normalize(ref.encoder_q(x_q), dim=1)
        k = F.normalize(ref.encoder_k(x_k[perm]), dim=1)[torch.argsort(perm)]
        k_unshuffled = F.normalize(copy.deepcopy(ref.encoder_k)(x_k), dim=1)
    torch.testing.assert_close(model.queue[:, :8], k.T)  # keys in the queries' order
    torch.testing.assert_close(logits[:, 0], (q * k).sum(1) / model.T)
    assert not torch.allclose(k, k_unshuffled, atol=1e-3)  # the sub-batches really differ
    # same seed, same permutation: same keys
    torch.manual_seed(0)
    model2 = MoCo(torchvision.models.resnet18, dim=8, K=16, m=0.5, bn_splits=4)
    torch.manual_seed(7)
    model2(x_q, x_k)
    torch.testing.assert_close(model2.queue, model.queue)


@pytest.mark.parametrize("batch, world, expected", [(256, 1, 8), (128, 1, 4), (96, 1, 3), (64, 1, 2),
                                                    (63, 1, 1), (32, 1, 1), (8, 1, 1), (256, 2, 1)])
def test_default_bn_splits(batch, world, expected):
    assert default_bn_splits(batch, world) == expected


def test_bn_splits_must_be_positive():
    with pytest.raises(ValueError, match="bn_splits"):
        MoCo(TinyNet, dim=4, K=8, bn_splits=0)


def test_split_batch_norm_fp16_backward_forms_grad_times_x_in_fp32():
    """fp16 channels-last input near 300 and a scaled fp16 gradient of 300: grad * x (90000) is
    past fp16's range; the input gradient must match the fp32 computation, not be inf/NaN."""
    from ssl_crops.moco import SplitBatchNorm
    torch.manual_seed(0)
    x32 = (300 + torch.randn(8, 4, 3, 3)).contiguous(memory_format=torch.channels_last)
    g32 = torch.full_like(x32, 300.0) + torch.randn_like(x32)
    grads = []
    for dtype in (torch.float32, torch.float16):
        bn = SplitBatchNorm(4, 2)
        x = x32.to(dtype).clone().requires_grad_()
        bn(x).backward(g32.to(dtype))
        grads.append(x.grad.float())
    assert torch.isfinite(grads[1]).all()
    assert torch.allclose(grads[1], grads[0], atol=0.5, rtol=0.02), (grads[1] - grads[0]).abs().max()
