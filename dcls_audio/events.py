"""Score tracks -> sound events: thresholds, median filtering, minimum duration and gap.

For each class: the score track is median-filtered over time (an odd number of frames, edges
repeated), compared with the class's threshold (active where ``score >= threshold``), inactive
runs shorter than ``min_gap`` between two active runs are filled, and active runs shorter than
``min_duration`` are dropped. Each remaining run is an event ``(file, onset, offset, class,
peak score)``: onset and offset are the run's frame edges (frame k covers ``[k, k + 1) * hop``,
the offset clipped to the file's duration) and the peak score is the largest unfiltered score
inside the run. Median filtering the scores then thresholding is the same as thresholding then
median filtering the decisions (a median commutes with any monotone step).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Event:
    """One detected event."""

    file: str
    onset: float
    offset: float
    label: str
    score: float  # peak (unfiltered) score inside the event

    def as_dict(self) -> dict:
        """JSON-ready fields: onset, offset, class, peak_score (rounded)."""
        d = asdict(self)
        return {
            "onset": round(d["onset"], 3),
            "offset": round(d["offset"], 3),
            "class": d["label"],
            "peak_score": round(d["score"], 4),
        }


@dataclass(frozen=True)
class EventSettings:
    """Post-processing settings; durations in seconds (median: the filter's length)."""

    threshold: float | str = 0.5  # a value, or a file of per-class values
    median: float = 0.0
    min_duration: float = 0.0
    min_gap: float = 0.0


def read_thresholds(spec: float | str | Path, labels: Sequence[str]) -> np.ndarray:
    """Per-class thresholds from one number or a file.

    A file is JSON (``{"label": value, ...}``, optionally ``"default": value``) or text lines
    ``label<TAB or comma>value`` (``#`` comments, a ``default`` line allowed); classes the file
    does not name get ``default`` (0.5 unless given). Unknown labels are an error.
    """
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        values: dict[str, float] = {}
        default = float(spec)
    else:
        try:
            default = float(spec)
            values = {}
        except ValueError:
            values, default = _threshold_file(Path(spec))
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(values) - set(index))
    if unknown:
        raise ValueError(f"thresholds file {spec}: unknown class(es) {unknown[:5]}")
    out = np.full(len(labels), default, dtype=np.float64)
    for name, value in values.items():
        out[index[name]] = value
    if not np.all((out >= 0) & (out <= 1)):
        raise ValueError(f"thresholds must lie in [0, 1], got {out.min()}..{out.max()}")
    return out


def _threshold_file(path: Path) -> tuple[dict[str, float], float]:
    """(label -> threshold, default) from a JSON or text file."""
    if not path.is_file():
        raise ValueError(f"--threshold {path}: neither a number nor a file")
    text = path.read_text()
    values: dict[str, float] = {}
    if text.lstrip().startswith("{"):
        values = {str(k): float(v) for k, v in json.loads(text).items()}
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            sep = "\t" if "\t" in line else ","
            label, _, value = line.rpartition(sep)
            try:
                values[label.strip().strip('"')] = float(value)
            except ValueError as err:
                raise ValueError(f"{path}:{n}: expected 'label<TAB>value', got {line!r}") from err
    default = values.pop("default", 0.5)
    return values, default


def median_frames(seconds: float, hop: float) -> int:
    """The odd filter length in frames closest to ``seconds`` (1: no filtering)."""
    n = max(1, round(seconds / hop))
    return n if n % 2 else n + 1


def median_filter(scores: np.ndarray, size: int) -> np.ndarray:
    """Running median over time (axis 0) of odd length ``size``, edges repeated."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median filter length must be odd and positive, got {size}")
    if size == 1 or len(scores) == 0:
        return scores.copy()
    half = size // 2
    padded = np.pad(scores, [(half, half)] + [(0, 0)] * (scores.ndim - 1), mode="edge")
    view = np.lib.stride_tricks.sliding_window_view(padded, size, axis=0)
    return np.median(view, axis=-1).astype(scores.dtype, copy=False)


def runs(active: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True runs of a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def clean_runs(active: np.ndarray, min_len: int, min_gap: int) -> list[tuple[int, int]]:
    """Runs after filling gaps under ``min_gap`` and dropping runs under ``min_len`` (frames)."""
    merged: list[list[int]] = []
    for start, end in runs(active):
        if merged and start - merged[-1][1] < min_gap:
            merged[-1][1] = end
        else:
            merged.append([int(start), int(end)])
    return [(s, e) for s, e in merged if e - s >= min_len]


def detect(
    scores: np.ndarray,
    hop: float,
    labels: Sequence[str],
    thresholds: np.ndarray | float,
    median: float = 0.0,
    min_duration: float = 0.0,
    min_gap: float = 0.0,
    duration: float | None = None,
    file: str = "",
) -> list[Event]:
    """Events of a (frames, classes) score track, sorted by onset then class index."""
    scores = np.asarray(scores)
    thr = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (scores.shape[1],))
    filtered = median_filter(scores, median_frames(median, hop))
    active = filtered >= thr.astype(filtered.dtype)  # 0.45 in float32 scores meets "0.45"
    min_len = math.ceil(round(min_duration / hop, 6))
    gap = math.ceil(round(min_gap / hop, 6))
    end_time = len(scores) * hop if duration is None else duration
    found = []
    for c in range(scores.shape[1]):
        if not active[:, c].any():
            continue
        for s, e in clean_runs(active[:, c], min_len, gap):
            peak = float(scores[s:e, c].max())
            found.append((s, c, Event(file, s * hop, min(e * hop, end_time), labels[c], peak)))
    found.sort(key=lambda t: (t[0], t[1]))
    return [ev for _, _, ev in found]


def detect_with(
    scores: np.ndarray,
    hop: float,
    labels: Sequence[str],
    settings: EventSettings,
    duration: float | None = None,
    file: str = "",
) -> list[Event]:
    """:func:`detect` with an :class:`EventSettings` (its threshold read per class)."""
    return detect(
        scores, hop, labels, read_thresholds(settings.threshold, labels), settings.median,
        settings.min_duration, settings.min_gap, duration, file,
    )  # fmt: skip
