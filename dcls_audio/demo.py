"""The CPU demo as a mini Table 1: DSC and DCLS-Gauss of one small model, and a linear probe.

    dcls-audio-demo [--out outputs/demo] [--data data/sounds] [--seed 0] [OVERRIDE ...]

generates the demo sound set when it is missing (``dcls-audio-sounds``), scores the linear-probe
reference on it, trains ``experiment=demo`` once per conv (``conv=dsc``, ``conv=dcls_gauss``) into
OUT/<conv>, draws each run's curves (and the DCLS positions), prints the three side by side and
writes OUT/summary.json. Extra arguments are Hydra overrides applied to both trainings.
SIGTERM, SIGUSR2 or SIGINT stop it with status 128 + the signal number (143, 140, 130); during a
training, after saving the step in OUT/<conv>/last.pt: run the same command again to resume.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcls_audio.runfiles import write_json

CONVS = ("dsc", "dcls_gauss")
SUMMARY_FILE = "summary.json"
METRICS = ("map", "mauc", "dprime")
PROBE_CS = (0.01, 0.1, 1.0)  # inverse regularisation strengths tried by the probe


@torch.no_grad()
def probe_features(data: Any, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Per-mel-bin mean, std, max and 90th percentile over time of each clip's log-mel.

    ``data`` is an eval-mode ``AudioSetHDF5``; returns (features (N, 4 * mels), targets (N, C))
    computed with the eval-mode frontend of training (the normalised log-mel the models see).
    """
    from dcls_audio.data import LogMelFrontend

    frontend = LogMelFrontend().eval()
    feats, targets = [], []
    for lo in range(0, len(data), batch_size):
        rows = [data[i] for i in range(lo, min(len(data), lo + batch_size))]
        x = frontend(torch.stack([r[0] for r in rows]))[:, 0]  # (B, mels, frames)
        q90 = torch.quantile(x, 0.9, dim=-1)
        feats.append(torch.cat([x.mean(-1), x.std(-1), x.amax(-1), q90], dim=1).numpy())
        targets.append(torch.stack([r[1] for r in rows]).numpy())
    return np.concatenate(feats), np.concatenate(targets)


def linear_probe(
    train: tuple[np.ndarray, np.ndarray], evaluation: tuple[np.ndarray, np.ndarray], seed: int = 0
) -> dict[str, Any]:
    """One-vs-rest logistic regression on standardised features; metrics on the eval split.

    Each class's regularisation strength is chosen among ``PROBE_CS`` by 3-fold cross-validation
    on the training split alone (the eval split never picks it).
    """
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from dcls_audio.train.metrics import compute_metrics

    (x_train, y_train), (x_eval, y_eval) = train, evaluation
    lr = LogisticRegressionCV(
        Cs=PROBE_CS, cv=3, scoring="neg_log_loss", max_iter=1000, random_state=seed
    )
    clf = make_pipeline(StandardScaler(), OneVsRestClassifier(lr))
    # One BLAS thread: with numpy's and scipy's OpenBLAS pools both active the small lbfgs
    # problems ran ~12x slower on 2 cores (124 s against 10 s for the demo set).
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # notices of changing sklearn defaults
        clf.fit(x_train, y_train.astype(np.int64))
    return compute_metrics(clf.predict_proba(x_eval), y_eval.astype(np.float32))


def demo_config(conv: str, data_root: str | Path, seed: int, overrides: Sequence[str] = ()) -> Any:
    """The composed ``experiment=demo`` training config for one conv."""
    from dcls_audio.config import compose_config

    return compose_config(
        ["experiment=demo", f"conv={conv}", f"data.root={data_root}", f"seed={seed}", *overrides]
    )


def demo_datasets(cfg: Any) -> tuple[Any, Any]:
    """Eval-mode (train split, eval split) datasets of a demo config, for the probe."""
    from dcls_audio.data import SAMPLE_RATE, AudioSetHDF5
    from dcls_audio.train.loaders import resolve_classes, resolve_data_files

    files = [resolve_data_files(cfg.data, key) for key in ("train_files", "eval_files")]
    resolve_classes(cfg, files)  # data.num_classes null: the class list's length
    clip = round(float(cfg.data.clip_seconds) * SAMPLE_RATE)
    n = int(cfg.data.num_classes)
    return tuple(AudioSetHDF5(f, num_classes=n, clip_samples=clip) for f in files)


def format_summary(summary: dict[str, Any]) -> str:
    """The side-by-side table printed at the end of the demo."""
    rows = [f"{'':<12}{'mAP':>8}{'mAUC':>8}{'dprime':>8}"]
    for name in ("probe", *[k for k in summary if k in CONVS]):
        m = summary[name]
        rows.append(f"{name:<12}" + "".join(f"{m.get(k, float('nan')):8.4f}" for k in METRICS))
    probe = summary["probe"]["map"]
    for conv in [k for k in summary if k in CONVS]:
        rows.append(f"{conv} mAP / probe mAP = {summary[conv]['map'] / probe:.3f}")
    if all(c in summary for c in CONVS):
        gap = summary["dcls_gauss"]["map"] - summary["dsc"]["map"]
        rows.append(f"dcls_gauss - dsc mAP = {gap:+.4f}")
    rows.append(f"total {summary['seconds']:.0f} s")
    return "\n".join(rows)


def run_demo(
    out: str | Path,
    data_root: str | Path,
    seed: int = 0,
    overrides: Sequence[str] = (),
    convs: Sequence[str] = CONVS,
) -> dict[str, Any]:
    """Generate the set if missing, score the probe, train each conv; returns the summary."""
    from dcls_audio.datasets.sounds import make_sounds
    from dcls_audio.models.checkpoint import load_model
    from dcls_audio.plot import plot_compare, plot_curves, plot_positions
    from dcls_audio.runfiles import METRICS_FILE, read_jsonl
    from dcls_audio.train import run

    start = time.perf_counter()
    out, data_root = Path(out), Path(data_root)
    cfg = demo_config(convs[0], data_root, seed, overrides)
    if not all((data_root / name).is_file() for name in ("train.h5", "eval.h5")):
        print(f"generating the demo sound set in {data_root}", flush=True)
        make_sounds(data_root, clip_seconds=float(cfg.data.clip_seconds))
    train_set, eval_set = demo_datasets(cfg)
    probe = linear_probe(probe_features(train_set), probe_features(eval_set), seed)
    summary: dict[str, Any] = {"probe": {k: probe[k] for k in METRICS}}
    print(f"linear probe: mAP {probe['map']:.4f}", flush=True)
    curves = {}
    for conv in convs:
        run_dir = out / conv
        metrics = run(demo_config(conv, data_root, seed, overrides), run_dir=run_dir)
        summary[conv] = {k: metrics[k] for k in METRICS}
        curves[conv] = read_jsonl(run_dir / METRICS_FILE)
        plot_curves(curves[conv], run_dir / "plots" / "curves.png")
        if conv.startswith("dcls"):
            model = load_model(run_dir / "last.pt").model
            plot_positions(model, run_dir / "plots" / "positions.png")
    plot_compare(curves, out / "curves.png", reference={"linear probe": probe["map"]})
    summary["seconds"] = round(time.perf_counter() - start, 1)
    write_json(out / SUMMARY_FILE, summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    """CLI: the whole demo; prints the side-by-side table and writes OUT/summary.json."""
    p = argparse.ArgumentParser(prog="dcls-audio-demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/demo", help="output folder (one run per conv)")
    p.add_argument("--data", default="data/sounds", help="demo set folder (generated if missing)")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--convs", nargs="+", default=list(CONVS), choices=CONVS)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for both trainings")
    args = p.parse_args(argv)
    from dcls_audio.train.preempt import exit_on_signal

    with exit_on_signal("dcls-audio-demo"):  # trainings save their step first (StopSignal)
        summary = run_demo(args.out, args.data, args.seed, args.overrides, args.convs)
    print(format_summary(summary))
    print(f"wrote {Path(args.out) / SUMMARY_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
