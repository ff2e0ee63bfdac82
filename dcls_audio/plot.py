"""Figures of what DCLS learned: position densities per stage, constructed kernels, curves.

    dcls-audio-plot outputs/RUN/last.pt [--run-dir outputs/RUN] [--out DIR]

writes positions.png and kernels.png (from the checkpoint; EMA weights unless --raw-weights) and
curves.png (from metrics.jsonl in the run directory, which defaults to the checkpoint's folder).

The position figure follows the DCLS paper's appendix E (histograms of the kernel positions of
the 2-D DCLS convolutions of ConvNeXt-T, one panel per stage), drawn for one checkpoint as a 2-D
density over the dilated-kernel grid plus a histogram per axis.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from dcls_audio.runfiles import METRICS_FILE, atomic_write, read_jsonl  # noqa: E402

AXIS_NAMES = ("height (mel bins)", "width (frames)")


def _save(fig: Any, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return path


def dcls_stages(model: nn.Module) -> list[tuple[str, list[tuple[str, nn.Module]]]]:
    """Group the model's DCLS layers by their (shared) position Parameter, in model order."""
    from dcls_audio.dcls import DclsNd

    groups: dict[int, tuple[str, list[tuple[str, nn.Module]]]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, DclsNd):
            key = id(mod.P)
            if key not in groups:
                groups[key] = (name, [])
            groups[key][1].append((name, mod))
    return list(groups.values())


def _grid(mod: nn.Module) -> tuple[int, ...]:
    size = mod.dilated_kernel_size
    return tuple(size) if isinstance(size, (tuple, list)) else (int(size),) * mod.P.shape[0]


def position_cells(mod: nn.Module) -> np.ndarray:
    """Element positions of a layer in grid cells, shape (ndim, n): P + size // 2."""
    grid = _grid(mod)
    p = mod.P.detach().float().cpu().reshape(mod.P.shape[0], -1).numpy()
    return p + np.array([g // 2 for g in grid], dtype=np.float32)[:, None]


def plot_positions(model: nn.Module, path: str | Path) -> Path:
    """Per stage: 2-D density of element positions over the kernel grid and per-axis histograms."""
    stages = [s for s in dcls_stages(model) if s[1][0][1].P.shape[0] == 2]
    if not stages:
        raise ValueError("the model has no 2-D DCLS layers: nothing to plot")
    fig, axes = plt.subplots(2, len(stages), figsize=(4.3 * len(stages), 7.0), squeeze=False)
    for j, (first, layers) in enumerate(stages):
        mod = layers[0][1]
        grid = _grid(mod)
        cells = position_cells(mod)
        hist, _, _ = np.histogram2d(
            cells[0],
            cells[1],
            bins=grid,
            range=[[-0.5, grid[0] - 0.5], [-0.5, grid[1] - 0.5]],
        )
        ax = axes[0, j]
        # sqrt colour scale: the centre dominates, the tails still show
        im = ax.imshow(
            hist / hist.sum(),
            cmap="magma",
            origin="lower",
            interpolation="nearest",
            norm=matplotlib.colors.PowerNorm(0.5),
        )
        ax.set_title(
            f"stage {j}: {first.rsplit('.', 3)[0]}\n{len(layers)} layers share "
            f"{cells.shape[1]} positions",
            fontsize=8,
        )
        ax.set_xlabel(AXIS_NAMES[1], fontsize=8)
        ax.set_ylabel(AXIS_NAMES[0], fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax = axes[1, j]
        for d in range(2):
            ax.hist(
                cells[d] - grid[d] // 2,
                bins=4 * grid[d],
                range=(-grid[d] / 2, grid[d] / 2),
                histtype="step",
                label=AXIS_NAMES[d],
            )
        ax.set_xlabel("position relative to the centre (cells)", fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(
        "Learned DCLS positions per stage (density over the dilated kernel grid, sqrt colour scale)"
    )
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_kernels(model: nn.Module, path: str | Path, channels: int = 4) -> Path:
    """The constructed kernels of the first `channels` channels of the first layer of each stage."""
    from dcls_audio.dcls import construct_kernel

    stages = [s for s in dcls_stages(model) if s[1][0][1].P.shape[0] == 2]
    if not stages:
        raise ValueError("the model has no 2-D DCLS layers: nothing to plot")
    fig, axes = plt.subplots(
        len(stages), channels, figsize=(2.5 * channels, 2.8 * len(stages)), squeeze=False
    )
    for i, (_, layers) in enumerate(stages):
        name, mod = layers[0]
        sig = None if getattr(mod, "SIG", None) is None else mod.SIG.detach()
        with torch.no_grad():
            kernel = (
                construct_kernel(mod.weight.detach(), mod.P.detach(), sig, _grid(mod), mod.version)
                .float()
                .cpu()
            )
        for c in range(channels):
            ax = axes[i, c]
            if c >= kernel.shape[0]:
                ax.axis("off")
                continue
            k = kernel[c, 0].numpy()
            lim = float(np.abs(k).max()) or 1.0
            ax.imshow(
                k, cmap="RdBu_r", vmin=-lim, vmax=lim, origin="lower", interpolation="nearest"
            )
            ax.set_title(f"{name}\nchannel {c}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Constructed DCLS kernels (rows: stages; x: frames, y: mel bins)")
    fig.tight_layout()
    return _save(fig, Path(path))


def _series(
    records: Sequence[dict[str, Any]], x: str, key: str, kind: str | None = None
) -> tuple[list, list]:
    """(x, y) of the records holding both keys; only entries of `type` kind when they say one."""
    pts = [
        (r[x], r[key])
        for r in records
        if x in r
        and isinstance(r.get(key), (int, float))
        and (kind is None or r.get("type", kind) == kind)
    ]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Training loss and learning rate against step, eval mAP against epoch."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    # the trainer logs "train" (per window of steps), "epoch" (epoch means) and "eval" entries
    xs, ys = _series(records, "step", "loss", "train")
    axes[0].plot(xs, ys, lw=1)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    xs, ys = _series(records, "step", "lr", "train")
    axes[1].plot(xs, ys, lw=1)
    axes[1].set(xlabel="step", ylabel="learning rate", title="learning rate")
    for key, label in (("map", "mAP"), ("map_ema", "mAP (EMA)")):
        xs, ys = _series(records, "epoch", key, "eval")
        xs = [e + 1 for e in xs]  # logged epochs are 0-based: plot epochs completed
        if not xs:  # eval entries without an epoch field: fall back to the step
            xs, ys = _series(records, "step", key, "eval")
        if xs:
            axes[2].plot(xs, ys, marker="o", label=label)
    axes[2].set(xlabel="epochs trained", ylabel="eval mAP", title="evaluation")
    if axes[2].lines:
        axes[2].legend()
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_compare(
    runs: dict[str, Sequence[dict[str, Any]]],
    path: str | Path,
    reference: dict[str, float] | None = None,
) -> Path:
    """Training loss and eval mAP against step for several runs, with reference mAP lines."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, records in runs.items():
        axes[0].plot(*_series(records, "step", "loss", "train"), lw=1, label=name)
        axes[1].plot(*_series(records, "step", "map", "eval"), marker="o", label=name)
    for name, value in (reference or {}).items():
        axes[1].axhline(value, ls="--", color="gray", lw=1, label=name)
    axes[0].set(xlabel="step", ylabel="training loss", title="loss")
    axes[1].set(xlabel="step", ylabel="eval mAP", title="evaluation")
    for ax in axes:
        if ax.lines:
            ax.legend()
    fig.tight_layout()
    return _save(fig, Path(path))


def main(argv: list[str] | None = None) -> int:
    """CLI: position, kernel and curve figures of a run's checkpoint."""
    from dcls_audio.models.checkpoint import load_model

    p = argparse.ArgumentParser(
        prog="dcls-audio-plot",
        description="Plot what a DCLS model learned: positions, kernels, training curves.",
    )
    p.add_argument("checkpoint", help="a run's last.pt or best.pt")
    p.add_argument(
        "--run-dir",
        default=None,
        help=f"run directory holding {METRICS_FILE} (default: the checkpoint's folder)",
    )
    p.add_argument("--out", default=None, help="output folder (default: RUN_DIR/plots)")
    p.add_argument("--channels", type=int, default=4, help="kernels drawn per stage")
    p.add_argument("--raw-weights", action="store_true", help="plot the raw weights, not EMA")
    args = p.parse_args(argv)

    ckpt_path = Path(args.checkpoint)
    run_dir = Path(args.run_dir) if args.run_dir else ckpt_path.parent
    out = Path(args.out) if args.out else run_dir / "plots"
    try:
        loaded = load_model(ckpt_path, prefer_ema=not args.raw_weights)
        written = [
            plot_positions(loaded.model, out / "positions.png"),
            plot_kernels(loaded.model, out / "kernels.png", args.channels),
        ]
    except (OSError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    log = run_dir / METRICS_FILE
    if log.is_file():
        written.append(plot_curves(read_jsonl(log), out / "curves.png"))
    else:
        print(f"note: {log} not found; no training curves drawn", file=sys.stderr)
    print(f"{loaded.weights} weights of {ckpt_path}")
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
