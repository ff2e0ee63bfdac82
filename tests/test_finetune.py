"""Fine-tuning helpers: layer-wise lr decay groups, the frozen backbone, the shipped configs."""

import pytest
import torch
from conftest import cfgs

from dcls_audio.config import compose_config
from dcls_audio.dcls import is_dcls_position
from dcls_audio.models import build_model
from dcls_audio.train.finetune import build_run_optimizer, freeze_backbone, layer_ids
from dcls_audio.train.optim import build_optimizer


def small_model():
    return build_model(*cfgs("convnext_atto", "dcls_gauss", num_classes=4, drop_path_rate=0.0))


def optim_cfg(layer_decay):
    return compose_config(["optim=adamw", f"optim.layer_decay={layer_decay}"]).optim


def test_no_layer_decay_is_the_plain_optimizer():
    model = small_model()
    ours = build_run_optimizer(model, optim_cfg(1.0), 4096)
    ref = build_optimizer(model, optim_cfg(1.0), 4096)
    assert [
        (g["name"], g["weight_decay"], g.get("lr_scale"), len(g["params"]))
        for g in ours.param_groups
    ] == [
        (g["name"], g["weight_decay"], g.get("lr_scale"), len(g["params"]))
        for g in ref.param_groups
    ]


def test_layer_decay_scales_hand_computed():
    model = small_model()
    ids, count = layer_ids(model)
    opt = build_run_optimizer(model, optim_cfg(0.5), 4096)
    scale = {id(p): g["lr_scale"] for g in opt.param_groups for p in g["params"]}
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)
    assert all(g["lr"] == pytest.approx(4e-3) for g in opt.param_groups)
    top = count - 1
    assert scale[id(named["head.fc.weight"])] == 1.0 and wd[id(named["head.fc.weight"])] == 0.05
    assert scale[id(named["stem.0.weight"])] == 0.5**top and ids["stem.0.weight"] == 0
    for name, p in named.items():
        expected = 0.5 ** (top - ids.get(name, top))
        if is_dcls_position(name):
            assert scale[id(p)] == pytest.approx(5.0 * expected) and wd[id(p)] == 0.0, name
        else:
            assert scale[id(p)] == pytest.approx(expected), name
    # deeper blocks train faster than shallower ones
    assert ids["stages.3.blocks.1.conv_dw.weight"] > ids["stages.0.blocks.0.conv_dw.weight"]


def test_frozen_backbone_moves_only_the_head_until_the_epoch_ends():
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    epoch = [0]
    freeze_backbone(model, opt, 1, lambda: epoch[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 1, 128, 200)

    def step():
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    step()
    after = model.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.fc.bias", "head.fc.weight"]
    epoch[0] = 1
    step()
    assert not torch.equal(before["stem.0.weight"], model.state_dict()["stem.0.weight"])
    with pytest.raises(ValueError, match="freeze_backbone_epochs=-1"):
        freeze_backbone(model, opt, -1, lambda: 0)


@pytest.mark.parametrize("name", ["finetune/esc50", "finetune/custom"])
def test_finetune_experiments_compose(name):
    cfg = compose_config([f"experiment={name}", "model.pretrained=/some/best.pt"])
    assert cfg.model.init == "finetune" and cfg.data.task == "multiclass"
    assert cfg.optim.lr < compose_config([]).optim.lr
    if name == "finetune/esc50":
        assert cfg.data.clip_seconds == 5.0 and cfg.data.fold == 1
        assert cfg.data.balanced_sampling is False
