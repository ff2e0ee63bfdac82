"""Per-clip waveform preparation and augmentation on the CPU (numpy, one clip at a time).

The training path turns an int16 row into a float32 clip with one pass for the circular roll (the
roll is two slice copies that also do the int16 -> float conversion) and, for the half of the clips
that get a speed perturbation, one ``np.take`` gather with integer indices.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 32000
CLIP_SAMPLES = 10 * SAMPLE_RATE
INT16_SCALE = np.float32(1.0 / 32768.0)


def pad_or_truncate(x: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or cut to ``length`` samples (1-D)."""
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D waveform, found shape {x.shape}")
    if len(x) == length:
        return x
    if len(x) > length:
        return x[:length]
    out = np.zeros(length, dtype=x.dtype)
    out[: len(x)] = x
    return out


def float_to_int16(x: np.ndarray) -> np.ndarray:
    """Float PCM in [-1, 1) -> int16 with rounding and clipping (inverse of ``/ 32768``)."""
    y = np.rint(np.asarray(x, dtype=np.float64) * 32768.0)
    return np.clip(y, -32768, 32767).astype(np.int16)


def roll_to_float(raw: np.ndarray, shift: int, out: np.ndarray | None = None) -> np.ndarray:
    """``np.roll(raw, shift) / 32768`` as float32 in one pass (no intermediate copy)."""
    n = len(raw)
    if out is None:
        out = np.empty(n, dtype=np.float32)
    s = shift % n
    # np.roll semantics: out[i] = raw[(i - s) mod n]
    np.multiply(raw[n - s :], INT16_SCALE, out=out[:s])
    np.multiply(raw[: n - s], INT16_SCALE, out=out[s:])
    return out


RATE_BITS = 32  # speed rates are fixed-point numbers with 32 fractional bits


def quantize_rate(rate: float) -> float:
    """Round a speed rate to the fixed-point grid used for exact integer index arithmetic."""
    return round(rate * 2**RATE_BITS) / 2**RATE_BITS


def speed_length(n: int, rate: float) -> int:
    """Length of an ``n``-sample signal played ``rate`` times faster (nearest-index resampling)."""
    r = round(rate * 2**RATE_BITS)
    # largest m with floor((m - 1) * rate) <= n - 1, i.e. (m - 1) * r < n * 2**RATE_BITS
    return (n * 2**RATE_BITS - 1) // r + 1


def speed_perturb(
    x: np.ndarray,
    rate: float,
    offset: int,
    out: np.ndarray | None = None,
    index_buffer: np.ndarray | None = None,
) -> np.ndarray:
    """Resample by nearest index (``y[k] = x[floor(k * rate)]``) and pad/crop back to ``len(x)``.

    ``offset`` is where the window starts in the resampled signal when it is longer than the
    clip (crop), or where the resampled signal is placed when it is shorter (zero padding).
    ``rate`` is rounded to 32 fractional bits so indices are exact integer products.
    """
    n = len(x)
    m = speed_length(n, rate)
    r = round(rate * 2**RATE_BITS)
    if out is None:
        out = np.empty(n, dtype=x.dtype)
    if index_buffer is None:
        index_buffer = np.empty(n, dtype=np.int64)
    if m >= n:
        if not 0 <= offset <= m - n:
            raise ValueError(f"crop offset {offset} outside [0, {m - n}]")
        idx, dst, start = index_buffer, out, offset
    else:
        if not 0 <= offset <= n - m:
            raise ValueError(f"pad offset {offset} outside [0, {n - m}]")
        idx, dst, start = index_buffer[:m], out[offset : offset + m], 0
        out[:offset] = 0
        out[offset + m :] = 0
    # idx = floor((start + k) * rate) in integer arithmetic (products stay below 2**53)
    np.multiply(_arange(m)[start : start + len(idx)], r, out=idx)
    np.right_shift(idx, RATE_BITS, out=idx)
    np.take(x, idx, out=dst, mode="clip")  # indices are in range; "clip" avoids a buffered copy
    return out


_ARANGE = np.arange(2 * CLIP_SAMPLES + 1, dtype=np.int64)


def _arange(n: int) -> np.ndarray:
    """``np.arange(n)`` as a view of one shared array (grown when a longer one is needed)."""
    global _ARANGE
    if len(_ARANGE) < n:
        _ARANGE = np.arange(n, dtype=np.int64)
    return _ARANGE[:n]


class WaveformAugment:
    """Training augmentation of one clip: circular roll (always), then speed perturbation.

    Roll by ``randint(-L, L)`` samples (L = clip length); with probability ``speed_p`` the clip is
    played at a rate ``U(*speed_range)`` by nearest-index resampling and padded/cropped back to
    ``L`` at a uniformly random offset. All draws come from the generator passed per call.
    """

    def __init__(
        self,
        length: int = CLIP_SAMPLES,
        speed_p: float = 0.5,
        speed_range: tuple[float, float] = (0.5, 1.5),
    ) -> None:
        if not 0.0 <= speed_p <= 1.0:
            raise ValueError(f"speed_p must be in [0, 1], found {speed_p}")
        lo, hi = speed_range
        if not 0.0 < lo <= hi:
            raise ValueError(f"speed_range must satisfy 0 < low <= high, found {speed_range}")
        self.length = length
        self.speed_p = speed_p
        self.speed_range = (float(lo), float(hi))
        self._scratch: np.ndarray | None = None
        self._index: np.ndarray | None = None

    def __getstate__(self) -> dict:
        # work buffers are per process: a pickled copy (DataLoader worker) starts without them
        return {**self.__dict__, "_scratch": None, "_index": None}

    def __repr__(self) -> str:
        return f"WaveformAugment(speed_p={self.speed_p}, speed_range={self.speed_range})"

    def draw(self, rng: np.random.Generator) -> tuple[int, float | None, int]:
        """Draw (shift, rate or None, offset) for one clip."""
        n = self.length
        shift = int(rng.integers(-n, n, endpoint=True))
        if rng.random() >= self.speed_p:
            return shift, None, 0
        rate = quantize_rate(float(rng.uniform(*self.speed_range)))
        m = speed_length(n, rate)
        offset = int(rng.integers(0, abs(m - n), endpoint=True))
        return shift, rate, offset

    def __call__(self, raw: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one int16 clip; returns a new float32 array of ``length`` samples."""
        return self.apply(raw, *self.draw(rng))

    def apply(self, raw: np.ndarray, shift: int, rate: float | None, offset: int) -> np.ndarray:
        """Augment one int16 clip with a drawn (shift, rate, offset), as ``__call__`` does."""
        if raw.dtype != np.int16:
            raise TypeError(f"expected an int16 clip, found dtype {raw.dtype}")
        raw = pad_or_truncate(raw, self.length)
        out = np.empty(self.length, dtype=np.float32)
        if rate is None:
            return roll_to_float(raw, shift, out=out)
        if self._scratch is None:  # per-process work buffers, reused across clips
            self._scratch = np.empty(self.length, dtype=np.float32)
            self._index = np.empty(self.length, dtype=np.int64)
        rolled = roll_to_float(raw, shift, out=self._scratch)
        return speed_perturb(rolled, rate, offset, out=out, index_buffer=self._index)
