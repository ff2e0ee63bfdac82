"""Event tables read, checked and turned into the strong labels of a packed file.

Two formats, both tab-separated with a header naming the columns (any order, other columns
ignored):

- DCASE: ``filename onset offset event_label`` (``dcls-audio-pack custom --events``). A row with
  a filename and empty onset, offset and label lists the file with no events: it is strongly
  labelled all-negative.
- AudioSet-strong: ``segment_id start_time_seconds end_time_seconds label``
  (``dcls-audio-pack audioset --strong``), ``segment_id`` = ``<YTID>_<start ms>`` (the 10-s
  segment that starts ``start ms`` into the video; YTIDs may hold "_": the last one splits),
  times in seconds from the segment's start, ``label`` a MID.

Every event is checked before any audio is decoded: an offset not after its onset
(`EventTimeError`), an event past the clip's end by more than 1 ms (`EventPastEndError`; within
that it is cut at the end), a file or segment not in the folder or the pack (`MissingClipError`)
are errors naming the table line. Events of labels outside the class list are counted and
reported, not errors. Same-class events of a clip that overlap or touch are merged
(`dcls_audio.datasets.longfiles.merge_overlaps`, as the timeline evaluation merges them).
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcls_audio.data.strong import StrongLabelError, StrongLabels, check_event

from .longfiles import Annotation, merge_overlaps

DCASE_COLUMNS = ("filename", "onset", "offset", "event_label")
AUDIOSET_COLUMNS = ("segment_id", "start_time_seconds", "end_time_seconds", "label")


class MissingClipError(StrongLabelError):
    """A table row whose file or segment is not in the audio folder or the pack."""


class TableFormatError(StrongLabelError):
    """A table whose header or a row of which cannot be read."""


@dataclass(frozen=True)
class TableEvent:
    """One event row of a table: clip key (file name or segment id), times, label, line."""

    key: str
    onset: float
    offset: float
    label: str
    where: str  # "table.tsv:12"


@dataclass
class EventTable:
    """A read table: its events and every clip it lists (key -> where first listed), in order."""

    path: Path
    events: list[TableEvent]
    listed: dict[str, str]


def read_table(path: str | os.PathLike, columns: tuple[str, str, str, str]) -> EventTable:
    """Read a tab-separated event table whose header names ``columns`` (key, on, off, label)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event table {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter="\t")
        header = [c.strip() for c in next(reader, [])]
        absent = [c for c in columns if c not in header]
        if absent:
            raise TableFormatError(
                f"{path}:1: header {header!r} lacks {absent} (expected the tab-separated "
                f"columns {' '.join(columns)})"
            )
        cols = [header.index(c) for c in columns]
        events: list[TableEvent] = []
        listed: dict[str, str] = {}
        for line_no, row in enumerate(reader, start=2):
            if not any(c.strip() for c in row):
                continue
            where = f"{path}:{line_no}"
            key, *rest = (row[c].strip() if c < len(row) else "" for c in cols)
            if not key:
                raise TableFormatError(f"{where}: empty {columns[0]}")
            listed.setdefault(key, where)
            if not any(rest):  # the clip is listed with no events
                continue
            if not all(rest):
                raise TableFormatError(f"{where}: {key}: {columns[1:]} set only in part")
            try:
                onset, offset = float(rest[0]), float(rest[1])
            except ValueError:
                bad = f"{rest[0]!r}, {rest[1]!r}"
                raise TableFormatError(f"{where}: {key}: times {bad} are not numbers") from None
            events.append(TableEvent(key, onset, offset, rest[2], where))
    return EventTable(path, events, listed)


def read_dcase_table(path: str | os.PathLike) -> EventTable:
    """A DCASE table: ``filename onset offset event_label``."""
    return read_table(path, DCASE_COLUMNS)


def split_segment_id(segment_id: str, where: str = "") -> tuple[str, int]:
    """``<YTID>_<start ms>`` -> (YTID, start in ms)."""
    ytid, sep, ms = segment_id.rpartition("_")
    if not sep or not ytid or not ms.isdigit():
        raise TableFormatError(f"{where}: segment_id {segment_id!r} is not <YTID>_<start ms>")
    return ytid, int(ms)


def read_audioset_strong(path: str | os.PathLike) -> EventTable:
    """An AudioSet-strong table: ``segment_id start_time_seconds end_time_seconds label``."""
    table = read_table(path, AUDIOSET_COLUMNS)
    for key, where in table.listed.items():
        split_segment_id(key, where)
    return table


def read_vocabulary(path: str | os.PathLike) -> set[str]:
    """MIDs of a vocabulary file: first tab/comma-separated column (a header line may lead)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    mids: set[str] = set()
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        first = line.replace(",", "\t").split("\t")[0].strip()
        if not first:
            continue
        if not first.startswith("/"):
            if line_no == 1:
                continue  # a header
            raise TableFormatError(f"{path}:{line_no}: {first!r} is not a MID (/m/..., /t/...)")
        mids.add(first)
    if not mids:
        raise TableFormatError(f"{path}: no MIDs")
    return mids


def checked_events(table: EventTable, clip_seconds: float) -> list[TableEvent]:
    """The table's events with times checked and cut to the clip (named errors otherwise)."""
    out = []
    for e in table.events:
        onset, offset = check_event(e.onset, e.offset, clip_seconds, f"{e.where}: {e.key}")
        out.append(TableEvent(e.key, onset, offset, e.label, e.where))
    return out


def require_listed(table: EventTable, known: set[str], what: str) -> None:
    """`MissingClipError` naming the first line whose clip is not in ``known`` (``what``)."""
    absent = [k for k in table.listed if k not in known]
    if absent:
        more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
        raise MissingClipError(f"{table.listed[absent[0]]}: {absent[0]} is not in {what}{more}")


def strong_labels(
    events: list[TableEvent],
    listed: list[str],
    row_of: dict[str, int],
    num_rows: int,
    label_index: dict[str, int],
    strong_classes: np.ndarray,
) -> tuple[StrongLabels, dict]:
    """The strong labels of a packed file whose row of clip key ``k`` is ``row_of[k]``.

    ``listed`` clips (with or without events) become strongly labelled rows; a listed clip that
    was not packed (its audio missing or unreadable) is reported under ``not_packed``.
    """
    unknown: Counter[str] = Counter()
    per_clip: dict[str, list[Annotation]] = {}
    for e in events:
        if e.label not in label_index:
            unknown[e.label] += 1
        elif e.key in row_of:
            per_clip.setdefault(e.key, []).append(
                Annotation(e.onset, e.offset, str(label_index[e.label]))
            )
    merged, merged_away = merge_overlaps(per_clip)
    strong = np.zeros(num_rows, dtype=bool)
    not_packed = [k for k in listed if k not in row_of]
    strong[[row_of[k] for k in listed if k in row_of]] = True
    rows, onsets, offsets, labels = [], [], [], []
    for key, anns in merged.items():
        for a in anns:
            rows.append(row_of[key])
            onsets.append(a.onset)
            offsets.append(a.offset)
            labels.append(int(a.label))
    order = np.argsort(np.asarray(rows, dtype=np.int64), kind="stable")
    result = StrongLabels(
        strong=strong,
        row=np.asarray(rows, dtype=np.int64)[order],
        onset=np.asarray(onsets, dtype=np.float32)[order],
        offset=np.asarray(offsets, dtype=np.float32)[order],
        label=np.asarray(labels, dtype=np.int32)[order],
        strong_classes=np.asarray(strong_classes, dtype=bool),
    )
    report = {
        "strong_rows": int(strong.sum()),
        "events": len(rows),
        "merged": sum(merged_away.values()),
        "unknown_label_events": sum(unknown.values()),
        "unknown_labels": dict(sorted(unknown.items())),
        "strong_classes": int(result.strong_classes.sum()),
        "not_packed": not_packed,
    }
    return result, report
