"""Throughput of every model x conv at 128 x 1001 (frontend excluded): JSON and markdown table.

Example (CPU, ConvNeXt-T, DSC against DCLS-Gauss, inference):

    python scripts/benchmark.py --models convnext_t --convs dsc,dcls_gauss --mode infer \
        --batch-size 8 --json docs/bench_cpu.json --markdown docs/bench_cpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from dcls_audio.bench import device_name, markdown_table, resolve_device, run_benchmark

ALL_MODELS = "convnext_t,convformer_s18,fastvit_sa24"
ALL_CONVS = "dsc,dcls_gauss,dcls_bilinear"


def _write(path: str, text: str) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=ALL_MODELS, help=f"comma-separated (default {ALL_MODELS})")
    p.add_argument("--convs", default=ALL_CONVS, help=f"comma-separated (default {ALL_CONVS})")
    p.add_argument("--mode", default="infer", choices=["infer", "train", "both"])
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="samples per batch (default 64 on CUDA, 8 on the CPU)",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--dtype",
        default=None,
        choices=["bf16", "fp32"],
        help="only this dtype (default: bf16 and fp32 on CUDA, fp32 on the CPU)",
    )
    p.add_argument(
        "--channels-last",
        default="auto",
        choices=["auto", "on", "off"],
        help="memory format of model and input (auto: channels_last)",
    )
    p.add_argument("--iters", type=int, default=5, help="timed batches per repeat")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per model before timing")
    p.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved repeats per conv; the median is reported",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--markdown", default=None, help="write the markdown table here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = resolve_device(args.device)
    batch = args.batch_size or (64 if dev.type == "cuda" else 8)
    cl = None if args.channels_last == "auto" else args.channels_last == "on"
    print(f"device: {device_name(dev)}; input (B, 1, 128, 1001), frontend excluded", flush=True)
    records = run_benchmark(
        [m for m in args.models.split(",") if m],
        [c for c in args.convs.split(",") if c],
        mode=args.mode,
        batch_size=batch,
        device=args.device,
        iters=args.iters,
        warmup=args.warmup,
        repeats=args.repeats,
        channels_last=cl,
        dtypes=[args.dtype] if args.dtype else None,
        log=lambda s: print(s, flush=True),
    )
    table = markdown_table(records)
    print(table)
    if args.json:
        _write(args.json, json.dumps(records, indent=2) + "\n")
    if args.markdown:
        _write(args.markdown, f"Device: {device_name(dev)}\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
