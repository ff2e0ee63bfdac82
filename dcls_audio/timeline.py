"""Frame-level score tracks of long files: overlapping windows, streamed and batched.

A file is read block by block (:mod:`dcls_audio.data.stream`) and cut into windows of the
checkpoint's clip length every ``hop`` seconds (the last one zero-padded); windows go through the
frontend and the model in batches, so memory holds one block, one batch and the score track.

Two ways to turn a window into scores over time (``mode``):

- ``frames`` (default): the model's own pre-pooling time axis. The last feature map (N, C, F, T)
  is averaged over frequency only and each of its T columns goes through the model's head (norm
  and classifier: the timm ``forward_head`` on a 1x1 map), giving T sets of logits per window,
  each placed on the 1.28 s of audio its column's stride covers (128 log-mel frames, measured
  by :func:`~dcls_audio.models.frames.feature_stride`; the window's last ``W - 1.28 T`` seconds
  are left to the windows after it). A model trained from strong labels (``frames=strong``) has
  a frame head: its frames (its stage's stride / the head's upsampling: :func:`frame_stride`)
  are used instead. One window alone thus gives a 1.28 s resolution; windows every ``hop``
  seconds refine it to ``hop``.
- ``clip``: the window's clip-level score (the model as trained), placed on the whole window.

Each output frame (``hop`` seconds, centres at ``(k + 0.5) * hop``) is the mean of the scores
placed on its centre; a frame at the very end that no score reaches repeats the one before it.
Probabilities are sigmoids (softmax for a ``data.task=multiclass`` model).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dcls_audio.data.stream import AudioReadError, stream_audio
from dcls_audio.data.waveform import SAMPLE_RATE
from dcls_audio.models.frames import frame_logits, frame_stride
from dcls_audio.tagger import Tagger

MODES = ("frames", "clip")
STFT_HOP = 320  # samples per log-mel frame (10 ms)


@dataclass
class Track:
    """Per-class scores of a file over time."""

    scores: np.ndarray  # (frames, classes) float32 probabilities
    times: np.ndarray  # (frames,) frame centres in seconds
    labels: list[str]
    hop: float  # frame step in seconds
    duration: float  # seconds of audio at 32 kHz
    mel: np.ndarray | None = None  # (mels, frames): the log-mel averaged per frame, for display
    file: str = ""
    windows: int = 0  # windows the model saw


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling of a / b for b > 0."""
    return -((-a) // b)


def _activate(logits: torch.Tensor, activation: str) -> torch.Tensor:
    logits = logits.float()
    return logits.softmax(-1) if activation == "softmax" else logits.sigmoid()


class TrackBuilder:
    """Accumulates window scores into frames of ``hop`` samples (sum and count per frame)."""

    def __init__(self, hop: int, classes: int) -> None:
        self.hop, self.classes = hop, classes
        self.sums = np.zeros((1024, classes), dtype=np.float64)
        self.counts = np.zeros(1024, dtype=np.int64)

    def _grow(self, frames: int) -> None:
        if frames > len(self.counts):
            more = max(frames, 2 * len(self.counts)) - len(self.counts)
            self.sums = np.concatenate([self.sums, np.zeros((more, self.classes))])
            self.counts = np.concatenate([self.counts, np.zeros(more, np.int64)])

    def add(self, start: int, end: int, scores: np.ndarray) -> None:
        """Add ``scores`` (classes,) to the frames whose centre lies in samples [start, end)."""
        lo = max(0, ceil_div(2 * start - self.hop, 2 * self.hop))
        hi = ceil_div(2 * end - self.hop, 2 * self.hop)
        if hi <= lo:
            return
        self._grow(hi)
        self.sums[lo:hi] += scores
        self.counts[lo:hi] += 1

    def result(self, samples: int) -> np.ndarray:
        """The (frames, classes) mean scores of a signal of ``samples`` samples."""
        frames = max(1, ceil_div(samples, self.hop))
        self._grow(frames)
        sums, counts = self.sums[:frames], self.counts[:frames]
        out = np.zeros((frames, self.classes), dtype=np.float32)
        seen = counts > 0
        out[seen] = sums[seen] / counts[seen, None]
        for k in np.flatnonzero(~seen):  # a tail frame no window reaches: the one before it
            out[k] = out[k - 1] if k > 0 else 0.0
        return out


class MelDisplay:
    """A coarse log-mel for plots: the normalised log-mel averaged over each output frame."""

    def __init__(self, frontend: nn.Module, hop: int) -> None:
        self.frontend, self.hop = frontend, hop
        self.pending = np.zeros(0, dtype=np.float32)
        self.columns: list[np.ndarray] = []

    def _flush(self, x: np.ndarray) -> None:
        if len(x) == 0:
            return
        n = ceil_div(len(x), self.hop)
        if len(x) < 2 * STFT_HOP * 4:  # too short for the STFT's reflect padding: zero-pad
            x = np.pad(x, (0, 2 * STFT_HOP * 4 - len(x)))
        with torch.inference_mode():
            wave = torch.from_numpy(np.ascontiguousarray(x))[None].to(self.frontend.window.device)
            mel = self.frontend(wave)[0, 0].cpu().numpy()  # (mels, frames)
        per = self.hop // STFT_HOP
        mel = mel[:, : n * per]
        pad = n * per - mel.shape[1]
        if pad > 0:
            mel = np.pad(mel, ((0, 0), (0, pad)), mode="edge")
        self.columns.extend(mel.reshape(mel.shape[0], n, per).mean(2).T)

    def push(self, block: np.ndarray) -> None:
        """Add 32 kHz samples."""
        self.pending = np.concatenate([self.pending, block])
        whole = len(self.pending) // (self.hop * 64) * self.hop * 64
        if whole:
            self._flush(self.pending[:whole])
            self.pending = self.pending[whole:]

    def result(self) -> np.ndarray | None:
        """(mels, frames), one column per output frame (None for an empty signal)."""
        self._flush(self.pending)
        self.pending = np.zeros(0, dtype=np.float32)
        if not self.columns:
            return None
        return np.stack(self.columns, axis=1).astype(np.float32)


class WindowScorer:
    """Scores batches of windows with a Tagger: per window a list of (start, end, scores)."""

    def __init__(self, tagger: Tagger, mode: str = "frames") -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.tagger, self.mode = tagger, mode
        self.window = tagger.window_samples  # the model's layout: load_tagger's channels_last
        self.stride = 0
        if mode == "frames":  # samples per frame: a feature column, or a frame head's frame
            self.stride = frame_stride(tagger.model) * STFT_HOP

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> list[list[tuple[int, int, np.ndarray]]]:
        """Spans (relative to each window's start, in samples) and their class scores."""
        t = self.tagger
        x = t.frontend(windows.to(t.device))
        if self.mode == "clip":
            probs = _activate(t.model(x), t.activation).cpu().numpy()
            return [[(0, self.window, p)] for p in probs]
        probs = _activate(frame_logits(t.model, x), t.activation).cpu().numpy()  # (N, T, C)
        cols = probs.shape[1]
        edges = [min(round(j * self.stride), self.window) for j in range(cols + 1)]
        return [[(edges[j], edges[j + 1], p[j]) for j in range(cols)] for p in probs]


def _windows(
    blocks: Iterable[np.ndarray], window: int, hop: int, seen: list[int]
) -> Iterator[tuple[int, np.ndarray]]:
    """(start sample, window) pairs every ``hop`` samples; the last ones zero-padded.

    Windows are emitted while they start inside the signal and the previous one did not
    already reach its end; ``seen[0]`` counts the samples read so far.
    """
    buf = np.zeros(0, dtype=np.float32)
    buf_start, start = 0, 0
    for block in blocks:
        buf = np.concatenate([buf, block])
        seen[0] += len(block)
        while start + window <= buf_start + len(buf):
            lo = start - buf_start
            yield start, buf[lo : lo + window]
            start += hop
        drop = min(start - buf_start, len(buf))
        buf, buf_start = buf[drop:], buf_start + drop
    total = seen[0]
    while start < total and (start == 0 or start - hop + window < total):
        out = np.zeros(window, dtype=np.float32)
        lo = start - buf_start
        part = buf[lo : lo + window]
        out[: len(part)] = part
        yield start, out
        start += hop


def score_blocks(
    tagger: Tagger,
    blocks: Iterable[np.ndarray],
    *,
    hop: float = 0.5,
    mode: str = "frames",
    window_hop: float | None = None,
    batch_size: int = 8,
    mel: bool = False,
    progress: object | None = None,
    scorer: WindowScorer | None = None,
) -> Track:
    """The score track of a 32 kHz signal given as blocks (see the module docstring).

    ``hop``: output frame step in seconds (a multiple of 10 ms); ``window_hop``: seconds between
    windows (default ``hop``); ``progress``: a tqdm-like bar updated in seconds of audio.
    """
    step = round(hop * SAMPLE_RATE)
    if step <= 0 or step % STFT_HOP:
        raise ValueError(f"hop must be a positive multiple of 0.01 s, got {hop}")
    whop = step if window_hop is None else round(window_hop * SAMPLE_RATE)
    if whop <= 0:
        raise ValueError(f"window hop must be positive, got {window_hop}")
    scorer = scorer or WindowScorer(tagger, mode)
    builder = TrackBuilder(step, len(tagger.class_names))
    display = MelDisplay(tagger.frontend, step) if mel else None
    seen = [0]

    def feed() -> Iterator[np.ndarray]:
        for block in blocks:
            if display is not None:
                display.push(block)
            yield block

    starts: list[int] = []
    batch: list[np.ndarray] = []
    count, done = 0, 0.0

    def run() -> None:
        nonlocal count, done
        for s, spans in zip(starts, scorer(torch.from_numpy(np.stack(batch))), strict=True):
            for lo, hi, p in spans:
                builder.add(s + lo, s + hi, p)
        count += len(batch)
        if progress is not None:
            now = min(starts[-1] + whop, seen[0]) / SAMPLE_RATE
            progress.update(max(0.0, now - done))
            done = max(done, now)
        starts.clear()
        batch.clear()

    for s, w in _windows(feed(), scorer.window, whop, seen):
        starts.append(s)
        batch.append(w)
        if len(batch) == batch_size:
            run()
    if batch:
        run()
    if seen[0] == 0:
        raise AudioReadError("no audio samples")
    scores = builder.result(seen[0])
    return Track(
        scores=scores,
        times=((np.arange(len(scores)) + 0.5) * hop).astype(np.float64),
        labels=list(tagger.class_names),
        hop=hop,
        duration=seen[0] / SAMPLE_RATE,
        mel=display.result() if display is not None else None,
        windows=count,
    )


def array_blocks(wave: np.ndarray, block: int = SAMPLE_RATE * 60) -> Iterator[np.ndarray]:
    """A 32 kHz array as blocks (for in-memory signals)."""
    for lo in range(0, len(wave), block):
        yield np.asarray(wave[lo : lo + block], dtype=np.float32)


def score_file(
    tagger: Tagger,
    path: str | Path,
    *,
    hop: float = 0.5,
    mode: str = "frames",
    window_hop: float | None = None,
    batch_size: int = 8,
    mel: bool = False,
    progress: bool = False,
    block_seconds: float = 60.0,
    scorer: WindowScorer | None = None,
) -> Track:
    """The score track of one audio file, read block by block; errors name the file."""
    info, blocks = stream_audio(path, block_seconds)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=round(info.duration, 1), unit="s", desc=Path(path).name, leave=False)
    try:
        track = score_blocks(
            tagger, blocks, hop=hop, mode=mode, window_hop=window_hop, batch_size=batch_size,
            mel=mel, progress=bar, scorer=scorer,
        )  # fmt: skip
    except AudioReadError as err:
        if str(path) in str(err):
            raise
        raise AudioReadError(f"{path}: {err}") from err
    finally:
        if bar is not None:
            bar.close()
    track.file = str(path)
    return track
