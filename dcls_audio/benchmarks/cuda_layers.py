"""Per-layer table of a Dcls2d layer's depthwise convolution on CUDA, per ConvNeXt-T stage.

Usage: python -m dcls_audio.benchmarks.cuda_layers [--json PATH] [--repeats N]
       [--dtypes bfloat16 float32] [--batch 64] [--device cuda|cpu] [--channels-div D]

A Dcls2d layer's 23 x 23 depthwise convolution (cropped as the layer crops it) on ConvNeXt-T's
stage maps for a 128 x 1001 input, batch 64, TF32 off: forward and forward + backward ms for
cuDNN NCHW and channels_last, FFT, Triton (its block configurations timed per shape, or read
from ``DCLS_TRITON_CONFIGS``), the layer's chosen path and a 7 x 7 depthwise (DSC) convolution,
the chosen path per mode, the Triton configurations used, and the Triton path's max|d|/max|ref|
against float64 (output, input and kernel gradients, on the batch's first 4 samples).
``--device cpu`` with ``TRITON_INTERPRET=1``, a small batch and ``--channels-div`` rehearses it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dcls_audio.dcls import Dcls2d
from dcls_audio.dcls.interpreter import patch_triton_interpreter

COUNT, SIZE = 26, 23
STAGE_MAPS = [(96, 64, 62), (192, 32, 31), (384, 16, 15), (768, 8, 7)]
CUDA_BATCH = 64
CUDA_PATHS = ("cudnn_nchw", "cudnn_channels_last", "fft", "triton", "chosen", "dsc_7x7")


def _device_ms(fn, repeats: int, device: str) -> float:
    """Median milliseconds of ``fn`` after one warm-up run (CUDA events on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        if device != "cuda":
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
            continue
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _cuda_paths(pads, small: torch.Tensor) -> dict:
    """Callables ``(x, kernel, training)`` per compared path (``small``: the 7 x 7 kernel)."""
    from dcls_audio.dcls import dwconv

    def cudnn_cl(x, k, _):  # the layer's paddings are symmetric per axis on these maps
        xl = x.contiguous(memory_format=torch.channels_last)
        return F.conv2d(xl, k, None, 1, (pads[0][0], pads[1][0]), 1, k.shape[0])

    return {
        "cudnn_nchw": lambda x, k, _: dwconv.run_path("cudnn", x, k, None, pads),
        "cudnn_channels_last": cudnn_cl,
        "fft": lambda x, k, _: dwconv.run_path("fft", x, k, None, pads),
        "triton": lambda x, k, _: dwconv.run_path("triton", x, k, None, pads),
        "chosen": lambda x, k, t: dwconv.depthwise_conv2d(x, k, None, pads, training=t),
        "dsc_7x7": lambda x, k, _: F.conv2d(
            x, small.requires_grad_(k.requires_grad), padding=3, groups=k.shape[0]
        ),
    }


def _fwd_bwd(fn, x: torch.Tensor, kernel: torch.Tensor):
    """A forward-only and a forward + backward closure of ``fn``."""
    xg, kg = x.detach().requires_grad_(), kernel.detach().requires_grad_()

    def fwd():
        with torch.no_grad():
            fn(x, kernel, False)

    def both():
        y = fn(xg, kg, True)
        y.backward(torch.ones_like(y))

    return fwd, both


def triton_errors(x: torch.Tensor, kernel: torch.Tensor, pads) -> dict:
    """max|d| / max|ref| of the Triton output and gradients against float64 (cuDNN)."""
    from dcls_audio.dcls import dwconv

    flat = [v for lr in reversed(pads) for v in lr]
    ins = [t.detach().requires_grad_() for t in (x, kernel)]
    refs = [t.detach().double().requires_grad_() for t in (x, kernel)]
    y = dwconv.run_path("triton", *ins, None, pads)
    y_ref = F.conv2d(F.pad(refs[0], flat), refs[1], groups=kernel.shape[0])
    g = torch.randn_like(y)
    outs = (y, *torch.autograd.grad(y, ins, g))
    ref_outs = (y_ref, *torch.autograd.grad(y_ref, refs, g.double()))
    return {
        name: ((a.double() - b).abs().max() / b.abs().max()).item()
        for name, a, b in zip(("y", "dx", "dw"), outs, ref_outs, strict=True)
    }


def bench_cuda_layer(
    channels: int, height: int, width: int, dtype: str, repeats: int, device: str = "cuda",
    batch: int = CUDA_BATCH,
) -> dict:  # fmt: skip
    """Per-path forward and forward + backward ms of one stage's depthwise DCLS convolution."""
    from dcls_audio.dcls import dwconv, tuning

    torch.manual_seed(channels)
    layer = Dcls2d(channels, channels, COUNT, SIZE, padding=SIZE // 2, groups=channels)
    window, pads = layer._plan((height, width))
    dt = getattr(torch, dtype)
    kernel = layer.kernel(window).detach().to(device, dt)
    x = torch.randn(batch, channels, height, width, device=device, dtype=dt)
    small = torch.randn(channels, 1, 7, 7, device=device, dtype=dt)
    row = {"input": list(x.shape), "dtype": dtype, "kernel": list(kernel.shape[-2:])}
    for name, fn in _cuda_paths(pads, small).items():
        fwd, both = _fwd_bwd(fn, x, kernel)
        for label, closure in (("fwd", fwd), ("fwd_bwd", both)):
            try:
                row[f"{name}_{label}_ms"] = _device_ms(closure, repeats, device)
            except Exception as err:  # noqa: BLE001 - one failing path leaves the others
                row[f"{name}_{label}_ms"] = None
                row[f"{name}_error"] = f"{type(err).__name__}: {err}"[:300]
    for training in (False, True):
        key = dwconv._key(x, kernel, pads, training)
        row[f"chosen_{'training' if training else 'inference'}"] = dwconv.CHOICES.get(key)
    dims = "x".join(str(v) for v in (batch, channels, height))
    row["triton_configs"] = {k: v for k, v in tuning.TUNED.items() if f"|{dims}x" in k}
    try:
        row["triton_max_rel_err"] = triton_errors(x[:4], kernel, pads)
    except Exception as err:  # noqa: BLE001
        row["triton_max_rel_err"] = {"error": f"{type(err).__name__}: {err}"[:300]}
    return row


def bench_cuda(
    repeats: int, dtypes=("bfloat16", "float32"), device: str = "cuda", batch: int = CUDA_BATCH,
    channels_div: int = 1, log=None,
) -> list[dict]:  # fmt: skip
    """The per-layer table rows: four ConvNeXt-T stages x dtypes, TF32 off."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for dtype in dtypes:
        for c, h, w in STAGE_MAPS:
            rows.append(
                bench_cuda_layer(max(1, c // channels_div), h, w, dtype, repeats, device, batch)
            )
            if log is not None:
                log(rows)
    return rows


def _cell(r: dict, p: str) -> str:
    f, b = r.get(f"{p}_fwd_ms"), r.get(f"{p}_fwd_bwd_ms")
    return f"{'-' if f is None else f'{f:8.2f}'} /{'-' if b is None else f'{b:9.2f}'}"


def print_cuda_table(rows: list[dict], env: str) -> None:
    """Human-readable per-layer table (ms, forward / forward + backward)."""
    print(f"\nDepthwise {SIZE}x{SIZE} conv of a Dcls2d layer ({env})")
    print("ms forward / forward + backward; chosen path inference / training; Triton error")
    head = " ".join(f"{p:>19}" for p in CUDA_PATHS)
    print(f"{'input':>16} {'dtype':>8} {head} {'chosen':>13} {'err':>7}")
    for r in rows:
        cells = " ".join(f"{_cell(r, p):>19}" for p in CUDA_PATHS)
        chosen = f"{r['chosen_inference']}/{r['chosen_training']}"
        errs = [v for v in r["triton_max_rel_err"].values() if isinstance(v, float)]
        worst = f"{max(errs):>7.1e}" if errs else "    n/a"
        shape = "x".join(map(str, r["input"]))
        print(f"{shape:>16} {r['dtype']:>8} {cells} {chosen:>13} {worst}")


def main(argv: list[str] | None = None) -> int:
    """CLI: measure, print the table, optionally write JSON after every row."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    p.add_argument("--batch", type=int, default=CUDA_BATCH)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--channels-div", type=int, default=1, help="fewer channels (rehearsal)")
    args = p.parse_args(argv)
    patch_triton_interpreter()  # rehearsals under TRITON_INTERPRET=1
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    env = f"{name}, torch {torch.__version__}, batch {args.batch}"

    def log(rows: list[dict]) -> None:
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"env": env, "rows": rows}, indent=1) + "\n")

    rows = bench_cuda(args.repeats, args.dtypes, args.device, args.batch, args.channels_div, log)
    print_cuda_table(rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
