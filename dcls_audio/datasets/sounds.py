"""The demo set: a procedurally generated multi-label sound set in the AudioSet HDF5 layout.

What it is: clips (10 s by default, 32 kHz, int16) each holding 1-3 events of distinct classes
over a coloured-noise background, with one boolean target per class. The 19 classes are kinds
of sound source: plucked and bowed strings, reed, brass, bells, piano-like, drums, hi-hats,
speech-like babble, singing, bird song, sirens, alarms, engines, rain, wind, footsteps, bubbles
and clocks (see `dcls_audio.datasets.sound_sources`). A class is told by its timbre, excitation and
temporal pattern, not by where it sits in frequency or how loud it is: every event draws its
pitch or centre frequency from a wide range that overlaps other classes' ranges, its level from
a 25 dB range, its duration (1-6 s) and onset at random, and events may overlap in time. The
background has a random level and spectral tilt. Every clip is generated from its own generator
seeded by (seed, split, clip index), so the files are a deterministic function of the seed,
whatever the number of worker processes, on one platform: numpy's vectorised float32 sin/exp
and BLAS may differ in the last bit between CPUs or builds, which can flip an int16 rounding.

Each file also holds the clips' strong labels (layout in `dcls_audio.data.strong`): every
named row is strongly labelled, its events are the sources placed in it, each from its first to
its last sample (fades included; a source with pauses, as footsteps or a clock, is one event),
and every class can be labelled. Writing them draws no random number: the audio is the same as
without them.

What it is not: recorded audio, or AudioSet's ontology. The sounds are simple procedural
imitations of source types, meant for demos, tests and quick experiments on a CPU; results
on this set say nothing about results on real recordings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from scipy.signal import lfilter

from dcls_audio.data.labels import write_class_index
from dcls_audio.data.strong import StrongLabels, write_strong
from dcls_audio.data.waveform import SAMPLE_RATE, float_to_int16
from dcls_audio.workers import loader_worker_init, stop_safe_context

from .common import set_paths
from .sound_dsp import loguniform
from .sound_sources import SOURCES

SR = SAMPLE_RATE
Rng = np.random.Generator
CLASS_NAMES = [name for name, _, _ in SOURCES]
NUM_CLASSES = len(CLASS_NAMES)
CLASS_MIDS = [f"/snd/{i:02d}" for i in range(NUM_CLASSES)]
MAX_RMS = 0.1  # loudest event RMS: -20 dBFS
MAX_PEAK = 0.7  # no event peaks above -3 dBFS
LEVEL_RANGE_DB = 25.0  # an event's level is drawn this far below its loudest allowed level
BACKGROUND_DB = (-72.0, -50.0)  # background RMS, dBFS
FADE_SECONDS = 0.02
MIN_CLIP_SECONDS = 1.0
BLOCK = 16  # clips per worker task


@dataclass(frozen=True)
class Event:
    """One sound event of a clip: class index, onset (samples) and scaled waveform."""

    cls: int
    onset: int
    wave: np.ndarray

    @property
    def rms_db(self) -> float:
        """RMS level of the event in dBFS."""
        return float(10 * np.log10(np.mean(np.square(self.wave, dtype=np.float64)) + 1e-20))


def source_event(cls: int, rng: Rng, n: int) -> np.ndarray:
    """An ``n``-sample event of class ``cls`` at its source's own scale, with short fades."""
    x = np.asarray(SOURCES[cls][1](rng, n), dtype=np.float32)
    m = min(int(FADE_SECONDS * SR), n // 2)
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(m) / m)).astype(np.float32)
    x[:m] *= ramp
    x[n - m :] *= ramp[::-1]
    return x


def draw_events(rng: Rng, clip_samples: int) -> list[Event]:
    """1-3 events of distinct classes with random durations, onsets and levels."""
    events = []
    for cls in rng.choice(NUM_CLASSES, size=rng.integers(1, 4), replace=False):
        lo, hi = SOURCES[cls][2]
        n = min(int(rng.uniform(lo, hi) * SR), clip_samples)
        onset = int(rng.integers(0, clip_samples - n + 1))
        x = source_event(int(cls), rng, n)
        rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
        top = min(MAX_RMS / (rms + 1e-12), MAX_PEAK / (float(np.abs(x).max()) + 1e-12))
        x *= np.float32(top * 10 ** (-rng.uniform(0, LEVEL_RANGE_DB) / 20))
        events.append(Event(int(cls), onset, x))
    return events


def background(rng: Rng, n: int) -> np.ndarray:
    """Coloured noise: white noise split at a random corner and re-mixed with a random tilt."""
    white = rng.random(n, dtype=np.float32) - np.float32(0.5)  # uniform: 5x faster than normal
    p = np.exp(-2 * np.pi * loguniform(rng, 100, 4000) / SR)
    low = lfilter(np.float32([1 - p]), np.float32([1, -p]), white)
    x = low + np.float32(10 ** (rng.uniform(-24, 6) / 20)) * (white - low)
    level = 10 ** (rng.uniform(*BACKGROUND_DB) / 20)
    return x * np.float32(level / np.sqrt(np.dot(x, x) / n))


def make_clip(rng: Rng, clip_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """One clip: (float32 waveform (clip_samples,), bool target (NUM_CLASSES,))."""
    x, target, _ = compose_clip(rng, clip_samples)
    return x, target


def event_table(events: list[Event]) -> np.ndarray:
    """Events as float64 rows ``[onset_s, offset_s, class]``, sorted."""
    rows = [(ev.onset / SR, (ev.onset + len(ev.wave)) / SR, ev.cls) for ev in events]
    return np.array(sorted(rows), dtype=np.float64).reshape(-1, 3)


def compose_clip(rng: Rng, clip_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip: (float32 waveform, bool target, its events as `event_table` rows)."""
    events = draw_events(rng, clip_samples)
    x = background(rng, clip_samples)
    target = np.zeros(NUM_CLASSES, dtype=bool)
    for ev in events:
        x[ev.onset : ev.onset + len(ev.wave)] += ev.wave
        target[ev.cls] = True
    peak = float(np.abs(x).max())
    if peak > 0.99:  # rare pile-up of loud events: scale the clip instead of clipping it
        x *= np.float32(0.99 / peak)
    return x, target, event_table(events)


def render_block(
    seed: int, split: int, lo: int, hi: int, clip_samples: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clips ``lo..hi-1``: int16 audio, bool targets, event rows (clip, onset, offset, class)."""
    wav = np.empty((hi - lo, clip_samples), dtype=np.int16)
    tgt = np.empty((hi - lo, NUM_CLASSES), dtype=bool)
    events = []
    for i in range(lo, hi):
        x, tgt[i - lo], ev = compose_clip(np.random.default_rng([seed, split, i]), clip_samples)
        wav[i - lo] = float_to_int16(x)
        events.append(np.concatenate([np.full((len(ev), 1), i), ev], axis=1))
    return wav, tgt, np.concatenate(events) if events else np.zeros((0, 4))


def _blocks(
    jobs: list[tuple[int, ...]], pool: Executor | None, window: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Results of ``render_block(*job)`` in order; at most ``window`` jobs in flight."""
    if pool is None:
        yield from (render_block(*job) for job in jobs)
        return
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(render_block, *job))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def write_split(
    path: str | os.PathLike,
    n: int,
    seed: int,
    split: int,
    clip_samples: int,
    n_empty: int = 0,
    pool: Executor | None = None,
    window: int = 4,
) -> None:
    """Write ``n`` clips (plus ``n_empty`` rows with empty names) to ``path``, block by block."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rows = n + n_empty
    name_len = max(len(f"snd{split}_{seed}_{i:07d}") for i in (0, max(n - 1, 0)))
    jobs = [(seed, split, lo, min(n, lo + BLOCK), clip_samples) for lo in range(0, n, BLOCK)]
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.create("sample_rate", SR, dtype=np.int32)
            f.attrs.create("clip_seconds", clip_samples / SR, dtype=np.float64)
            names = f.create_dataset("audio_name", shape=(rows,), dtype=f"S{name_len}")
            wav = f.create_dataset("waveform", shape=(rows, clip_samples), dtype=np.int16)
            tgt = f.create_dataset("target", shape=(rows, NUM_CLASSES), dtype=bool)
            events = [np.zeros((0, 4))]
            for (_, _, lo, hi, _), (w, y, ev) in zip(
                jobs, _blocks(jobs, pool, window), strict=True
            ):
                wav[lo:hi] = w
                tgt[lo:hi] = y
                names[lo:hi] = [f"snd{split}_{seed}_{i:07d}".encode() for i in range(lo, hi)]
                events.append(ev)
            # the empty rows keep name b"", target False and zero audio (the fill values), and
            # are not strongly labelled
            ev = np.concatenate(events)
            labels = StrongLabels(
                strong=np.arange(rows) < n,
                row=ev[:, 0].astype(np.int64),
                onset=ev[:, 1].astype(np.float32),
                offset=ev[:, 2].astype(np.float32),
                label=ev[:, 3].astype(np.int32),
                strong_classes=np.ones(NUM_CLASSES, dtype=bool),
            )
            write_strong(f, labels)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, found {value!r}")
    return int(value)


def _pool(workers: int) -> ProcessPoolExecutor:
    """Worker processes forked from a server that has the sources (and torch) imported already."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = stop_safe_context("forkserver")
        # not this module itself: `python -m` runs it again in the workers, as __mp_main__
        ctx.set_forkserver_preload(["h5py", "dcls_audio.datasets.sound_sources"])
    else:
        ctx = stop_safe_context("spawn")
    # workers leave stop signals to this process, which ends them when it stops
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=loader_worker_init)


def make_sounds(
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_eval: int = 500,
    seed: int = 0,
    clip_seconds: float = 10.0,
    n_empty: int = 0,
    workers: int | None = None,
) -> dict:
    """Write ``train.h5``, ``eval.h5`` and ``class_labels_indices.csv`` into ``out_dir``.

    ``workers`` processes render blocks of clips (None: one per available CPU, at most 8);
    the output does not depend on it.
    """
    n_train = _check_int("n_train", n_train, 0)
    n_eval = _check_int("n_eval", n_eval, 0)
    n_empty = _check_int("n_empty", n_empty, 0)
    seed = _check_int("seed", seed, 0)
    if workers is None:
        cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
        workers = min(8, len(cpus) if cpus else os.cpu_count() or 1)
    workers = _check_int("workers", workers, 1)
    try:
        clip_seconds = float(clip_seconds)
    except (TypeError, ValueError) as e:
        raise ValueError(f"clip_seconds must be a number, found {clip_seconds!r}") from e
    if not MIN_CLIP_SECONDS <= clip_seconds <= 600:
        raise ValueError(
            f"clip_seconds must be in [{MIN_CLIP_SECONDS:g}, 600], found {clip_seconds!r}"
        )
    clip_samples = int(round(clip_seconds * SR))
    paths = set_paths(out_dir)
    pool = _pool(workers) if workers > 1 and n_train + n_eval > BLOCK else None
    try:
        for split, (key, n) in enumerate((("train", n_train), ("eval", n_eval))):
            write_split(paths[key], n, seed, split, clip_samples, n_empty, pool, 2 * workers)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    write_class_index(paths["labels"], CLASS_MIDS, CLASS_NAMES)
    return {
        **{k: str(v) for k, v in paths.items()},
        "num_classes": NUM_CLASSES,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_empty": n_empty,
        "seed": seed,
        "clip_seconds": clip_samples / SR,
        "workers": workers,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: write the demo sound set, ``dcls-audio-sounds --out DIR``."""
    ap = argparse.ArgumentParser(
        prog="dcls-audio-sounds",
        description=f"Write the generated {NUM_CLASSES}-class sound set: "
        "DIR/{train,eval}.h5 + class index CSV.",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=2000, help="training clips")
    ap.add_argument("--eval", type=int, default=500, help="evaluation clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clip-seconds", type=float, default=10.0, help="clip length in seconds")
    ap.add_argument("--empty", type=int, default=0, help="empty rows appended to each file")
    ap.add_argument("--workers", type=int, default=None, help="processes (default: CPUs, <= 8)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = make_sounds(
        args.out,
        n_train=args.train,
        n_eval=args.eval,
        seed=args.seed,
        clip_seconds=args.clip_seconds,
        n_empty=args.empty,
        workers=args.workers,
    )
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    # run through the package module so that worker processes find the same functions
    from dcls_audio.datasets.sounds import main as _main

    sys.exit(_main())
