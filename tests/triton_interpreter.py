"""The Triton depthwise kernels and their custom operator, run by Triton's CPU interpreter.

``python tests/triton_interpreter.py`` (with ``TRITON_INTERPRET=1``, which ``triton.jit`` reads
when it decorates a kernel, so it must be set before the kernels are imported) prints one JSON
line: the errors of every case against float64, the same for every candidate block
configuration, the ``torch.library.opcheck`` results of the operator and a torch.compile check.
The helpers (cases, errors) also serve the CUDA tests in ``test_dcls_kernels.py``.
"""

import json
import os
import sys

import torch
import torch.nn.functional as F

# name: (N, C, H, W, kh, kw, ((top, bottom), (left, right)), wgrad target programs)
KERNEL_CASES = {
    "odd_symmetric": (2, 3, 9, 8, 5, 5, ((2, 2), (2, 2)), None),
    "even_same_asymmetric": (2, 2, 7, 9, 4, 6, ((1, 2), (2, 3)), None),
    "cropped_23x23_on_8x7": (2, 2, 8, 7, 15, 13, ((7, 7), (6, 6)), None),
    "cropped_asymmetric": (1, 2, 2, 6, 9, 9, ((2, 6), (4, 4)), None),
    "map_smaller_than_kernel": (1, 2, 3, 4, 9, 9, ((4, 4), (4, 4)), None),
    "padding_beyond_kernel": (2, 1, 6, 4, 5, 3, ((9, 2), (0, 4)), None),
    "wide_blocks_multi_row_slices": (2, 1, 5, 70, 3, 35, ((1, 1), (17, 17)), 3),
    "tall_multi_slice": (3, 1, 40, 6, 5, 3, ((2, 2), (1, 1)), 100),
    "unbatched": (None, 3, 6, 5, 3, 3, ((1, 1), (1, 1)), None),
    # channels_last input (and output gradient, as in a channels_last model): read in place
    "channels_last": ("cl", 4, 6, 7, 5, 3, ((2, 2), (1, 1)), 2),
    "channels_last_cropped_23x23": ("cl", 9, 8, 7, 15, 13, ((7, 7), (6, 6)), None),
    "channels_last_wide_multi_slice": ("cl", 3, 5, 40, 3, 35, ((1, 1), (17, 17)), 3),
    "channels_last_asymmetric_beyond": ("cl", 5, 6, 4, 5, 3, ((9, 2), (0, 4)), None),
    # one of input and output gradient channels_last, the other NCHW
    "channels_last_nchw_grad": ("cl-gnchw", 4, 6, 7, 5, 3, ((2, 2), (1, 1)), None),
    "nchw_channels_last_grad": ("nchw-gcl", 4, 7, 9, 4, 6, ((1, 2), (2, 3)), None),
}
# the input's and the output gradient's memory formats per batch marker
LAYOUTS = {"cl": ("cl", "cl"), "cl-gnchw": ("cl", "nchw"), "nchw-gcl": ("nchw", "cl")}
# max|d| / max|ref|; bf16: one rounding of the output (unit roundoff 2^-8) plus fp32 sums
TOLERANCE = {"float32": 1e-5, "bfloat16": 2**-8 + 1e-5}
MIXED_CASES = ["odd_symmetric", "cropped_23x23_on_8x7", "tall_multi_slice"]
# every candidate block configuration runs these (one per dtype)
CONFIG_CASES = {"wide_blocks_multi_row_slices": "float32", "cropped_asymmetric": "bfloat16"}
# and every candidate of the kernels that read channels_last in place these
STRIDED_CONFIG_CASES = {"channels_last_wide_multi_slice": "float32",
                        "channels_last_cropped_23x23": "bfloat16"}  # fmt: skip


def _format(marker, which: int):
    """Memory format of the input (0) or output gradient (1) for a case's batch marker."""
    cl = marker in LAYOUTS and LAYOUTS[marker][which] == "cl"
    return torch.channels_last if cl else torch.contiguous_format


def case_tensors(case, dtype, device="cpu"):
    """Input, kernel, bias and paddings of one case."""
    n, c, h, w, kh, kw, pads, _ = case
    gen = torch.Generator().manual_seed(h * 100 + w)
    shape = (c, h, w) if n is None else (2 if n in LAYOUTS else n, c, h, w)
    x = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=_format(n, 0))
    kernel = torch.randn(c, 1, kh, kw, generator=gen).to(dtype)
    bias = torch.randn(c, generator=gen).to(dtype)
    return x.to(device), kernel.to(device), bias.to(device), pads


class _Copies:
    """Counts layout copies: the relayout kernel, and PyTorch copies of activation-shaped
    tensors (``clone``, ``_to_copy``: what ``.contiguous()`` and ``.to()`` run; not ``copy_``,
    with which the interpreter moves every kernel argument)."""

    def __init__(self, shapes: set):
        from torch.utils._python_dispatch import TorchDispatchMode

        from dcls_audio.dcls import triton_dwconv, triton_layout

        self.count, self.shapes = 0, shapes
        self.modules = (triton_layout, triton_dwconv)
        self.saved = [m.relayout for m in self.modules]
        outer = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                copy = func._schema.name in ("aten::clone", "aten::_to_copy")
                if copy and isinstance(out, torch.Tensor) and tuple(out.shape) in outer.shapes:
                    outer.count += 1
                return out

        self.mode = Mode()

    def __enter__(self):
        def counted(*args, original=self.saved[0], **kwargs):
            self.count += 1
            return original(*args, **kwargs)

        for m in self.modules:
            m.relayout = counted
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        for m, original in zip(self.modules, self.saved, strict=True):
            m.relayout = original


def errors(case, dtype, param_dtype=None, device="cpu", fwd=None, wgrad=None, strided=None):
    """Relative max errors of forward, input, weight and bias gradients vs float64 autograd,
    and the number of layout copies made.

    ``param_dtype``: kernel and bias in another dtype (float32 parameters under autocast);
    ``fwd`` / ``wgrad``: block configurations to use instead of the defaults; ``strided``: the
    same for the kernels that read any layout in place, a (forward, weight gradient) pair.
    """
    from dcls_audio.dcls import dwconv, tuning

    x, kernel, bias, pads = case_tensors(case, dtype, device)
    if param_dtype is not None:
        kernel, bias = kernel.to(param_dtype), bias.to(param_dtype)
    names = ("FWD_DEFAULT", "WGRAD_DEFAULT", "STRIDED_FWD_DEFAULT", "STRIDED_WGRAD_DEFAULT")
    defaults = [getattr(tuning, name) for name in names]
    chosen = (fwd, wgrad, *(strided or (None, None)))
    for name, cfg, default in zip(names, chosen, defaults, strict=True):
        setattr(tuning, name, dict(cfg or default))
    if case[-1] is not None:
        tuning.WGRAD_DEFAULT["programs"] = tuning.STRIDED_WGRAD_DEFAULT["programs"] = case[-1]
    try:
        ours_in = [t.clone().requires_grad_() for t in (x, kernel, bias)]
        ref_in = [t.double().requires_grad_() for t in (x, kernel, bias)]
        flat = tuple(v for lr in reversed(pads) for v in lr)
        y_ref = F.conv2d(F.pad(ref_in[0], flat), ref_in[1], ref_in[2], groups=kernel.shape[0])
        upstream = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1))
        upstream = upstream.to(device, dtype).contiguous(memory_format=_format(case[0], 1))
        shapes = {tuple(t.shape) for t in (x, y_ref)} | {(1, *t.shape) for t in (x, y_ref)}
        copies = _Copies(shapes)
        with copies:
            y = dwconv.triton_depthwise_conv2d(*ours_in, pads)
            grads = torch.autograd.grad(y, ours_in, upstream)
        grads_ref = torch.autograd.grad(y_ref, ref_in, upstream.double())
    finally:
        for name, default in zip(names, defaults, strict=True):
            setattr(tuning, name, default)
    dtypes_ok = y.dtype == grads[0].dtype == dtype and grads[1].dtype == kernel.dtype
    if x.dim() == 4:  # the output and input gradient come back in the input's layout
        fmt = _format(case[0], 0)
        dtypes_ok &= y.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(
            memory_format=fmt
        )
    out = {"dtype_ok": float(dtypes_ok and grads[2].dtype == bias.dtype), "copies": copies.count}
    for name, a, b in zip(("y", "dx", "dw", "db"), (y, *grads), (y_ref, *grads_ref), strict=True):
        out[name] = ((a.double() - b).abs().max() / b.abs().max()).item()
    return out


def patch_interpreter() -> None:
    """Work around two triton 3.6 interpreter bugs (see ``dcls_audio.dcls.interpreter``)."""
    # triton.jit reads it when decorating, also triton's own jit helpers: set before any import
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    assert "dcls_audio.dcls.triton_dwconv" not in sys.modules
    from dcls_audio.dcls.interpreter import patch_triton_interpreter

    assert patch_triton_interpreter()


def config_errors() -> dict:
    """Every candidate forward and weight-gradient configuration on :data:`CONFIG_CASES`."""
    from dcls_audio.dcls import tuning

    fwds, wgrads = tuning.FWD_CANDIDATES, tuning.WGRAD_CANDIDATES
    result = {}
    for k in range(max(len(fwds), len(wgrads))):
        fwd, wgrad = fwds[k % len(fwds)], wgrads[k % len(wgrads)]
        for name, dtype in CONFIG_CASES.items():
            case = KERNEL_CASES[name][:-1] + (None,)
            result[f"config{k}-{name}-{dtype}"] = errors(
                case, getattr(torch, dtype), None, "cpu", fwd, wgrad
            )
    sfwds, swgrads = tuning.STRIDED_FWD_CANDIDATES, tuning.STRIDED_WGRAD_CANDIDATES
    for k in range(max(len(sfwds), len(swgrads))):
        pair = (sfwds[k % len(sfwds)], swgrads[k % len(swgrads)])
        for name, dtype in STRIDED_CONFIG_CASES.items():
            case = KERNEL_CASES[name][:-1] + (None,)
            result[f"strided{k}-{name}-{dtype}"] = errors(
                case, getattr(torch, dtype), None, "cpu", strided=pair
            )
    return result


# name: (channels, count, size, version, window)
CONSTRUCT_CASES = {
    "gauss_23x23": (6, 26, (23, 23), "gauss", None),
    "gauss_window": (4, 26, (23, 23), "gauss", ((4, 19), (5, 18))),
    "gauss_even_rectangular": (3, 7, (8, 6), "gauss", None),
    "bilinear_window": (5, 3, (5, 9), "bilinear", ((1, 4), (0, 9))),
    "bilinear_23x23": (2, 26, (23, 23), "bilinear", None),
    "gauss_one_element_window": (3, 1, (9, 9), "gauss", ((0, 3), (6, 9))),
}


def construct_params(case, gen):
    """Weights, positions (spread over the kernel) and sigmas (some negative) of one case."""
    c, count, size, version, _ = case
    weight = torch.randn(c, 1, count, generator=gen)
    half = torch.tensor(size, dtype=torch.float32).view(2, 1, 1, 1) / 2
    P = (torch.rand(2, c, 1, count, generator=gen) * 2 - 1) * (half - 0.5)
    SIG = torch.randn(2, c, 1, count, generator=gen) * 0.4  # negative too: |SIG| is used
    SIG.view(-1)[::7] = 0.0  # d|SIG|/dSIG at 0: zero, as autograd's
    return weight, P, SIG if version == "gauss" else None


def _rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def construct_errors() -> dict:
    """The Triton construction operators (forward, and the backward through autograd) against
    float64 and against the `dcls` package (square kernels, no window): max|d| / max|ref|."""
    import logging

    from dcls_audio.dcls.construct import construct_kernel
    from dcls_audio.dcls.triton_construct import construct_kernel_2d

    logging.getLogger().setLevel(logging.ERROR)  # the reference package warns about CUDA
    gen = torch.Generator().manual_seed(3)
    result = {}
    for name, case in CONSTRUCT_CASES.items():
        c, count, size, version, window = case
        params = construct_params(case, gen)
        live = [t for t in params if t is not None]
        ours = [t.clone().requires_grad_() for t in live]
        ref = [t.double().requires_grad_() for t in live]
        k = construct_kernel(*ours, *([None] * (3 - len(ours))), size, version, window=window)
        k_ref = construct_kernel(*ref, *([None] * (3 - len(ref))), size, version, window=window)
        upstream = torch.randn(k_ref.shape, generator=gen)
        grads = torch.autograd.grad(k, ours, upstream)
        grads_ref = torch.autograd.grad(k_ref, ref, upstream.double())
        errs = {"kernel": _rel(k, k_ref), "inference": _rel(construct_kernel_2d(
            *params, size, version, window), k_ref)}  # fmt: skip
        errs |= {f"d{n}": _rel(a, b) for n, a, b in zip("wPS", grads, grads_ref, strict=False)}
        errs["shape_ok"] = float(k.shape == k_ref.shape and k.dtype == torch.float32)
        if window is None and size[0] == size[1]:
            errs |= _against_package(ours, k, grads, upstream, size, version)
        result[name] = errs
    return result


def _against_package(ours, kernel, grads, upstream, size, version) -> dict:
    """The same kernel and gradients from the `dcls` package (its P[0] is our axis 1)."""
    from DCLS.construct.modules import ConstructKernel2d

    w, P = ours[0], ours[1]
    SIG = ours[2] if len(ours) == 3 else torch.zeros_like(P)
    ref_in = [t.detach().clone().requires_grad_() for t in (w, P.flip(0), SIG.flip(0))]
    module = ConstructKernel2d(w.shape[0], 1, 1, w.shape[-1], size, {"gauss": "gauss"}.get(
        version, "v1"))  # fmt: skip
    k_ref = module(*ref_in)
    grads_ref = torch.autograd.grad(k_ref, ref_in[: len(grads)], upstream)
    flips = [g if i == 0 else g.flip(0) for i, g in enumerate(grads_ref)]
    out = {"package_kernel": _rel(kernel, k_ref)}
    return out | {f"package_d{n}": _rel(a, b) for n, a, b in zip("wPS", grads, flips, strict=False)}


def construct_op_checks() -> dict:
    """``torch.library.opcheck`` of both construction operators on their Triton kernels."""
    from dcls_audio.dcls.construct_op import construct_2d, construct_2d_backward

    gen = torch.Generator().manual_seed(5)
    result = {}
    for name in ("gauss_window", "bilinear_window"):
        c, count, size, version, window = CONSTRUCT_CASES[name]
        w, P, SIG = construct_params(CONSTRUCT_CASES[name], gen)
        win = [v for lohi in window for v in lohi]
        args = [w, P, SIG, list(size), version == "gauss", win]
        grad = torch.randn(c, 1, win[1] - win[0], win[3] - win[2], generator=gen)
        fwd = [t.clone().requires_grad_() if isinstance(t, torch.Tensor) else t for t in args]
        profiles = [t.detach() for t in construct_2d(*args)[1:]]
        bwd = [grad, *args[:3], *profiles, *args[3:]]
        for op, op_args in ((construct_2d, fwd), (construct_2d_backward, bwd)):
            checks = torch.library.opcheck(op, op_args, raise_exception=False)
            result[f"{op._name}-{name}"] = {k: str(v) for k, v in checks.items()}
    return result


def op_checks() -> dict:
    """``torch.library.opcheck`` of the operator, and torch.compile of a layer that uses it."""
    from dcls_audio.dcls import Dcls2d, dwconv, layers

    gen = torch.Generator().manual_seed(0)
    samples = [
        (torch.randn(2, 3, 9, 8, generator=gen), torch.randn(3, 1, 5, 5, generator=gen),
         torch.randn(3, generator=gen), [2, 2, 2, 2]),
        (torch.randn(1, 2, 6, 7, generator=gen).to(memory_format=torch.channels_last),
         torch.randn(2, 1, 4, 6, generator=gen), None, [1, 2, 2, 3]),
    ]  # fmt: skip
    os.environ["DCLS_CONV_AUTOTUNE"] = "0"  # no CUDA timing: the heuristic picks Triton
    result = {}
    for k, (x, kernel, bias, pads) in enumerate(samples):
        args = [x.requires_grad_(), kernel.requires_grad_(), bias, pads]
        if bias is not None:
            bias.requires_grad_()
        checks = torch.library.opcheck(dwconv.triton_depthwise_op, args, raise_exception=False)
        result[f"opcheck{k}"] = {name: str(v) for name, v in checks.items()}
    # the layer under torch.compile (one graph, the operator in it) equals the eager layer
    layers.cuda_depthwise_applies = lambda *a: True  # the CUDA dispatch, on the CPU
    layer = Dcls2d(4, 4, 6, 11, padding=5, groups=4)
    x = torch.randn(2, 4, 12, 10, generator=gen, requires_grad=True)
    graphs = []

    def backend(gm, example_inputs):  # records whether the graph calls the operator
        graphs.append(any("triton_depthwise_conv2d" in str(n.target) for n in gm.graph.nodes))
        return gm.forward

    outs = {}
    compiled = torch.compile(layer, backend=backend, fullgraph=True)
    for mode, fn in (("eager", layer), ("compiled", compiled)):
        dwconv.CHOICES.clear()
        y = fn(x)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        outs[mode] = (y, *grads)
    result["compile_max_rel_err"] = max(
        ((a - b).abs().max() / b.abs().max()).item()
        for a, b in zip(outs["compiled"], outs["eager"], strict=True)
    )
    result["compile_graphs_with_op"] = graphs
    return result


def main() -> dict:
    """Everything, as one dict."""
    patch_interpreter()
    torch.backends.cudnn.allow_tf32 = False
    result = {
        f"{name}-{dtype}": errors(case, getattr(torch, dtype))
        for name, case in KERNEL_CASES.items()
        for dtype in TOLERANCE
    }
    for name in MIXED_CASES:
        result[f"{name}-mixed"] = errors(KERNEL_CASES[name], torch.bfloat16, torch.float32)
    result |= config_errors()
    os.environ["DCLS_TRITON_CL"] = "0"  # the NCHW kernels with copies: what the count detects
    result["channels_last-copied"] = errors(KERNEL_CASES["channels_last"], torch.float32)
    del os.environ["DCLS_TRITON_CL"]
    result["construct"] = construct_errors()
    result["construct_ops"] = construct_op_checks()
    result["ops"] = op_checks()
    return result


if __name__ == "__main__":
    print(json.dumps(main()))
