"""CPU rates of a DCLS model with this tree's DCLS layers against another commit's, in one process.

Usage: ``python -m dcls_audio.benchmarks.layers_ab --baseline COMMIT [--model convnext_t]
[--conv dcls_gauss] [--batch 4] [--repeats 7] [--threads 2] [--json PATH]``

The baseline's ``dcls_audio/dcls`` package is extracted with ``git archive`` and imported under
another name; one model is built with this tree's code and deep-copied, and every ``Dcls2d`` of the
copy is given the baseline's class (same parameters, same attributes), so both models hold equal
weights. Then, interleaved (baseline, current, baseline, ...) after one warm-up each, the median
wall and CPU (process) seconds (and the ratio of the best wall times: on a shared machine the
least disturbed) of: the kernel construction of every DCLS layer, forward and
backward; a training step (forward, BCE, backward, AdamW); inference in eval mode under
``torch.inference_mode``. Input (batch, 1, 128, 1001) in channels_last, as the throughput
benchmark. Rates are reported as current / baseline (above 1: the current code is faster).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from dcls_audio.config import load_group

ROOT = Path(__file__).resolve().parents[2]


def load_baseline(commit: str, into: Path) -> ModuleType:
    """The ``dcls_audio/dcls`` package of ``commit``, imported as ``dcls_baseline``."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "dcls_audio/dcls"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    package = into / "dcls_audio" / "dcls"
    spec = importlib.util.spec_from_file_location(
        "dcls_baseline", package / "__init__.py", submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["dcls_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _models(model_name: str, conv: str, baseline: ModuleType) -> dict[str, torch.nn.Module]:
    from dcls_audio.dcls import Dcls2d
    from dcls_audio.models import build_model

    model_cfg = load_group("model", model_name)
    model_cfg["pretrained"] = None
    torch.manual_seed(0)
    current = build_model(model_cfg, load_group("conv", conv))
    base = copy.deepcopy(current)
    for module in base.modules():
        if isinstance(module, Dcls2d):
            module.__class__ = baseline.layers.Dcls2d
    return {"baseline": base, "current": current}


def compare(
    baseline: ModuleType, model_name: str, conv: str, batch: int, repeats: int
) -> dict[str, Any]:
    """Median seconds and current / baseline rates of construction, training and inference."""
    from dcls_audio.dcls import Dcls2d, construct_kernel

    models = _models(model_name, conv, baseline)
    fmt = torch.channels_last
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 128, 1001, generator=gen).contiguous(memory_format=fmt)
    y = None
    optimizers = {}
    for name, model in models.items():
        model.to(memory_format=fmt)
        optimizers[name] = torch.optim.AdamW(model.parameters(), lr=1e-4)
    layers = [m for m in models["current"].modules() if isinstance(m, Dcls2d)]
    constructs = {"baseline": baseline.construct_kernel, "current": construct_kernel}

    def construct(name: str) -> None:
        for layer in layers:
            params = [p.detach().requires_grad_() for p in layer._kernel_params()]
            sig = params[2] if len(params) == 3 else None
            k = constructs[name](params[0], params[1], sig, layer.dilated_kernel_size,
                                 layer.version)  # fmt: skip
            torch.autograd.grad(k, params, torch.ones_like(k))

    def train(name: str) -> None:
        model = models[name].train()
        logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_like(logits))
        optimizers[name].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[name].step()

    def y_like(logits: torch.Tensor) -> torch.Tensor:
        nonlocal y
        if y is None:
            y = (torch.rand(logits.shape, generator=gen) < 0.05).float()
        return y

    def infer(name: str) -> None:
        with torch.inference_mode():
            models[name].eval()(x)

    result: dict[str, Any] = {}
    for what, fn, reps in (("construction", construct, 5 * repeats), ("train_step", train, repeats),
                           ("inference", infer, repeats)):  # fmt: skip
        for name in models:
            fn(name)  # warm-up
        wall: dict[str, list[float]] = {name: [] for name in models}
        cpu: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(reps):
            for name in models:
                t, c = time.perf_counter(), time.process_time()
                fn(name)
                wall[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        med = {k: statistics.median(v) for k, v in wall.items()}
        medc = {k: statistics.median(v) for k, v in cpu.items()}
        result[what] = {
            "baseline_wall_s": round(med["baseline"], 4),
            "current_wall_s": round(med["current"], 4),
            "rate_wall": round(med["baseline"] / med["current"], 3),
            "baseline_cpu_s": round(medc["baseline"], 4),
            "current_cpu_s": round(medc["current"], 4),
            "rate_cpu": round(medc["baseline"] / medc["current"], 3),
            "rate_wall_best": round(min(wall["baseline"]) / min(wall["current"]), 3),
        }
    return result


def main(argv: list[str] | None = None) -> int:
    """CLI: print (and optionally write) the comparison as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="git commit whose DCLS layers to compare")
    p.add_argument("--model", default="convnext_t")
    p.add_argument("--conv", default="dcls_gauss")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = load_baseline(args.baseline, Path(tmp))
        result = compare(baseline, args.model, args.conv, args.batch, args.repeats)
    settings = ("baseline", "model", "conv", "batch", "threads", "repeats")
    result = {k: getattr(args, k) for k in settings} | result
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
