"""Throughput (samples/s) of every model x conv at the model input size 128 x 1001.

The model input (N, 1, 128, 1001) is fed directly: the log-mel frontend is excluded (it is the
same for every model and conv). Inference runs in eval mode under ``torch.inference_mode`` so DCLS
layers use their cached (and, on small maps, cropped) kernel; a training step is forward, BCE
loss, backward and an AdamW step. Models and inputs are channels_last by default; on CUDA both
bf16 autocast and fp32 are measured, on the CPU fp32.

The convs of one model are measured interleaved: after warm-up, each repeat times every conv in
turn and the reported figure is the median over repeats, so that a DCLS/DSC ratio taken in one run
is fair even on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcls_audio.aggregate import PAPER_TABLE1
from dcls_audio.config import load_group
from dcls_audio.train.accel import COMPILE_MODES, check_compile, compile_module, warm_up

INPUT_SHAPE = (1, 128, 1001)

#: DCLS-Gauss / DSC inference samples/s of paper Table 1 (one V100), per model.
PAPER_RATIO = {
    model: round(
        PAPER_TABLE1[(model, "dcls_gauss")]["sps"] / PAPER_TABLE1[(model, "dsc")]["sps"], 3
    )
    for model, conv in PAPER_TABLE1
    if conv == "dsc"
}


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise the named device (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got '{device}'")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU name, or CPU model and torch thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One model prepared for a (mode, dtype) measurement; `step()` processes one batch."""

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        device: torch.device,
        dtype: str,
        batch_size: int,
        channels_last: bool,
        compile: str = "none",
    ) -> None:
        self.model, self.mode, self.device = model, mode, device
        self.autocast = dtype == "bf16"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(device=device, memory_format=fmt)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, *INPUT_SHAPE, generator=gen).to(device, memory_format=fmt)
        if mode == "train":
            self.model.train()
            logits_dim = self._num_outputs()
            self.y = (torch.rand(batch_size, logits_dim, generator=gen) < 0.05).float().to(device)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        else:
            self.model.eval()
        self.call = self.model
        compile = check_compile(compile, device, 1, "--compile")
        if compile != "none":  # timed per-layer choices first, eagerly (as the trainer)
            warm_up(self.model, tuple(self.x.shape), device, amp=self.autocast,
                    channels_last=channels_last, training=mode == "train")  # fmt: skip
            self.call = compile_module(self.model, compile)

    def _num_outputs(self) -> int:
        with torch.no_grad():
            self.model.eval()
            n = self.model(self.x[:1]).shape[-1]
            self.model.train()
        return int(n)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.mode == "infer":
                with torch.inference_mode():
                    self.call(self.x)
                return
            logits = self.call(self.x).float()
            loss = nn.functional.binary_cross_entropy_with_logits(logits, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, iters: int) -> float:
        """Seconds for `iters` steps (device synchronised)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        _sync(self.device)
        return time.perf_counter() - t0


def measure_model(
    model_name: str,
    convs: Sequence[str],
    mode: str,
    device: torch.device,
    dtype: str,
    batch_size: int,
    iters: int,
    warmup: int,
    repeats: int,
    channels_last: bool,
    compile: str = "none",
    model_overrides: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Interleaved measurement of one model under several convs; one record per conv.

    ``model_overrides``: model config keys replaced (e.g. smaller ``timm_kwargs`` in rehearsals).
    """
    from dcls_audio.models import build_model

    model_cfg = load_group("model", model_name)
    model_cfg["pretrained"] = None
    model_cfg.update(model_overrides or {})
    runners = {}
    for conv in convs:
        torch.manual_seed(0)
        model = build_model(model_cfg, load_group("conv", conv))
        runners[conv] = _Runner(model, mode, device, dtype, batch_size, channels_last, compile)
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {c: [] for c in convs}
    for _ in range(repeats):
        for conv, runner in runners.items():
            times[conv].append(runner.time(iters))
    records = []
    name = device_name(device)
    for conv in convs:
        per_s = [batch_size * iters / t for t in times[conv]]
        records.append(
            {
                "model": model_name,
                "conv": conv,
                "mode": mode,
                "device": device.type,
                "dtype": dtype,
                "batch_size": batch_size,
                "samples_per_s": round(statistics.median(per_s), 3),
                "repeats": [round(v, 3) for v in per_s],
                "iters": iters,
                "warmup": warmup,
                "channels_last": channels_last,
                "compiled": compile != "none",
                "compile": compile,
                "device_name": name,
            }
        )
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def run_benchmark(
    models: Sequence[str],
    convs: Sequence[str],
    mode: str = "infer",
    batch_size: int = 8,
    device: str = "auto",
    iters: int = 5,
    warmup: int = 2,
    repeats: int = 3,
    channels_last: bool | None = None,
    dtypes: Sequence[str] | None = None,
    log: Any = None,
    on_records: Any = None,
    compile: str = "none",
) -> list[dict[str, Any]]:
    """Measure every model x conv x mode (x dtype on CUDA); returns the list of records.

    ``log(line)``: progress lines (a model that fails is then logged and skipped);
    ``on_records(records)``: called with the records so far after each model x mode x dtype.
    """
    if mode not in ("infer", "train", "both"):
        raise ValueError(f"mode must be infer, train or both, got '{mode}'")
    for n, v in (("batch_size", batch_size), ("iters", iters), ("repeats", repeats)):
        if v < 1:
            raise ValueError(f"{n} must be >= 1, got {v}")
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer: the input shape is fixed
    if dtypes is None:
        dtypes = ["bf16", "fp32"] if dev.type == "cuda" else ["fp32"]
    if channels_last is None:
        # channels_last everywhere: the format of the CUDA figures; on the CPU measured here it
        # changed the whole-model ratio by less than the noise (docs/benchmarks.md)
        channels_last = True
    modes = ["infer", "train"] if mode == "both" else [mode]
    records: list[dict[str, Any]] = []
    for model_name in models:
        for m in modes:
            for dtype in dtypes:
                args = (m, dev, dtype, batch_size, iters, warmup, repeats, channels_last)
                try:
                    recs = measure_model(model_name, convs, *args, compile=compile)
                except Exception as err:  # noqa: BLE001 - one failing model leaves the others
                    if log is None:
                        raise
                    log(f"{model_name} {m} {dtype}: failed: {type(err).__name__}: {err}")
                    continue
                records.extend(recs)
                if on_records is not None:
                    on_records(records)
                if log is not None:
                    for r in recs:
                        log(
                            f"{r['model']:>15} {r['conv']:>13} {r['mode']:>5} {r['device']:>4} "
                            f"{r['dtype']:>4} bs={r['batch_size']:<4} {r['samples_per_s']:9.2f}/s"
                        )
    return records


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the records with the DCLS/DSC ratio per model beside the paper's."""
    base = {
        (r["model"], r["mode"], r["device"], r["dtype"], r["batch_size"]): r["samples_per_s"]
        for r in records
        if r["conv"] == "dsc"
    }
    lines = [
        "| model | conv | mode | device | dtype | batch | samples/s | ratio to DSC | paper ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        key = (r["model"], r["mode"], r["device"], r["dtype"], r["batch_size"])
        ratio = "" if key not in base else f"{r['samples_per_s'] / base[key]:.3f}"
        paper = ""
        if r["conv"] == "dcls_gauss" and r["mode"] == "infer" and r["model"] in PAPER_RATIO:
            paper = f"{PAPER_RATIO[r['model']]:.3f}"
        lines.append(
            f"| {r['model']} | {r['conv']} | {r['mode']} | {r['device']} | {r['dtype']} | "
            f"{r['batch_size']} | {r['samples_per_s']:.2f} | {ratio} | {paper} |"
        )
    return "\n".join(lines) + "\n"


ALL_MODELS = "convnext_t,convformer_s18,fastvit_sa24"
ALL_CONVS = "dsc,dcls_gauss,dcls_bilinear"


def _write(path: str, text: str) -> None:
    """Write text to a temporary file beside ``path``, then rename it into place."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> int:
    """CLI: measure, print the markdown table, optionally write JSON and markdown."""
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
    p.add_argument("--compile", default="none", choices=COMPILE_MODES,
                   help="torch.compile mode of the models (as trainer.compile)")  # fmt: skip
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
        compile=args.compile,
        dtypes=[args.dtype] if args.dtype else None,
        log=lambda s: print(s, flush=True),
        on_records=(lambda r: _write(args.json, json.dumps(r, indent=2) + "\n"))
        if args.json
        else None,
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
