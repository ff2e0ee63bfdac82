"""A procedurally generated multi-label set in the AudioSet HDF5 layout (16 classes).

Each clip is 10 s of low white noise with 1-3 events of distinct classes at random onsets,
durations (1.5-4 s) and levels (-20..0 dB). The classes differ in frequency range and temporal
pattern so that a small CNN on log-mel separates them, while overlaps, level changes and noise keep
the task from being trivial. Every clip is generated from its own generator seeded by
(seed, split, clip index), so the files are a deterministic function of the seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from dcls_audio.data.labels import write_class_index
from dcls_audio.data.waveform import CLIP_SAMPLES, SAMPLE_RATE, float_to_int16

from .common import set_paths

SR = SAMPLE_RATE
Rng = np.random.Generator
TWO_PI = np.float32(2 * np.pi)
NOISE_LEVEL = 0.003
FADE = int(0.05 * SR)
# noise-like classes cut their events out of one long band-limited noise per split
NOISE_BANDS = {
    "Low noise band": (200, 450),
    "Mid noise band": (1500, 2500),
    "High noise band": (8000, 10000),
}


def _sin(cycles: np.ndarray) -> np.ndarray:
    return np.sin(TWO_PI * cycles)


def _tone(t: np.ndarray, rng: Rng, lo: float, hi: float) -> np.ndarray:
    return _sin(np.float32(rng.uniform(lo, hi)) * t + np.float32(rng.uniform()))


def _chirp(t: np.ndarray, rng: Rng, up: bool) -> np.ndarray:
    f0, f1 = rng.uniform(300, 600), rng.uniform(3000, 6000)
    if not up:
        f0, f1 = f1, f0
    dur = float(t[-1])
    k = np.log(f1 / f0) / dur  # exponential sweep f(t) = f0 exp(k t); phase = f0 (exp(k t) - 1) / k
    return _sin(np.float32(f0 / k) * np.expm1(np.float32(k) * t))


def _vibrato(t: np.ndarray, rng: Rng, fc: float, depth: float, rate: float) -> np.ndarray:
    # f(t) = fc + depth sin(2 pi rate t)  ->  phase = fc t - depth / (2 pi rate) cos(2 pi rate t)
    return _sin(
        np.float32(fc) * t
        - np.float32(depth / (2 * np.pi * rate))
        * np.cos(TWO_PI * np.float32(rate) * t + np.float32(rng.uniform(0, 2 * np.pi)))
    )


def _clicks(t: np.ndarray, rng: Rng, lo: float, hi: float) -> np.ndarray:
    period = int(SR / rng.uniform(lo, hi))
    decay = np.exp(-np.arange(min(period, int(0.004 * SR))) / (0.0008 * SR))
    template = np.zeros(period, dtype=np.float32)
    template[: len(decay)] = decay * rng.choice([-1.0, 1.0], len(decay))
    reps = len(t) // period + 2
    start = int(rng.integers(0, period))
    return np.tile(template, reps)[start : start + len(t)]


def _am(t: np.ndarray, rng: Rng) -> np.ndarray:
    mod = np.float32(0.55) + np.float32(0.45) * _sin(np.float32(rng.uniform(3, 6)) * t)
    return mod * _tone(t, rng, 900, 1100)


def _harmonics(t: np.ndarray, rng: Rng, lo: float, hi: float, count: int) -> np.ndarray:
    f0 = np.float32(rng.uniform(lo, hi))
    out = np.zeros(len(t), dtype=np.float32)
    for k in range(1, count + 1):
        out += _sin(f0 * np.float32(k) * t) / np.float32(k)
    return out


def _beeps(t: np.ndarray, rng: Rng) -> np.ndarray:
    gate = (t % np.float32(rng.uniform(0.18, 0.25))) < 0.08
    return gate * _tone(t, rng, 3500, 4000)


def _band(name: str) -> Callable[[np.ndarray, Rng, dict], np.ndarray]:
    def cut(t: np.ndarray, rng: Rng, banks: dict) -> np.ndarray:
        bank = banks[name]
        start = int(rng.integers(0, len(bank) - len(t) + 1))
        return bank[start : start + len(t)]

    return cut


CLASSES: list[tuple[str, Callable[..., np.ndarray]]] = [
    ("Low tone", lambda t, r, b: _tone(t, r, 150, 300)),
    ("High tone", lambda t, r, b: _tone(t, r, 5000, 7000)),
    ("Chirp up", lambda t, r, b: _chirp(t, r, up=True)),
    ("Chirp down", lambda t, r, b: _chirp(t, r, up=False)),
    ("Low noise band", _band("Low noise band")),
    ("Mid noise band", _band("Mid noise band")),
    ("High noise band", _band("High noise band")),
    ("Slow clicks", lambda t, r, b: _clicks(t, r, 3, 6)),
    ("Fast clicks", lambda t, r, b: _clicks(t, r, 25, 50)),
    ("AM tone", lambda t, r, b: _am(t, r)),
    ("FM tone", lambda t, r, b: _vibrato(t, r, r.uniform(2000, 2500), 150, r.uniform(5, 8))),
    ("Siren", lambda t, r, b: _vibrato(t, r, 1000, 400, r.uniform(0.5, 1.0))),
    ("Low harmonic stack", lambda t, r, b: _harmonics(t, r, 100, 180, 8)),
    ("High harmonic stack", lambda t, r, b: _harmonics(t, r, 400, 600, 5)),
    ("Beeps", lambda t, r, b: _beeps(t, r)),
    ("Very high tone", lambda t, r, b: _tone(t, r, 10000, 12000)),
]
NUM_CLASSES = len(CLASSES)
BLOCK = 64
CLASS_NAMES = [name for name, _ in CLASSES]
CLASS_MIDS = [f"/syn/{i:02d}" for i in range(NUM_CLASSES)]


def make_banks(rng: Rng) -> dict[str, np.ndarray]:
    """Long noise signals shared by the clips of a split: background and the noise bands."""
    n = 2 * CLIP_SAMPLES
    banks = {"background": rng.standard_normal(n, dtype=np.float32) * np.float32(NOISE_LEVEL)}
    f = np.fft.rfftfreq(n, 1 / SR)
    for name, (lo, hi) in NOISE_BANDS.items():
        spec = np.fft.rfft(rng.standard_normal(n))
        spec[(f < lo) | (f > hi)] = 0
        x = np.fft.irfft(spec, n)
        banks[name] = (x / np.sqrt(np.mean(x**2))).astype(np.float32)
    return banks


def make_clip(rng: Rng, banks: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One clip: (float32 waveform (320000,), bool target (16,))."""
    bg = banks["background"]
    start = int(rng.integers(0, len(bg) - CLIP_SAMPLES + 1))
    x = bg[start : start + CLIP_SAMPLES].copy()
    target = np.zeros(NUM_CLASSES, dtype=bool)
    ramp = (0.5 - 0.5 * np.cos(np.pi * np.arange(FADE) / FADE)).astype(np.float32)
    for c in rng.choice(NUM_CLASSES, size=rng.integers(1, 4), replace=False):
        n = int(rng.uniform(1.5, 4.0) * SR)
        onset = int(rng.integers(0, CLIP_SAMPLES - n + 1))
        t = np.arange(n, dtype=np.float32) / np.float32(SR)
        ev = CLASSES[c][1](t, rng, banks)
        gain = 0.1 * 10 ** (rng.uniform(-20, 0) / 20) / (np.sqrt(np.mean(ev**2)) + 1e-9)
        gain = min(gain, 0.3 / (np.abs(ev).max() + 1e-9))  # sparse clicks: cap the peak
        ev = ev * np.float32(gain)  # RMS level in -40..-20 dBFS
        ev[:FADE] *= ramp
        ev[-FADE:] *= ramp[::-1]
        x[onset : onset + n] += ev
        target[c] = True
    return x, target


def write_split(path: str | os.PathLike, n: int, seed: int, split: int, n_empty: int = 0) -> None:
    """Write ``n`` clips (plus ``n_empty`` PANNs-style empty rows at the end) to ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    rows = n + n_empty
    with h5py.File(tmp, "w") as f:
        f.attrs.create("sample_rate", SAMPLE_RATE, dtype=np.int32)
        names = f.create_dataset("audio_name", shape=(rows,), dtype="S20")
        wav = f.create_dataset("waveform", shape=(rows, CLIP_SAMPLES), dtype=np.int16)
        tgt = f.create_dataset("target", shape=(rows, NUM_CLASSES), dtype=bool)
        banks = make_banks(np.random.default_rng([seed, split, 2**32]))
        for lo in range(0, n, BLOCK):
            hi = min(n, lo + BLOCK)
            block = np.empty((hi - lo, CLIP_SAMPLES), dtype=np.int16)
            ys = np.empty((hi - lo, NUM_CLASSES), dtype=bool)
            for i in range(lo, hi):
                x, ys[i - lo] = make_clip(np.random.default_rng([seed, split, i]), banks)
                block[i - lo] = float_to_int16(x)
            wav[lo:hi] = block
            tgt[lo:hi] = ys
            names[lo:hi] = [f"syn{split}_{seed}_{i:07d}".encode() for i in range(lo, hi)]
        # names/targets of the empty rows stay b"" / False and their audio stays zero (fill value)
    tmp.replace(path)


def make_synthetic(
    out_dir: str | os.PathLike,
    n_train: int = 1024,
    n_eval: int = 256,
    seed: int = 0,
    n_empty: int = 0,
) -> dict:
    """Write ``train.h5``, ``eval.h5`` and ``class_labels_indices.csv`` into ``out_dir``."""
    if n_train < 0 or n_eval < 0 or n_empty < 0:
        raise ValueError(f"sizes must be >= 0, found train={n_train} eval={n_eval} empty={n_empty}")
    paths = set_paths(out_dir)
    write_split(paths["train"], n_train, seed, 0, n_empty)
    write_split(paths["eval"], n_eval, seed, 1, n_empty)
    write_class_index(paths["labels"], CLASS_MIDS, CLASS_NAMES)
    return {
        **{k: str(v) for k, v in paths.items()},
        "num_classes": NUM_CLASSES,
        "n_train": n_train,
        "n_eval": n_eval,
        "n_empty": n_empty,
    }


def main(argv: list[str] | None = None) -> int:
    """CLI: write the synthetic set, ``dcls-audio-synthetic --out DIR``."""
    ap = argparse.ArgumentParser(
        prog="dcls-audio-synthetic",
        description="Write the generated 16-class set: DIR/{train,eval}.h5 + class index CSV.",
    )
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--train", type=int, default=1024, help="training clips")
    ap.add_argument("--eval", type=int, default=256, help="evaluation clips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--empty", type=int, default=0, help="PANNs-style empty rows appended to each file"
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    info = make_synthetic(
        args.out, n_train=args.train, n_eval=args.eval, seed=args.seed, n_empty=args.empty
    )
    info["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
