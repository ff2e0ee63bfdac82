"""torch.compile (inductor, CPU) of a DCLS model: one graph, forward and backward, as eager.

One small ConvNeXt (dims 8-64, one block per stage, DCLS-Gauss 5 x 5 of 3 elements) is compiled
once for the module; inductor's compile is the slow part (tens of seconds on a cold cache).
"""

import pytest
import torch

from dcls_audio.config import load_group
from dcls_audio.dcls import DclsNd

CLIP = (2, 1, 64, 160)


def _model() -> torch.nn.Module:
    from dcls_audio.models import build_model

    model_cfg = load_group("model", "convnext_t")
    model_cfg.update(
        pretrained=None, drop_path_rate=0.0,
        timm_kwargs={"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    )  # fmt: skip
    conv_cfg = load_group("conv", "dcls_gauss") | {"dilated_kernel_size": 5, "kernel_count": 3}
    torch.manual_seed(0)
    return build_model(model_cfg, conv_cfg)


def _step(model, x):
    """Output and the gradients of every parameter for a fixed loss."""
    model.zero_grad(set_to_none=True)
    y = model(x)
    y.square().mean().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def runs():
    """The model's graphs as dynamo sees them, and an eager and a compiled step."""
    model = _model().train()
    x = torch.randn(CLIP, generator=torch.Generator().manual_seed(1))
    explained = torch._dynamo.explain(model)(x)
    torch._dynamo.reset()
    eager = _step(model, x)
    compiled = _step(torch.compile(model, backend="inductor", fullgraph=True), x)
    return {"model": model, "explain": explained, "eager": eager, "compiled": compiled}


def test_one_graph_without_breaks_holding_the_construction_operator(runs):
    explained = runs["explain"]
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    layers = sum(isinstance(m, DclsNd) for m in runs["model"].modules())
    nodes = [str(n.target) for g in explained.graphs for n in g.graph.nodes]
    assert layers == 4 and sum("construct_2d" in n for n in nodes) == layers


def test_compiled_forward_and_backward_equal_eager(runs):
    """Same output and gradients of every parameter (P and SIG included) within 1e-4 of the
    largest: inductor reorders float32 sums."""
    (y, grads), (y_c, grads_c) = runs["eager"], runs["compiled"]
    torch.testing.assert_close(y_c, y, rtol=1e-4, atol=1e-4 * y.abs().max().item())
    names = [n for n, _ in runs["model"].named_parameters()]
    assert any(n.endswith(".P") for n in names) and any(n.endswith(".SIG") for n in names)
    for name, a, b in zip(names, grads_c, grads, strict=True):
        scale = b.abs().max().item()
        assert (a - b).abs().max().item() <= 1e-4 * scale + 1e-12, name
