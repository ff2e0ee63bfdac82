"""Signal building blocks for the sound sources: oscillators, filters, envelopes, rhythms, voice."""

from __future__ import annotations

import numpy as np
from scipy.signal import lfilter

from dcls_audio.data.waveform import SAMPLE_RATE

SR = SAMPLE_RATE
Rng = np.random.Generator
TWO_PI = np.float32(2 * np.pi)
NYQ_SAFE = 0.45 * SR  # highest partial we synthesise
SCALES = ([0, 2, 4, 5, 7, 9, 11, 12], [0, 3, 5, 7, 10, 12], [0, 2, 3, 5, 7, 8, 10, 12])
DITHER = np.random.default_rng(1).choice(np.float32([-1e-30, 1e-30]), 4096)
VOWELS = np.array(  # F1, F2, F3, F4 of an adult male voice (Hz)
    [
        [730, 1090, 2440, 3400],
        [270, 2290, 3010, 3700],
        [300, 870, 2240, 3300],
        [530, 1840, 2480, 3500],
        [570, 840, 2410, 3300],
        [660, 1720, 2410, 3400],
        [490, 1350, 1690, 3300],
    ],
    dtype=np.float64,
)


def loguniform(rng: Rng, lo: float, hi: float) -> float:
    """A number drawn uniformly on a log scale between ``lo`` and ``hi``."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def phase(freq: float | np.ndarray, n: int, start: float = 0.0) -> np.ndarray:
    """Oscillator phase in cycles, float32 in [0, 1), for a constant or per-sample frequency."""
    if np.ndim(freq) == 0:
        ph = start + (float(freq) / SR) * np.arange(n, dtype=np.float64)
    else:
        ph = start + np.cumsum(np.asarray(freq, dtype=np.float64)[:n] / SR)
    return (ph % 1.0).astype(np.float32)


def partials(ph: np.ndarray, amps: list[float] | np.ndarray, fmax: float) -> np.ndarray:
    """Sum of harmonics ``amps[k-1] sin(2 pi k ph)``, without those above Nyquist at ``fmax``."""
    out = np.zeros(len(ph), dtype=np.float32)
    for k, a in enumerate(amps, start=1):
        if k * fmax < NYQ_SAFE and a != 0:
            out += np.float32(a) * np.sin(TWO_PI * np.float32(k) * ph)
    return out


def filt(b: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``lfilter`` in float32, with a 1e-30 dither that keeps decaying states out of subnormals."""
    x = x + np.resize(DITHER, len(x))  # subnormal floats make lfilter ~10x slower
    return lfilter(b.astype(np.float32), a.astype(np.float32), x).astype(np.float32, copy=False)


def biquad(x: np.ndarray, kind: str, f: float, q: float) -> np.ndarray:
    """RBJ biquad: ``kind`` is "low", "high" or "band" (0 dB peak), corner/centre ``f`` Hz."""
    w = 2 * np.pi * min(f, NYQ_SAFE) / SR
    alpha, c = np.sin(w) / (2 * q), np.cos(w)
    if kind == "low":
        b = np.array([(1 - c) / 2, 1 - c, (1 - c) / 2])
    elif kind == "high":
        b = np.array([(1 + c) / 2, -(1 + c), (1 + c) / 2])
    elif kind == "band":
        b = np.array([alpha, 0.0, -alpha])
    else:
        raise ValueError(f"biquad kind={kind!r}; expected 'low', 'high' or 'band'")
    return filt(b, np.array([1 + alpha, -2 * c, 1 - alpha]), x)


def resonator(x: np.ndarray, f: float, t60: float) -> np.ndarray:
    """Two-pole resonance at ``f`` Hz ringing for ``t60`` s (a struck mode when fed clicks)."""
    r = np.exp(-6.9 / (t60 * SR))
    w = 2 * np.pi * min(f, NYQ_SAFE) / SR
    return filt(np.array([1 - r]), np.array([1.0, -2 * r * np.cos(w), r * r]), x)


def decay_train(n: int, onsets: np.ndarray, amps: np.ndarray, tau: float) -> np.ndarray:
    """Sum of exponential decays (time constant ``tau`` s) starting at ``onsets``."""
    imp = np.zeros(n, dtype=np.float32)
    np.add.at(imp, onsets, amps.astype(np.float32))
    return filt(np.array([1.0]), np.array([1.0, -np.exp(-1 / (tau * SR))]), imp)


def curve(rng: Rng, n: int, lo: float, hi: float, every: float) -> np.ndarray:
    """A slowly wandering random curve in [lo, hi] with a control point every ``every`` s."""
    pts = max(2, int(n / (every * SR)) + 2)
    x = np.linspace(0, n, pts)
    return np.interp(np.arange(n), x, rng.uniform(lo, hi, pts)).astype(np.float32)


def overlap_add(n: int, onsets: np.ndarray, grains: np.ndarray) -> np.ndarray:
    """Add grains (M, G) into an ``n``-sample signal at ``onsets`` (M,), cut at the end."""
    idx = onsets[:, None] + np.arange(grains.shape[1])[None, :]
    keep = idx < n
    return np.bincount(idx[keep], weights=grains[keep], minlength=n)[:n].astype(np.float32)


def hits(rng: Rng, n: int, step: float, pattern: np.ndarray, swing: float = 0.0) -> np.ndarray:
    """Onset samples of a repeating grid rhythm (``step`` s per slot, slots where ``pattern``)."""
    pattern = pattern.copy()
    pattern[0] = True
    slots = np.arange(int(n / (step * SR)) + 1)
    slots = slots[pattern[slots % len(pattern)]]
    t = slots * step + swing * step * (slots % 2) + rng.normal(0, 0.004, len(slots))
    on = np.clip((t * SR).astype(np.int64), 0, None)
    on = on[on < n - int(0.02 * SR)]
    return on if len(on) else np.zeros(1, dtype=np.int64)


def note_times(rng: Rng, n: int, ioi: tuple[float, float]) -> np.ndarray:
    """Onsets of a note sequence with inter-onset intervals drawn from ``ioi`` (s)."""
    base = rng.uniform(*ioi)
    gaps = base * rng.choice([0.5, 1, 1, 1, 2], 64) * rng.uniform(0.9, 1.1, 64)
    on = np.concatenate([[0.0], np.cumsum(gaps)]) * SR
    on = on[on < n - 0.1 * SR].astype(np.int64)
    return on if len(on) else np.zeros(1, dtype=np.int64)


def melody(rng: Rng, count: int, lo: float, hi: float) -> np.ndarray:
    """``count`` pitches (Hz) of a tune on a random scale rooted in [lo, hi] (up to an octave)."""
    root, scale = loguniform(rng, lo, hi), SCALES[rng.integers(len(SCALES))]
    steps = np.clip(np.cumsum(rng.integers(-2, 3, count)), 0, len(scale) - 1)
    return root * 2.0 ** (np.asarray(scale)[steps] / 12)


def glide(n: int, onsets: np.ndarray, values: np.ndarray, ms: float = 40) -> np.ndarray:
    """Piecewise-constant per-note values with ``ms`` glides between notes (per sample)."""
    step = np.repeat(values, np.diff(np.append(onsets, n)))
    p = np.exp(-1 / (ms * 1e-3 * SR))
    return lfilter([1 - p], [1, -p], step, zi=[p * values[0]])[0]


def note_envelope(n: int, onsets: np.ndarray, attack: float, release: float) -> np.ndarray:
    """Per-note attack/release envelope of legato notes (dips between notes)."""
    idx = np.arange(n)
    seg = np.searchsorted(onsets, idx, side="right") - 1
    since = (idx - onsets[seg]) / SR
    ends = np.append(onsets[1:], n)
    until = (ends[seg] - idx) / SR
    return (np.minimum(1, since / attack) * np.minimum(1, until / release + 0.3)).astype(np.float32)


def fof_voice(n: int, f0: np.ndarray, formants: np.ndarray, env: np.ndarray) -> np.ndarray:
    """Formant-wave-function (FOF) voice: one decaying formant grain per glottal pulse."""
    ph = np.cumsum(f0.astype(np.float64) / SR)
    pulses = np.flatnonzero(np.diff(np.floor(ph)) > 0)
    pulses = pulses[env[pulses] > 0.02]
    if len(pulses) == 0:
        return np.zeros(n, dtype=np.float32)
    g = int(0.012 * SR)
    t = np.arange(g, dtype=np.float32)[None, :] / SR
    fr = formants[:, pulses // 32].T.astype(np.float32)  # (P, 4)
    rise = 0.5 - 0.5 * np.cos(np.pi * np.minimum(1, t / np.float32(0.002)))
    grains = np.zeros((len(pulses), g), dtype=np.float32)
    for i, (amp, bw) in enumerate(((1.0, 80), (0.6, 100), (0.3, 150), (0.15, 250))):
        grains += amp * np.exp(np.float32(-np.pi * bw) * t) * np.sin(TWO_PI * fr[:, i : i + 1] * t)
    grains *= rise * env[pulses][:, None]
    return overlap_add(n, pulses, grains)


def vowel_track(rng: Rng, n: int, bounds: np.ndarray, scale: float) -> np.ndarray:
    """Formant tracks (4, ceil(n / 32)) every 32 samples: a vowel per segment, glides between."""
    seg = np.searchsorted(bounds, np.arange(0, n, 32), side="right") - 1
    tracks = VOWELS[rng.integers(0, len(VOWELS), len(bounds))].T * scale  # (4, segments)
    p = np.exp(-32 / (0.03 * SR))
    return lfilter([1 - p], [1, -p], tracks[:, seg], axis=1, zi=p * tracks[:, :1])[0]
