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
