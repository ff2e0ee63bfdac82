"""Turn the `results.json` files of many runs into the paper's Table 1 (mean ± std over seeds).

Runs are grouped by (model name, conv name) read from the resolved config stored in each
results file. The spread is the sample standard deviation (ddof=1) over the runs of a group;
a group with a single run shows its value alone. Duplicate seeds within a group are kept and
reported with a warning (a copied or re-run directory would otherwise go unnoticed).
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

from dcls_audio.results import RESULTS_FILE, metric_value, read_results, write_json, write_text

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
    "mauc": ("mAUC (%)", 100.0, 2),
    "dprime": ("d′", 1.0, 3),
    "map_ema": ("mAP EMA (%)", 100.0, 2),
    "params": ("params (M)", 1e-6, 2),
    "train_samples_per_s": ("train samples/s", 1.0, 1),
}


@dataclass
class Group:
    """All runs of one (model, conv) pair."""

    model: str
    conv: str
    paths: list[Path] = field(default_factory=list)
    seeds: list[Any] = field(default_factory=list)
    optims: set[str] = field(default_factory=set)
    classes: set[int] = field(default_factory=set)
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


def load_groups(paths: list[Path]) -> dict[tuple[str, str], Group]:
    """Read results files and group them by (config.model.name, config.conv.name)."""
    groups: dict[tuple[str, str], Group] = {}
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
        g = groups.setdefault(key, Group(*key))
        g.paths.append(path)
        g.seeds.append(res.get("seed", cfg.get("seed")))
        optim = cfg.get("optim")
        if isinstance(optim, dict) and "name" in optim:
            g.optims.add(str(optim["name"]))
        data = cfg.get("data")
        if isinstance(data, dict) and data.get("num_classes") is not None:
            g.classes.add(int(data["num_classes"]))
        for k in METRICS:
            if k in res:
                g.values[k].append(metric_value(res[k]))
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
        for what, found in (("optimizers", g.optims), ("data.num_classes", g.classes)):
            if len(found) > 1:
                warnings.warn(f"{g.model}/{g.conv}: runs mix {what} {sorted(found)}", stacklevel=2)
    return groups


def _paper_row(key: tuple[str, str], g: Group) -> dict[str, Any] | None:
    """The paper's Table-1 values for a group, only if its runs are 527-class (AudioSet) runs."""
    paper = PAPER_TABLE1.get(key)
    return paper if paper is not None and g.classes <= {527} else None


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


def _order(key: tuple[str, str]) -> tuple[int, str, str]:
    """Paper rows first, in the paper's order; other groups after, alphabetically."""
    keys = list(PAPER_TABLE1)
    return (keys.index(key) if key in PAPER_TABLE1 else len(keys), *key)


def summarize(groups: dict[tuple[str, str], Group]) -> list[dict[str, Any]]:
    """One machine-readable row per group: n, seeds, mean and std of each metric, paper values."""
    rows = []
    for key in sorted(groups, key=_order):
        g = groups[key]
        row: dict[str, Any] = {
            "model": g.model,
            "conv": g.conv,
            "optim": sorted(g.optims),
            "num_classes": sorted(g.classes),
            "n": len(g.paths),
            "seeds": g.seeds,
        }
        for k, vals in g.values.items():
            m, s = mean_std(vals)
            row[k] = {"mean": m, "std": s, "n": len(vals)}
        row["paper"] = _paper_row(key, g)
        rows.append(row)
    return rows


def render_markdown(groups: dict[tuple[str, str], Group]) -> str:
    """Table 1 as markdown: our mean ± std over seeds beside the paper's values."""
    present = [k for k in METRICS if any(k in g.values for g in groups.values())]
    head = ["model", "conv", "optim", "classes", "runs (seeds)"] + [METRICS[k][0] for k in present]
    head += ["paper mAP (%)", "paper params (M)", "paper samples/s (V100 inference)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in sorted(groups, key=_order):
        g = groups[key]
        paper = _paper_row(key, g)
        seeds = ",".join(str(s) for s in sorted(g.seeds, key=str))
        cells = [
            PAPER_TABLE1[key]["label"] if key in PAPER_TABLE1 else g.model,
            CONV_LABELS.get(g.conv, g.conv),
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
    return "\n".join(lines) + "\n"


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
