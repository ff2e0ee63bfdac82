"""``dcls-audio-results``: print a run's results.json as an eval table.

python -m dcls_audio.results outputs/demo        # the eval table of one run
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from dcls_audio.runfiles import metric_value, read_results, results_path


def format_results(results: Mapping[str, Any]) -> str:
    """Markdown table of per-class AP (by index) followed by the summary metrics."""
    ap = results["per_class_ap"]
    names = results.get("class_names") or [f"class {i}" for i in range(len(ap))]
    width = max(len("class"), *(len(n) for n in names))
    lines = [f"| {'#':>3} | {'class':<{width}} | AP     |", f"|----:|{'-' * (width + 2)}|-------:|"]
    for i, (name, value) in enumerate(zip(names, ap, strict=True)):
        shown = "  n/a " if value is None else f"{value:.4f}"  # class without positives
        lines.append(f"| {i:>3} | {name:<{width}} | {shown} |")
    lines.append("")
    summary = (("mAP", "map"), ("mAUC", "mauc"), ("d'", "dprime"))
    lines.append("  ".join(f"{label} {metric_value(results[key]):.4f}" for label, key in summary))
    if "accuracy" in results:  # multiclass runs
        acc, f1 = metric_value(results["accuracy"]), metric_value(results["macro_f1"])
        lines.append(f"accuracy {acc:.4f}  macro-F1 {f1:.4f}")
    if "map_ema" in results:
        lines.append(
            "  ".join(
                f"EMA {label} {metric_value(results[key + '_ema']):.4f}"
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
    """CLI: print a run's results.json as an eval table."""
    p = argparse.ArgumentParser(
        prog="dcls-audio-results",
        description="Print a run's results.json: per-class AP with names, then mAP, mAUC, d'.",
    )
    p.add_argument("results", help="a run's results.json (or its run directory)")
    args = p.parse_args(argv)
    try:
        results = read_results(args.results)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{results_path(args.results)}\n")
    print(format_results(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
