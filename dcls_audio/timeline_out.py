"""``dcls-audio-tag --timeline``: score tracks and events of each file, written to a folder.

Per readable input file ``<stem>.events.csv`` and ``<stem>.events.json`` (onset, offset, class,
peak score), ``<stem>.scores.npz`` (``scores`` frames x classes, ``times`` frame centres in
seconds, ``labels``) and ``<stem>.png`` (the top classes' score tracks above the log-mel, events
shaded); one ``events.tsv`` for all files in the DCASE convention (``filename onset offset
event_label``, tab-separated, ``filename`` the file's name). Two inputs with the same stem get
``<stem>-2``, ``<stem>-3``, ... in the order given.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dcls_audio.data.stream import AudioReadError
from dcls_audio.events import Event, EventSettings, detect, read_thresholds
from dcls_audio.tagger import Tagger
from dcls_audio.timeline import Track, WindowScorer, score_file

TSV_NAME = "events.tsv"


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` beside ``path``, then rename over it (no half-written outputs)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unique_stems(paths: Sequence[str]) -> list[str]:
    """Output stems for input paths: the file stem, suffixed ``-2``, ``-3`` on repeats."""
    used: dict[str, int] = {}
    out = []
    for p in paths:
        stem = Path(p).stem or "audio"
        used[stem] = used.get(stem, 0) + 1
        out.append(stem if used[stem] == 1 else f"{stem}-{used[stem]}")
    return out


def write_events_csv(path: Path, events: Sequence[Event]) -> None:
    """CSV: file, onset, offset, class, peak_score (seconds, 3 decimals)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["file", "onset", "offset", "class", "peak_score"])
            for e in events:
                d = e.as_dict()
                w.writerow([e.file, d["onset"], d["offset"], d["class"], d["peak_score"]])

    _atomic(path, write)


def write_events_json(path: Path, track: Track, events: Sequence[Event], meta: dict) -> None:
    """JSON: the file, its duration, the frame step, the settings and the events."""
    doc = {
        "file": track.file,
        "duration_s": round(track.duration, 3),
        "hop_s": track.hop,
        **meta,
        "events": [e.as_dict() for e in events],
    }
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=1) + "\n"))


def write_scores_npz(path: Path, track: Track) -> None:
    """NPZ: ``scores`` (frames, classes) float32, ``times`` (frames,) s, ``labels`` (classes,)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f, scores=track.scores, times=track.times, labels=np.array(track.labels)
            )

    _atomic(path, write)


def write_dcase_tsv(path: Path, events: Sequence[Event]) -> None:
    """The DCASE table: ``filename onset offset event_label``, tab-separated, with a header."""
    lines = ["filename\tonset\toffset\tevent_label"]
    lines += [f"{Path(e.file).name}\t{e.onset:.3f}\t{e.offset:.3f}\t{e.label}" for e in events]
    _atomic(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def plot_track(
    path: Path, track: Track, events: Sequence[Event], thresholds: np.ndarray, top: int = 5
) -> None:
    """PNG: the ``top`` classes' score tracks (events shaded) above the log-mel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-track.scores.max(0), kind="stable")[:top]
    fig, (ax, bx) = plt.subplots(
        2, 1, figsize=(12, 6), sharex=True, gridspec_kw={"height_ratios": [1.2, 1]}
    )
    end = max(track.duration, track.hop)
    colours = plt.get_cmap("tab10")
    for n, c in enumerate(order):
        colour = colours(n % 10)
        ax.plot(track.times, track.scores[:, c], color=colour, lw=1, label=track.labels[c])
        ax.axhline(thresholds[c], color=colour, lw=0.6, ls=":")
        for e in events:
            if e.label == track.labels[c]:
                ax.axvspan(e.onset, e.offset, color=colour, alpha=0.18, lw=0)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("score")
    ax.set_title(f"{Path(track.file).name}: top {len(order)} classes, events shaded", fontsize=10)
    ax.legend(loc="upper right", fontsize=7, ncol=min(len(order), 3), framealpha=0.7)
    if track.mel is not None:
        mel = track.mel
        if mel.shape[1] > 3000:  # long files: average neighbouring columns for the image
            k = -(-mel.shape[1] // 3000)
            cols = mel.shape[1] // k * k
            mel = mel[:, :cols].reshape(mel.shape[0], -1, k).mean(2)
        bx.imshow(
            mel, aspect="auto", origin="lower", extent=(0, end, 0, mel.shape[0]), cmap="magma"
        )
    bx.set_ylabel("mel bin")
    bx.set_xlabel("time (s)")
    bx.set_xlim(0, end)
    fig.tight_layout()
    _atomic(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def run_timeline(
    tagger: Tagger,
    inputs: Sequence[str],
    out_dir: str | Path,
    settings: EventSettings,
    *,
    hop: float = 0.5,
    mode: str = "frames",
    batch_size: int = 8,
    progress: bool = True,
    plot_top: int = 5,
    log: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Score, detect and write every input; returns (per-file summaries, errors)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thresholds = read_thresholds(settings.threshold, tagger.class_names)
    scorer = WindowScorer(tagger, mode)
    meta = {
        "mode": mode,
        "window_s": tagger.window_samples / 32000,
        "threshold": settings.threshold,
        "median_s": settings.median,
        "min_duration_s": settings.min_duration,
        "min_gap_s": settings.min_gap,
        "weights": tagger.weights,
    }
    results, errors, every = [], [], []
    for path, stem in zip(inputs, unique_stems(inputs), strict=True):
        try:
            track = score_file(
                tagger, path, hop=hop, batch_size=batch_size, mel=True, progress=progress,
                scorer=scorer,
            )  # fmt: skip
        except AudioReadError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            errors.append({"file": str(path), "error": str(err)})
            continue
        events = detect(
            track.scores, hop, track.labels, thresholds, settings.median, settings.min_duration,
            settings.min_gap, track.duration, str(path),
        )  # fmt: skip
        write_events_csv(out / f"{stem}.events.csv", events)
        write_events_json(out / f"{stem}.events.json", track, events, meta)
        write_scores_npz(out / f"{stem}.scores.npz", track)
        plot_track(out / f"{stem}.png", track, events, thresholds, plot_top)
        every.extend(events)
        results.append({"file": str(path), "stem": stem, "events": len(events)})
        if log is not None:
            log(f"{path}: {track.duration:.1f} s, {len(events)} events -> {out / stem}.*")
    write_dcase_tsv(out / TSV_NAME, every)
    return results, errors
