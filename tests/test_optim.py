"""Parameter groups, lr scaling, DCLS lr_scale and the warm-up + cosine schedule (hand-computed)."""

import math

import pytest
import torch
from timm.optim import Lamb
from torch import nn

from dcls_audio.config import load_group
from dcls_audio.dcls import Dcls2d, DclsNd
from dcls_audio.train.optim import build_optimizer, build_scheduler, param_groups, scaled_lr

ADAMW = load_group("optim", "adamw")


class Block(nn.Module):
    """Two DCLS layers sharing P/SIG (as in one model stage), a norm, a linear head."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.dw1 = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=5, padding=2, groups=4)
        self.dw2 = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=5, padding=2, groups=4)
        self.dw2.P = self.dw1.P
        self.dw2.SIG = self.dw1.SIG
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.dw2(self.dw1(self.stem(x)))
        return self.head(self.norm(x.mean((2, 3))))


def by_name(model, group):
    ids = {id(p) for p in group["params"]}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_param_groups_membership():
    model = Block()
    groups = {g["name"]: g for g in param_groups(model, 0.05, 5.0)}
    assert by_name(model, groups["decay"]) == [
        "dw1.weight",
        "dw2.weight",
        "head.weight",
        "stem.weight",
    ]
    assert by_name(model, groups["no_decay"]) == [
        "dw1.bias",
        "dw2.bias",
        "head.bias",
        "norm.bias",
        "norm.weight",
        "stem.bias",
    ]
    # Shared P/SIG are listed once, under the first module's name.
    assert by_name(model, groups["dcls_positions"]) == ["dw1.P", "dw1.SIG"]
    assert groups["decay"]["weight_decay"] == 0.05
    assert groups["no_decay"]["weight_decay"] == 0.0
    assert groups["dcls_positions"]["weight_decay"] == 0.0
    assert groups["dcls_positions"]["lr_scale"] == 5.0
    assert "lr_scale" not in groups["decay"] and "lr_scale" not in groups["no_decay"]
    # Every trainable parameter is in exactly one group.
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())


def test_param_groups_on_a_real_dcls_model():
    from conftest import cfgs

    from dcls_audio.models import build_model

    model_cfg, conv_cfg = cfgs("convnext_atto", "dcls_gauss", 16, drop_path_rate=0.0)
    conv_cfg.update(dilated_kernel_size=5, kernel_count=3)
    model = build_model(model_cfg, conv_cfg)
    groups = {g["name"]: g for g in param_groups(model, 0.05, 5.0)}
    unique_positions = {
        id(p) for m in model.modules() if isinstance(m, DclsNd) for p in (m.P, m.SIG)
    }
    assert {id(p) for p in groups["dcls_positions"]["params"]} == unique_positions
    assert len(unique_positions) == 2 * 4  # shared per stage: 4 stages x (P, SIG)
    assert all(p.ndim >= 2 for p in groups["decay"]["params"])
    assert all(p.ndim == 4 for p in groups["dcls_positions"]["params"])


def test_lr_scaling():
    assert scaled_lr(4e-3, 4096) == pytest.approx(4e-3)
    assert scaled_lr(4e-3, 1024) == pytest.approx(1e-3)
    assert scaled_lr(4e-3, 8192) == pytest.approx(8e-3)
    opt = build_optimizer(Block(), ADAMW, global_batch_size=2048)
    assert all(g["lr"] == pytest.approx(2e-3) for g in opt.param_groups)  # group lr stays base


def test_adamw_and_lamb_settings():
    opt = build_optimizer(Block(), ADAMW, 4096)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8
    lamb = build_optimizer(Block(), {**ADAMW, "name": "lamb", "max_grad_norm": 1.0}, 4096)
    assert isinstance(lamb, Lamb)
    assert lamb.defaults["eps"] == 1e-8 and lamb.defaults["max_grad_norm"] == 1.0
    assert lamb.defaults["always_adapt"] is False  # trust ratio only where weight decay applies
    with pytest.raises(ValueError, match="optim.name='sgd'"):
        build_optimizer(Block(), {**ADAMW, "name": "sgd"}, 4096)


def expected_lr(t, base, warmup_t, total_t, lr_min):
    """Linear warm-up from 0 over warmup_t updates, then half cosine to lr_min at total_t."""
    if t < warmup_t:
        return base * t / warmup_t
    t_cos = min(t - warmup_t, total_t - warmup_t)
    return lr_min + 0.5 * (base - lr_min) * (1 + math.cos(math.pi * t_cos / (total_t - warmup_t)))


def test_schedule_shape_and_lr_scale():
    opt = build_optimizer(Block(), ADAMW, 4096)
    steps_per_epoch, warmup, epochs = 10, 2, 6
    sched = build_scheduler(opt, epochs, warmup, steps_per_epoch, lr_min=1e-6)
    base, lr_min = 4e-3, 1e-6
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["decay"]["lr"] == 0.0 and groups["dcls_positions"]["lr"] == 0.0  # t = 0
    hand = {
        5: base * 5 / 20,
        10: base / 2,
        20: base,
        40: lr_min + 0.5 * (base - lr_min),  # half-way through the cosine
        60: lr_min,
        75: lr_min,
    }
    for t in range(1, 76):
        sched.step_update(num_updates=t)
        want = expected_lr(t, base, 20, 60, lr_min)
        assert groups["decay"]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert groups["no_decay"]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15)
        assert groups["dcls_positions"]["lr"] == pytest.approx(5 * want, rel=1e-9, abs=1e-15)
        if t in hand:
            assert groups["decay"]["lr"] == pytest.approx(hand[t], rel=1e-9)


def test_no_warmup_starts_at_base_lr():
    opt = build_optimizer(Block(), ADAMW, 4096)
    build_scheduler(opt, 3, 0, 4)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([4e-3, 4e-3, 2e-2])
    with pytest.raises(ValueError, match="warmup_epochs=4 exceeds trainer.epochs=3"):
        build_scheduler(opt, 3, 4, 4)


def test_first_adamw_update_uses_five_times_the_lr_for_positions():
    """Adam's first step moves a parameter by lr * g / (|g| + eps): measures each group's lr."""
    torch.manual_seed(0)
    model = Block()
    opt = build_optimizer(model, ADAMW, 4096)
    sched = build_scheduler(opt, 10, 0, 1)
    sched.step_update(num_updates=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(2, 1, 6, 6)).square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    opt.step()
    lr = 4e-3
    for n, p in model.named_parameters():
        g, w = grads[n], before[n]
        adam = g / (g.abs() + 1e-8)
        if n.endswith(("P", "SIG")):
            want = w - 5 * lr * adam
        elif n in ("dw1.weight", "dw2.weight", "head.weight", "stem.weight"):
            want = w * (1 - lr * 0.05) - lr * adam
        else:
            want = w - lr * adam
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-7, msg=n)
