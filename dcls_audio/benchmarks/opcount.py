"""Compute operators dispatched by one training step of every model, DSC against DCLS.

Every operator is a kernel launch with its host-side cost on a GPU, so on a small batch the
operator count bounds the step time from below whatever the device. One step here is what the
trainer runs per batch: forward of one (1, 1, 128, 1001) clip, BCE-with-logits loss, backward and
an AdamW step (the project's optimizer builder, its groups switched to the ``foreach``
implementation that PyTorch picks by default on CUDA), counted on the CPU by a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` on the second step (the first one also
creates the optimizer state).

What counts: every operator that reaches the dispatcher below autograd, once per call, except

* views: operators whose schema returns an alias of an input without writing it
  (``OpOverload.is_view``, e.g. ``aten.view``, ``aten.transpose``, ``aten.expand``,
  ``aten.slice``; they launch nothing), and
* ``aten._local_scalar_dense`` (``.item()``: a device-to-host read, no kernel).

A ``torch.library`` custom operator counts once: the mode sees the operator itself, not the
operators its CPU implementation is made of (they run below it). DCLS layers are held on their
direct convolution (``conv_impl = "direct"``), since the CPU-only FFT path never runs on CUDA.

Usage: ``dcls-audio-bench-opcount [--models ...] [--convs ...] [--json docs/opcount.json]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from dcls_audio.config import load_group

CLIP = (1, 1, 128, 1001)
MODELS = ("convnext_t", "convformer_s18", "fastvit_sa24")
CONVS = ("dsc", "dcls_gauss")
COUNTED_CODE = ("dcls_audio/dcls", "dcls_audio/models", "dcls_audio/train/optim.py",
                "dcls_audio/benchmarks/opcount.py")  # fmt: skip
#: operators that launch nothing though their schema is no view
NOT_COUNTED = frozenset({"aten::_local_scalar_dense"})

__all__ = ["OpCounter", "count_step", "is_counted", "main", "run"]


def is_counted(func: torch._ops.OpOverload) -> bool:
    """True for a compute operator: not a view (schema alias without write), no scalar read."""
    return not func.is_view and func._schema.name not in NOT_COUNTED


class OpCounter(TorchDispatchMode):
    """Counts the compute operators (see :func:`is_counted`) dispatched while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.views: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Record ``func`` and run it."""
        name = str(func.overloadpacket._qualified_op_name)
        (self.counts if is_counted(func) else self.views)[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        """Compute operators counted so far."""
        return sum(self.counts.values())


def _set_direct(model: nn.Module) -> int:
    """Hold every DCLS layer on its direct convolution; returns how many there are."""
    from dcls_audio.dcls import DclsNd

    layers = [m for m in model.modules() if isinstance(m, DclsNd)]
    for layer in layers:
        layer.conv_impl = "direct"
    return len(layers)


def _build(
    model_name: str, conv: str, model_overrides: dict | None
) -> tuple[nn.Module, torch.optim.Optimizer, dict]:
    from dcls_audio.models import build_model
    from dcls_audio.train.optim import build_optimizer

    model_cfg = load_group("model", model_name)
    model_cfg["pretrained"] = None
    model_cfg.update(model_overrides or {})
    model = build_model(model_cfg, load_group("conv", conv))
    optim_name = "lamb" if model_name == "convformer_s18" else "adamw"
    optim_cfg = load_group("optim", "adamw")
    optimizer = build_optimizer(model, optim_cfg, global_batch_size=CLIP[0])
    for group in optimizer.param_groups:
        group["foreach"] = True  # PyTorch's default on CUDA; the CPU default is a per-tensor loop
    info = {"paper_optimizer": optim_name, "optimizer": "adamw (foreach)"}
    return model, optimizer, info


def count_step(
    model_name: str, conv: str, seed: int = 0, model_overrides: dict | None = None
) -> dict[str, Any]:
    """Operator counts of one training step (the second) of ``model_name`` with ``conv``.

    ``model_overrides``: model config keys to replace (e.g. a smaller ``timm_kwargs``).
    """
    torch.manual_seed(seed)
    model, optimizer, info = _build(model_name, conv, model_overrides)
    dcls_layers = _set_direct(model)
    model.train()
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(CLIP, generator=gen)
    num_classes = model(x).shape[-1]
    y = (torch.rand(CLIP[0], num_classes, generator=gen) < 0.05).float()

    def step() -> None:
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # creates the optimizer state
    with OpCounter() as counter:
        step()
    return {
        "model": model_name,
        "conv": conv,
        "operators": counter.total,
        "views_not_counted": sum(counter.views.values()),
        "dcls_layers": dcls_layers,
        "parameters": sum(1 for _ in model.parameters()),
        **info,
        "by_operator": dict(counter.counts.most_common()),
    }


def _commit() -> str | None:
    """The source tree's git commit, with ``+`` when the code counted here (DCLS layers, models,
    optimizer builder, this module) has uncommitted changes; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", *COUNTED_CODE],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def run(models: Sequence[str] = MODELS, convs: Sequence[str] = CONVS) -> dict[str, Any]:
    """Counts for every model x conv and each DCLS conv's ratio to DSC (with extra per layer)."""
    records = [count_step(m, c) for m in models for c in convs]
    summary = []
    for model_name in models:
        base = next((r for r in records if r["model"] == model_name and r["conv"] == "dsc"), None)
        for r in records:
            if r["model"] != model_name or base is None or r is base:
                continue
            extra = (r["operators"] - base["operators"]) / max(r["dcls_layers"], 1)
            summary.append(
                {
                    "model": model_name,
                    "conv": r["conv"],
                    "dsc": base["operators"],
                    "dcls": r["operators"],
                    "ratio": round(r["operators"] / base["operators"], 3),
                    "extra_per_dcls_layer": round(extra, 2),
                }
            )
    return {
        "clip": list(CLIP),
        "step": "forward + BCE loss + backward + AdamW (foreach) step, the second step",
        "not_counted": "views (OpOverload.is_view) and aten::_local_scalar_dense",
        "torch": torch.__version__,
        "commit": _commit(),
        "summary": summary,
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: print the counts per model and conv; optionally write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model configs")
    p.add_argument("--convs", default=",".join(CONVS), help="comma-separated conv configs")
    p.add_argument("--json", default=None, help="write the result here (e.g. docs/opcount.json)")
    p.add_argument("--top", type=int, default=8, help="most frequent operators printed per run")
    p.add_argument(
        "--baseline", default=None, help="an earlier JSON of this command: its summary is kept"
    )
    args = p.parse_args(argv)
    result = run(args.models.split(","), args.convs.split(","))
    if args.baseline:
        earlier = json.loads(Path(args.baseline).read_text())
        result["baseline"] = {k: earlier.get(k) for k in ("commit", "summary")}
    for r in result["records"]:
        top = ", ".join(f"{k} {v}" for k, v in list(r["by_operator"].items())[: args.top])
        print(f"{r['model']:>15} {r['conv']:>11}: {r['operators']:5d} operators ({top})")
    for s in result["summary"]:
        print(
            f"{s['model']:>15} {s['conv']:>11} / dsc: {s['dcls']} / {s['dsc']} = {s['ratio']:.3f}"
            f" ({s['extra_per_dcls_layer']:+.1f} per DCLS layer)"
        )
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
