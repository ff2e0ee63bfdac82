"""Exactness of the CUDA depthwise paths and the kernel construction on ConvNeXt-T's stages.

``python -m dcls_audio.benchmarks.gpu_rates exact`` (a step of ``scripts/gpu_rates.sh``): per
stage map at the real batch, the kernel construction on the device (float32; one Triton launch
each way on CUDA) against float64 on the CPU, then every depthwise path (Triton in channels_last
and NCHW, FFT and cuDNN in channels_last) in bf16 and fp32 against float64 on the batch's first
samples: output, input and kernel gradients, max|d|/max|ref| within the bounds of the tests
(``tests/test_dcls_kernels.py``). On the CPU, under ``TRITON_INTERPRET=1`` with few channels, the
same code runs as a rehearsal.
"""

from __future__ import annotations

import json
from typing import Any

import torch

from dcls_audio.benchmarks.throughput import device_name, resolve_device
from dcls_audio.runfiles import write_json

#: max|d| / max|ref| against float64: float32 (tf32x3 products) and one bf16 rounding
BOUNDS = {"float32": 1e-5, "bfloat16": 2**-8 + 1e-5}
CONSTRUCT_BOUND = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.cpu()).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def path_errors(path: str, x: torch.Tensor, kernel: torch.Tensor, pads: Any, k: int = 4) -> dict:
    """One depthwise path at ``x``'s batch against float64 on its first ``k`` samples (the
    output gradient is zero beyond them): output, input and kernel gradients."""
    import torch.nn.functional as F

    from dcls_audio.dcls import dwconv

    ins = [t.detach().clone().requires_grad_() for t in (x, kernel)]
    y = dwconv.run_path(path, *ins, None, pads)
    g = torch.zeros_like(y)
    g[:k] = torch.randn_like(y[:k])
    dx, dw = torch.autograd.grad(y, ins, g)
    refs = [t.detach().double().requires_grad_() for t in (x[:k], kernel)]
    flat = [v for lr in reversed(pads) for v in lr]
    y_ref = F.conv2d(F.pad(refs[0], flat), refs[1], groups=kernel.shape[0])
    ref_outs = (y_ref, *torch.autograd.grad(y_ref, refs, g[:k].double()))
    outs = (y[:k], dx[:k], dw)
    return {n: _rel(a, b) for n, a, b in zip(("y", "dx", "dw"), outs, ref_outs, strict=True)}


def construction_errors(layer: Any, window: Any, device: torch.device) -> dict:
    """The layer's kernel construction on ``device`` (float32) against float64 on the CPU:
    the kernel and the gradients of weight, positions and sigmas."""
    import copy

    from dcls_audio.dcls import construct_op

    errs: dict[str, Any] = {}
    lay, ref = copy.deepcopy(layer).to(device), copy.deepcopy(layer).double()
    kernel, k_ref = lay.kernel(window), ref.kernel(window)
    g = torch.randn(k_ref.shape, dtype=torch.float64)
    grads = torch.autograd.grad(kernel, lay._kernel_params(), g.to(device, torch.float32))
    ref_grads = torch.autograd.grad(k_ref, ref._kernel_params(), g)
    errs["kernel"] = _rel(kernel.detach(), k_ref.detach())
    for name, a, b in zip(("weight", "P", "SIG"), grads, ref_grads, strict=False):
        errs[f"d{name}"] = _rel(a, b)
    errs["triton"] = construct_op._use_triton(lay.weight.detach())
    return errs


def exact(
    device: str, batch: int, dtypes: list[str], channels_div: int, paths: list[str], out: str,
    info: dict[str, Any] | None = None,
) -> list[dict]:  # fmt: skip
    """Rows of max|d|/max|ref| per ConvNeXt-T stage: the construction, then dtype x path x
    layout (Triton in channels_last and NCHW, the other paths in channels_last); ``info``
    (date, commit, command) heads the JSON."""
    from dcls_audio.dcls import Dcls2d

    from .cuda_layers import COUNT, SIZE, STAGE_MAPS

    dev = resolve_device(device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows: list[dict] = []
    head = {"device_name": device_name(dev), "batch_size": batch, **(info or {})}

    def add(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        write_json(out, {**head, "rows": rows})

    for c, h, w in STAGE_MAPS:
        c = max(1, c // channels_div)
        torch.manual_seed(c)
        layer = Dcls2d(c, c, COUNT, SIZE, padding=SIZE // 2, groups=c)
        window, pads = layer._plan((h, w))
        shape = [batch, c, h, w]
        try:
            errs = construction_errors(layer, window, dev)
            worst = max(v for v in errs.values() if not isinstance(v, bool))
            add({"check": "construction", "input": shape, "errors": errs,
                 "bound": CONSTRUCT_BOUND, "ok": worst <= CONSTRUCT_BOUND})  # fmt: skip
        except Exception as err:  # noqa: BLE001 - recorded, the other checks still run
            add({"check": "construction", "input": shape, "error": repr(err)[:300], "ok": False})
        kernel = layer.kernel(window).detach()
        for dtype in dtypes:
            x = torch.randn(*shape, device=dev, dtype=getattr(torch, dtype))
            for path in paths:
                for layout in ("channels_last", "nchw") if path == "triton" else ("channels_last",):
                    xl = x.contiguous(memory_format=torch.channels_last) if layout != "nchw" else x
                    row = {"check": path, "layout": layout, "dtype": dtype, "input": shape,
                           "bound": BOUNDS[dtype]}  # fmt: skip
                    try:
                        errs = path_errors(path, xl, kernel.to(dev, xl.dtype), pads)
                        row.update(errors=errs, ok=max(errs.values()) <= BOUNDS[dtype])
                    except Exception as err:  # noqa: BLE001
                        row.update(error=repr(err)[:300], ok=False)
                    add(row)
    return rows
