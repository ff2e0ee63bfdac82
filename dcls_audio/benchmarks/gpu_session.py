"""The GPU session's measurements beside the throughput and per-layer benchmarks.

Usage: ``python -m dcls_audio.benchmarks.gpu_session COMMAND ...`` (``scripts/gpu_session.sh``
runs them all, each with its own time limit), with

* ``tune``: time the Triton kernels' candidate block configurations on ConvNeXt-T's DCLS layers
  (forward, input and weight gradients, batch 64), keep the fastest, write them and every timing;
* ``profile``: a ``torch.profiler`` table of one training step and one inference batch per conv;
* ``compile``: eager against ``torch.compile`` inference of one model per conv;
* ``runs``: a ``train.py`` run's steady end-to-end rate (progress windows after each epoch's
  first), and whether two runs ended with the same weights;
* ``resume``: a ``train.py`` run, and the same run stopped by SIGTERM after a given step and
  resumed in its directory: same weights, EMA, Adam moments and final metrics?

``--device cpu`` (with ``TRITON_INTERPRET=1`` and small ``--channels-div``) rehearses the same
code on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from dcls_audio.benchmarks.gpu_exact import path_errors
from dcls_audio.benchmarks.throughput import _Runner, _sync, device_name
from dcls_audio.dcls.interpreter import patch_triton_interpreter


def _write(path: str | Path, doc: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    tmp.replace(path)


def tune(device: str, batch: int, dtype: str, channels_div: int, out: str, configs: str) -> dict:
    """Time the block configurations on ConvNeXt-T's four DCLS layer shapes; keep the fastest."""
    from dcls_audio.dcls import Dcls2d, dwconv, tuning

    from .cuda_layers import COUNT, SIZE, STAGE_MAPS

    dt = getattr(torch, dtype)
    doc: dict[str, Any] = {"device": device_name(torch.device(device)), "batch": batch, "rows": []}
    for c, h, w in STAGE_MAPS:
        c = max(1, c // channels_div)
        torch.manual_seed(c)
        layer = Dcls2d(c, c, COUNT, SIZE, padding=SIZE // 2, groups=c)
        window, pads = layer._plan((h, w))
        kernel = layer.kernel(window).detach().to(device, dt).requires_grad_()
        x = torch.randn(batch, c, h, w, device=device, dtype=dt)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
        start = time.perf_counter()
        y = dwconv.run_path("triton", x, kernel, None, pads)
        y.backward(torch.randn_like(y))
        _sync(x.device)
        row = {"input": [batch, c, h, w], "seconds": time.perf_counter() - start}
        row["max_rel_err"] = path_errors("triton", x.detach(), kernel.detach(), pads)
        doc["rows"].append(row)
        doc["tuned"], doc["timings"] = tuning.TUNED, tuning.TIMINGS
        _write(out, doc)
    tuning.save(configs)
    for key, cfg in tuning.TUNED.items():
        print(f"{key}: {cfg}")
    return doc


def _top(prof: Any, steps: int, cuda: bool, limit: int = 40) -> list[dict]:
    rows = []
    for e in prof.key_averages():
        dev = e.self_device_time_total if cuda else 0.0
        rows.append(
            {
                "name": e.key,
                "calls": e.count // steps,
                "self_device_ms": round(dev / 1e3 / steps, 4),
                "self_cpu_ms": round(e.self_cpu_time_total / 1e3 / steps, 4),
            }
        )
    rows.sort(key=lambda r: -(r["self_device_ms"] if cuda else r["self_cpu_ms"]))
    return rows[:limit]


def profile(
    device: str, model_name: str, convs: list[str], batch: int, steps: int, out_dir: str
) -> dict:
    """Profiler tables (per step) of one model's training step and inference batch per conv."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from dcls_audio.config import load_group
    from dcls_audio.models import build_model

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    doc: dict[str, Any] = {"device": device_name(dev), "batch": batch, "steps": steps}
    cfg = load_group("model", model_name)
    cfg["pretrained"] = None
    for conv in convs:
        for mode in ("train", "infer"):
            torch.manual_seed(0)
            model = build_model(cfg, load_group("conv", conv))
            runner = _Runner(model, mode, dev, "bf16" if cuda else "fp32", batch, True)
            for _ in range(3):
                runner.step()
            _sync(dev)
            start = time.perf_counter()
            with torch_profile(activities=activities) as prof:
                for _ in range(steps):
                    runner.step()
                _sync(dev)
            wall = (time.perf_counter() - start) / steps
            sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
            table = prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=70)
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / f"profile_{model_name}_{conv}_{mode}.txt").write_text(table)
            top = _top(prof, steps, cuda)
            total = sum(r["self_device_ms"] for r in _top(prof, steps, cuda, 10**6))
            doc[f"{conv}_{mode}"] = {"wall_ms": wall * 1e3, "device_ms": total, "top": top}
            print(f"{conv} {mode}: {wall * 1e3:.1f} ms per step (profiled), device {total:.1f} ms")
            print(table[:6000])
            _write(Path(out_dir) / "profile.json", doc)
            del runner, model
            if cuda:
                torch.cuda.empty_cache()
    return doc


def _rate(runner: _Runner, batch: int, iters: int, repeats: int) -> float:
    return statistics.median(batch * iters / runner.time(iters) for _ in range(repeats))


def compile_bench(
    device: str, model_name: str, convs: list[str], batch: int, iters: int, repeats: int,
    backend: str, out: str,
) -> list[dict]:  # fmt: skip
    """Inference samples/s, eager then compiled (same model, inputs, layout), per conv."""
    from dcls_audio.config import load_group
    from dcls_audio.models import build_model

    dev = torch.device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = load_group("model", model_name)
    cfg["pretrained"] = None
    dtype = "bf16" if dev.type == "cuda" else "fp32"
    records: list[dict] = []
    for conv in convs:
        torch.manual_seed(0)
        runner = _Runner(
            build_model(cfg, load_group("conv", conv)), "infer", dev, dtype, batch, True
        )
        for _ in range(3):
            runner.step()  # measures the paths and tunes: the compiled graph reuses the choices
        eager = _rate(runner, batch, iters, repeats)
        with torch.inference_mode():
            ref = runner.model(runner.x[:2]).float()
        runner.model = torch.compile(runner.model, backend=backend)
        start = time.perf_counter()
        runner.step()
        _sync(dev)
        compile_s = time.perf_counter() - start
        runner.step()
        compiled = _rate(runner, batch, iters, repeats)
        with torch.inference_mode():
            err = (runner.model(runner.x[:2]).float() - ref).abs().max() / ref.abs().max()
        rec = {
            "model": model_name, "conv": conv, "mode": "infer", "dtype": dtype, "batch": batch,
            "channels_last": True, "backend": backend, "device_name": device_name(dev),
            "eager_samples_per_s": round(eager, 2), "compiled_samples_per_s": round(compiled, 2),
            "compile_s": round(compile_s, 1), "max_rel_diff": float(err),
        }  # fmt: skip
        records.append(rec)
        print(json.dumps(rec), flush=True)
        _write(out, records)
        del runner
    return records


def _train_rows(run_dir: Path) -> list[dict]:
    """The progress windows of a run's metrics.jsonl (a line cut by a time limit is skipped)."""
    rows = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("type") == "train" and "samples_per_s" in entry:
            rows.append(entry)
    return rows


def steady_rate(rows: list[dict], skip: int) -> dict[str, Any]:
    """Median window rate after each epoch's first ``skip`` windows (None without any)."""
    seen: dict[int, int] = {}
    steady = []
    for r in rows:
        k = seen[r["epoch"]] = seen.get(r["epoch"], -1) + 1
        if k >= skip:
            steady.append(r["samples_per_s"])
    return {
        "samples_per_s": round(statistics.median(steady), 2) if steady else None,
        "steady_windows": len(steady),
        "windows": [round(r["samples_per_s"], 1) for r in rows],
    }


def run_rate(run_dir: Path) -> dict:
    """Median window rate after each epoch's first window (loader start-up), and all windows."""
    rate = steady_rate(_train_rows(run_dir), skip=1)
    out: dict[str, Any] = {"windows": rate["windows"]}
    out["steady_samples_per_s"] = rate["samples_per_s"]
    results = run_dir / "results.json"
    if results.exists():
        doc = json.loads(results.read_text())
        out["results_train_samples_per_s"] = doc.get("train_samples_per_s")
        out["map"] = doc.get("map")
    return out


def same_weights(a: Path, b: Path) -> dict:
    """Largest difference of model weights, EMA and Adam moments between two last.pt files."""
    sa, sb = (torch.load(p, map_location="cpu", weights_only=False) for p in (a, b))
    out: dict[str, Any] = {"step": [sa.get("step"), sb.get("step")]}
    for part in ("model", "ema"):
        if sa.get(part) is None:
            continue
        diffs = [
            (sa[part][k].double() - sb[part][k].double()).abs().max().item()
            for k in sa[part]
            if sa[part][k].is_floating_point()
        ]
        out[f"{part}_max_abs_diff"] = max(diffs)
    moments = [
        (va.double() - sb["optimizer"]["state"][k][name].double()).abs().max().item()
        for k, state in sa["optimizer"]["state"].items()
        for name, va in state.items()
        if torch.is_tensor(va) and va.is_floating_point() and va.dim() > 0
    ]
    out["optimizer_max_abs_diff"] = max(moments) if moments else None
    out["identical"] = out.get("model_max_abs_diff") == 0 and out["optimizer_max_abs_diff"] == 0
    return out


def _last_step(run_dir: Path) -> int:
    try:
        return max((r["step"] for r in _train_rows(run_dir)), default=-1)
    except (OSError, ValueError):
        return -1


def resume_check(train_args: list[str], work: Path, stop_step: int, limit: float) -> dict:
    """Run ``train.py`` uninterrupted, then again stopped by SIGTERM after ``stop_step`` (the
    signal goes to the trainer's own process id) and resumed; compare the two ends."""
    import signal
    import subprocess

    base = [sys.executable, "train.py", *train_args]
    runs = {name: work / f"resume_{name}" for name in ("a", "b")}
    doc: dict[str, Any] = {"command": " ".join(base), "stop_after_step": stop_step}

    def train(name: str, log_name: str) -> Any:
        with open(work / f"{log_name}.log", "w") as log:
            cmd = base + [f"hydra.run.dir={runs[name]}"]
            start = time.perf_counter()
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=limit).returncode
            doc[f"{log_name}_s"] = round(time.perf_counter() - start, 1)
            return rc

    doc["a_rc"] = train("a", "resume_a")
    with open(work / "resume_b_stop.log", "w") as log:
        cmd = base + [f"hydra.run.dir={runs['b']}"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + limit
        while proc.poll() is None and time.time() < deadline and _last_step(runs["b"]) < stop_step:
            time.sleep(0.1)
        doc["signal_after_step"] = _last_step(runs["b"])
        sent = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            doc["b_stop_rc"] = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            doc["b_stop_rc"] = "killed: still running 60 s after SIGTERM"
        doc["b_stop_s"] = round(time.perf_counter() - sent, 1)
    if (runs["b"] / "last.pt").exists():
        saved = torch.load(runs["b"] / "last.pt", map_location="cpu", weights_only=False)
        doc["b_saved_at"] = {"epoch": saved.get("epoch"), "step": saved.get("step")}
        del saved
    doc["b_resume_rc"] = train("b", "resume_b_resume")
    if all((d / "last.pt").exists() for d in runs.values()):
        doc["compare"] = same_weights(runs["a"] / "last.pt", runs["b"] / "last.pt")
    for name, d in runs.items():
        if (d / "results.json").exists():
            res = json.loads((d / "results.json").read_text())
            doc[f"{name}_metrics"] = {k: res.get(k) for k in ("map", "mauc", "dprime", "steps")}
    print(json.dumps(doc, indent=1, default=str))
    return doc


def main(argv: list[str] | None = None) -> int:
    """CLI (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tune")
    t.add_argument("--configs", required=True, help="block configurations file to write")
    pr = sub.add_parser("profile")
    pr.add_argument("--out-dir", required=True)
    pr.add_argument("--steps", type=int, default=2)
    c = sub.add_parser("compile")
    c.add_argument("--backend", default="inductor")
    c.add_argument("--iters", type=int, default=10)
    c.add_argument("--repeats", type=int, default=3)
    for q in (t, pr, c):
        q.add_argument("--device", default="cuda")
        q.add_argument("--batch", type=int, default=64)
        q.add_argument("--json", default=None)
    t.add_argument("--dtype", default="bfloat16")
    t.add_argument("--channels-div", type=int, default=1, help="fewer channels (rehearsal)")
    for q in (pr, c):
        q.add_argument("--model", default="convnext_t")
        q.add_argument("--convs", default="dcls_gauss,dsc")
    r = sub.add_parser("runs")
    r.add_argument("--rate", nargs="*", default=[], help="run directories")
    r.add_argument("--compare", nargs=2, default=None, help="two last.pt files")
    r.add_argument("--json", required=True)
    rs = sub.add_parser("resume")
    rs.add_argument("--work", required=True)
    rs.add_argument("--stop-step", type=int, required=True)
    rs.add_argument("--limit", type=float, default=120, help="seconds per train.py run")
    rs.add_argument("--json", required=True)
    rs.add_argument("train_args", nargs=argparse.REMAINDER, help="train.py overrides")
    args = p.parse_args(argv)
    patch_triton_interpreter()  # rehearsals under TRITON_INTERPRET=1
    if args.cmd == "tune":
        tune(args.device, args.batch, args.dtype, args.channels_div, args.json, args.configs)
    elif args.cmd == "profile":
        profile(
            args.device, args.model, args.convs.split(","), args.batch, args.steps, args.out_dir
        )
    elif args.cmd == "compile":
        compile_bench(
            args.device, args.model, args.convs.split(","), args.batch, args.iters, args.repeats,
            args.backend, args.json,
        )  # fmt: skip
    elif args.cmd == "runs":
        doc: dict[str, Any] = {d: run_rate(Path(d)) for d in args.rate}
        if args.compare:
            doc["compare"] = same_weights(*map(Path, args.compare))
        print(json.dumps(doc, indent=1))
        _write(args.json, doc)
    else:
        work = Path(args.work)
        work.mkdir(parents=True, exist_ok=True)
        overrides = [a for a in args.train_args if a != "--"]
        _write(args.json, resume_check(overrides, work, args.stop_step, args.limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
