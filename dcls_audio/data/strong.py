"""Strong (timestamped) labels: their HDF5 layout, events moved with the waveform, frame targets.

Layout (a file without ``strong`` is weak-only and reads as before):

- ``strong`` bool (N,): the row is strongly labelled, i.e. its events are complete. A strongly
  labelled row without events is all-negative, which is not the same as a weak-only row;
- group ``events`` with 1-D datasets ``row`` int64, ``onset`` float32, ``offset`` float32
  (seconds from the clip start, ``0 <= onset < offset <= clip length``) and ``label`` int32 (a
  class index in the file's class order), sorted by row, only on strongly labelled rows;
- ``strong_classes`` bool (C,): the classes the strong vocabulary can label. Frame targets of
  the other classes are unknown (masked out of a frame loss), not negatives.

An event is a row ``[onset_s, offset_s, class]``; a clip's events are a float32 array (E, 3),
padded to `MAX_EVENTS` rows of ``[0, 0, -1]`` in dataset items. `move_events` moves events exactly
as `dcls_audio.data.waveform.WaveformAugment` moves the samples; `frame_targets` renders them as
the fraction of each frame that an event of each class covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from .waveform import speed_length

MAX_EVENTS = 64  # event rows of an item: AudioSet-strong has about 9 events per clip on average
PAD_CLASS = -1
END_TOLERANCE = 1e-3  # seconds an event may reach past the clip's end (then cut at the end)
EVENT_KEYS = ("row", "onset", "offset", "label")


class StrongLabelError(ValueError):
    """Strong labels that break the layout or the event rules; the message says where."""


class EventTimeError(StrongLabelError):
    """An event whose offset is not after its onset, or that starts before the clip."""


class EventPastEndError(StrongLabelError):
    """An event that reaches past the clip's end by more than `END_TOLERANCE`."""


class TooManyEventsError(StrongLabelError):
    """A clip with more events than an item holds (``max_events``)."""


@dataclass
class StrongLabels:
    """The strong labels of one file: per-row flags, the events table and the vocabulary mask."""

    strong: np.ndarray  # bool (N,)
    row: np.ndarray  # int64 (E,), sorted
    onset: np.ndarray  # float32 (E,)
    offset: np.ndarray  # float32 (E,)
    label: np.ndarray  # int32 (E,)
    strong_classes: np.ndarray  # bool (C,)


def check_event(
    onset: float, offset: float, clip_seconds: float, where: str
) -> tuple[float, float]:
    """Validate one event's times; return them cut to the clip within `END_TOLERANCE`."""
    if not (np.isfinite(onset) and np.isfinite(offset)) or offset <= onset:
        raise EventTimeError(f"{where}: offset {offset:g} s is not after onset {onset:g} s")
    if onset < -END_TOLERANCE:
        raise EventTimeError(f"{where}: onset {onset:g} s is before the clip start")
    if offset > clip_seconds + END_TOLERANCE or onset >= clip_seconds:
        raise EventPastEndError(
            f"{where}: event {onset:g}-{offset:g} s reaches past the clip's end at "
            f"{clip_seconds:g} s (tolerance {END_TOLERANCE * 1000:g} ms)"
        )
    return max(float(onset), 0.0), min(float(offset), float(clip_seconds))


def write_strong(f: h5py.File, labels: StrongLabels) -> None:
    """Write (or replace) the strong-label keys of an open HDF5 file."""
    n, c = f["target"].shape
    if labels.strong.shape != (n,) or labels.strong_classes.shape != (c,):
        raise StrongLabelError(
            f"strong {labels.strong.shape} / strong_classes {labels.strong_classes.shape} do not "
            f"match the file's {n} rows and {c} classes"
        )
    for key in ("strong", "events", "strong_classes"):
        if key in f:
            del f[key]
    order = np.argsort(labels.row, kind="stable")
    f.create_dataset("strong", data=labels.strong.astype(bool))
    f.create_dataset("strong_classes", data=labels.strong_classes.astype(bool))
    g = f.create_group("events")
    for key, dtype in zip(EVENT_KEYS, (np.int64, np.float32, np.float32, np.int32), strict=True):
        g.create_dataset(key, data=np.asarray(getattr(labels, key))[order].astype(dtype))


def read_strong(
    path: str | Path, num_rows: int, num_classes: int, clip_seconds: float
) -> StrongLabels | None:
    """The strong labels of a file (None: weak-only), validated; errors name file and key."""
    with h5py.File(path, "r") as f:
        keys = [k for k in ("strong", "events", "strong_classes") if k in f]
        if not keys:
            return None
        if len(keys) != 3:
            missing = sorted({"strong", "events", "strong_classes"} - set(keys))
            raise StrongLabelError(f"{path}: has {keys} but not {missing} (strong-label layout)")
        strong, classes = f["strong"][()], f["strong_classes"][()]
        g = f["events"]
        absent = [k for k in EVENT_KEYS if k not in g]
        if absent:
            raise StrongLabelError(f"{path}: group 'events' lacks {absent}")
        row, onset, offset, label = (g[k][()] for k in EVENT_KEYS)
    if strong.dtype != np.bool_ or strong.shape != (num_rows,):
        raise StrongLabelError(
            f"{path}: key 'strong' is {strong.dtype} {strong.shape}, expected bool ({num_rows},)"
        )
    if classes.dtype != np.bool_ or classes.shape != (num_classes,):
        raise StrongLabelError(
            f"{path}: key 'strong_classes' is {classes.dtype} {classes.shape}, "
            f"expected bool ({num_classes},)"
        )
    arrays = (row, onset, offset, label)
    if any(a.ndim != 1 or len(a) != len(row) for a in arrays):
        shapes = {k: a.shape for k, a in zip(EVENT_KEYS, arrays, strict=True)}
        raise StrongLabelError(f"{path}: 'events' datasets differ in shape: {shapes}")
    if len(row) and (np.any(np.diff(row) < 0) or row.min() < 0 or row.max() >= num_rows):
        raise StrongLabelError(f"{path}: 'events/row' is not sorted within [0, {num_rows})")
    if len(row) and not strong[row].all():
        bad = int(row[~strong[row]][0])
        raise StrongLabelError(f"{path}: row {bad} has events but 'strong' is False")
    if len(label) and (label.min() < 0 or label.max() >= num_classes):
        raise StrongLabelError(f"{path}: 'events/label' outside [0, {num_classes})")
    for i in np.flatnonzero(~(offset > onset) | (onset < 0) | (offset > clip_seconds + 1e-4)):
        check_event(float(onset[i]), float(offset[i]), clip_seconds, f"{path}: event {i}")
    return StrongLabels(
        strong,
        row.astype(np.int64),
        onset.astype(np.float32),
        offset.astype(np.float32),
        label.astype(np.int32),
        classes,
    )


def max_overlap(
    row: np.ndarray, onset: np.ndarray, offset: np.ndarray, num_rows: int
) -> np.ndarray:
    """Per row, the most events that contain one instant (what a circular roll can split)."""
    depth = np.zeros(num_rows, dtype=np.int64)
    if len(row) == 0:
        return depth
    rows = np.concatenate([row, row])
    times = np.concatenate([onset, offset]).astype(np.float64)
    delta = np.concatenate([np.ones(len(row)), -np.ones(len(row))]).astype(np.int64)
    order = np.lexsort((delta, times, rows))  # an end before a start at the same instant
    running = np.cumsum(delta[order])  # each row's deltas sum to 0: the count restarts per row
    np.maximum.at(depth, rows[order], running)
    return depth


def move_events(
    events: np.ndarray,
    shift: int,
    rate: float | None,
    offset: int,
    clip_samples: int,
    sample_rate: int,
) -> np.ndarray:
    """Events (E, 3) moved as `WaveformAugment` moves the audio: crop/pad, roll, speed.

    The stored clip is cut or padded at its end to ``clip_samples`` (events are cut at the end);
    the roll moves sample ``i`` to ``(i + shift) mod L``, so an event that crosses the end is
    split in two; the speed perturbation reads output sample ``k`` from input sample
    ``floor((k + offset) * rate)`` (crop) or places the resampled clip at ``offset`` (pad), so
    input time ``t`` lands at ``t / rate - offset / sr`` or ``t / rate + offset / sr``; events are
    cut to the clip. Returns float32 (E', 3), sorted by onset then class.
    """
    ev = np.asarray(events, dtype=np.float64).reshape(-1, 3)
    length = clip_samples / sample_rate
    on, off, cls = (np.clip(ev[:, 0], 0, length), np.clip(ev[:, 1], 0, length), ev[:, 2])
    keep = off > on
    on, off, cls = on[keep], off[keep], cls[keep]
    delta = (shift % clip_samples) / sample_rate
    on, off = on + delta, off + delta
    head = on < length  # the part before the end of the clip
    tail = off > length  # the part that wraps around to the start
    on = np.concatenate([on[head], np.maximum(on[tail] - length, 0.0)])
    off = np.concatenate([np.minimum(off[head], length), off[tail] - length])
    cls = np.concatenate([cls[head], cls[tail]])
    if rate is not None:
        grown = speed_length(clip_samples, rate) >= clip_samples
        move = (-offset if grown else offset) / sample_rate
        on = np.clip(on / rate + move, 0, length)
        off = np.clip(off / rate + move, 0, length)
    keep = off > on
    out = np.stack([on[keep], off[keep], cls[keep]], axis=1).astype(np.float32)
    return out[np.lexsort((out[:, 2], out[:, 0]))]


def pad_events(events: np.ndarray, max_events: int = MAX_EVENTS) -> np.ndarray:
    """Events (E, 3) as a float32 (max_events, 3) block padded with ``[0, 0, -1]`` rows."""
    if len(events) > max_events:
        raise TooManyEventsError(f"{len(events)} events, more than max_events={max_events}")
    out = np.zeros((max_events, 3), dtype=np.float32)
    out[:, 2] = PAD_CLASS
    out[: len(events)] = events
    return out


def frame_targets(
    events: torch.Tensor, num_frames: int, clip_seconds: float, num_classes: int
) -> torch.Tensor:
    """Frame targets (N, F, C) of padded events (N, E, 3) ``[onset_s, offset_s, class]``.

    Frame ``f`` covers ``[f T/F, (f+1) T/F)`` seconds (T = ``clip_seconds``); its target is the
    fraction of it covered by the union of the class's events (0..1). Events are cut to
    ``[0, T]``; rows of class -1 (padding) or outside ``[0, C)`` and empty events count nothing.
    Vectorised over clips and events, deterministic on any device.
    """
    if events.ndim != 3 or events.shape[-1] != 3:
        raise ValueError(f"expected events (N, E, 3), found {tuple(events.shape)}")
    if num_frames < 1 or clip_seconds <= 0:
        raise ValueError(f"num_frames {num_frames} and clip_seconds {clip_seconds} must be > 0")
    ev = events.float()
    on = ev[..., 0].clamp(0, clip_seconds)
    off = ev[..., 1].clamp(0, clip_seconds)
    cls = ev[..., 2].round().long()
    valid = (cls >= 0) & (cls < num_classes) & (off > on)
    cls = torch.where(valid, cls, torch.full_like(cls, num_classes))
    # union per class: sorted by (class, onset), an event adds only what the earlier events of
    # its class leave free, [max(onset, reach), max(offset, reach)) with reach the latest offset
    # so far (a running max over class-offset keys: other classes' keys stay below the class's)
    span = float(clip_seconds) + 1.0
    base = cls.double() * span
    order = (base + on.double()).argsort(dim=1)
    on, off, cls, base = (t.gather(1, order) for t in (on, off, cls, base))
    latest = (base + off.double()).cummax(dim=1).values
    earlier = torch.cat([torch.full_like(latest[:, :1], -1.0), latest[:, :-1]], dim=1)
    start = torch.maximum(on, (earlier - base).to(on.dtype))  # < 0: no earlier event of the class
    end = torch.maximum(off, start)
    edges = torch.arange(num_frames + 1, device=ev.device, dtype=torch.float64)
    edges = (edges * (clip_seconds / num_frames)).to(ev.dtype)
    lo, hi = edges[:-1], edges[1:]  # (F,)
    cover = (torch.minimum(end[:, None, :], hi[None, :, None])
             - torch.maximum(start[:, None, :], lo[None, :, None])).clamp_min(0)  # fmt: skip
    # per class, the sum over its run of class-sorted events, written once at the run's last
    # event (a running sum's difference): no two writes meet in a class column, so the result
    # is deterministic on any device (unlike scatter_add_ on CUDA); padding, unknown classes
    # and empty events form the last run, column C, which is dropped
    n_ev, scale = cover.shape[2], num_frames / clip_seconds
    total = torch.cat([cover.new_zeros(*cover.shape[:2], 1), cover], 2).double().cumsum(2)
    change = cls[:, 1:] != cls[:, :-1]
    position = torch.arange(n_ev, device=ev.device).expand_as(cls)
    starts = torch.ones_like(cls, dtype=torch.bool)
    starts[:, 1:] = change
    first = torch.where(starts, position, 0).cummax(dim=1).values  # where each event's run starts
    run = total[..., 1:] - total.gather(2, first[:, None, :].expand(-1, num_frames, -1))
    ends = torch.ones_like(starts)
    ends[:, : n_ev - 1] = change
    column = torch.where(ends, cls, num_classes)
    out = torch.zeros(ev.shape[0], num_frames, num_classes + 1, device=ev.device)
    out.scatter_(2, column[:, None, :].expand(-1, num_frames, -1), (run * scale).float())
    return out[..., :num_classes].clamp_(0.0, 1.0)
