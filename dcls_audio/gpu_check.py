"""Check a fresh install against the GPU it runs on, before a long cluster job.

    dcls-audio-gpu-check --info                 # the install self-check, and what this torch
                                                # build supports, per device
    dcls-audio-gpu-check --json gpu_check.json  # every Table-1 model x {DSC, DCLS-Gauss}

For each model and conv: a few bf16 training steps (loss finite and changing), an evaluation
forward, a save/resume round trip (the reloaded model has the same weights and outputs) and a
training throughput figure, in one JSON report. ``--device cpu`` runs the same checks on the CPU
(fp32), e.g. for a small model in the tests.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from dcls_audio.config import load_group
from dcls_audio.runfiles import write_json
from dcls_audio.selfcheck import run_checks as run_extension_checks
from dcls_audio.selfcheck import table as extension_table

MODELS = ("convnext_t", "convformer_s18", "fastvit_sa24")
CONVS = ("dsc", "dcls_gauss")


def arch_supported(capability: str, compiled: Sequence[str]) -> bool:
    """Whether kernels for ``capability`` (e.g. sm_70) are in a build compiled for ``compiled``.

    Exact SASS qualifies, and so does PTX (compute_XY, compiled by the driver at load time) for
    an architecture at or below the device's.
    """
    level = int(capability.removeprefix("sm_"))
    ptx = [int(a.removeprefix("compute_")) for a in compiled if a.startswith("compute_")]
    return capability in compiled or any(p <= level for p in ptx)


def install_info() -> dict[str, Any]:
    """torch/CUDA/cuDNN versions, compiled architectures and every visible GPU's support."""
    arch = torch.cuda.get_arch_list() if torch.cuda.is_available() else []
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_build": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "compiled_arch": arch,
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        major, minor = torch.cuda.get_device_capability(i)
        sm = f"sm_{major}{minor}"
        info["devices"].append(
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "capability": sm,
                "supported": arch_supported(sm, arch),
                "bf16": torch.cuda.is_bf16_supported(),
            }
        )
    return info


def _train_steps(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, amp: bool):
    """``steps`` AdamW steps on one batch; returns (losses, seconds per step after the first)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    losses, times = [], []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))  # synchronises
        times.append(time.perf_counter() - start)
    return losses, (sum(times[1:]) / max(1, len(times) - 1)) if steps > 1 else times[0]


def check_model(
    model_name: str, conv: str, device: torch.device, batch_size: int, steps: int, frames: int
) -> dict[str, Any]:
    """Train, evaluate, save and reload one model on ``device``; a dict of findings and ``ok``."""
    from dcls_audio.models import build_model

    amp = device.type == "cuda"
    model_cfg, conv_cfg = load_group("model", model_name), load_group("conv", conv)
    torch.manual_seed(0)
    model = build_model(model_cfg, conv_cfg).to(device)
    x = torch.randn(batch_size, 1, 128, frames, device=device)
    y = (torch.rand(batch_size, model_cfg["num_classes"], device=device) < 0.05).float()
    losses, per_step = _train_steps(model, x, y, steps, amp)
    model.eval()
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
        out = model(x).float()
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = build_model(model_cfg, conv_cfg).to(device)
    again.load_state_dict(torch.load(buffer, map_location=device, weights_only=True))
    again.eval()
    same_weights = all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=amp):
        out_again = again(x).float()
    finite = all(v == v and abs(v) != float("inf") for v in losses) and bool(out.isfinite().all())
    result = {
        "model": model_name,
        "conv": conv,
        "dtype": "bf16" if amp else "fp32",
        "losses": losses,
        "loss_changed": len(losses) < 2 or losses[-1] != losses[0],
        "finite": finite,
        "resume_same_weights": same_weights,
        "resume_same_outputs": bool(torch.equal(out, out_again)),
        "train_samples_per_s": batch_size / per_step,
    }
    keys = ("finite", "loss_changed", "resume_same_weights", "resume_same_outputs")
    result["ok"] = all(result[k] for k in keys)
    return result


def run_checks(
    models: Sequence[str],
    convs: Sequence[str],
    device: torch.device,
    batch_size: int,
    steps: int,
    frames: int,
) -> dict[str, Any]:
    """Every model x conv check (a failure is recorded, not raised) plus the install info."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    report: dict[str, Any] = {"install": install_info(), "device": str(device), "checks": []}
    for model_name in models:
        for conv in convs:
            start = time.perf_counter()
            try:
                found = check_model(model_name, conv, device, batch_size, steps, frames)
            except Exception as err:  # report every model, whatever breaks
                found = {"model": model_name, "conv": conv, "ok": False, "error": repr(err)}
            found["seconds"] = round(time.perf_counter() - start, 2)
            report["checks"].append(found)
            print(_line(found), flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    report["ok"] = all(c["ok"] for c in report["checks"])
    return report


def _line(found: dict[str, Any]) -> str:
    """One console line per check."""
    head = f"{found['model']:>15} {found['conv']:>11}"
    if "error" in found:
        return f"{head} FAILED {found['error']}"
    status = "ok" if found["ok"] else "FAILED"
    return (
        f"{head} {status:>6} {found['dtype']} loss {found['losses'][0]:.4f}->"
        f"{found['losses'][-1]:.4f} {found['train_samples_per_s']:.1f} samples/s "
        f"({found['seconds']} s)"
    )


def main(argv: list[str] | None = None) -> int:
    """CLI: print the install info (``--info``) or run the checks; exit 1 when one fails."""
    p = argparse.ArgumentParser(prog="dcls-audio-gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--info", action="store_true", help="only print what the install supports")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated model configs")
    p.add_argument("--convs", default=",".join(CONVS), help="comma-separated conv configs")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="training steps per model (>= 2)")
    p.add_argument("--frames", type=int, default=1001, help="input width (1001 = 10 s)")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)
    if args.info:
        checks = run_extension_checks()
        print(extension_table(checks))
        print(json.dumps(install_info(), indent=2))
        return 0 if all(c.ok for c in checks) else 1
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(json.dumps(install_info(), indent=2))
        print("error: --device cuda but torch finds no usable GPU (see above)", file=sys.stderr)
        return 2
    report = run_checks(
        [m for m in args.models.split(",") if m],
        [c for c in args.convs.split(",") if c],
        device,
        args.batch_size,
        max(2, args.steps),
        args.frames,
    )
    if args.json:
        write_json(args.json, report)
    print("all checks passed" if report["ok"] else "some checks FAILED", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
