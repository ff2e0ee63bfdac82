"""Tag audio files with a trained dcls-audio checkpoint.

Usage::

    dcls-audio-tag AUDIO... --checkpoint CKPT [--top-k 10] [--json] [--device cpu]
    dcls-audio-tag AUDIO... --checkpoint CKPT --timeline --out DIR [--threshold 0.5|FILE] ...

AUDIO: files, folders (their sound files, recursively) or glob patterns.
Each file is read with soundfile (any format, sample rate and channel count it supports), mixed
down to mono, resampled to 32 kHz and cut into windows of the run's clip length
(``data.clip_seconds``, 10 s for AudioSet; hop = window; the last window, or a shorter file, is
zero-padded). Every window goes through the log-mel frontend and the model; sigmoid
probabilities (softmax for a ``data.task=multiclass`` model) are reported per window and for the
whole file. The whole-file score of a
class is the **mean** of its window probabilities (the `max` over windows is reported beside it).
``--timeline`` writes frame-level score tracks and events instead (:mod:`dcls_audio.timeline`,
:mod:`dcls_audio.events`, :mod:`dcls_audio.timeline_out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dcls_audio.data.stream import AudioReadError, expand_inputs
from dcls_audio.evaluate import add_speed_arguments
from dcls_audio.tagger import (
    SAMPLE_RATE,
    WINDOW_SAMPLES,
    WINDOW_SECONDS,
    Tagger,
    load_tagger,
    read_audio,
    split_windows,
)

__all__ = [
    "SAMPLE_RATE",
    "WINDOW_SAMPLES",
    "WINDOW_SECONDS",
    "AudioReadError",
    "Tagger",
    "load_tagger",
    "main",
    "read_audio",
    "split_windows",
    "tag_file",
]

# --timeline defaults: chosen on a generated tuning set (docs/tagging.md, the timeline)
TIMELINE_DEFAULTS = {"hop": 0.5, "threshold": 0.5, "median": 0.0, "min_duration": 0.0,
                     "min_gap": 0.0}  # fmt: skip


def _top(probs: torch.Tensor, names: list[str], k: int) -> list[dict[str, Any]]:
    """The k most probable classes as [{index, label, probability}] in decreasing order."""
    values, idx = torch.topk(probs, min(k, probs.numel()))
    return [
        {"index": int(i), "label": names[int(i)], "probability": round(float(v), 6)}
        for v, i in zip(values, idx, strict=True)
    ]


def tag_file(tagger: Tagger, path: str | Path, top_k: int = 10) -> dict[str, Any]:
    """Tag one file: per-window and whole-file (mean and max over windows) top-k labels."""
    wave, rate = read_audio(path)
    windows = split_windows(wave, tagger.window_samples)
    seconds = tagger.window_samples / SAMPLE_RATE
    probs = tagger.probabilities(windows)
    mean, peak = probs.mean(0), probs.max(0).values
    duration = len(wave) / SAMPLE_RATE
    top_mean = _top(mean, tagger.class_names, top_k)
    for item in top_mean:
        item["max_over_windows"] = round(float(peak[item["index"]]), 6)
    return {
        "file": str(path),
        "input_sample_rate": rate,
        "duration_s": round(duration, 3),
        "num_windows": int(windows.shape[0]),
        "window_s": seconds,
        "whole_file_score": "mean over windows",
        "top": top_mean,
        "windows": [
            {
                "start_s": i * seconds,
                "end_s": round(min((i + 1) * seconds, duration), 3),
                "top": _top(probs[i], tagger.class_names, top_k),
            }
            for i in range(windows.shape[0])
        ],
    }


def format_result(result: dict[str, Any]) -> str:
    """Human-readable text for one tagged file."""
    n = result["num_windows"]
    lines = [
        f"{result['file']}  ({result['duration_s']:.1f} s, {n} window{'s' if n > 1 else ''}"
        f" of {result['window_s']:g} s; score = mean over windows)"
    ]
    width = max((len(t["label"]) for t in result["top"]), default=5)
    lines.append(f"  {'label':<{width}}  {'mean':>6}  {'max':>6}")
    for t in result["top"]:
        lines.append(
            f"  {t['label']:<{width}}  {t['probability']:6.3f}  {t['max_over_windows']:6.3f}"
        )
    if n > 1:
        for w in result["windows"]:
            best = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in w["top"][:3])
            lines.append(f"  [{w['start_s']:7.1f}-{w['end_s']:7.1f} s] {best}")
    return "\n".join(lines)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="dcls-audio-tag",
        description="Tag audio files with a dcls-audio checkpoint: top-k labels, probabilities.",
    )
    p.add_argument(
        "audio", nargs="+", help="audio files (any format, rate, channels), folders or globs"
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint (last.pt / best.pt of a run)")
    p.add_argument("--top-k", type=int, default=10, help="labels to print per file (default 10)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--raw-weights",
        action="store_true",
        help="use the raw model weights even when the checkpoint has EMA weights",
    )
    add_speed_arguments(p)
    t = p.add_argument_group("timeline (--timeline)")
    d = TIMELINE_DEFAULTS
    t.add_argument("--timeline", action="store_true", help="frame-level scores and events")
    t.add_argument("--out", help="output folder of --timeline")
    t.add_argument(
        "--hop", type=float, default=d["hop"], help="frame step, s (default %(default)s)"
    )
    t.add_argument(
        "--mode", default="frames", choices=("frames", "clip"),
        help="frames: the model's time axis (default); clip: clip-level window scores",
    )  # fmt: skip
    t.add_argument(
        "--threshold", default=str(d["threshold"]),
        help="one value, or a file of per-class values (label<TAB>value) (default %(default)s)",
    )  # fmt: skip
    t.add_argument("--median", type=float, default=d["median"], help="median filter, s")
    t.add_argument("--min-duration", type=float, default=d["min_duration"], help="shortest event")
    t.add_argument("--min-gap", type=float, default=d["min_gap"], help="gaps shorter are filled, s")
    t.add_argument("--batch-size", type=int, default=8, help="windows per batch (default 8)")
    t.add_argument("--plot-top", type=int, default=5, help="classes drawn per plot (default 5)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.top_k < 1:
        p.error(f"--top-k must be >= 1, got {args.top_k}")
    if args.timeline and not args.out:
        p.error("--timeline needs --out DIR")
    if args.out and not args.timeline:
        p.error("--out is an option of --timeline")
    if args.batch_size < 1 or args.plot_top < 1:
        p.error("--batch-size and --plot-top must be >= 1")
    if args.hop <= 0 or abs(args.hop * 100 - round(args.hop * 100)) > 1e-6:
        p.error(f"--hop must be a positive multiple of 0.01 s, got {args.hop}")
    return args


def _timeline(args: argparse.Namespace, tagger: Tagger, files: list[str]) -> int:
    """The --timeline branch of main: write per-file outputs and events.tsv."""
    from dcls_audio.events import EventSettings
    from dcls_audio.timeline_out import TSV_NAME, run_timeline

    settings = EventSettings(args.threshold, args.median, args.min_duration, args.min_gap)
    try:
        results, _ = run_timeline(
            tagger, files, args.out, settings, hop=args.hop, mode=args.mode,
            batch_size=args.batch_size, progress=not args.no_progress and sys.stderr.isatty(),
            plot_top=args.plot_top, log=print,
        )  # fmt: skip
    except ValueError as err:  # a bad threshold file
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(results)} of {len(files)} file(s) done; all events: {Path(args.out) / TSV_NAME}")
    return 1 if not results else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns 0 unless every file failed (or the checkpoint did)."""
    args = _parse(argv)
    try:
        tagger = load_tagger(args.checkpoint, args.device, prefer_ema=not args.raw_weights,
                             channels_last=args.channels_last, compile=args.compile)  # fmt: skip
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = expand_inputs(args.audio)
    if not files:
        print(f"error: no audio files in {args.audio}", file=sys.stderr)
        return 1
    if args.timeline:
        return _timeline(args, tagger, files)
    results, errors = [], []
    for path in files:
        try:
            result = tag_file(tagger, path, args.top_k)
        except AudioReadError as err:
            print(f"error: {err}", file=sys.stderr)
            errors.append({"file": str(path), "error": str(err)})
            continue
        results.append(result)
        if not args.json:
            print(format_result(result), flush=True)
    if args.json:
        doc = {
            "checkpoint": str(args.checkpoint),
            "weights": tagger.weights,
            "results": results,
            "errors": errors,
        }
        print(json.dumps(doc, indent=2))
    return 1 if not results else 0


if __name__ == "__main__":
    sys.exit(main())
