"""Procedural sound sources for the demo set (`dcls_audio.datasets.sounds`): one function per class.

Every source is ``fn(rng, n) -> float32 (n,)``: an event of ``n`` samples at 32 kHz with arbitrary
scale (the caller normalises the level). A class is a kind of source (its excitation, timbre and
temporal pattern); pitches and centre frequencies are drawn from wide ranges that overlap other
classes' ranges. Everything is vectorised numpy/scipy; Python loops run over notes or hits only.
Shared building blocks (oscillators, filters, envelopes, rhythms, an FOF voice): `.sound_dsp`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.signal import lfilter

from .sound_dsp import (
    NYQ_SAFE,
    SR,
    TWO_PI,
    Rng,
    biquad,
    curve,
    decay_train,
    filt,
    fof_voice,
    glide,
    hits,
    loguniform,
    melody,
    note_envelope,
    note_times,
    overlap_add,
    partials,
    phase,
    resonator,
    vowel_track,
)


def plucked_string(rng: Rng, n: int) -> np.ndarray:
    """Karplus-Strong plucks (delay line + averaging loss in one lfilter), a note sequence."""
    out = np.zeros(n, dtype=np.float32)
    on = note_times(rng, n, (0.15, 0.6))
    pitches = melody(rng, len(on), 90, 600)
    loss, bright = rng.uniform(0.992, 0.9995), rng.uniform(0.0, 0.8)
    ends = np.minimum(np.append(on[1:] + int(0.05 * SR), n), n)  # next pluck damps the string
    for start, end, f in zip(on, ends, pitches, strict=True):
        delay = max(int(SR / f - 0.5), 2)
        x = np.zeros(end - start)
        burst = lfilter([1 - bright], [1, -bright], rng.uniform(-1, 1, delay))
        x[: min(delay, len(x))] = (burst - burst.mean())[: len(x)]
        a = np.zeros(delay + 2)
        a[0], a[delay], a[delay + 1] = 1.0, -loss / 2, -loss / 2
        out[start:end] += rng.uniform(0.6, 1.0) * lfilter([1.0], a, x).astype(np.float32)
    return out


def bowed_string(rng: Rng, n: int) -> np.ndarray:
    """Sawtooth-like harmonics with delayed vibrato, bow noise and body resonances."""
    on = note_times(rng, n, (0.5, 2.0))
    f = glide(n, on, melody(rng, len(on), 100, 900), ms=30)
    vib = np.sin(TWO_PI * rng.uniform(4.5, 6.5) * np.arange(n, dtype=np.float32) / SR)
    f = f * (1 + rng.uniform(0.003, 0.01) * vib * np.minimum(1, np.arange(n) / (0.4 * SR)))
    tilt = rng.uniform(0.8, 1.3)
    x = partials(phase(f, n), [k**-tilt for k in range(1, 25)], float(f.max()))
    x += 0.08 * biquad(rng.standard_normal(n, dtype=np.float32), "high", 2000, 0.7)
    body = 0.3 * x
    for lo, hi in ((250, 450), (500, 1200), (2000, 3500)):
        body += biquad(x, "band", rng.uniform(lo, hi), rng.uniform(2, 6))
    return body * note_envelope(n, on, rng.uniform(0.08, 0.3), 0.15) * curve(rng, n, 0.7, 1, 0.5)


def reed(rng: Rng, n: int) -> np.ndarray:
    """Clarinet-like: odd harmonics (weak even ones) plus breath noise, legato notes."""
    on = note_times(rng, n, (0.3, 1.2))
    f = glide(n, on, melody(rng, len(on), 140, 900), ms=15)
    amps = [(1 / k if k % 2 else 0.03 / k) * np.exp(-k / 14) for k in range(1, 20)]
    x = partials(phase(f, n), amps, float(f.max()))
    breath = biquad(rng.standard_normal(n, dtype=np.float32), "band", rng.uniform(1500, 4000), 1)
    x += rng.uniform(0.03, 0.1) * breath
    return x * note_envelope(n, on, rng.uniform(0.03, 0.08), 0.06)


def brass(rng: Rng, n: int) -> np.ndarray:
    """Harmonics whose brightness follows the envelope (loud = bright), pitch scoop at onsets."""
    on = note_times(rng, n, (0.25, 1.2))
    f = glide(n, on, melody(rng, len(on), 90, 700), ms=20)
    env = note_envelope(n, on, rng.uniform(0.04, 0.12), 0.1) * curve(rng, n, 0.5, 1, 0.7)
    ph = phase(f * (1 - 0.03 * (1 - env)), n)  # the lips sag flat while the note is soft
    weight, gamma = np.ones(n, dtype=np.float32), env ** np.float32(rng.uniform(0.6, 1.2))
    out = np.zeros(n, dtype=np.float32)
    for k in range(1, 25):
        if k * f.max() >= NYQ_SAFE:
            break
        out += weight * np.sin(TWO_PI * np.float32(k) * ph) / np.float32(k**0.5)
        weight = weight * gamma
    return out * env


def bell(rng: Rng, n: int) -> np.ndarray:
    """Inharmonic partials (bell or free bar ratios) with long exponential decays, 1-4 strikes."""
    if rng.uniform() < 0.5:
        ratios = np.array([0.5, 1.0, 1.19, 1.5, 2.0, 2.5, 2.67, 3.0, 4.0])
    else:
        ratios = np.array([1.0, 2.76, 5.40, 8.93])
    ratios = ratios * rng.uniform(0.985, 1.015, len(ratios))
    weights, t60 = rng.uniform(0.3, 1.0, len(ratios)), rng.uniform(1.5, 6.0)
    on = note_times(rng, n, (0.4, 2.0))[:4]
    out = np.zeros(n, dtype=np.float32)
    for start, f in zip(on, melody(rng, len(on), 250, 1600), strict=True):
        t = np.arange(n - start, dtype=np.float32) / SR
        for r, w in zip(ratios, weights, strict=True):
            if r * f < NYQ_SAFE:
                dec = np.exp(np.float32(-6.9 / (t60 * r**-0.6)) * t)
                out[start:] += w * dec * np.sin(TWO_PI * np.float32(r * f) * t)
    return out


def piano(rng: Rng, n: int) -> np.ndarray:
    """Hammered strings: stretched partials, fast attack, two-stage decay; chords or runs."""
    out = np.zeros(n, dtype=np.float32)
    if rng.uniform() < 0.5:  # chords
        on = note_times(rng, n, (0.5, 1.5))
        shapes = ([0, 4, 7], [0, 3, 7], [0, 4, 7, 12], [0, 5, 9], [0, 7])
        notes = [
            (s, f)
            for s in on
            for f in loguniform(rng, 60, 700) * 2.0 ** (np.array(shapes[rng.integers(5)]) / 12)
        ]
    else:
        on = note_times(rng, n, (0.1, 0.3))
        notes = list(zip(on, melody(rng, len(on), 60, 1200), strict=True))
    stretch, starts = rng.uniform(1e-4, 6e-4), np.unique([s for s, _ in notes])
    for start, f in notes:
        damp = starts[starts > start][:1] + int(0.25 * SR)  # released at the next onset
        m = min(n - start, int(rng.uniform(0.5, 2.5) * SR), *(damp - start))
        t = np.arange(m, dtype=np.float32) / SR
        note = np.zeros(m, dtype=np.float32)
        for k in range(1, 11):
            fk = k * f * np.sqrt(1 + stretch * k * k)
            if fk >= NYQ_SAFE:
                break
            fast, slow = np.float32(-(3 + fk / 300)), np.float32(-(0.6 + fk / 2000))
            dec = np.float32(0.7) * np.exp(fast * t) + np.float32(0.3) * np.exp(slow * t)
            note += dec * np.sin(TWO_PI * np.float32(fk) * t) * np.float32(np.exp(-k / 5) / k)
        note[-int(0.03 * m) - 1 :] *= np.linspace(1, 0, int(0.03 * m) + 1, dtype=np.float32)
        out[start : start + m] += rng.uniform(0.5, 1.0) * note
    return out


def drum(rng: Rng, n: int) -> np.ndarray:
    """Membrane hits (pitch-dropping sinusoid + noise burst) in a repeating rhythm."""
    m = int(rng.uniform(0.15, 0.5) * SR)
    t = np.arange(m, dtype=np.float32) / SR
    f_end = loguniform(rng, 50, 300)
    f = f_end * (1 + rng.uniform(0.3, 1.5) * np.exp(-t / rng.uniform(0.01, 0.05)))
    ph = phase(f, m)
    tone = np.sin(TWO_PI * ph) + 0.3 * np.sin(TWO_PI * np.float32(1.59) * ph)
    hit = tone * np.exp(-t / np.float32(rng.uniform(0.05, 0.25)))
    noise = biquad(rng.standard_normal(m, dtype=np.float32), "band", loguniform(rng, 800, 5000), 1)
    hit += rng.uniform(0.1, 0.8) * noise * np.exp(-t / np.float32(rng.uniform(0.005, 0.03)))
    on = hits(rng, n, 60 / rng.uniform(70, 180) / 2, rng.uniform(size=8) < rng.uniform(0.3, 0.7))
    out = np.zeros(n + m, dtype=np.float32)
    for start in on:
        out[start : start + m] += rng.uniform(0.5, 1.0) * hit
    return out[:n]


def hihat(rng: Rng, n: int) -> np.ndarray:
    """High-passed noise bursts in a fast rhythm (closed hats) or a few long crashes (cymbal)."""
    noise = rng.standard_normal(n, dtype=np.float32)
    cut = loguniform(rng, 3000, 9000)
    noise = biquad(biquad(noise, "high", cut, 0.7), "high", cut, 0.7)
    if rng.uniform() < 0.75:
        on = hits(rng, n, 60 / rng.uniform(80, 180) / rng.choice([2, 4]), rng.uniform(size=8) < 0.8)
        tau = rng.uniform(0.015, 0.08)
    else:
        on, tau = note_times(rng, n, (0.8, 2.5)), rng.uniform(0.4, 1.2)
    return noise * decay_train(n, on, rng.uniform(0.4, 1.0, len(on)), tau)


def speech(rng: Rng, n: int) -> np.ndarray:
    """Speech-like babble: drifting f0 through moving formants, 3-6 syllables/s, pauses."""
    rate = rng.uniform(3, 6)
    starts, t = [], 0.0
    while t < n / SR - 0.15:
        for _ in range(rng.integers(3, 10)):
            starts.append(t)
            t += rng.uniform(0.7, 1.3) / rate
        t += rng.uniform(0.15, 0.6)  # pause between phrases
    bounds = np.array(starts) * SR
    bounds = bounds[bounds < n].astype(np.int64)
    seg = np.searchsorted(bounds, np.arange(n), side="right") - 1
    pos = (np.arange(n) - bounds[seg]) / (SR / rate)  # position within the syllable
    env = np.where(pos < 1, np.sin(np.pi * np.clip(pos, 0, 1)) ** 0.7, 0).astype(np.float32)
    f0 = loguniform(rng, 90, 250) * (1 + 0.08 * rng.standard_normal(len(bounds)))[seg]
    f0 = f0 * (1 - 0.15 * (np.arange(n) / n)) * curve(rng, n, 0.9, 1.1, 0.3)
    out = fof_voice(n, f0, vowel_track(rng, n, bounds, rng.uniform(0.9, 1.25)), env)
    fric = biquad(rng.standard_normal(n, dtype=np.float32), "high", rng.uniform(2500, 5000), 0.7)
    consonant = np.maximum(0, 1 - pos / 0.2) * (rng.uniform(size=len(bounds)) < 0.5)[seg]
    return out + 0.15 * fric * consonant.astype(np.float32) * (np.abs(out).max() + 1e-6)


def singing(rng: Rng, n: int) -> np.ndarray:
    """Sustained sung vowels with vibrato on a tune (FOF voice)."""
    on = note_times(rng, n, (0.4, 1.5))
    f0 = glide(n, on, melody(rng, len(on), 110, 700), ms=60)
    t = np.arange(n, dtype=np.float32) / SR
    vib = rng.uniform(0.01, 0.03) * np.sin(TWO_PI * np.float32(rng.uniform(4.8, 6.5)) * t)
    f0 = f0 * (1 + vib * np.minimum(1, t / 0.5))
    env = note_envelope(n, on, rng.uniform(0.05, 0.15), 0.1)
    return fof_voice(n, f0, vowel_track(rng, n, on, rng.uniform(0.9, 1.25)), env)


def bird(rng: Rng, n: int) -> np.ndarray:
    """Songs of fast FM syllables (sweeps and trills, 1.5-8 kHz) repeated in phrases."""
    lo, hi = sorted(rng.uniform(1500, 8000, 2))
    hi = max(hi, lo * 1.3)
    kinds = [
        (rng.uniform(0.02, 0.15), rng.uniform(lo, hi, 2), rng.uniform(0, 60))
        for _ in range(rng.integers(1, 4))
    ]
    freq, amp = [], []
    while sum(map(len, freq)) < n:
        for _ in range(rng.integers(2, 8)):
            dur, (f_a, f_b), trill = kinds[rng.integers(len(kinds))]
            t = np.arange(int(dur * SR), dtype=np.float32) / SR
            f = f_a + (f_b - f_a) * t / dur + 0.1 * f_a * np.sin(TWO_PI * trill * t)
            freq += [f, np.full(int(rng.uniform(0.01, 0.06) * SR), f[-1], np.float32)]
            amp += [np.sin(np.pi * t / dur), np.zeros(len(freq[-1]), np.float32)]
        gap = int(rng.uniform(0.3, 1.2) * SR)
        freq, amp = freq + [np.full(gap, freq[-1][-1], np.float32)], amp + [np.zeros(gap)]
    f, a = np.concatenate(freq)[:n], np.concatenate(amp)[:n].astype(np.float32)
    ph = phase(np.minimum(f, NYQ_SAFE / 2), n)
    return a * (np.sin(TWO_PI * ph) + 0.15 * np.sin(2 * TWO_PI * ph))


def siren(rng: Rng, n: int) -> np.ndarray:
    """Slow FM harmonic tone: wail (sine sweep), yelp (fast sweep) or hi-lo (two tones)."""
    t = np.arange(n, dtype=np.float32) / SR
    fc, depth = loguniform(rng, 500, 1500), rng.uniform(0.15, 0.35)
    kind = rng.integers(3)
    rate = (rng.uniform(0.15, 0.5), rng.uniform(2.5, 6), rng.uniform(0.6, 1.2))[kind]
    lfo = np.sin(TWO_PI * np.float32(rate) * t + np.float32(rng.uniform(0, 6.3)))
    if kind == 2:
        lfo = np.tanh(8 * lfo)
    f = fc * (1 + depth * lfo)
    return partials(phase(f, n), [1, 0.3, 0.35, 0.1, 0.15], float(f.max()))


def alarm(rng: Rng, n: int) -> np.ndarray:
    """Gated tone pairs: a phone ring (two tones trilled in bursts) or two-tone beeps."""
    t = np.arange(n, dtype=np.float32) / SR
    f1 = loguniform(rng, 400, 3000)
    f2 = f1 * rng.uniform(1.1, 1.4)
    if rng.uniform() < 0.5:  # ring: trill between the tones during bursts
        on_s, off_s = rng.uniform(0.4, 1.2), rng.uniform(0.2, 1.5)
        gate = (t % np.float32(on_s + off_s)) < on_s
        pick = (t * np.float32(rng.uniform(15, 25))) % 1 < 0.5
    else:  # beeping: the two tones alternate in short beeps
        period = rng.uniform(0.15, 0.5)
        gate = (t % np.float32(period)) < period * rng.uniform(0.4, 0.7)
        pick = (t % np.float32(2 * period)) < period
    amps = [1, 0, 0.33, 0, 0.2] if rng.uniform() < 0.5 else [1]
    tone = np.where(pick, partials(phase(f1, n), amps, f1), partials(phase(f2, n), amps, f2))
    smooth = filt(np.array([0.01]), np.array([1, -0.99]), gate.astype(np.float32))
    return tone * smooth


def engine(rng: Rng, n: int) -> np.ndarray:
    """Firing pulses (15-80 Hz, drifting rate, cylinder jitter) through exhaust resonances."""
    rate = loguniform(rng, 15, 80) * curve(rng, n, 0.75, 1.25, 1.5)
    ph = np.cumsum(rate.astype(np.float64) / SR)
    fires = np.flatnonzero(np.diff(np.floor(ph)) > 0)
    cyl = rng.uniform(0.6, 1.0, int(rng.choice([2, 4, 6])))
    amps = cyl[np.arange(len(fires)) % len(cyl)] * rng.uniform(0.85, 1.15, len(fires))
    puff = decay_train(n, fires, amps, rng.uniform(0.003, 0.012))
    x = puff * (0.3 + rng.standard_normal(n, dtype=np.float32))
    out = resonator(x, loguniform(rng, 60, 300), 0.05) + 0.5 * resonator(
        x, loguniform(rng, 300, 1500), 0.02
    )
    return biquad(out, "low", rng.uniform(1500, 4000), 0.7)


def rain(rng: Rng, n: int) -> np.ndarray:
    """Dense random drop impulses (crackle) plus hiss through a random filter."""
    density = loguniform(rng, 300, 4000) * curve(rng, n, 0.6, 1.0, 1.0)
    drops = np.flatnonzero(rng.uniform(size=n).astype(np.float32) < density / SR)
    sizes = np.minimum(rng.lognormal(0, rng.uniform(0.4, 1.0), len(drops)), 4)
    sizes *= rng.choice([-1, 1], len(drops))
    x = decay_train(n, drops, sizes, rng.uniform(0.0002, 0.002))
    x += rng.uniform(0.02, 0.2) * np.sqrt(density.mean() / SR) * rng.standard_normal(n, np.float32)
    return biquad(x, "band", loguniform(rng, 600, 6000), rng.uniform(0.4, 1.2))


def wind(rng: Rng, n: int) -> np.ndarray:
    """Band-passed noise whose centre drifts slowly across a bank of bands, with gusts."""
    noise = rng.standard_normal(n, dtype=np.float32)
    lo = loguniform(rng, 150, 1200)
    centres = lo * 2.0 ** np.linspace(0, rng.uniform(1.5, 3.5), 5)
    pos = curve(rng, n, 0, 4, rng.uniform(0.6, 1.5))  # drifting centre, in band index units
    q = rng.uniform(1.5, 5)
    out = np.zeros(n, dtype=np.float32)
    for i, c in enumerate(centres):
        out += biquad(noise, "band", c, q) * np.exp(-((pos - i) ** 2) / np.float32(0.8))
    return out * curve(rng, n, 0.3, 1.0, rng.uniform(0.5, 1.5))


def footsteps(rng: Rng, n: int) -> np.ndarray:
    """Resonant transients in a walking rhythm (heel + toe) or knocks in groups."""
    if rng.uniform() < 0.6:
        step = rng.uniform(0.45, 0.7)
        on = np.arange(0, n / SR - 0.1, step)
        on = on + rng.normal(0, 0.02, len(on))
        on = np.concatenate([on, on + rng.uniform(0.03, 0.08)])
        amps = np.concatenate([np.ones(len(on) // 2), np.full(len(on) // 2, 0.5)])
    else:
        groups = np.arange(0, max(n / SR - 0.4, 0.01), rng.uniform(0.8, 1.6))
        gap, count = rng.uniform(0.12, 0.22), int(rng.integers(2, 5))
        on = (groups[:, None] + gap * np.arange(count)[None, :]).ravel()
        amps = np.ones(len(on))
    on = np.clip((on * SR).astype(np.int64), 0, n - 1)
    exc = decay_train(n, on, amps, 0.002) * rng.standard_normal(n, dtype=np.float32)
    f = loguniform(rng, 80, 1200)
    return resonator(exc, f, rng.uniform(0.05, 0.2)) + 0.6 * resonator(exc, f * 2.3, 0.05)


def water(rng: Rng, n: int) -> np.ndarray:
    """Bubbles: many short upward sine chirps with fast decays."""
    count = max(1, int(loguniform(rng, 5, 60) * n / SR))
    on = np.sort(rng.integers(0, n, count))
    lo = loguniform(rng, 300, 2000)
    f0 = lo * 2.0 ** rng.uniform(0, 2, count).astype(np.float32)
    tau = rng.uniform(0.003, 0.02, count).astype(np.float32)
    t = np.arange(int(0.08 * SR), dtype=np.float32)[None, :] / SR
    f = f0[:, None] * (1 + rng.uniform(0.5, 3) * t / 0.08)
    grains = np.exp(-t / tau[:, None]) * np.sin(TWO_PI * (np.cumsum(f, axis=1) / SR % 1))
    return overlap_add(n, on, grains * rng.uniform(0.3, 1, (count, 1)).astype(np.float32))


def clock(rng: Rng, n: int) -> np.ndarray:
    """Very regular ticks alternating tick/tock: short high resonant clicks."""
    period = rng.uniform(0.25, 1.0)
    on = (np.arange(0, n / SR - 0.02, period) * SR).astype(np.int64)
    f, click = loguniform(rng, 1500, 6000), rng.standard_normal(n, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    for ticks, ratio, gain in ((on[::2], 1.0, 1.0), (on[1::2], rng.uniform(0.7, 0.9), 0.8)):
        exc = decay_train(n, ticks, np.full(len(ticks), gain), 0.0005) * click
        out += resonator(exc, f * ratio, rng.uniform(0.01, 0.04))
    return out


Source = Callable[[Rng, int], np.ndarray]
# name, source, (shortest, longest) event in seconds
SOURCES: list[tuple[str, Source, tuple[float, float]]] = [
    ("Plucked string", plucked_string, (1.0, 6.0)),
    ("Bowed string", bowed_string, (1.5, 6.0)),
    ("Reed (clarinet-like)", reed, (1.0, 6.0)),
    ("Brass", brass, (1.0, 5.0)),
    ("Bell, chime", bell, (2.0, 6.0)),
    ("Piano-like", piano, (1.5, 6.0)),
    ("Drum", drum, (2.0, 6.0)),
    ("Hi-hat, cymbal", hihat, (1.5, 6.0)),
    ("Speech-like", speech, (2.0, 6.0)),
    ("Singing", singing, (1.5, 6.0)),
    ("Bird song", bird, (1.0, 5.0)),
    ("Siren", siren, (2.0, 6.0)),
    ("Alarm, phone ring", alarm, (2.0, 6.0)),
    ("Engine", engine, (2.0, 6.0)),
    ("Rain", rain, (2.0, 6.0)),
    ("Wind", wind, (2.0, 6.0)),
    ("Footsteps, knocks", footsteps, (2.0, 6.0)),
    ("Water, bubbles", water, (1.5, 6.0)),
    ("Clock ticking", clock, (2.0, 6.0)),
]
