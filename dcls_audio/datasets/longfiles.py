"""Long recordings with known event times, built from the demo sound set's sources.

Each file is a coloured-noise background (as in the demo clips) with events of the 19 source
classes placed on two layers: a busy one (an event every few seconds) and a sparse one that
overlaps it now and then, so up to two events sound at once and a class never overlaps itself.
Durations, levels and fades follow the demo clips (`dcls_audio.datasets.sounds`). Files are a
deterministic function of (seed, split, file index). ``write_long_set`` writes ``<name>.wav``
(16-bit) per file, ``annotations.tsv`` (DCASE: ``filename onset offset event_label``) and
``durations.tsv`` (``filename duration``).

    python -m dcls_audio.datasets.longfiles --out data/long/tune --files 4 --minutes 3 --split 0
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from dcls_audio.data.waveform import SAMPLE_RATE, float_to_int16

from .sound_sources import SOURCES
from .sounds import CLASS_NAMES, LEVEL_RANGE_DB, MAX_PEAK, MAX_RMS, background, source_event

SR = SAMPLE_RATE
# gaps between events of a layer, seconds (uniform): the busy layer and the sparse one
LAYER_GAPS = ((0.5, 6.0), (6.0, 30.0))


@dataclass(frozen=True)
class Annotation:
    """One reference event of a generated file."""

    onset: float
    offset: float
    label: str


def _scaled_event(rng: np.random.Generator, cls: int, n: int) -> np.ndarray:
    """An event of ``n`` samples at a level drawn as the demo clips draw it."""
    x = source_event(cls, rng, n)
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    top = min(MAX_RMS / (rms + 1e-12), MAX_PEAK / (float(np.abs(x).max()) + 1e-12))
    return x * np.float32(top * 10 ** (-rng.uniform(0, LEVEL_RANGE_DB) / 20))


def long_file(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, list[Annotation]]:
    """(float32 waveform at 32 kHz, events sorted by onset) of one generated long file."""
    total = int(round(seconds * SR))
    x = background(rng, total)
    placed: list[tuple[int, int, int]] = []  # (onset, end, class) in samples
    for lo_gap, hi_gap in LAYER_GAPS:
        t = int(rng.uniform(0, hi_gap) * SR)
        while True:
            cls = int(rng.integers(len(SOURCES)))
            lo, hi = SOURCES[cls][2]
            n = int(rng.uniform(lo, hi) * SR)
            if t + n > total:
                break
            clash = any(c == cls and s < t + n and t < e for s, e, c in placed)
            busy = sum(s < t + n and t < e for s, e, _ in placed)
            if not clash and busy < 2:
                x[t : t + n] += _scaled_event(rng, cls, n)
                placed.append((t, t + n, cls))
            t += n + int(rng.uniform(lo_gap, hi_gap) * SR)
    peak = float(np.abs(x).max())
    if peak > 0.99:  # a rare pile-up of loud events: scale the file instead of clipping it
        x *= np.float32(0.99 / peak)
    placed.sort()
    return x, [Annotation(s / SR, e / SR, CLASS_NAMES[c]) for s, e, c in placed]


def read_annotations(path: str | Path) -> dict[str, list[Annotation]]:
    """A DCASE annotation table -> {filename: events} (files without events are absent)."""
    out: dict[str, list[Annotation]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            out.setdefault(row["filename"], []).append(
                Annotation(float(row["onset"]), float(row["offset"]), row["event_label"])
            )
    return out


def merge_overlaps(
    refs: dict[str, list[Annotation]],
) -> tuple[dict[str, list[Annotation]], dict[str, int]]:
    """Same-class events that overlap or touch merged into one, as DCASE evaluations do.

    Returns the merged table (each file's events sorted by onset, then class) and
    ``{filename: events merged away}`` for the files that had any.
    """
    merged: dict[str, list[Annotation]] = {}
    counts: dict[str, int] = {}
    for name, events in refs.items():
        spans: dict[str, list[list[float]]] = {}
        for a in sorted(events, key=lambda e: (e.label, e.onset, e.offset)):
            own = spans.setdefault(a.label, [])
            if own and a.onset <= own[-1][1]:
                own[-1][1] = max(own[-1][1], a.offset)
            else:
                own.append([a.onset, a.offset])
        out = [Annotation(on, off, label) for label, s in spans.items() for on, off in s]
        merged[name] = sorted(out, key=lambda e: (e.onset, e.label))
        if len(out) < len(events):
            counts[name] = len(events) - len(out)
    return merged, counts


def read_durations(path: str | Path) -> dict[str, float]:
    """``durations.tsv`` -> {filename: seconds}."""
    with open(path, newline="") as f:
        return {
            row["filename"]: float(row["duration"]) for row in csv.DictReader(f, delimiter="\t")
        }


def write_long_set(
    out_dir: str | Path, files: int = 4, minutes: float = 3.0, seed: int = 0, split: int = 0
) -> dict:
    """Write ``files`` long files, ``annotations.tsv`` and ``durations.tsv`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, durations = [], []
    for i in range(files):
        name = f"long{split}_{seed}_{i:03d}.wav"
        x, events = long_file(np.random.default_rng([seed, 100 + split, i]), minutes * 60)
        sf.write(out / name, float_to_int16(x), SR, subtype="PCM_16")
        rows += [f"{name}\t{e.onset:.4f}\t{e.offset:.4f}\t{e.label}" for e in events]
        durations.append(f"{name}\t{len(x) / SR:.4f}")
    (out / "annotations.tsv").write_text(
        "\n".join(["filename\tonset\toffset\tevent_label", *rows]) + "\n"
    )
    (out / "durations.tsv").write_text("\n".join(["filename\tduration", *durations]) + "\n")
    return {"out": str(out), "files": files, "minutes": minutes, "events": len(rows)}


def main(argv: list[str] | None = None) -> int:
    """CLI: write a set of generated long files with their annotations."""
    ap = argparse.ArgumentParser(
        prog="python -m dcls_audio.datasets.longfiles",
        description="Write long files of demo-set sources with annotated onsets and offsets.",
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", type=int, default=0, help="0, 1, ...: disjoint draws")
    args = ap.parse_args(argv)
    print(json.dumps(write_long_set(args.out, args.files, args.minutes, args.seed, args.split)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
