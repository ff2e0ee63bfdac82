"""Benchmark DCLS kernel construction and Dcls2d layers against the reference `dcls` package.

Usage: dcls-audio-bench-kernels [--json PATH] [--repeats N] [--channels 96 192 ...]
       [--cuda-only | --skip-cuda]

Two CPU measurements, both forward + backward, ours versus the `dcls` 0.1.1 package:

1. Kernel construction at kernel_count 26, 23 x 23, depthwise (out = C, in/groups = 1) for
   C in {96, 192, 384, 768}: ``construct_kernel`` versus ``ConstructKernel2d`` (gauss), followed
   by a backward pass with a fixed upstream gradient. Reports the median wall time, the peak
   memory and the largest absolute difference of the kernels and of every gradient.
2. A full depthwise Dcls2d layer (padding 11) on ConvNeXt-T's stage maps for a 128 x 1001 input,
   batch 8: 8x96x64x62, 8x192x32x31, 8x384x16x15, 8x768x8x7. Ours crops the kernel on the last map.
3. On CUDA, the per-layer table of :mod:`dcls_audio.benchmarks.cuda_layers`.

Peak memory: CPU PyTorch has no allocator statistics and ``tracemalloc`` does not see tensor
buffers, so ``torch.profiler`` (``profile_memory=True``) records every allocation and free of
PyTorch's CPU allocator (temporaries inside operators included); the peak is the maximum running
sum over one forward + backward, inputs and parameters made before it not counted. Time is
measured without the profiler: median (and min) of ``--repeats`` runs after one warm-up; the
reference gets at most 3 runs. On a shared machine prefer ``--threads 1``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from dcls_audio.benchmarks.cuda_layers import bench_cuda, print_cuda_table
from dcls_audio.dcls import Dcls2d, construct_kernel

logging.getLogger().setLevel(logging.ERROR)  # the reference warns about CUDA on every layer

COUNT, SIZE = 26, 23
STAGE_MAPS = [(96, 64, 62), (192, 32, 31), (384, 16, 15), (768, 8, 7)]
BATCH = 8


def _reference():
    try:
        from DCLS.construct import modules
    except ImportError as err:  # pragma: no cover - dev dependency
        raise SystemExit("the reference package is missing: pip install 'dcls==0.1.1'") from err
    return modules


def peak_bytes(fn) -> int:
    """Peak bytes alive at once among CPU-allocator allocations made while running ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def timings(fn, repeats: int) -> list[float]:
    """Wall times of ``fn`` over ``repeats`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _timed(row: dict, name: str, fn, repeats: int) -> None:
    times = timings(fn, repeats)
    row[f"{name}_s"] = statistics.median(times)
    row[f"{name}_min_s"] = min(times)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach() - b.detach()).abs().max().item()


def bench_kernel(channels: int, repeats: int, ref_repeats: int) -> dict:
    """Kernel build forward + backward, ours vs ``ConstructKernel2d``."""
    gen = torch.Generator().manual_seed(channels)
    w = torch.randn(channels, 1, COUNT, generator=gen)
    p = (torch.rand(2, channels, 1, COUNT, generator=gen) - 0.5) * 2 * (SIZE // 2)
    s = torch.rand(2, channels, 1, COUNT, generator=gen) * 0.5
    upstream = torch.randn(channels, 1, SIZE, SIZE, generator=gen)
    ours_in = [t.clone().requires_grad_() for t in (w, p, s)]
    # The reference moves along axis ndim-1-k: flip P and SIG along dim 0.
    ref_in = [t.clone().requires_grad_() for t in (w, p.flip(0), s.flip(0))]
    ref_mod = _reference().ConstructKernel2d(
        channels, channels, channels, COUNT, (SIZE, SIZE), "gauss"
    )

    def ours():
        for t in ours_in:
            t.grad = None
        kernel = construct_kernel(*ours_in, SIZE, "gauss")
        kernel.backward(upstream)
        return kernel

    def ref():
        for t in ref_in:
            t.grad = None
        kernel = ref_mod(*ref_in)
        kernel.backward(upstream)
        return kernel

    k_ours, k_ref = ours(), ref()
    diffs = {
        "kernel": _max_diff(k_ours, k_ref),
        "grad_weight": _max_diff(ours_in[0].grad, ref_in[0].grad),
        "grad_P": _max_diff(ours_in[1].grad, ref_in[1].grad.flip(0)),
        "grad_SIG": _max_diff(ours_in[2].grad, ref_in[2].grad.flip(0)),
    }
    del k_ours, k_ref
    row = {"channels": channels}
    _timed(row, "ours", ours, repeats)
    _timed(row, "ref", ref, ref_repeats)
    row |= {
        "ours_peak_bytes": peak_bytes(ours),
        "ref_peak_bytes": peak_bytes(ref),
        "max_abs_diff": diffs,
    }
    row["speedup"] = row["ref_s"] / row["ours_s"]
    row["memory_ratio"] = row["ref_peak_bytes"] / max(row["ours_peak_bytes"], 1)
    return row


def bench_layer(channels: int, height: int, width: int, repeats: int) -> dict:
    """Depthwise Dcls2d forward + backward on one ConvNeXt stage map, ours vs the reference."""
    torch.manual_seed(channels)
    ref = _reference().Dcls2d(
        channels, channels, COUNT, padding=SIZE // 2, dilated_kernel_size=SIZE, groups=channels,
        use_implicit_gemm=False,
    )  # fmt: skip
    ours = Dcls2d(channels, channels, COUNT, SIZE, padding=SIZE // 2, groups=channels)
    with torch.no_grad():
        ref.P.uniform_(-(SIZE // 2), SIZE // 2)
        ours.weight.copy_(ref.weight)
        ours.bias.copy_(ref.bias)
        ours.P.copy_(ref.P.flip(0))
        ours.SIG.copy_(ref.SIG.flip(0))
    x = torch.randn(BATCH, channels, height, width, requires_grad=True)
    upstream = torch.randn(BATCH, channels, height, width)

    def run(layer):
        def step():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            y = layer(x)
            y.backward(upstream)
            return y

        return step

    y_ours, y_ref = run(ours)(), run(ref)()
    diff = _max_diff(y_ours, y_ref)
    grad_diff = _max_diff(ours.P.grad, ref.P.grad.flip(0))
    del y_ours, y_ref
    row = {
        "input": [BATCH, channels, height, width],
        "cropped_window": ours._plan((height, width))[0],
    }
    _timed(row, "ours", run(ours), repeats)
    _timed(row, "ref", run(ref), repeats)
    row |= {
        "ours_peak_bytes": peak_bytes(run(ours)),
        "ref_peak_bytes": peak_bytes(run(ref)),
        "max_abs_diff_output": diff,
        "max_abs_diff_grad_P": grad_diff,
    }
    row["speedup"] = row["ref_s"] / row["ours_s"]
    row["memory_ratio"] = row["ref_peak_bytes"] / max(row["ours_peak_bytes"], 1)
    return row


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f}"


def print_tables(result: dict) -> None:
    """Human-readable tables of a benchmark result."""
    print(f"\nKernel build fwd+bwd, count {COUNT}, {SIZE}x{SIZE}, depthwise ({result['env']})")
    print(f"{'C':>5} {'ours ms':>9} {'ref ms':>9} {'speed x':>8} {'ours MB':>8} "
          f"{'ref MB':>8} {'mem x':>7} {'max|dK|':>9} {'max|dgrad|':>10}")  # fmt: skip
    for r in result["kernel_build"]:
        d = r["max_abs_diff"]
        print(
            f"{r['channels']:>5} {r['ours_s'] * 1e3:>9.2f} {r['ref_s'] * 1e3:>9.1f} "
            f"{r['speedup']:>8.1f} {_mb(r['ours_peak_bytes']):>8} {_mb(r['ref_peak_bytes']):>8} "
            f"{r['memory_ratio']:>7.1f} {d['kernel']:>9.1e} "
            f"{max(d['grad_weight'], d['grad_P'], d['grad_SIG']):>10.1e}"
        )
    print(f"\nDcls2d layer fwd+bwd (depthwise, padding {SIZE // 2}), ConvNeXt-T stage maps")
    print(f"{'input':>16} {'ours ms':>9} {'ref ms':>9} {'speed x':>8} {'ours MB':>8} "
          f"{'ref MB':>8} {'max|dy|':>9} {'crop':>16}")  # fmt: skip
    for r in result["layer"]:
        crop = (
            "-"
            if r["cropped_window"] is None
            else "x".join(str(hi - lo) for lo, hi in r["cropped_window"])
        )
        print(
            f"{'x'.join(map(str, r['input'])):>16} {r['ours_s'] * 1e3:>9.1f} "
            f"{r['ref_s'] * 1e3:>9.1f} {r['speedup']:>8.2f} {_mb(r['ours_peak_bytes']):>8} "
            f"{_mb(r['ref_peak_bytes']):>8} {r['max_abs_diff_output']:>9.1e} {crop:>16}"
        )
    bar = result["bar"]
    print(
        f"\nBar at C=768: speed {bar['speedup']:.0f}x (>= 100), memory {bar['memory_ratio']:.0f}x "
        f"(>= 10), kernel diff {bar['max_abs_diff']:.1e} (<= 1e-5): "
        f"{'PASS' if bar['pass'] else 'FAIL'}"
    )


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement")
    parser.add_argument("--channels", type=int, nargs="+", default=[96, 192, 384, 768])
    parser.add_argument("--skip-layer", action="store_true", help="kernel build only")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--cuda-only", action="store_true", help="only the per-layer CUDA table")
    only.add_argument("--skip-cuda", action="store_true", help="no CUDA table")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.cuda_only and not torch.cuda.is_available():
        parser.error("--cuda-only needs a CUDA device")
    return args


def _cpu_results(args: argparse.Namespace, result: dict) -> None:
    """The CPU kernel-build and layer tables against the reference, and the bar."""
    ref_repeats = max(1, min(args.repeats, 3))  # the reference takes seconds per call
    result["kernel_build"] = [bench_kernel(c, args.repeats, ref_repeats) for c in args.channels]
    result["layer"] = (
        [] if args.skip_layer else [bench_layer(c, h, w, ref_repeats) for c, h, w in STAGE_MAPS]
    )
    top = max(result["kernel_build"], key=lambda r: r["channels"])
    worst = max(top["max_abs_diff"].values())
    result["bar"] = {
        "channels": top["channels"],
        "speedup": top["speedup"],
        "memory_ratio": top["memory_ratio"],
        "max_abs_diff": top["max_abs_diff"]["kernel"],
        "max_abs_diff_grads": worst,
        "pass": top["speedup"] >= 100
        and top["memory_ratio"] >= 10
        and top["max_abs_diff"]["kernel"] <= 1e-5,
    }
    print_tables(result)


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the tables, optionally write JSON; exit 1 if the bar fails."""
    args = _parse(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    env = (
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    result: dict = {"env": env, "count": COUNT, "size": SIZE, "repeats": args.repeats}
    if not args.cuda_only:
        _cpu_results(args, result)
    if torch.cuda.is_available() and not args.skip_cuda:
        result["cuda_env"] = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
        result["cuda_layer"] = bench_cuda(max(args.repeats, 10))
        print_cuda_table(result["cuda_layer"], result["cuda_env"])
    if args.json is not None:
        _write_json(args.json, result)
    return 0 if result.get("bar", {"pass": True})["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
