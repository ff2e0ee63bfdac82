"""Kernel construction: equality with the `dcls` package, the paper's gradients, brute force."""

import logging

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dcls_audio.dcls import construct_kernel

logging.getLogger().setLevel(logging.ERROR)  # the reference package warns about CUDA on import
ref_modules = pytest.importorskip("DCLS.construct.modules")

REF_CONSTRUCT = {
    1: ref_modules.ConstructKernel1d,
    2: ref_modules.ConstructKernel2d,
    3: ref_modules.ConstructKernel3d,
}
REF_VERSION = {"gauss": "gauss", "bilinear": "v1"}


def _params(ndim, out_ch, in_ch, count, spread=2.0, dtype=torch.float32):
    w = torch.randn(out_ch, in_ch, count, dtype=dtype)
    p = torch.randn(ndim, out_ch, in_ch, count, dtype=dtype) * spread
    s = torch.rand(ndim, out_ch, in_ch, count, dtype=dtype) * 0.8 - 0.2  # some negative SIG
    return w, p, s


def _dense_reference(w, p, s, size, version):
    """Brute-force kernel over the full grid, no separability (independent of both packages)."""
    ndim = len(size)
    grids = torch.meshgrid(*[torch.arange(k, dtype=w.dtype) for k in size], indexing="ij")
    idx = torch.stack(grids)  # (ndim, *size)
    shape = (ndim,) + (1,) * ndim + p.shape[1:]
    centre = p + torch.tensor([k // 2 for k in size], dtype=w.dtype).view(ndim, 1, 1, 1)
    diff = idx.view(ndim, *size, 1, 1, 1) - centre.view(shape)
    if version == "gauss":
        sig = (s.abs() + 0.27).view(shape)
        x = torch.exp(-0.5 * ((diff / sig) ** 2).sum(0))
    else:
        x = torch.relu(1 - diff.abs()).prod(0)
    x = x / (x.sum(tuple(range(ndim)), keepdim=True) + 1e-7)
    k = (x * w).sum(-1)  # (*size, out, in)
    return k.permute(ndim, ndim + 1, *range(ndim))


CASES = [
    # ndim, out, in/groups, count, size
    (1, 4, 3, 5, 9),
    (1, 6, 1, 26, 23),
    (2, 5, 2, 4, 7),
    (2, 8, 1, 26, 23),
    (2, 3, 4, 1, 6),
    (3, 3, 2, 3, 5),
    (3, 2, 1, 4, 6),
]


def _rel(actual, expected) -> float:
    """max|actual - expected| / max|expected|, in float64."""
    expected = expected.double()
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
@pytest.mark.parametrize("ndim,out_ch,in_ch,count,size", CASES)
def test_matches_reference_package(ndim, out_ch, in_ch, count, size, version):
    """Kernel and every gradient: within 1e-5 (relative to the largest) of the `dcls` package
    and within 5e-6 of the float64 brute force with autograd (ours is mostly the closer: the
    package rounds P + size // 2 before subtracting, ours subtracts the exact integer offset)."""
    w, p, s = _params(ndim, out_ch, in_ch, count)
    ref_in = [t.clone().requires_grad_() for t in (w, p, s)]
    ours_in = [t.clone().requires_grad_() for t in (w, p.flip(0), s.flip(0))]
    exact_in = [t.double().requires_grad_() for t in ours_in]
    ref_mod = REF_CONSTRUCT[ndim](out_ch, in_ch, 1, count, (size,) * ndim, REF_VERSION[version])
    ref = ref_mod(*ref_in)
    ours = construct_kernel(*ours_in, size, version)
    exact = _dense_reference(*exact_in, (size,) * ndim, version)
    assert ours.shape == (out_ch, in_ch) + (size,) * ndim and ours.dtype == torch.float32
    upstream = torch.randn_like(ref)
    live = 3 if version == "gauss" else 2
    grads_ref = torch.autograd.grad(ref, ref_in[:live], upstream)
    grads_ref = [g if i == 0 else g.flip(0) for i, g in enumerate(grads_ref)]
    grads = torch.autograd.grad(ours, ours_in[:live], upstream)
    grads_exact = torch.autograd.grad(exact, exact_in[:live], upstream.double())
    names = "kwPS"[: live + 1]
    for name, a, b, c in zip(names, (ours, *grads), (ref, *grads_ref), (exact, *grads_exact),
                             strict=True):  # fmt: skip
        assert _rel(a, b) <= 1e-5, (name, _rel(a, b))
        assert _rel(a, c) <= 5e-6, (name, _rel(a, c))
    assert ours_in[2].grad is None  # bilinear: SIG plays no part


def test_bilinear_gradients_follow_paper_equations_17_to_19():
    torch.manual_seed(1)
    size, count = 11, 7
    w = torch.randn(1, 1, count, dtype=torch.float64)
    # Non-integer positions whose 2x2 footprint stays inside the grid (sum of the hat = 1).
    p = torch.empty(2, 1, 1, count, dtype=torch.float64).uniform_(-4.7, 4.7)
    g = torch.randn(size, size, dtype=torch.float64)  # dLoss/dK
    w_, p_ = w.clone().requires_grad_(), p.clone().requires_grad_()
    kernel = construct_kernel(w_, p_, None, size, "bilinear")[0, 0]
    (kernel * g).sum().backward()

    # Equations (17)-(19) with p^1 indexing the first kernel axis and p^2 the second.
    c = size // 2
    exp_w, exp_p1, exp_p2 = [], [], []
    for i in range(count):
        p1, p2 = p[0, 0, 0, i].item() + c, p[1, 0, 0, i].item() + c
        f1, f2 = int(p1 // 1), int(p2 // 1)
        r1, r2 = p1 - f1, p2 - f2
        g00, g10, g01, g11 = g[f1, f2], g[f1 + 1, f2], g[f1, f2 + 1], g[f1 + 1, f2 + 1]
        wi = w[0, 0, i]
        exp_w.append((1 - r1) * (1 - r2) * g00 + r1 * (1 - r2) * g10 + (1 - r1) * r2 * g01
                     + r1 * r2 * g11)  # fmt: skip
        exp_p1.append(wi * (-(1 - r2) * g00 + (1 - r2) * g10 - r2 * g01 + r2 * g11))
        exp_p2.append(wi * (-(1 - r1) * g00 - r1 * g10 + (1 - r1) * g01 + r1 * g11))
    torch.testing.assert_close(w_.grad.flatten(), torch.stack(exp_w), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(p_.grad[0].flatten(), torch.stack(exp_p1), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(p_.grad[1].flatten(), torch.stack(exp_p2), rtol=1e-5, atol=1e-9)
    # Forward, equation (3) summed as in (14): the kernel holds exactly the interpolated weights.
    assert torch.allclose(kernel.sum(), w.sum() / (1 + 1e-7))


@pytest.mark.parametrize(
    "ndim,size,version",
    [(1, 7, "gauss"), (2, (5, 7), "gauss"), (3, (3, 5, 4), "gauss"), (2, 6, "bilinear"),
     (3, 5, "bilinear"), (1, 8, "bilinear")],
)  # fmt: skip
def test_gradcheck_float64(ndim, size, version):
    count = 3
    w = torch.randn(2, 2, count, dtype=torch.float64, requires_grad=True)
    # Keep bilinear positions off the integer kinks of the hat function.
    base = torch.randint(-2, 2, (ndim, 2, 2, count)).double()
    p = (base + torch.empty_like(base).uniform_(0.15, 0.85)).requires_grad_()
    s = (torch.rand(ndim, 2, 2, count, dtype=torch.float64) + 0.1).requires_grad_()
    if version == "gauss":
        fn = lambda w, p, s: construct_kernel(w, p, s, size, version)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, p, s))
    else:
        fn = lambda w, p: construct_kernel(w, p, None, size, version)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (w, p))


@pytest.mark.parametrize("version", ["gauss", "bilinear"])
@pytest.mark.parametrize("size", [(5, 9), (9, 5), (4, 7), (3, 7, 5), (6, 3, 4)])
def test_rectangular_kernels_match_brute_force(size, version):
    ndim = len(size)
    w, p, s = _params(ndim, 3, 2, 4, spread=1.5, dtype=torch.float64)
    ours = construct_kernel(w, p, s, size, version)
    torch.testing.assert_close(ours, _dense_reference(w, p, s, size, version), rtol=1e-10, atol=0)


@pytest.mark.parametrize("size", [(5, 9), (9, 5), (3, 7, 5)])
def test_rectangular_kernels_centred_and_moving_along_their_axis(size):
    ndim = len(size)
    w = torch.ones(1, 1, 1)
    for version in ("gauss", "bilinear"):
        p = torch.zeros(ndim, 1, 1, 1)
        s = torch.zeros(ndim, 1, 1, 1)
        k = construct_kernel(w, p, s, size, version)[0, 0]
        centre = tuple(n // 2 for n in size)
        assert k.argmax().item() == _flat(centre, size)
        for d in range(ndim):
            p = torch.zeros(ndim, 1, 1, 1)
            p[d] = size[d] // 2  # move to the last cell of axis d only
            k = construct_kernel(w, p, s, size, version)[0, 0]
            expected = list(centre)
            expected[d] = size[d] - 1
            assert k.argmax().item() == _flat(expected, size), (version, d)
            if version == "bilinear":
                assert k[tuple(expected)].item() == pytest.approx(1.0, abs=1e-6)


def _flat(index, size):
    out = 0
    for i, n in zip(index, size, strict=True):
        out = out * n + i
    return out


def test_window_is_exact_slice_of_full_kernel():
    w, p, s = _params(2, 4, 1, 6)
    full = construct_kernel(w, p, s, (9, 11), "gauss")
    part = construct_kernel(w, p, s, (9, 11), "gauss", window=((2, 7), (0, 9)))
    # Same values up to the summation order BLAS picks for the smaller batched matmul.
    torch.testing.assert_close(part, full[:, :, 2:7, 0:9], rtol=1e-6, atol=1e-7)


class _RecordShapes(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.numels.append(t.numel())
        return out


def test_never_materialises_count_times_kernel():
    """3-D (2-D: the operators' implementations, tests/test_dcls_construct_op.py)."""
    ndim, out_ch, count, size = 3, 16, 26, 13
    w, p, s = (t.requires_grad_() for t in _params(ndim, out_ch, 1, count))
    with _RecordShapes() as rec:
        construct_kernel(w, p, s, size, "gauss").square().sum().backward()
    assert max(rec.numels) < out_ch * count * size**ndim


def test_bad_arguments_raise_clear_errors():
    w, p, s = _params(2, 2, 1, 3)
    with pytest.raises(ValueError, match="version must be one of"):
        construct_kernel(w, p, s, 5, "v2")
    with pytest.raises(ValueError, match="must have 2 entries"):
        construct_kernel(w, p, s, (5, 5, 5), "gauss")
    with pytest.raises(ValueError, match="P must have shape"):
        construct_kernel(w, p[:, :1], s, 5, "gauss")
    with pytest.raises(ValueError, match="SIG is required"):
        construct_kernel(w, p, None, 5, "gauss")
    with pytest.raises(ValueError, match="SIG must have the shape"):
        construct_kernel(w, p, s[..., :2], 5, "gauss")
    with pytest.raises(ValueError, match="weight must have shape"):
        construct_kernel(w[0], p, s, 5, "gauss")
    with pytest.raises(ValueError, match=">= 1"):
        construct_kernel(w, p, s, (5, 0), "gauss")
    with pytest.raises(ValueError, match="1, 2 or 3 spatial"):
        construct_kernel(w, torch.cat([p, p]), s, 5, "bilinear")
