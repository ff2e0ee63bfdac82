"""Measure the timeline against two baselines on generated long files with known events.

    python -m dcls_audio.timeline_eval --checkpoint CKPT --data data/long [--json OUT]

Writes (when missing) a tuning split and a test split of long files built from the demo sound
set's sources (:mod:`dcls_audio.datasets.longfiles`), scores every file with each method, chooses
each method's threshold and filters on the tuning split alone by one grid search (the same grid
and objective for all: segment-based F1 over 1-s segments, micro-averaged), then reports on the
test split: sed_eval's segment-based F1 (1-s segments) with those settings, and sed_scores_eval's
threshold-free segment-based average precision (1-s segments, mean over classes) of the raw
scores. Reference events of one class that overlap or touch in one file are merged into one
first, as DCASE evaluations do (the output names the files and counts). Methods (all at a 0.5 s
frame step):

- ``timeline``: the model's pre-pooling time axis from windows every 0.5 s (the default);
- ``clip-overlap``: clip-level scores of windows every 0.5 s, averaged per frame;
- ``frames-only``: the pre-pooling time axis of non-overlapping windows (no overlap);
- ``windows``: today's tagging, non-overlapping windows, each window's scores over its span;
- ``file``: today's whole-file scores (mean over the windows) over the whole file.

sed_eval and sed_scores_eval are development dependencies (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcls_audio.data.stream import stream_audio
from dcls_audio.datasets.longfiles import (
    Annotation,
    merge_overlaps,
    read_annotations,
    read_durations,
    write_long_set,
)
from dcls_audio.events import Event, detect, median_filter, median_frames
from dcls_audio.tagger import Tagger, load_tagger, split_windows
from dcls_audio.timeline import WindowScorer, score_blocks

HOP = 0.5
SEGMENT = 1.0
METHODS = ("timeline", "clip-overlap", "frames-only", "windows", "file")
GRID = {
    "threshold": tuple(round(0.05 * i, 2) for i in range(1, 20)),
    "median": (0.0, 1.0, 2.0, 3.0),
    "min_duration": (0.0, 0.5, 1.0, 2.0),
    "min_gap": (0.0, 0.5, 1.0, 2.0),
}


def method_track(tagger: Tagger, wave: np.ndarray, method: str, scorers: dict) -> np.ndarray:
    """(frames, classes) scores of a 32 kHz signal by one of :data:`METHODS`."""
    blocks = [wave]
    if method in ("timeline", "clip-overlap", "frames-only"):
        mode = "clip" if method == "clip-overlap" else "frames"
        window_hop = tagger.window_samples / 32000 if method == "frames-only" else HOP
        return score_blocks(
            tagger, blocks, hop=HOP, mode=mode, window_hop=window_hop, scorer=scorers[mode]
        ).scores
    probs = tagger.probabilities(split_windows(wave, tagger.window_samples)).numpy()
    step = round(HOP * 32000)
    frames = max(1, math.ceil(len(wave) / step))
    centres = (np.arange(frames) * step + step // 2) // tagger.window_samples
    if method == "windows":
        return probs[np.minimum(centres, len(probs) - 1)]
    if method == "file":
        return np.repeat(probs.mean(0, keepdims=True), frames, axis=0)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def score_set(
    tagger: Tagger, folder: Path, methods: Sequence[str], cache: Path | None = None
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, float]]:
    """{method: {filename: track}} of every file of a generated set, and seconds per method.

    With ``cache``, each method's tracks are stored in ``cache/<method>.npz`` (with their
    seconds) and read back on the next call instead of being computed again.
    """
    scorers = {m: WindowScorer(tagger, m) for m in ("frames", "clip")}
    names = sorted(read_durations(folder / "durations.tsv"))
    tracks: dict[str, dict[str, np.ndarray]] = {m: {} for m in methods}
    seconds = dict.fromkeys(methods, 0.0)
    todo = []
    for m in methods:
        stored = cache / f"{m}.npz" if cache else None
        if stored is not None and stored.is_file():
            with np.load(stored) as z:
                tracks[m] = {n: z[n] for n in names}
                seconds[m] = float(z["__seconds__"])
        else:
            todo.append(m)
    for name in names if todo else []:
        _, blocks = stream_audio(folder / name)
        wave = np.concatenate(list(blocks))
        for m in todo:
            start = time.perf_counter()
            tracks[m][name] = method_track(tagger, wave, m, scorers)
            seconds[m] += time.perf_counter() - start
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for m in todo:
            np.savez(cache / f"{m}.npz", __seconds__=seconds[m], **tracks[m])
    return tracks, seconds


def roll(events: Sequence[Any], labels: Sequence[str], segments: int) -> np.ndarray:
    """(segments, classes) activity of events over 1-s segments, as sed_eval builds it."""
    index = {n: i for i, n in enumerate(labels)}
    out = np.zeros((segments, len(labels)), dtype=bool)
    for e in events:
        on = int(math.floor(e.onset / SEGMENT))
        off = int(math.ceil(e.offset / SEGMENT))
        out[on:off, index[e.label]] = True
    return out


def segment_f1(
    refs: dict[str, list[Annotation]],
    ests: dict[str, list[Event]],
    durations: dict[str, float],
    labels: Sequence[str],
) -> dict[str, float]:
    """Micro-averaged segment-based precision, recall and F1 over all files (1-s segments)."""
    tp = fp = fn = 0
    for name, dur in durations.items():
        n = int(math.ceil(dur / SEGMENT))
        r, e = roll(refs.get(name, []), labels, n), roll(ests.get(name, []), labels, n)
        tp += int((r & e).sum())
        fp += int((e & ~r).sum())
        fn += int((r & ~e).sum())
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": p, "recall": rc, "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0}


def detect_all(
    tracks: dict[str, np.ndarray], labels: Sequence[str], settings: dict, durations: dict
) -> dict[str, list[Event]]:
    """Events of every file's track with one set of settings."""
    return {
        name: detect(tr, HOP, labels, settings["threshold"], settings["median"],
                     settings["min_duration"], settings["min_gap"], durations[name], name)
        for name, tr in tracks.items()
    }  # fmt: skip


def tune(
    tracks: dict[str, np.ndarray],
    refs: dict[str, list[Annotation]],
    durations: dict[str, float],
    labels: Sequence[str],
    grid: dict[str, Sequence[float]] = GRID,
) -> tuple[dict[str, float], float]:
    """The grid point with the best segment F1 on these files (first best on ties)."""
    best: tuple[float, dict[str, float]] = (-1.0, {})
    for median in grid["median"]:
        size = median_frames(median, HOP)
        filtered = {name: median_filter(tr, size) for name, tr in tracks.items()}
        for thr, min_dur, min_gap in itertools.product(
            grid["threshold"], grid["min_duration"], grid["min_gap"]
        ):
            settings = {
                "threshold": thr,
                "median": 0.0,
                "min_duration": min_dur,
                "min_gap": min_gap,
            }
            ests = detect_all(filtered, labels, settings, durations)
            f1 = segment_f1(refs, ests, durations, labels)["f1"]
            if f1 > best[0]:
                best = (f1, {**settings, "median": median})
    return best[1], best[0]


def sed_eval_segment(
    refs: dict[str, list[Annotation]],
    ests: dict[str, list[Event]],
    durations: dict[str, float],
    labels: Sequence[str],
) -> dict[str, float]:
    """sed_eval's segment-based metrics (1-s segments): micro F1, macro F1, error rate."""
    import sed_eval

    metrics = sed_eval.sound_event.SegmentBasedMetrics(
        event_label_list=list(labels), time_resolution=SEGMENT
    )
    for name, dur in durations.items():
        ref = [{"filename": name, "event_label": a.label, "onset": a.onset, "offset": a.offset}
               for a in refs.get(name, [])]  # fmt: skip
        est = [{"filename": name, "event_label": e.label, "onset": e.onset, "offset": e.offset}
               for e in ests.get(name, [])]  # fmt: skip
        metrics.evaluate(ref, est, evaluated_length_seconds=dur)
    overall = metrics.results_overall_metrics()
    classwise = metrics.results_class_wise_average_metrics()
    return {
        "f1": float(overall["f_measure"]["f_measure"]),
        "precision": float(overall["f_measure"]["precision"]),
        "recall": float(overall["f_measure"]["recall"]),
        "error_rate": float(overall["error_rate"]["error_rate"]),
        "macro_f1": float(classwise["f_measure"]["f_measure"]),
    }


def segment_ap(
    tracks: dict[str, np.ndarray],
    refs: dict[str, list[Annotation]],
    durations: dict[str, float],
    labels: Sequence[str],
) -> float:
    """sed_scores_eval's threshold-free segment-based AP (1-s segments): the mean over classes
    that have reference events."""
    from sed_scores_eval.base_modules.scores import create_score_dataframe
    from sed_scores_eval.segment_based import average_precision

    present = sorted({a.label for n in tracks for a in refs.get(n, [])}, key=labels.index)
    cols = [labels.index(c) for c in present]  # sed_scores_eval needs events of every class
    scores = {}
    for name, tr in tracks.items():
        edges = np.minimum(np.arange(len(tr) + 1) * HOP, durations[name])
        scores[name] = create_score_dataframe(tr[:, cols].astype(np.float64), edges, present)
    refs, _ = merge_overlaps(refs)  # sed_scores_eval refuses connected events of one class
    gt = {n: [(a.onset, a.offset, a.label) for a in refs.get(n, [])] for n in tracks}
    ap, _ = average_precision(scores, gt, durations, segment_length=SEGMENT)
    return float(np.mean([ap[c] for c in present]))


def ensure_set(folder: Path, files: int, minutes: float, seed: int, split: int) -> None:
    """Write the generated set into ``folder`` unless it is there already."""
    if not (folder / "durations.tsv").is_file():
        print(f"writing {files} x {minutes:g} min into {folder}", flush=True)
        write_long_set(folder, files, minutes, seed, split)


def evaluate(
    checkpoint: str,
    data: str | Path,
    methods: Sequence[str] = METHODS,
    tune_files: int = 6,
    test_files: int = 12,
    minutes: float = 3.0,
    seed: int = 0,
    cache: str | Path | None = None,
    device: str = "cpu",
    grid: dict[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """Tune on the tuning split, report on the test split; returns the results document.

    ``cache``: a folder keeping the score tracks (per split and method) between runs;
    ``grid``: the settings tried (default :data:`GRID`).
    """
    data = Path(data)
    tagger = load_tagger(checkpoint, device)
    labels = tagger.class_names
    splits = {"tune": (tune_files, 0), "test": (test_files, 1)}
    grid = GRID if grid is None else grid
    out: dict[str, Any] = {"checkpoint": str(checkpoint), "hop_s": HOP, "grid": grid}
    sets = {}
    for key, (n, split) in splits.items():
        ensure_set(data / key, n, minutes, seed, split)
        refs, merged = merge_overlaps(read_annotations(data / key / "annotations.tsv"))
        out[f"{key}_merged_events"] = merged
        if merged:
            files = ", ".join(f"{n} ({k})" for n, k in sorted(merged.items()))
            print(f"{key}: merged {sum(merged.values())} overlapping or touching same-class "
                  f"reference events in {len(merged)} files: {files}", flush=True)  # fmt: skip
        durations = read_durations(data / key / "durations.tsv")
        missing = sorted(set(refs) - set(durations))
        if missing:
            raise ValueError(f"{data / key}: annotations of unknown files {missing[:3]}")
        foreign = sorted({a.label for ev in refs.values() for a in ev} - set(labels))
        if foreign:
            raise ValueError(f"the checkpoint has no class {foreign[:3]}: not a demo-set model")
        start = time.perf_counter()
        tracks, seconds = score_set(
            tagger, data / key, methods, Path(cache) / key if cache else None
        )
        print(f"{key}: scored {len(durations)} files in {time.perf_counter() - start:.0f} s")
        sets[key] = (tracks, refs, durations, seconds)
        out[f"{key}_audio_s"] = sum(durations.values())
    rows = {}
    for m in methods:
        settings, tune_f1 = tune(sets["tune"][0][m], *sets["tune"][1:3], labels, grid)
        tracks, refs, durations, seconds = sets["test"]
        ests = detect_all(tracks[m], labels, settings, durations)
        rows[m] = {
            "settings": settings,
            "tune_f1": tune_f1,
            **sed_eval_segment(refs, ests, durations, labels),
            "segment_ap": segment_ap(tracks[m], refs, durations, labels),
            "seconds_per_audio_hour": seconds[m] / sum(durations.values()) * 3600,
        }
        print(f"{m:>13}: test segment F1 {rows[m]['f1']:.4f}, {settings}", flush=True)
    out["methods"] = rows
    return out


def table(doc: dict[str, Any]) -> str:
    """Markdown table of the results document."""
    lines = [
        "| method | segment F1 (1 s) | P | R | ER | macro F1 | segment AP | threshold, median, "
        "min dur, min gap (s) | s per audio hour |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for m, r in doc["methods"].items():
        s = r["settings"]
        lines.append(
            f"| {m} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['error_rate']:.3f} | {r['macro_f1']:.3f} | {r['segment_ap']:.3f} | "
            f"{s['threshold']}, {s['median']}, {s['min_duration']}, {s['min_gap']} | "
            f"{r['seconds_per_audio_hour']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: tune on one generated split, report on another, print a table."""
    ap = argparse.ArgumentParser(prog="python -m dcls_audio.timeline_eval", description=__doc__)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="data/long", help="folder of the tune/ and test/ sets")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tune-files", type=int, default=6)
    ap.add_argument("--test-files", type=int, default=12)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results document here")
    ap.add_argument("--cache", help="keep the score tracks in this folder (reused when there)")
    ap.add_argument("--device", default="cpu", help="torch device of the model (default cpu)")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    doc = evaluate(
        args.checkpoint, args.data, args.methods.split(","), args.tune_files, args.test_files,
        args.minutes, args.seed, args.cache, args.device,
    )  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print(table(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
