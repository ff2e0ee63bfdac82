"""Turn the `results.json` files of many runs into the paper's Table 1 (mean ± std over seeds).

Runs are grouped by their whole resolved config (stored in each results file) except the seed,
``data.fold`` (folds aggregate like seeds) and the keys that cannot change results (paths,
loader workers, logging, wandb): two runs that differ in a kernel size or a learning rate are
two rows, and rows of the same model and conv show the keys that tell them apart. The spread
is the sample standard deviation (ddof=1) over the runs of a group; a group with a single run
shows its value alone. Duplicate seeds within a group are kept and
reported with a warning (a copied or re-run directory would otherwise go unnoticed). Runs
evaluated on strongly labelled clips also have event metrics (segment F1, segment AP, PSDS1 when
present: `dcls_audio.train.event_metrics`); they appear beside mAP, with their segment length and
threshold under the table, only when some run has them.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dcls_audio.runfiles import RESULTS_FILE, metric_value, read_results, write_json, write_text

# Paper Table 1: (model, conv) -> label, params (M, 1000-class heads), mAP (%) mean, std,
# single-V100 inference samples/s.
PAPER_TABLE1: dict[tuple[str, str], dict[str, Any]] = {
    ("convformer_s18", "dsc"): dict(
        label="ConvFormer-S18 (LAMB)", params_m=26.8, map=43.14, map_std=0.03, sps=513.3
    ),
    ("convformer_s18", "dcls_gauss"): dict(
        label="ConvFormer-S18 (LAMB)", params_m=26.8, map=43.68, map_std=0.02, sps=396.8
    ),
    ("fastvit_sa24", "dsc"): dict(
        label="FastViT-SA24 (no ImageNet init)", params_m=21.5, map=43.82, map_std=0.05, sps=633.6
    ),
    ("fastvit_sa24", "dcls_gauss"): dict(
        label="FastViT-SA24 (no ImageNet init)", params_m=21.5, map=44.40, map_std=0.07, sps=551.7
    ),
    ("convnext_t", "dsc"): dict(
        label="ConvNeXt-T", params_m=28.6, map=44.83, map_std=0.14, sps=591.4
    ),
    ("convnext_t", "dcls_gauss"): dict(
        label="ConvNeXt-T", params_m=28.6, map=45.52, map_std=0.05, sps=509.4
    ),
}
CONV_LABELS = {"dsc": "DSC 7×7", "dcls_gauss": "DCLS-Gauss 23²/26", "dcls_bilinear": "DCLS-bil."}

# results.json key -> (column title, scale, decimals)
METRICS: dict[str, tuple[str, float, int]] = {
    "map": ("mAP (%)", 100.0, 2),
    # event metrics of strongly labelled evaluation clips (dcls_audio.train.event_metrics)
    "segment_f1": ("segment F1 (%)", 100.0, 2),
    "segment_f1_tuned": ("segment F1 tuned (%)", 100.0, 2),
    "segment_ap": ("segment AP (%)", 100.0, 2),
    "psds1": ("PSDS1", 1.0, 3),
    "mauc": ("mAUC (%)", 100.0, 2),
    "dprime": ("d′", 1.0, 3),
    "accuracy": ("accuracy (%)", 100.0, 2),  # multiclass runs (data.task=multiclass)
    "macro_f1": ("macro-F1 (%)", 100.0, 2),
    "map_ema": ("mAP EMA (%)", 100.0, 2),
    "params": ("params (M)", 1e-6, 2),
    "train_samples_per_s": ("train samples/s", 1.0, 1),
}


# Config keys (and key prefixes) that identify neither the experiment nor its results.
IGNORED_KEYS = (
    "seed",
    "data.fold",
    "data.root",
    "data.train_files",
    "data.eval_files",
    "data.num_workers",
    "data.pin_memory",
    "trainer.device",
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.eval_batch_size",
    "trainer.find_unused_parameters",
    "wandb",
    "hydra",
    "distill.teacher",  # teachers are told apart by content (results' distill.hash), not path
    "distill.teacher_logits",
)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists as tuples."""
    if not isinstance(cfg, dict):
        return {prefix: tuple(cfg) if isinstance(cfg, list) else cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def experiment_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The config keys that define an experiment (everything but `IGNORED_KEYS`)."""
    return {
        k: v
        for k, v in flatten(config).items()
        if not any(k == i or k.startswith(i + ".") for i in IGNORED_KEYS)
    }


def conv_label(conv: dict[str, Any]) -> str:
    """Table label of a conv config: 'DSC 7×7', 'DCLS-Gauss 23²/26', ..."""
    if conv.get("type") == "dsc" and "kernel_size" in conv:
        return f"DSC {conv['kernel_size']}×{conv['kernel_size']}"
    if conv.get("type") == "dcls" and "dilated_kernel_size" in conv:
        kind = "DCLS-Gauss" if conv.get("version") == "gauss" else "DCLS-bil."
        return f"{kind} {conv['dilated_kernel_size']}²/{conv['kernel_count']}"
    return CONV_LABELS.get(str(conv.get("name")), str(conv.get("name")))


@dataclass
class Group:
    """All runs of one experiment (same settings but for the seed and fold)."""

    model: str
    conv: str
    label: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    differs: dict[str, Any] = field(default_factory=dict)
    paths: list[Path] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    optims: set[str] = field(default_factory=set)
    classes: set[int] = field(default_factory=set)
    event_settings: set[tuple[Any, Any]] = field(default_factory=set)  # (segment_s, threshold)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def find_results(run_dirs: list[str | Path]) -> list[Path]:
    """Every results.json below the given directories (sorted); error if there is none."""
    found: list[Path] = []
    for d in run_dirs:
        p = Path(d)
        if not p.exists():
            raise FileNotFoundError(f"runs directory {p} does not exist")
        if p.is_file():
            found.append(p)
        else:
            found.extend(sorted(p.rglob(RESULTS_FILE)))
    if not found:
        raise FileNotFoundError(
            f"no {RESULTS_FILE} found under "
            + ", ".join(str(d) for d in run_dirs)
            + " (a run writes it in its Hydra run directory when training ends)"
        )
    return sorted(set(found))


def load_groups(paths: list[Path]) -> dict[tuple[str, str, str], Group]:
    """Read results files; group them by (model name, conv name, experiment settings)."""
    groups: dict[tuple[str, str, str], Group] = {}
    for path in paths:
        res = read_results(path)
        cfg = res["config"]
        try:
            key = (str(cfg["model"]["name"]), str(cfg["conv"]["name"]))
        except (TypeError, KeyError) as e:
            raise ValueError(
                f"{path}: expected the resolved config with config.model.name and "
                f"config.conv.name, missing {e}"
            ) from e
        settings = experiment_settings(cfg)
        if res.get("distill", {}).get("mode", "none") != "none":
            settings["distill.teacher_sha256"] = res["distill"]["hash"]
        fingerprint = repr(sorted(settings.items(), key=lambda kv: kv[0]))
        g = groups.setdefault(
            (*key, fingerprint), Group(*key, label=conv_label(cfg["conv"]), settings=settings)
        )
        g.paths.append(path)
        seed = res.get("seed", cfg.get("seed"))
        fold = cfg["data"].get("fold") if isinstance(cfg.get("data"), dict) else None
        g.seeds.append(seed if fold is None else f"{seed}/fold{fold}")  # folds count like seeds
        optim = cfg.get("optim")
        if isinstance(optim, dict) and "name" in optim:
            g.optims.add(str(optim["name"]))
        data = cfg.get("data")
        if isinstance(data, dict) and data.get("num_classes") is not None:
            g.classes.add(int(data["num_classes"]))
        for k in METRICS:
            if k in res:
                g.values[k].append(metric_value(res[k]))
        if "segment_f1" in res:
            g.event_settings.add((res.get("segment_s"), res.get("segment_threshold")))
    _mark_differences(groups)
    for g in groups.values():
        counts: dict[Any, list[Path]] = defaultdict(list)
        for seed, path in zip(g.seeds, g.paths, strict=True):
            counts[seed].append(path)
        for seed, where in counts.items():
            if len(where) > 1:
                warnings.warn(
                    f"{g.model}/{g.conv}: seed {seed} appears {len(where)} times "
                    f"({', '.join(map(str, where))}); all are counted",
                    stacklevel=2,
                )
    return groups


def _mark_differences(groups: dict[tuple[str, str, str], Group]) -> None:
    """For groups sharing a model and conv, record the settings that tell them apart."""
    by_pair: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups.values():
        by_pair[(g.model, g.conv)].append(g)
    for siblings in by_pair.values():
        if len(siblings) < 2:
            continue
        keys = set().union(*(g.settings for g in siblings))
        differing = sorted(k for k in keys if len({repr(g.settings.get(k)) for g in siblings}) > 1)
        for g in siblings:
            g.differs = {k: g.settings.get(k) for k in differing}


def _paper_row(key: tuple[str, ...], g: Group) -> dict[str, Any] | None:
    """The paper's Table-1 values for a group of 527-class runs of the paper's conv setting."""
    paper = PAPER_TABLE1.get(key[:2])
    if paper is None or not g.classes <= {527}:
        return None
    return paper if g.label in ("DSC 7×7", "DCLS-Gauss 23²/26") else None


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (ddof=1); std is None for a single value."""
    arr = np.asarray(values, dtype=np.float64)
    if len(arr) == 0:
        return math.nan, None
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def _fmt(values: list[float] | None, scale: float, decimals: int) -> str:
    """'mean ± std' of scaled values, or '–' when absent."""
    if not values:
        return "–"
    m, s = mean_std([v * scale for v in values])
    text = f"{m:.{decimals}f}"
    return text if s is None else f"{text} ± {s:.{decimals}f}"


def _order(key: tuple[str, ...]) -> tuple[int, ...]:
    """Paper rows first, in the paper's order; other groups after, alphabetically."""
    keys = list(PAPER_TABLE1)
    return (keys.index(key[:2]) if key[:2] in PAPER_TABLE1 else len(keys), *key)


def summarize(groups: dict[tuple[str, str, str], Group]) -> list[dict[str, Any]]:
    """One machine-readable row per group: n, seeds, mean and std of each metric, paper values."""
    rows = []
    for key in sorted(groups, key=_order):
        g = groups[key]
        row: dict[str, Any] = {
            "model": g.model,
            "conv": g.conv,
            "conv_label": g.label,
            "differs": g.differs,
            "optim": sorted(g.optims),
            "num_classes": sorted(g.classes),
            "n": len(g.paths),
            "seeds": g.seeds,
        }
        for k, vals in g.values.items():
            m, s = mean_std(vals)
            row[k] = {"mean": m, "std": s, "n": len(vals)}
        if g.event_settings:
            row["event_settings"] = [
                {"segment_s": s, "threshold": t} for s, t in sorted(g.event_settings, key=str)
            ]
        row["paper"] = _paper_row(key, g)
        rows.append(row)
    return rows


def render_markdown(groups: dict[tuple[str, str, str], Group]) -> str:
    """Table 1 as markdown: our mean ± std over seeds beside the paper's values."""
    present = [k for k in METRICS if any(k in g.values for g in groups.values())]
    differs = any(g.differs for g in groups.values())
    head = ["model", "conv"] + (["settings"] if differs else [])
    head += ["optim", "classes", "runs (seeds)"] + [METRICS[k][0] for k in present]
    head += ["paper mAP (%)", "paper params (M)", "paper samples/s (V100 inference)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups, key=_order):
        g = groups[key]
        paper = _paper_row(key, g)
        seeds = ",".join(str(s) for s in sorted(g.seeds, key=str))
        cells = [
            PAPER_TABLE1[key[:2]]["label"] if key[:2] in PAPER_TABLE1 else g.model,
            g.label,
        ]
        if differs:
            cells.append(", ".join(f"{k}={_plain(v)}" for k, v in g.differs.items()) or "–")
        cells += [
            "/".join(sorted(g.optims)) or "–",
            "/".join(str(c) for c in sorted(g.classes)) or "–",
            f"{len(g.paths)} ({seeds})",
        ]
        cells += [_fmt(g.values.get(k), *METRICS[k][1:]) for k in present]
        if paper:
            cells += [f"{paper['map']:.2f} ± {paper['map_std']:.2f}", f"{paper['params_m']}M"]
            cells += [f"{paper['sps']}"]
        else:
            cells += ["–", "–", "–"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation (ddof=1) over the runs of each row; a single run shows "
        "its value alone. Paper values are shown for 527-class runs only. Our samples/s is "
        "training throughput over all devices, the paper's is single-V100 inference throughput: "
        "not comparable. The paper's parameter counts match 1000-class heads; with 527 outputs "
        "the timm models have about 28.2M / 25.8M / 21.1M.",
    ]
    events = sorted(set().union(*(g.event_settings for g in groups.values())), key=str)
    if events:
        at = "; ".join(f"{_plain(s)}-s segments, threshold {_plain(t)}" for s, t in events)
        lines[-1] += (
            " Segment F1 (micro over segments and classes) and segment AP (mean over classes) "
            f"are over the strongly labelled evaluation clips ({at}); segment F1 tuned is at "
            "the threshold each run chose on its strongly labelled training clips."
        )
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    """A setting as it would be written on the command line."""
    if isinstance(value, tuple):
        return "[" + ",".join(_plain(v) for v in value) + "]"
    return "null" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    """CLI: aggregate RUNS_DIR... into a markdown Table 1 (stdout and --out), --json summary."""
    parser = argparse.ArgumentParser(
        prog="dcls-audio-aggregate",
        description="Aggregate results.json files (mean ± std over seeds) into Table 1.",
    )
    parser.add_argument("runs", nargs="+", help="run or sweep directories, searched recursively")
    parser.add_argument("--out", type=Path, help="also write the markdown table to this file")
    parser.add_argument("--json", type=Path, help="write a machine-readable summary here")
    args = parser.parse_args(argv)
    try:
        groups = load_groups(find_results(args.runs))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    table = render_markdown(groups)
    sys.stdout.write(table)
    if args.out:
        write_text(args.out, table)
    if args.json:
        write_json(args.json, summarize(groups))
    return 0


if __name__ == "__main__":
    sys.exit(main())
