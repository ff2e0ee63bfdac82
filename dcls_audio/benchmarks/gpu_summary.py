"""One JSON and one markdown table from the records of ``scripts/gpu_rates.sh``.

Usage: ``python -m dcls_audio.benchmarks.gpu_summary OUT_DIR [--json PATH] [--markdown PATH]``
(default ``OUT_DIR/summary.json`` and ``OUT_DIR/summary.md``). Reads ``OUT_DIR/records/*.json``
(lists of records from :mod:`.gpu_rates`), and, when present, ``exact.json``,
``profile/profile.json`` and ``steps.txt``. Pairs DSC and DCLS-Gauss records measured under the
same setting (model, mode, compiled, device, dtype, batch, layout), gives DCLS/DSC per pair and
checks the speed goals: ConvNeXt-T model-only >= 0.86 inference and >= 0.75 training, eager and
compiled; all three models present; ``train.py``'s own rate DCLS/DSC >= 0.80 with the DSC run at
>= 0.90 of the DSC model-only training rate (same compile setting); one CUDA device.
Pure Python: it runs anywhere, on the copied output folder too.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MODELS = ("convnext_t", "convformer_s18", "fastvit_sa24")
MODEL_BAR = {"infer": 0.86, "train": 0.75}
TRAINER_BAR = 0.80
DSC_SHARE_BAR = 0.90
SETTING = ("model", "mode", "compiled", "device", "device_name", "dtype", "batch_size",
           "channels_last")  # fmt: skip


def load_records(paths: Iterable[Path]) -> list[dict[str, Any]]:
    """Every record (a dict with ``samples_per_s`` and ``mode``) of the given JSON files."""
    out: list[dict[str, Any]] = []
    for path in sorted(paths):
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            print(f"{path}: unreadable ({err}); left out", file=sys.stderr)
            continue
        for rec in doc if isinstance(doc, list) else doc.get("records", []):
            if isinstance(rec, dict) and "samples_per_s" in rec and "mode" in rec:
                out.append(rec)
    return out


def pair_ratios(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """DSC and DCLS-Gauss of one setting side by side with DCLS/DSC (None if one is missing)."""
    pairs: dict[tuple, dict[str, Any]] = {}
    for rec in records:
        if rec.get("conv") not in ("dsc", "dcls_gauss"):
            continue
        key = tuple(rec.get(k) for k in SETTING)
        pair = pairs.setdefault(key, {**dict(zip(SETTING, key, strict=True)),
                                      "dsc": None, "dcls_gauss": None})  # fmt: skip
        pair[rec["conv"]] = rec["samples_per_s"]  # a later record of the setting wins
    for pair in pairs.values():
        dsc, dcls = pair["dsc"], pair["dcls_gauss"]
        pair["ratio"] = round(dcls / dsc, 4) if dsc and dcls is not None else None
    return list(pairs.values())


def _find(pairs: list[dict], **want: Any) -> dict | None:
    found = [p for p in pairs if all(p.get(k) == v for k, v in want.items())]
    return found[-1] if found else None


def dsc_share(trainer: dict, pairs: list[dict]) -> dict[str, Any] | None:
    """The DSC ``train.py`` rate over the DSC model-only training rate of the same model,
    compile setting, device, dtype and batch (the same layout preferred)."""
    same = {k: trainer[k] for k in ("model", "compiled", "device_name", "dtype", "batch_size")}
    model = _find(pairs, mode="train", channels_last=trainer["channels_last"], **same)
    model = model or _find(pairs, mode="train", **same)
    if model is None or not model["dsc"] or trainer["dsc"] is None:
        return None
    return {"value": round(trainer["dsc"] / model["dsc"], 4), "model_only_dsc": model["dsc"],
            "model_only_channels_last": model["channels_last"]}  # fmt: skip


def _check(name: str, value: float | None, bar: float) -> dict[str, Any]:
    return {"check": name, "value": value, "bar": bar, "ok": value is not None and value >= bar}


def bar_checks(pairs: list[dict]) -> dict[str, Any]:
    """The goals' checks, each with value, bar and ok; ``met`` when all hold."""
    checks = []
    for mode, bar in MODEL_BAR.items():
        for compiled in (False, True):
            pair = _find(pairs, model="convnext_t", mode=mode, compiled=compiled)
            kind = "compiled" if compiled else "eager"
            name = f"ConvNeXt-T model-only {mode}, {kind}: DCLS/DSC"
            checks.append(_check(name, pair and pair["ratio"], bar))
    measured = {(p["model"], p["mode"]) for p in pairs if p["ratio"] is not None}
    present = [m for m in MODELS if {(m, "infer"), (m, "train")} <= measured]
    name = "all three models, DSC and DCLS-Gauss, infer and train"
    checks.append({"check": name, "value": present, "bar": list(MODELS),
                   "ok": len(present) == len(MODELS)})  # fmt: skip
    trainer_ok = []
    for t in (p for p in pairs if p["mode"] == "trainer" and p["model"] == "convnext_t"):
        kind = "compiled" if t["compiled"] else "eager"
        ratio = _check(f"ConvNeXt-T train.py, {kind}: DCLS/DSC", t["ratio"], TRAINER_BAR)
        share = dsc_share(t, pairs)
        loader = _check(f"ConvNeXt-T train.py, {kind}: DSC / model-only DSC train",
                        share and share["value"], DSC_SHARE_BAR)  # fmt: skip
        checks.extend([ratio, loader])
        trainer_ok.append(ratio["ok"] and loader["ok"])
    if not trainer_ok:
        checks.append(_check("ConvNeXt-T train.py: DCLS/DSC", None, TRAINER_BAR))
    devices = sorted({str(p["device_name"]) for p in pairs})
    one = bool(pairs) and len(devices) == 1 and all(p["device"] == "cuda" for p in pairs)
    checks.append({"check": "one CUDA device", "value": devices, "bar": 1, "ok": one})
    model_only_ok = all(c["ok"] for c in checks[: len(MODEL_BAR) * 2 + 1])
    return {"checks": checks, "met": model_only_ok and any(trainer_ok) and one}


def _exact_summary(doc: dict) -> dict[str, Any]:
    rows = doc.get("rows", [])
    worst: dict[str, float] = {}
    for r in rows:
        key = f"{r['check']} {r.get('dtype', 'float32')} {r.get('layout', '')}".strip()
        errs = [v for v in r.get("errors", {}).values() if isinstance(v, float)]
        if errs:
            worst[key] = max(worst.get(key, 0.0), max(errs))
    failed = [r for r in rows if not r.get("ok")]
    return {"rows": len(rows), "failed": len(failed), "worst": worst,
            "failures": failed[:10]}  # fmt: skip


def summarize(out_dir: Path, command: str | None = None) -> dict[str, Any]:
    """Records, pairs, checks, exactness and profile of one output folder."""
    records = load_records((out_dir / "records").glob("*.json"))
    pairs = pair_ratios(records)
    doc: dict[str, Any] = {"command": command, "pairs": pairs, "bar": bar_checks(pairs)}
    doc["device_names"] = sorted({str(r.get("device_name")) for r in records})
    doc["commits"] = sorted({str(r.get("commit")) for r in records})
    dates = sorted(str(r["date"]) for r in records if r.get("date"))
    doc["dates"] = [dates[0], dates[-1]] if dates else []
    for name, path in (("exact", "exact.json"), ("profile", "profile/profile.json")):
        try:
            doc[name] = json.loads((out_dir / path).read_text())
        except (OSError, ValueError):
            doc[name] = None
    if doc["exact"]:
        doc["exact_summary"] = _exact_summary(doc["exact"])
    steps = out_dir / "steps.txt"
    doc["steps"] = steps.read_text().splitlines() if steps.exists() else []
    doc["records"] = records
    return doc


def _num(v: Any, digits: int = 1) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _order(pair: dict) -> tuple:
    modes = ("infer", "train", "trainer")
    rank = MODELS.index(pair["model"]) if pair["model"] in MODELS else len(MODELS)
    return (modes.index(pair["mode"]) if pair["mode"] in modes else 3, pair["compiled"], rank)


def markdown(doc: dict[str, Any]) -> str:
    """The tables a results page copies: model-only and train.py rates, checks, profile."""
    lines = [
        f"Device: {', '.join(doc['device_names'])}; commit {', '.join(doc['commits'])}; "
        f"{' to '.join(doc['dates'])}",
        "",
    ]
    if doc.get("command"):
        lines += [f"Command: `{doc['command']}`", ""]
    lines += [
        "| model | mode | compiled | dtype | batch | channels_last | DSC samples/s "
        "| DCLS-Gauss samples/s | DCLS/DSC |",
        "|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for p in sorted(doc["pairs"], key=_order):
        cells = [p[k] for k in ("model", "mode", "compiled", "dtype", "batch_size")]
        cells += [p["channels_last"], _num(p["dsc"]), _num(p["dcls_gauss"]), _num(p["ratio"], 3)]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "| check | value | bar | met |", "|---|---|---|---|"]
    for c in doc["bar"]["checks"]:
        value = _num(c["value"], 3) if isinstance(c["value"], float | None) else c["value"]
        lines.append(f"| {c['check']} | {value} | {c['bar']} | {'yes' if c['ok'] else 'no'} |")
    lines += ["", f"All goals met: {'yes' if doc['bar']['met'] else 'no'}"]
    prof = doc.get("profile") or {}
    convs = [k for k in ("dsc", "dcls_gauss") if isinstance(prof.get(k), dict)]
    if convs:
        lines += [
            "",
            f"One training step ({prof.get('model')}, batch {prof.get('batch_size')}, "
            "torch.profiler):",
            "",
            "| conv | wall ms | profiled wall ms | device ms | device busy | kernels "
            "| launch calls |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for k in convs:
            r = prof[k]
            cells = [k, _num(r["wall_ms"]), _num(r["profiled_wall_ms"]), _num(r["device_ms"])]
            cells += [_num(r["device_busy"], 2), r["kernels"], r["launch_calls"]]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    ex = doc.get("exact_summary")
    if ex:
        worst = ", ".join(f"{k} {v:.1e}" for k, v in ex["worst"].items())
        lines += [
            "",
            f"Exactness against float64: {ex['rows']} checks, {ex['failed']} failed; "
            f"worst max|d|/max|ref|: {worst}",
        ]
    if doc.get("steps"):
        lines += ["", "Steps:", "", "```", *doc["steps"], "```"]
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str) -> None:
    """Write beside ``path``, then rename: a cut run never leaves half a summary."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    """CLI: write the summary JSON and markdown of an output folder."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None)
    p.add_argument("--command", default=None, help="the command that measured (for the header)")
    args = p.parse_args(argv)
    doc = summarize(args.out_dir, args.command)
    text = markdown(doc)
    _write(args.json or args.out_dir / "summary.json", json.dumps(doc, indent=1) + "\n")
    _write(args.markdown or args.out_dir / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
