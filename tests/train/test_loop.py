"""The training step and the learning-rate schedules."""
from argparse import Namespace

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from ssl_crops import train
from ssl_crops.moco import MoCo
from ssl_crops.train import loop


def test_learning_rate_schedules():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cos = Namespace(lr=0.4, cos=True, epochs=10, schedule=[])
    assert train.adjust_learning_rate(opt, 0, cos) == pytest.approx(0.4)
    assert train.adjust_learning_rate(opt, 5, cos) == pytest.approx(0.2)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2)
    step = Namespace(lr=1.0, cos=False, epochs=10, schedule=[3, 6])
    assert [train.adjust_learning_rate(opt, e, step) for e in (2, 3, 6)] == pytest.approx([1.0, 0.1, 0.01])


def test_augment_on_device_gives_uint8_crops_and_augments_in_the_step(demo, tmp_path, one_thread):
    from ssl_crops.transforms import BatchAugment

    assert train.parse_args(["D"]).augment_on is None  # resolved per device: cpu here, device with CUDA
    args = train.parse_args([str(demo / "images"), "--bing_crops", "--aug-plus", "--image-size", "32",
                             "--augment-on", "device", "--seed", "0"])
    dataset, _ = train.build_dataset(args, tmp_path / "run")
    (q, k), _ = dataset[0]
    assert q.dtype == k.dtype == torch.uint8 and q.shape == (3, 32, 32)
    args = args.replace(augment_on="cpu")
    (q_cpu, _), _ = train.build_dataset(args, tmp_path / "run")[0][0]
    assert q_cpu.dtype == torch.float32 and q_cpu.shape == (3, 32, 32)

    batch = torch.stack([dataset[i][0][0] for i in range(8)]), torch.stack([dataset[i][0][1] for i in range(8)])
    losses = []
    for on_device in (True, False):
        torch.manual_seed(0)
        model = MoCo(resnet18, dim=16, K=32, m=0.99, T=0.2, mlp=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        torch.manual_seed(1)
        if on_device:
            loss, _ = train.train_step(model, *batch, opt, scaler, memory_format=torch.channels_last,
                                       augment=BatchAugment())
        else:  # the same augmentation done by hand before the step
            aug = BatchAugment()
            im_q, im_k = aug(batch[0]), aug(batch[1])
            loss, _ = train.train_step(model, im_q, im_k, opt, scaler)
        losses.append(loss.item())
    assert np.isfinite(losses[0]) and losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_step_seeding_lives_with_the_training_step():
    from ssl_crops import checkpoint
    assert not hasattr(checkpoint, "seed_step") and not hasattr(checkpoint, "step_seed")  # moved here (issue 29)


def test_step_seed_depends_on_seed_and_step_only():
    assert loop.step_seed(0, 5) == loop.step_seed(0, 5)
    assert len({loop.step_seed(s, t) for s in range(3) for t in range(100)}) == 300
    assert 0 <= loop.step_seed(2**31, 10**9) < 2**63


def test_seed_step_makes_a_step_independent_of_earlier_draws():
    loop.seed_step(0, 7)
    a = torch.randperm(16)
    torch.rand(1000)  # e.g. a DataLoader iterator drawing its base seed
    loop.seed_step(0, 7)
    assert torch.equal(torch.randperm(16), a)
    loop.seed_step(0, 8)
    assert not torch.equal(torch.randperm(16), a)


def test_step_seeds_differ_per_rank():
    """Rank 0 keeps the single-process seed (of runs saved before seeds had a rank); other
    ranks draw other device augmentation and shuffle-BN permutations at the same step."""
    assert loop.step_seed(3, 7, rank=0) == loop.step_seed(3, 7)
    assert len({loop.step_seed(3, t, r) for t in range(50) for r in range(8)}) == 400
    loop.seed_step(3, 7, rank=1)
    a = torch.rand(4)
    loop.seed_step(3, 7, rank=0)
    assert not torch.equal(torch.rand(4), a)


def test_a_slow_loader_is_named_with_its_figures_and_flag(capsys):
    from ssl_crops.train.loop import warn_slow_loader
    warn_slow_loader([(0.3, 0.1), (0.5, 0.1)], 2)
    assert ("the loader is the bottleneck: 0.400 s/step waiting for data, 0.100 s/step computing, with 2 loader "
            "workers per process; raise -j") in capsys.readouterr().out
    warn_slow_loader([(0.01, 0.1)], 2)
    warn_slow_loader([], 2)
    assert capsys.readouterr().out == ""
