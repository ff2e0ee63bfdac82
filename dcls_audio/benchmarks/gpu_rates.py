"""DCLS-Gauss against DSC on one GPU: the measurements ``scripts/gpu_rates.sh`` runs in order.

``python -m dcls_audio.benchmarks.gpu_rates COMMAND ...``:
* ``model``: model-only samples/s, DSC and DCLS-Gauss interleaved per model (as
  :mod:`.throughput`), for each mode (``infer``, ``train``) under one compile setting;
* ``trainer``: the record of a ``train.py`` run's own rate: the median of its progress windows
  after the first ``--skip-windows`` of each epoch (start-up, tuning, compilation), read from the
  run's ``metrics.jsonl`` (a run cut short keeps the windows it logged);
* ``profile``: a ``torch.profiler`` table of one training step per conv: device time against
  wall time, the top kernels, the number of kernels and of launch calls;
* ``exact``: the CUDA depthwise paths (Triton in both layouts, FFT, cuDNN) and the kernel
  construction against float64 on ConvNeXt-T's stage shapes, with the fp32 and bf16 bounds.

Every command writes its JSON after each measurement; records carry ``model``, ``conv``,
``mode`` (``infer``, ``train`` or ``trainer``), ``device``, ``device_name``, ``dtype``,
``batch_size``, ``channels_last``, ``compiled``, ``samples_per_s``, ``date``, ``commit`` and
``command``. ``--tiny`` builds the models with few channels (CPU rehearsal, with
``TRITON_INTERPRET=1`` for the Triton paths); :mod:`.gpu_summary` turns the records into ratios.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from dcls_audio.benchmarks import throughput
from dcls_audio.benchmarks.gpu_session import _top, _train_rows, _write, steady_rate
from dcls_audio.benchmarks.throughput import _Runner, _sync, device_name, resolve_device

#: timm constructor arguments of the rehearsal's small models (ConvFormer's are fixed by timm)
TINY = {
    "convnext_t": {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]},
    "fastvit_sa24": {"embed_dims": [8, 16, 32, 64], "layers": [1, 1, 1, 1]},
}
LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
PROG = "python -m dcls_audio.benchmarks.gpu_rates"
COMMAND: list[str | None] = [None]  # the command line main() runs, for the records


def meta(command: str | None = None) -> dict[str, Any]:
    """Date (UTC), commit (``DCLS_COMMIT`` or git) and command of a measurement."""
    from dcls_audio.runfiles import git_commit

    command = command or COMMAND[0] or " ".join([PROG, *sys.argv[1:]])
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": os.environ.get("DCLS_COMMIT") or git_commit(),
        "command": command,
    }


def _overrides(model: str, tiny: bool) -> dict[str, Any] | None:
    return {"timm_kwargs": TINY[model]} if tiny and model in TINY else None


def _save_tuning() -> None:
    """Keep the Triton block choices for later processes (``DCLS_TRITON_CONFIGS``)."""
    path = os.environ.get("DCLS_TRITON_CONFIGS")
    if path and "dcls_audio.dcls.tuning" in sys.modules:
        sys.modules["dcls_audio.dcls.tuning"].save(path)


def model_rates(
    models: list[str], modes: list[str], device: str, dtype: str, batch: int, compile: str,
    iters: int, warmup: int, repeats: int, out: str, tiny: bool = False, backend: str = "inductor",
) -> list[dict]:  # fmt: skip
    """DSC and DCLS-Gauss interleaved per model and mode; records written after each pair."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer and the throughput benchmark
    if backend != "inductor":  # rehearsal: a cheaper backend than the trainer's on the CPU
        throughput.compile_module = lambda module, mode: torch.compile(
            module, backend=backend, dynamic=False
        )
    records: list[dict] = []
    for model in models:
        for mode in modes:
            start = time.perf_counter()
            try:
                recs = throughput.measure_model(
                    model, ["dsc", "dcls_gauss"], mode, dev, dtype, batch, iters, warmup,
                    repeats, True, compile=compile, model_overrides=_overrides(model, tiny),
                )  # fmt: skip
            except Exception:  # noqa: BLE001 - one failing pair leaves the others
                print(f"{model} {mode} compile={compile}: failed", flush=True)
                traceback.print_exc()
                continue
            finally:
                _save_tuning()
            for r in recs:
                r.update(meta(), seconds=round(time.perf_counter() - start, 1), tiny=tiny)
                print(f"{model:>15} {r['conv']:>10} {mode:>5} compile={compile} "
                      f"{r['samples_per_s']:9.2f}/s", flush=True)  # fmt: skip
            records.extend(recs)
            _write(out, records)
    return records


def _device_line(run_dir: Path) -> dict[str, str]:
    """The run's ``device: k v, ...`` line (train.log), as a dict."""
    log = run_dir / "train.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        if "device: device " in line:
            text = line.split("device: ", 1)[1]
            return dict(p.split(" ", 1) for p in text.split(", ") if " " in p)
    return {}


def trainer_record(
    run_dir: Path, model: str, conv: str, batch: int, skip: int, command: str | None = None
) -> dict[str, Any]:
    """One ``trainer`` record of a ``train.py`` run directory (finished or cut short)."""
    info: dict[str, Any] = _device_line(run_dir)
    results = run_dir / "results.json"
    doc = json.loads(results.read_text()) if results.exists() else {}
    info.update({k: v for k, v in (doc.get("device") or {}).items() if v is not None})
    rows = _train_rows(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    dev = str(info.get("device", "unknown")).split(":")[0]
    cl, mode = str(info.get("channels_last", "")), str(info.get("compile", "none"))
    rec: dict[str, Any] = {
        "model": model, "conv": conv, "mode": "trainer", "device": dev,
        "device_name": info.get("name") or (device_name(torch.device("cpu")) if dev == "cpu"
                                            else None),
        "dtype": "bf16" if str(info.get("dtype", "")).startswith("bf16") else "fp32",
        "batch_size": batch, "channels_last": cl == "True", "compiled": mode != "none",
        "compile": mode, **steady_rate(rows, skip), "skip_windows": skip,
        "steps": rows[-1]["step"] if rows else 0, "finished": results.exists(),
        "results_train_samples_per_s": doc.get("train_samples_per_s"), "map": doc.get("map"),
        "run_dir": str(run_dir),
    }  # fmt: skip
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if command is None and overrides.exists():
        import yaml

        command = " ".join(["python train.py", *yaml.safe_load(overrides.read_text())])
    return {**rec, **meta(command)}


def profile_step(
    device: str, model: str, convs: list[str], dtype: str, batch: int, steps: int, iters: int,
    out_dir: str, tiny: bool = False,
) -> dict:  # fmt: skip
    """Profiler table of one training step per conv (eager, channels_last, as the trainer)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from dcls_audio.config import load_group
    from dcls_audio.models import build_model

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    out = Path(out_dir)
    doc: dict[str, Any] = {"model": model, "device_name": device_name(dev), "dtype": dtype,
                           "batch_size": batch, "steps": steps, **meta()}  # fmt: skip
    cfg = load_group("model", model)
    cfg.update(pretrained=None, **(_overrides(model, tiny) or {}))
    for conv in convs:
        torch.manual_seed(0)
        runner = _Runner(build_model(cfg, load_group("conv", conv)), "train", dev, dtype, batch,
                         True)  # fmt: skip
        for _ in range(3):
            runner.step()
        wall = runner.time(iters) / iters
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                runner.step()
            _sync(dev)
            profiled = (time.perf_counter() - start) / steps
        events = prof.key_averages()
        on_device = [e for e in events if e.device_type == DeviceType.CUDA]

        def ms(rows: Any, attr: str) -> float:
            return round(sum(getattr(e, attr) for e in rows) / 1e3 / steps, 3)

        row = {
            "wall_ms": round(wall * 1e3, 3), "profiled_wall_ms": round(profiled * 1e3, 3),
            "device_ms": ms(on_device, "self_device_time_total"),  # the kernels' time
            # kernels and again the operators they are linked to (as docs/gpu_h200.md summed)
            "all_rows_device_ms": ms(events, "self_device_time_total"),
            "kernels": sum(e.count for e in on_device) // steps,
            "launch_calls": sum(e.count for e in events if e.key in LAUNCH_CALLS) // steps,
            "cpu_ops": sum(e.count for e in events if e.key.startswith("aten::")) // steps,
            "self_cpu_ms": ms(events, "self_cpu_time_total"), "top": _top(prof, steps, cuda, 25),
        }  # fmt: skip
        row["device_busy"] = round(row["device_ms"] / max(row["wall_ms"], 1e-9), 3)
        doc[conv] = row
        sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        table = events.table(sort_by=sort, row_limit=40, max_name_column_width=70)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"profile_{model}_{conv}_train.txt").write_text(table)
        print(f"{conv}: wall {row['wall_ms']:.1f} ms, device {row['device_ms']:.1f} ms, "
              f"{row['kernels']} kernels, {row['launch_calls']} launch calls")  # fmt: skip
        print(table[:4000], flush=True)
        _write(out / "profile.json", doc)
        del runner
        if cuda:
            torch.cuda.empty_cache()
    return doc


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("model")
    m.add_argument("--models", default="convnext_t")
    m.add_argument("--modes", default="infer,train")
    m.add_argument("--compile", default="none", choices=throughput.COMPILE_MODES)
    m.add_argument("--backend", default="inductor", help="other than inductor: rehearsals only")
    m.add_argument("--iters", type=int, default=10)
    m.add_argument("--warmup", type=int, default=3)
    m.add_argument("--repeats", type=int, default=5)
    pr = sub.add_parser("profile")
    pr.add_argument("--model", default="convnext_t")
    pr.add_argument("--convs", default="dcls_gauss,dsc")
    pr.add_argument("--steps", type=int, default=1, help="profiled steps")
    pr.add_argument("--iters", type=int, default=5, help="unprofiled steps timed")
    pr.add_argument("--out-dir", required=True)
    for q in (m, pr):
        q.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
        q.add_argument("--tiny", action="store_true", help="small models (CPU rehearsal)")
    t = sub.add_parser("trainer")
    t.add_argument("--run-dir", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--conv", required=True)
    t.add_argument("--skip-windows", type=int, default=2)
    e = sub.add_parser("exact")
    e.add_argument("--dtypes", default="bfloat16,float32")
    e.add_argument("--paths", default="triton,fft,cudnn")
    e.add_argument("--channels-div", type=int, default=1, help="fewer channels (rehearsal)")
    for q in (m, pr, e):
        q.add_argument("--device", default="cuda", choices=["auto", "cpu", "cuda"])
    for q in (m, pr, t, e):
        q.add_argument("--batch", type=int, default=64)
    for q in (m, t, e):
        q.add_argument("--json", required=True)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    COMMAND[0] = " ".join([PROG, *argv])
    from dcls_audio.dcls.interpreter import patch_triton_interpreter

    patch_triton_interpreter()  # rehearsals under TRITON_INTERPRET=1
    if args.cmd == "model":
        model_rates(
            args.models.split(","), args.modes.split(","), args.device, args.dtype, args.batch,
            args.compile, args.iters, args.warmup, args.repeats, args.json, args.tiny,
            args.backend,
        )  # fmt: skip
    elif args.cmd == "trainer":
        rec = trainer_record(Path(args.run_dir), args.model, args.conv, args.batch,
                             args.skip_windows)  # fmt: skip
        print(json.dumps(rec, indent=1))
        _write(args.json, [rec])
    elif args.cmd == "profile":
        profile_step(
            args.device, args.model, args.convs.split(","), args.dtype, args.batch, args.steps,
            args.iters, args.out_dir, args.tiny,
        )  # fmt: skip
    else:
        from dcls_audio.benchmarks.gpu_exact import exact

        exact(args.device, args.batch, args.dtypes.split(","), args.channels_div,
              args.paths.split(","), args.json, meta())  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
