"""Print a run's results.json as an eval table: per-class AP with names, then mAP, mAUC, d'.

python scripts/show_results.py outputs/demo/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def table(results: dict) -> str:
    """Markdown table of per-class AP (sorted by index) and the summary metrics."""
    ap = results.get("per_class_ap")
    if ap is None:
        raise ValueError("results has no 'per_class_ap'")
    names = results.get("class_names") or [f"class {i}" for i in range(len(ap))]
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"| {'#':>3} | {'class':<{width}} | AP     |", f"|----:|{'-' * (width + 2)}|-------:|"]
    for i, (name, value) in enumerate(zip(names, ap, strict=True)):
        shown = "  n/a " if value is None else f"{value:.4f}"  # class without positives
        lines.append(f"| {i:>3} | {name:<{width}} | {shown} |")
    lines.append("")
    summary = [("mAP", "map"), ("mAUC", "mauc"), ("d'", "dprime")]
    lines.append("  ".join(f"{label} {results[key]:.4f}" for label, key in summary))
    if "map_ema" in results:
        lines.append(
            "  ".join(
                f"EMA {label} {results[key + '_ema']:.4f}"
                for label, key in summary
                if key + "_ema" in results
            )
        )
    extra = []
    if "wall_time_s" in results:
        extra.append(f"wall time {results['wall_time_s']:.0f} s")
    if "train_samples_per_s" in results:
        extra.append(f"training {results['train_samples_per_s']:.1f} samples/s")
    if "params" in results:
        extra.append(f"{results['params']:,} parameters")
    if extra:
        lines.append(", ".join(extra))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", help="a run's results.json (or its run directory)")
    args = p.parse_args(argv)
    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
        print(f"{path}\n")
        print(table(results))
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {path}: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
