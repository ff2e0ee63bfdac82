"""Plot what a DCLS model learned: position densities, constructed kernels, training curves.

    python scripts/plot_dcls.py outputs/RUN/last.pt [--run-dir outputs/RUN] [--out DIR]

Writes positions.png and kernels.png (from the checkpoint; EMA weights unless --raw-weights) and
curves.png (from metrics.jsonl in the run directory, which defaults to the checkpoint's folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcls_audio.plot import plot_curves, plot_kernels, plot_positions, read_jsonl
from dcls_audio.tag import build_from_checkpoint, load_checkpoint

LOG_NAME = "metrics.jsonl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run's last.pt or best.pt")
    p.add_argument(
        "--run-dir",
        default=None,
        help=f"run directory holding {LOG_NAME} (default: the checkpoint's folder)",
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots)")
    p.add_argument("--channels", type=int, default=4, help="kernels drawn per stage")
    p.add_argument("--raw-weights", action="store_true", help="plot the raw weights, not EMA")
    args = p.parse_args(argv)

    ckpt_path = Path(args.checkpoint)
    run_dir = Path(args.run_dir) if args.run_dir else ckpt_path.parent
    out = Path(args.out) if args.out else run_dir / "plots"
    try:
        model, which = build_from_checkpoint(
            load_checkpoint(ckpt_path), prefer_ema=not args.raw_weights
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    written = [
        plot_positions(model, out / "positions.png"),
        plot_kernels(model, out / "kernels.png", args.channels),
    ]
    log = run_dir / LOG_NAME
    if log.is_file():
        written.append(plot_curves(read_jsonl(log), out / "curves.png"))
    else:
        print(f"note: {log} not found; no training curves drawn", file=sys.stderr)
    print(f"{which} weights of {ckpt_path}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
