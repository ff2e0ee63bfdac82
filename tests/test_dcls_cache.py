"""DCLS eval-mode kernel cache: reused while nothing changes, never stale, an exact snapshot."""

import logging

import pytest
import torch
import torch.nn.functional as F

from dcls_audio.dcls import Dcls1d, Dcls2d, Dcls3d

logging.getLogger().setLevel(logging.ERROR)

OURS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _close(actual, expected):
    """rtol 1e-5, absolute slack 1e-5 of the tensor's largest magnitude (float32 sums, FFT)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


class _Counter:
    def __init__(self, layer):
        self.calls = 0
        self.inner = layer.kernel

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.inner(*args, **kwargs)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1, foreach=False),
    "sgd_foreach": lambda p: torch.optim.SGD(p, lr=0.1, foreach=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.1),
    "adamw_foreach": lambda p: torch.optim.AdamW(p, lr=0.1, foreach=True),
    "adamw_fused": lambda p: torch.optim.AdamW(p, lr=0.1, fused=True),
}


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_eval_cache_reused_and_invalidated(opt):
    layer = Dcls2d(4, 4, 3, 7, padding=3, groups=4)
    counter = _Counter(layer)
    layer.kernel = counter
    x = torch.randn(1, 4, 9, 9)
    optimizer = OPTIMIZERS[opt](layer.parameters())

    layer.eval()
    with torch.no_grad():
        y0 = layer(x)
        torch.testing.assert_close(layer(x), y0)
    assert counter.calls == 1  # reused

    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()
    assert counter.calls == 2  # training builds every time
    layer.eval()
    with torch.no_grad():
        y1 = layer(x)
        layer(x)
    assert counter.calls == 3  # rebuilt once after the step
    assert not torch.allclose(y1, y0)
    expected = F.conv2d(x, counter.inner(), layer.bias, padding=3, groups=4)
    torch.testing.assert_close(y1, expected)

    optimizer.zero_grad()
    # Optimizer step while staying in eval mode (e.g. fine-tuning with frozen norms).
    with torch.enable_grad():
        layer(x).sum().backward()
    assert counter.calls == 4  # grad enabled: never served from the cache
    optimizer.step()
    with torch.no_grad():
        y2 = layer(x)
    assert counter.calls == 5 and not torch.allclose(y2, y1)

    state = {k: v + 0.5 for k, v in layer.state_dict().items()}
    layer.load_state_dict(state)
    with torch.no_grad():
        layer(x)
    assert counter.calls == 6

    layer.train()
    layer.eval()
    with torch.no_grad():
        layer(x)
    assert counter.calls == 7  # .train() dropped the cache
    layer.P.data.mul_(100)  # .data writes bump no version counter of the parameter
    with torch.no_grad():
        layer(x)
    assert counter.calls == 8
    layer.clamp_parameters()
    with torch.no_grad():
        layer(x)
        layer(x)
    assert counter.calls == 9


def _mutate(layer: Dcls2d, how: str) -> Dcls2d:
    """Change the layer's weight, P or SIG in one of the ways that bypass version counters."""
    with torch.no_grad():
        if how == "data_mul":
            layer.weight.data.mul_(-2)
        elif how == "data_copy":
            layer.SIG.data.copy_(torch.rand_like(layer.SIG))
        elif how == "data_assign":
            layer.P.data = layer.P.data.flip(-1).clone()
        elif how == "no_grad_add":
            layer.P.add_(0.7)
        elif how == "load_state_dict":
            layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})
        elif how == "to_double":
            layer = layer.double()
        elif how == "fused_adamw":
            opt = torch.optim.AdamW(layer.parameters(), lr=0.3, fused=True)
            for p in layer.parameters():
                p.grad = torch.randn_like(p)
            opt.step()
    return layer


@pytest.mark.parametrize("impl", ["auto", "fft", "direct", "triton"])
@pytest.mark.parametrize(
    "how",
    ["data_mul", "data_copy", "data_assign", "no_grad_add", "load_state_dict", "to_double",
     "fused_adamw"],
)  # fmt: skip
def test_eval_cache_never_serves_a_stale_kernel(how, impl):
    layer = Dcls2d(4, 4, 5, 23, padding=11, groups=4).eval()
    layer.conv_impl = impl
    x = torch.randn(2, 4, 30, 28)  # large enough for the CPU FFT path under "auto" and "fft"
    with torch.no_grad():
        before = layer(x)
        layer = _mutate(layer, how)
        after = layer(x.to(layer.weight.dtype))
        expected = F.conv2d(x.to(after.dtype), layer.kernel(), layer.bias, padding=11, groups=4)
    assert not torch.allclose(after.double(), before.double())
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_eval_cache_on_the_cuda_dispatch_route_sees_data_writes(monkeypatch):
    """The kernel handed to the CUDA depthwise dispatcher is fresh after a ``.data`` write."""
    kernels = []
    monkeypatch.setattr("dcls_audio.dcls.layers.cuda_depthwise_applies", lambda *a: True)

    def spy(x, kernel, bias, pads, training, path=None):
        kernels.append(kernel.clone())
        return F.conv2d(x, kernel, bias, padding=pads[0][0], groups=x.shape[1])

    monkeypatch.setattr("dcls_audio.dcls.layers.depthwise_conv2d", spy)
    layer = Dcls2d(3, 3, 4, 9, padding=4, groups=3).eval()
    x = torch.randn(1, 3, 12, 12)
    with torch.no_grad():
        layer(x)
        layer.weight.data.mul_(3)
        layer(x)
    torch.testing.assert_close(kernels[1], 3 * kernels[0])
    torch.testing.assert_close(kernels[1], layer.kernel().detach())


def test_eval_cache_holds_an_exact_snapshot():
    layer = Dcls2d(2, 2, 3, 7, padding=3, groups=2).eval()
    with torch.no_grad():
        layer(torch.randn(1, 2, 9, 9))
    window, snapshot, kernel = layer._cache
    assert window is None and len(snapshot) == 3 and kernel.shape == (2, 1, 7, 7)
    params = layer._kernel_params()
    assert all(s.data_ptr() != p.data_ptr() for s, p in zip(snapshot, params, strict=True))
    layer.float()  # any .to()/.float()/.cuda() drops the cache
    assert layer._cache is None
