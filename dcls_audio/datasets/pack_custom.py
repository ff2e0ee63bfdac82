"""Pack any labelled audio (a CSV of files and labels, or a folder per class) into HDF5.

Inputs (``dcls-audio-pack custom``):

- ``--csv FILE``: columns ``filename,labels[,fold]``; a header row naming ``filename`` and
  ``labels`` (and optionally ``fold``; other columns are ignored) may come first, else the
  columns are taken in that order. ``filename`` is relative to ``--audio-dir``; ``labels`` holds
  one or more labels separated by ``;``, each a class name or a class index.
- without ``--csv``: the folder-per-class tree ``DIR/<class>/<file>`` (sub-folders of a class
  folder are searched too; no folds).
- ``--events FILE.tsv``: a DCASE event table (``filename onset offset event_label``, tab-separated,
  filenames relative to ``--audio-dir``; a row with empty onset, offset and label lists a file
  without events). Its files are strongly labelled (complete events; a file without events is
  all-negative) and their targets hold their events' classes. Without ``--csv`` the table's
  files are the files packed; with ``--csv`` the CSV's are, its labels joined by the events',
  and CSV files the table does not list stay weak-only. Every class can be labelled by the table
  (``strong_classes`` all True). Event labels outside a given class list are counted in the
  report, not errors; bad times and files missing from the folder or the CSV are errors naming
  the table line (`dcls_audio.datasets.strong_tables`).

The class list comes from ``--classes FILE.csv`` (``index,mid,display_name``; a label matches a
mid, then a display name, then an index) when given, and a label not in it is an error naming
the file and the label; otherwise it is the sorted unique labels found (numerically sorted when
every label is an integer).

Output layout (the PANNs layout plus what makes the file describe itself): ``audio_name``
(fixed-length bytes, the file's path relative to the audio folder), ``waveform`` int16
(N, clip samples) at 32 kHz, ``target`` bool (N, C), ``fold`` int16 (N,) when the CSV has
folds, ``class_mids`` and ``class_names`` (UTF-8 strings, C), attributes ``sample_rate`` and
``clip_seconds``; with ``--events`` the strong-label keys of `dcls_audio.data.strong`. The class
list is also written beside the file as ``<out stem>.classes.csv``.
Files that are missing, unreadable or unlabelled are listed in ``<out>.report.json`` and never
written. Rows go to ``<out>.partial`` first (resumable: a rerun continues with the files not
written yet) and the file is renamed to ``<out>`` only when complete.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from dcls_audio.data.labels import ClassIndex, read_class_index, write_class_index
from dcls_audio.data.strong import write_strong
from dcls_audio.data.waveform import SAMPLE_RATE
from dcls_audio.runfiles import write_json
from dcls_audio.workers import loader_worker_init, stop_safe_context

from .common import AUDIO_SUFFIXES, append_row, load_task
from .strong_tables import (
    EventTable,
    checked_events,
    read_dcase_table,
    require_listed,
    strong_labels,
)

log = logging.getLogger(__name__)
STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class Item:
    """One audio file to pack: its path relative to the audio folder, label strings, fold."""

    name: str
    labels: tuple[str, ...]
    fold: int | None
    where: str  # "file.csv:12" or the folder, for error messages


def read_label_csv(path: str | os.PathLike) -> tuple[list[Item], bool]:
    """Rows of a ``filename,labels[,fold]`` CSV; also whether it has a fold column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(n, r) for n, r in enumerate(csv.reader(f), start=1) if any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path}: no rows")
    header = [c.strip().lower() for c in rows[0][1]]
    if "filename" in header:
        if "labels" not in header:
            raise ValueError(f"{path}:1: header {rows[0][1]!r} has no 'labels' column")
        cols = {k: header.index(k) for k in ("filename", "labels", "fold") if k in header}
        rows = rows[1:]
    else:
        width = len(rows[0][1])
        if width not in (2, 3):
            raise ValueError(
                f"{path}:1: expected columns filename,labels[,fold] (or a header naming them), "
                f"found {width} columns: {rows[0][1]!r}"
            )
        cols = dict(zip(("filename", "labels", "fold"), range(width), strict=False))
    has_fold = "fold" in cols
    items, seen = [], {}
    for line_no, row in rows:
        where = f"{path}:{line_no}"
        if len(row) <= max(cols.values()):
            raise ValueError(f"{where}: expected {len(cols)} columns, found {row!r}")
        name = row[cols["filename"]].strip()
        if not name:
            raise ValueError(f"{where}: empty filename")
        if name in seen:
            raise ValueError(f"{where}: file {name} already listed at line {seen[name]}")
        seen[name] = line_no
        labels = tuple(s.strip() for s in row[cols["labels"]].split(";") if s.strip())
        fold = None
        if has_fold:
            text = row[cols["fold"]].strip()
            try:
                fold = int(text)
            except ValueError:
                raise ValueError(f"{where}: file {name}: fold {text!r} is not an integer") from None
        items.append(Item(name, labels, fold, where))
    return items, has_fold


def scan_class_folders(audio_dir: Path) -> list[Item]:
    """Items of a folder-per-class tree: the label of a file is its top-level folder's name."""
    items = []
    for class_dir in sorted(p for p in audio_dir.iterdir() if p.is_dir()):
        for p in sorted(class_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES:
                name = p.relative_to(audio_dir).as_posix()
                items.append(Item(name, (class_dir.name,), None, str(class_dir)))
    if not items:
        raise ValueError(
            f"{audio_dir}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in class folders; "
            "give --csv for a flat folder"
        )
    return items


def class_list(items: list[Item], classes_csv: str | os.PathLike | None) -> ClassIndex:
    """The class index: ``classes_csv``'s, else the sorted unique labels of ``items``."""
    if classes_csv is not None:
        return read_class_index(classes_csv)
    found = sorted({label for it in items for label in it.labels})
    if not found:
        raise ValueError("no labels found: every file is unlabelled")
    if all(s.lstrip("-").isdigit() for s in found):
        found.sort(key=int)
    return ClassIndex(mids=list(found), names=list(found))


def label_lookup(classes: ClassIndex, labels: set[str]) -> dict[str, int]:
    """Column of each of ``labels`` that names a class: by mid, display name, then index."""
    by_mid = classes.mid_to_index()
    by_name = {n: i for i, n in reversed(list(enumerate(classes.names)))}
    out = {}
    for label in labels:
        if label in by_mid:
            out[label] = by_mid[label]
        elif label in by_name:
            out[label] = by_name[label]
        elif label.isdigit() and int(label) < len(classes.mids):
            out[label] = int(label)
    return out


def label_indices(items: list[Item], classes: ClassIndex, strict: bool) -> list[tuple[int, ...]]:
    """Column indices of every item's labels; ``strict``: an unknown label is an error."""
    lookup = label_lookup(classes, {label for it in items for label in it.labels})
    out = []
    for it in items:
        cols = set()
        for label in it.labels:
            if label in lookup:
                cols.add(lookup[label])
            elif strict:
                raise ValueError(
                    f"{it.where}: file {it.name}: label {label!r} is not in the class list "
                    f"({len(classes.mids)} classes; by mid, display name or index)"
                )
        out.append(tuple(sorted(cols)))
    return out


def event_labels(table: EventTable) -> dict[str, tuple[str, ...]]:
    """Each listed file's distinct event labels, in table order."""
    labels: dict[str, dict[str, None]] = {k: {} for k in table.listed}
    for e in table.events:
        labels[e.key][e.label] = None
    return {k: tuple(v) for k, v in labels.items()}


def classes_csv_path(out: Path) -> Path:
    """The class-index CSV written beside a packed file: ``<stem>.classes.csv``."""
    return out.with_name(out.stem + ".classes.csv")


def _open_partial(
    path: Path, classes: ClassIndex, clip_samples: int, name_bytes: int, folds: bool
) -> h5py.File:
    """Open (resume) or create the partial output file."""
    if path.exists():
        f = h5py.File(path, "a")
        same = (
            list(f["class_mids"].asstr()[()]) == classes.mids
            and f["waveform"].shape[1] == clip_samples
            and ("fold" in f) == folds
            and f["audio_name"].dtype.itemsize >= name_bytes
        )
        if not same:
            f.close()
            raise ValueError(
                f"{path}: partial file was started with another class list, clip length or fold "
                "layout; delete it to start over"
            )
        done = int(f.attrs["rows_done"])
        for key in ("audio_name", "waveform", "target", *(("fold",) if folds else ())):
            f[key].resize(done, axis=0)
        return f
    c = len(classes.mids)
    f = h5py.File(path, "w")
    f.attrs.create("sample_rate", SAMPLE_RATE, dtype=np.int32)
    f.attrs["clip_seconds"] = clip_samples / SAMPLE_RATE
    f.attrs["rows_done"] = 0
    f.create_dataset("class_mids", data=np.array(classes.mids, dtype=object), dtype=STR)
    f.create_dataset("class_names", data=np.array(classes.names, dtype=object), dtype=STR)
    f.create_dataset("audio_name", (0,), maxshape=(None,), dtype=f"S{name_bytes}", chunks=(1024,))
    f.create_dataset(
        "waveform", (0, clip_samples), maxshape=(None, clip_samples), dtype=np.int16,
        chunks=(1, clip_samples),
    )  # fmt: skip
    f.create_dataset("target", (0, c), maxshape=(None, c), dtype=bool, chunks=(256, c))
    if folds:
        f.create_dataset("fold", (0,), maxshape=(None,), dtype=np.int16, chunks=(1024,))
    return f


def pack_custom(
    audio_dir: str | os.PathLike,
    out: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    classes_csv: str | os.PathLike | None = None,
    clip_seconds: float = 10.0,
    workers: int = 1,
    progress: bool = True,
    events_tsv: str | os.PathLike | None = None,
) -> dict:
    """Pack the labelled files under ``audio_dir`` into ``out`` (see the module doc)."""
    audio_dir, out = Path(audio_dir), Path(out)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio directory {audio_dir} does not exist")
    clip_samples = round(float(clip_seconds) * SAMPLE_RATE)
    if clip_samples <= 0:
        raise ValueError(f"--clip-seconds must be > 0, got {clip_seconds}")
    table = read_dcase_table(events_tsv) if events_tsv is not None else None
    if labels_csv is not None:
        items, folds = read_label_csv(labels_csv)
    elif table is None:
        items, folds = scan_class_folders(audio_dir), False
    else:  # the table's files
        items, folds = [Item(k, (), None, w) for k, w in table.listed.items()], False
    by_file: dict[str, tuple[str, ...]] = {}
    if table is not None:  # event times and files are checked before any audio is decoded
        events = checked_events(table, clip_samples / SAMPLE_RATE)
        require_listed(table, {it.name for it in items}, "the labels CSV")
        on_disk = {k for k in table.listed if (audio_dir / k).is_file()}
        require_listed(table, on_disk, f"the audio folder {audio_dir}")
        by_file = event_labels(table)
    classes = class_list(items + [Item(k, v, None, "") for k, v in by_file.items()], classes_csv)
    targets = label_indices(items, classes, strict=classes_csv is not None)
    lookup = label_lookup(classes, {e.label for e in events}) if table is not None else {}
    if by_file:  # an event's class is in its file's target; unknown event labels are counted
        targets = [
            tuple(sorted(set(t) | {lookup[x] for x in by_file.get(it.name, ()) if x in lookup}))
            for t, it in zip(targets, items, strict=True)
        ]
    report: dict = {
        "files": len(items),
        "written": 0,
        "num_classes": len(classes.mids),
        "clip_seconds": clip_samples / SAMPLE_RATE,
        "missing": [],
        "unlabelled": [],
        "unreadable": [],
    }
    todo_all = []
    for i, it in enumerate(items):
        if not targets[i] and (table is None or it.name not in table.listed):
            report["unlabelled"].append(it.name)
        elif not (audio_dir / it.name).is_file():
            report["missing"].append(it.name)
        else:
            todo_all.append(i)
    name_bytes = max([len(items[i].name.encode()) for i in todo_all] + [1])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    f = _open_partial(partial, classes, clip_samples, name_bytes, folds)
    try:
        done = {n.decode() for n in f["audio_name"][()]}
        if done:
            log.info("resuming %s: %d rows already written", partial, len(done))
        todo = [(i, str(audio_dir / items[i].name)) for i in todo_all if items[i].name not in done]
        # workers leave stop signals to this process, which ends them (pool.terminate)
        pool = stop_safe_context("spawn").Pool(workers, loader_worker_init) if workers > 1 else None
        try:
            tasks = [(i, p, clip_samples) for i, p in todo]
            results = pool.imap(load_task, tasks, chunksize=4) if pool else map(load_task, tasks)
            bar = tqdm(results, total=len(todo), desc=f"packing {out.name}", disable=not progress)
            for i, clip, err in bar:
                if clip is None:
                    report["unreadable"].append({"file": items[i].name, "error": err})
                    continue
                append_row(f, items[i].name, clip, targets[i], items[i].fold if folds else None)
        finally:
            if pool:
                pool.terminate()
        report["written"] = f["audio_name"].shape[0]
        if folds:
            values, counts = np.unique(f["fold"][()], return_counts=True)
            report["folds"] = {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}
        f.attrs["rows_done"] = report["written"]
        if table is not None and report["written"]:
            row_of = {n.decode(): r for r, n in enumerate(f["audio_name"][()])}
            labels, info = strong_labels(
                events, list(table.listed), row_of, report["written"], lookup,
                np.ones(len(classes.mids), dtype=bool),
            )  # fmt: skip
            report["strong"] = {"table": str(table.path), **info}
            write_strong(f, labels)
    finally:
        f.close()
    if report["written"] == 0:
        write_json(out.with_name(out.name + ".report.json"), report)
        raise ValueError(f"{out}: no file could be packed (see {out.name}.report.json)")
    write_class_index(classes_csv_path(out), classes.mids, classes.names)
    write_json(out.with_name(out.name + ".report.json"), report)
    partial.replace(out)
    if "strong" in report:
        st = report["strong"]
        log.info(
            "%s: %d strongly labelled rows, %d events (%d merged away); %d events of %d labels "
            "outside the class list", out, st["strong_rows"], st["events"], st["merged"],
            st["unknown_label_events"], len(st["unknown_labels"]),
        )  # fmt: skip
    log.info(
        "%s: %d clips written; %d missing, %d unreadable, %d unlabelled (listed in %s)",
        out, report["written"], len(report["missing"]), len(report["unreadable"]),
        len(report["unlabelled"]), out.name + ".report.json",
    )  # fmt: skip
    return report
