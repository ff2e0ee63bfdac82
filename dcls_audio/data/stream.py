"""Read any audio file block by block as float32 mono at 32 kHz, with bounded memory.

A file is opened with soundfile (any format, sample rate and channel count it supports), read
``block_seconds`` at a time, mixed down to mono and resampled to 32 kHz by torchaudio's
windowed-sinc resampler applied block-wise: each block is resampled together with enough input
on both sides (the filter's half-width) and only its own outputs are kept, so the concatenated
blocks equal ``torchaudio.functional.resample`` of the whole file up to float rounding, while
at most one block (plus the filter's context) is held in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .waveform import SAMPLE_RATE

LOWPASS_WIDTH = 6  # torchaudio.functional.resample's default lowpass_filter_width
ROLLOFF = 0.99  # and its default rolloff


class AudioReadError(RuntimeError):
    """An input file could not be turned into audio samples (message names the file)."""


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an opened file says."""

    path: Path
    sample_rate: int
    channels: int
    frames: int  # as the header states (0 when unknown)

    @property
    def duration(self) -> float:
        """Duration in seconds as the header states it."""
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def _open(path: Path) -> sf.SoundFile:
    """Open ``path`` for reading; AudioReadError naming it on any failure."""
    if not path.is_file():  # soundfile would only say "System error."
        raise AudioReadError(
            f"{path}: no such file" if not path.exists() else f"{path}: not a file"
        )
    try:
        return sf.SoundFile(str(path))
    except Exception as err:  # soundfile raises LibsndfileError, OSError, TypeError, ...
        raise AudioReadError(f"{path}: cannot read audio ({err})") from err


def audio_info(path: str | Path) -> AudioInfo:
    """Sample rate, channels and length of a file from its header."""
    path = Path(path)
    with _open(path) as f:
        return AudioInfo(path, int(f.samplerate), int(f.channels), max(int(f.frames), 0))


class StreamResampler:
    """Block-wise resampling equal to ``torchaudio.functional.resample`` of the whole signal.

    Feed input blocks of any size with :meth:`push`; each call returns the output samples that
    are final so far; :meth:`finish` returns the rest (the whole-signal length, rounded up).
    """

    def __init__(self, orig: int, new: int = SAMPLE_RATE, chunk: int = SAMPLE_RATE * 30) -> None:
        gcd = math.gcd(int(orig), int(new))
        self.orig, self.new = int(orig), int(new)
        self.o, self.n = self.orig // gcd, self.new // gcd
        base = min(self.o, self.n) * ROLLOFF
        self.width = math.ceil(LOWPASS_WIDTH * self.o / base)  # torchaudio's kernel half-width
        self.left = math.ceil(self.width / self.o) * self.o  # left context, a multiple of o
        self.right = self.width + self.o
        self.step = max(1, chunk // self.o) * self.o  # input samples per resampled piece
        self.buf = np.zeros(0, dtype=np.float32)
        self.buf_start = 0  # global index of buf[0]
        self.pos = 0  # global input index of the next output piece (a multiple of o)
        self.total = 0  # input samples pushed

    def _resample(self, x: np.ndarray) -> np.ndarray:
        if self.o == self.n:
            return x
        wave = torch.from_numpy(np.ascontiguousarray(x))
        return torchaudio.functional.resample(wave, self.orig, self.new).numpy()

    def _piece(self, end: int | None) -> np.ndarray:
        """Outputs for input [pos, end) (end None: up to the end of the signal)."""
        seg_start = max(0, self.pos - self.left)
        lo = seg_start - self.buf_start
        hi = None if end is None else end + self.right - self.buf_start
        out = self._resample(self.buf[lo:hi])
        skip = (self.pos - seg_start) // self.o * self.n
        if end is None:
            return out[skip:]
        return out[skip : skip + (end - self.pos) // self.o * self.n]

    def push(self, x: np.ndarray) -> np.ndarray:
        """Add input samples; return the outputs that no later input can change."""
        self.buf = np.concatenate([self.buf, np.asarray(x, dtype=np.float32)])
        self.total += len(x)
        if self.o == self.n:
            out, self.buf_start = self.buf, self.total
            self.buf = np.zeros(0, dtype=np.float32)
            return out
        pieces = []
        while self.total - self.pos >= self.step + self.right:
            end = self.pos + self.step
            pieces.append(self._piece(end))
            self.pos = end
        keep = max(0, self.pos - self.left) - self.buf_start
        if keep > 0:
            self.buf, self.buf_start = self.buf[keep:], self.buf_start + keep
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def finish(self) -> np.ndarray:
        """The remaining outputs: the whole signal resampled has ceil(n * total / o) samples."""
        if self.o == self.n or self.total == 0:
            return np.zeros(0, dtype=np.float32)
        if self.pos >= self.total:
            return np.zeros(0, dtype=np.float32)
        return self._piece(None)


def stream_audio(
    path: str | Path, block_seconds: float = 60.0
) -> tuple[AudioInfo, Iterator[np.ndarray]]:
    """(header info, iterator of float32 mono 32 kHz blocks); errors name the file.

    The file is opened (and its header checked) before this returns; reading errors, an empty
    file or non-finite samples raise AudioReadError while iterating.
    """
    info = audio_info(path)
    return info, _blocks(info, block_seconds)


def _blocks(info: AudioInfo, block_seconds: float) -> Iterator[np.ndarray]:
    frames = max(1, int(block_seconds * info.sample_rate))
    resampler = StreamResampler(info.sample_rate, SAMPLE_RATE, int(block_seconds * SAMPLE_RATE))
    seen = 0
    with _open(info.path) as f:
        while True:
            try:
                data = f.read(frames, dtype="float32", always_2d=True)
            except Exception as err:
                raise AudioReadError(f"{info.path}: cannot read audio ({err})") from err
            if data.shape[0] == 0:
                break
            if not np.all(np.isfinite(data)):
                raise AudioReadError(f"{info.path}: contains non-finite samples (NaN or inf)")
            seen += data.shape[0]
            out = resampler.push(data.mean(axis=1))
            if len(out):
                yield out
    if seen == 0:
        raise AudioReadError(f"{info.path}: contains no audio samples")
    tail = resampler.finish()
    if len(tail):
        yield tail


AUDIO_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
     ".snd", ".caf", ".w64", ".rf64", ".voc", ".sd2", ".htk", ".nist", ".sph"}
)  # fmt: skip


def expand_inputs(items: list[str]) -> list[str]:
    """Files, folders (their audio files, recursively, sorted) and glob patterns -> paths.

    A plain path is kept as given even when it does not exist (reading it names the error);
    a folder contributes the files whose suffix is a sound format; a pattern (``*``, ``?``,
    ``[``) that matches nothing is kept as is, so it is reported as missing.
    """
    import glob

    out: list[str] = []
    for item in items:
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        for m in matches or [item]:
            p = Path(m)
            if p.is_dir():
                out.extend(
                    str(f)
                    for f in sorted(p.rglob("*"))
                    if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES
                )
            else:
                out.append(m)
    seen: set[str] = set()
    return [p for p in out if not (p in seen or seen.add(p))]
