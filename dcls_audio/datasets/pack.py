"""Pack a folder of audio files plus an AudioSet segments CSV into the PANNs HDF5 layout.

File matching: a file belongs to segment YTID when its stem, after dropping one optional leading
"Y" (PANNs names files ``Y<YTID>.wav``), equals the YTID or starts with the YTID followed by "_"
(``<YTID>_30.000.flac``, ``Y<YTID>_30.000_40.000.wav``). Exact matches win over prefix matches;
further files for an already matched YTID are reported as duplicates. Files are assumed to hold
the 10 s segment already (no seeking to the segment's start time).

Resuming: rows go to ``<out>.partial`` with resizable datasets; its ``rows_done`` attribute is
updated (and the file flushed) after every block of rows. A rerun with the same output opens the
partial file, drops rows past ``rows_done`` and continues with the segments not written yet.
Rows are named by their YTID (without "Y"). Missing and unreadable clips are never written; they
are listed in ``<out>.report.json``. The partial file is renamed to ``<out>`` at the end.

Strong labels (``--strong FILE.tsv``, AudioSet-strong's table; format and checks in
`dcls_audio.datasets.strong_tables`, layout in `dcls_audio.data.strong`): a table segment
``<YTID>_<start ms>`` is the pack's row of that YTID when the segments CSV starts it at the same
time (to the millisecond). Every packed segment the table lists is strongly labelled; the others
stay weak-only. A table segment that is not in the segments CSV (or starts elsewhere) is an
error naming its line, or with ``--strong-outside skip`` counted in the report (the published
table covers about 5 % of the training set: packing one CSV against it needs ``skip``). Table
segments in the CSV whose audio is missing or unreadable are not packed and are listed under
``strong.not_packed``. ``strong_classes`` marks the classes the strong vocabulary uses: the MIDs
of ``--strong-vocabulary FILE`` (MID first on each line, e.g. ``mid_to_display_name.tsv``) when
given, else every MID the whole table uses. Events of MIDs outside the class list are counted
(``strong.unknown_labels``), not errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from dcls_audio.data.labels import read_class_index
from dcls_audio.data.strong import write_strong
from dcls_audio.data.waveform import CLIP_SAMPLES, SAMPLE_RATE
from dcls_audio.runfiles import write_json
from dcls_audio.workers import loader_worker_init, stop_safe_context

from .common import AUDIO_SUFFIXES, append_row, load_task
from .strong_tables import (
    EventTable,
    MissingClipError,
    TableEvent,
    checked_events,
    read_audioset_strong,
    read_vocabulary,
    split_segment_id,
    strong_labels,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Segment:
    """One row of a segments CSV."""

    ytid: str
    start: float
    end: float
    labels: tuple[int, ...]


def read_segments(path: str | os.PathLike, mid_to_index: dict[str, int]) -> list[Segment]:
    """Parse an AudioSet segments CSV (``#`` comment lines; YTID, start, end, "mid,mid,...")."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segments CSV {path} does not exist")
    out: list[Segment] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as f:
        for line_no, row in enumerate(csv.reader(f, skipinitialspace=True), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            if len(row) != 4:
                raise ValueError(
                    f"{path}:{line_no}: expected 4 columns (YTID, start, end, labels), "
                    f"found {len(row)}: {row!r}"
                )
            ytid = row[0].strip()
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError as e:
                raise ValueError(f"{path}:{line_no}: bad start/end {row[1]!r}, {row[2]!r}") from e
            mids = [m.strip() for m in row[3].split(",") if m.strip()]
            unknown = [m for m in mids if m not in mid_to_index]
            if unknown:
                raise ValueError(
                    f"{path}:{line_no}: YTID {ytid}: label mids {unknown} are not in the class "
                    "index file"
                )
            if len(ytid.encode()) > 20:
                raise ValueError(f"{path}:{line_no}: YTID {ytid!r} longer than 20 bytes (S20)")
            if ytid in seen:
                raise ValueError(f"{path}:{line_no}: YTID {ytid} listed twice")
            seen.add(ytid)
            out.append(Segment(ytid, start, end, tuple(sorted(mid_to_index[m] for m in mids))))
    return out


def match_files(audio_dir: str | os.PathLike, ytids: set[str]) -> tuple[dict[str, Path], list]:
    """Map YTIDs to audio files under ``audio_dir`` (see the module doc); also return duplicates."""
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"audio directory {audio_dir} does not exist")
    candidates: dict[str, list[tuple[int, Path]]] = {}
    files = sorted(p for p in audio_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    for p in files:
        for name in (p.stem, p.stem[1:] if p.stem.startswith("Y") else None):
            if name is None:
                continue
            if name in ytids:
                candidates.setdefault(name, []).append((0, p))  # exact match
                break
            # longest "<id>_..." prefix that is a known YTID (ids may contain "_")
            cuts = [m.start() for m in re.finditer("_", name)]
            ytid = next((name[:c] for c in reversed(cuts) if name[:c] in ytids), None)
            if ytid is not None:
                candidates.setdefault(ytid, []).append((1, p))
                break
    found: dict[str, Path] = {}
    duplicates: list[dict] = []
    for ytid, cands in candidates.items():
        cands.sort()
        found[ytid] = cands[0][1]
        kept = str(cands[0][1])
        duplicates += [{"ytid": ytid, "file": str(p), "kept": kept} for _, p in cands[1:]]
    return found, duplicates


def segment_key(s: Segment) -> str:
    """The AudioSet-strong ``segment_id`` of a segment: ``<YTID>_<start ms>``."""
    return f"{s.ytid}_{round(s.start * 1000)}"


def strong_in_pack(
    table: EventTable, segments: list[Segment], outside: str
) -> tuple[list[TableEvent], list[str], list[str]]:
    """(checked events, listed segment ids) of the table's segments in the pack; and the others.

    ``outside`` "error": a table segment not in the segments CSV is a `MissingClipError`;
    "skip": such segments are returned as the third value and left out.
    """
    if outside not in ("error", "skip"):
        raise ValueError(f"--strong-outside {outside!r}: expected 'error' or 'skip'")
    starts = {s.ytid: s.start for s in segments}
    keys = {segment_key(s) for s in segments}
    others = [k for k in table.listed if k not in keys]
    if others and outside == "error":
        key, where = others[0], table.listed[others[0]]
        ytid, ms = split_segment_id(key, where)
        what = (f"the segments CSV starts {ytid} at {starts[ytid]:g} s, not {ms / 1000:g} s"
                if ytid in starts else f"YTID {ytid} is not in the segments CSV")  # fmt: skip
        raise MissingClipError(
            f"{where}: segment {key} is not in the pack: {what} ({len(others)} table segments "
            "are not; --strong-outside skip packs the others and counts these)"
        )
    inside = EventTable(table.path, [e for e in table.events if e.key in keys],
                        {k: w for k, w in table.listed.items() if k in keys})  # fmt: skip
    return checked_events(inside, CLIP_SAMPLES / SAMPLE_RATE), list(inside.listed), others


def _open_partial(path: Path, num_classes: int) -> h5py.File:
    if path.exists():
        f = h5py.File(path, "a")
        done = int(f.attrs.get("rows_done", 0))
        if f["target"].shape[1] != num_classes:
            raise ValueError(
                f"{path}: partial file has {f['target'].shape[1]} classes, expected {num_classes}; "
                "delete it to start over"
            )
        for key in ("audio_name", "waveform", "target"):
            f[key].resize(done, axis=0)
        return f
    f = h5py.File(path, "w")
    f.attrs.create("sample_rate", SAMPLE_RATE, dtype=np.int32)
    f.attrs["rows_done"] = 0
    f.create_dataset("audio_name", shape=(0,), maxshape=(None,), dtype="S20", chunks=(1024,))
    f.create_dataset(
        "waveform",
        shape=(0, CLIP_SAMPLES),
        maxshape=(None, CLIP_SAMPLES),
        dtype=np.int16,
        chunks=(1, CLIP_SAMPLES),
    )
    f.create_dataset(
        "target",
        shape=(0, num_classes),
        maxshape=(None, num_classes),
        dtype=bool,
        chunks=(256, num_classes),
    )
    return f


def pack(
    audio_dir: str | os.PathLike,
    segments_csv: str | os.PathLike,
    out: str | os.PathLike,
    labels_csv: str | os.PathLike | None = None,
    workers: int = 1,
    strong_tsv: str | os.PathLike | None = None,
    strong_vocabulary: str | os.PathLike | None = None,
    strong_outside: str = "error",
) -> dict:
    """Pack the segments found under ``audio_dir`` into ``out``; return the report dict."""
    out = Path(out)
    classes = read_class_index(labels_csv)
    segments = read_segments(segments_csv, classes.mid_to_index())
    table = read_audioset_strong(strong_tsv) if strong_tsv is not None else None
    if table is not None:  # checked before any audio is decoded
        events, listed, outside = strong_in_pack(table, segments, strong_outside)
        vocabulary = (read_vocabulary(strong_vocabulary) if strong_vocabulary is not None
                      else {e.label for e in table.events})  # fmt: skip
        strong_classes = np.array([m in vocabulary for m in classes.mids])
    found, duplicates = match_files(audio_dir, {s.ytid for s in segments})
    partial = out.with_name(out.name + ".partial")
    report = {
        "segments": len(segments),
        "written": 0,
        "missing": [],
        "unreadable": [],
        "duplicates": duplicates,
    }
    f = _open_partial(partial, len(classes.mids))
    try:
        done = {n.decode() for n in f["audio_name"][()]}
        todo = []
        for i, s in enumerate(segments):
            if s.ytid not in found:
                report["missing"].append(s.ytid)
            elif s.ytid not in done:
                todo.append((i, str(found[s.ytid])))
        if done:
            log.info("resuming %s: %d rows already written", partial, len(done))
        # "spawn": forked children of a process that already ran torch's OpenMP code can deadlock
        # workers leave stop signals to this process, which ends them (pool.terminate)
        pool = stop_safe_context("spawn").Pool(workers, loader_worker_init) if workers > 1 else None
        try:
            results = pool.imap(load_task, todo, chunksize=4) if pool else map(load_task, todo)
            for i, clip, err in results:
                s = segments[i]
                if clip is None:
                    report["unreadable"].append(
                        {"ytid": s.ytid, "file": found[s.ytid].name, "error": err}
                    )
                    continue
                append_row(f, s.ytid, clip, s.labels)
        finally:
            if pool:
                pool.terminate()
        report["written"] = f["audio_name"].shape[0]
        f.attrs["rows_done"] = report["written"]
        if table is not None:
            by_ytid = {s.ytid: s for s in segments}
            row_of = {
                segment_key(by_ytid[n.decode()]): r for r, n in enumerate(f["audio_name"][()])
            }
            labels, info = strong_labels(
                events, listed, row_of, report["written"], classes.mid_to_index(), strong_classes
            )
            report["strong"] = {"table": str(table.path), **info, "outside_pack": len(outside),
                                "outside_pack_first": outside[:10]}  # fmt: skip
            write_strong(f, labels)
    finally:
        f.close()
    write_json(out.with_name(out.name + ".report.json"), report)
    partial.replace(out)
    if "strong" in report:
        st = report["strong"]
        log.info(
            "%s: %d strongly labelled rows, %d events (%d merged away), %d table segments outside "
            "the pack; %d events of %d MIDs outside the class list", out, st["strong_rows"],
            st["events"], st["merged"], st["outside_pack"], st["unknown_label_events"],
            len(st["unknown_labels"]),
        )  # fmt: skip
    log.info(
        "%s: %d clips written, %d missing, %d unreadable",
        out,
        report["written"],
        len(report["missing"]),
        len(report["unreadable"]),
    )
    return report


def main(argv: list[str] | None = None) -> int:
    """CLI: ``dcls-audio-pack audioset|custom --audio-dir DIR ... --out FILE.h5``."""
    ap = argparse.ArgumentParser(
        prog="dcls-audio-pack", description="Pack labelled audio into PANNs-layout HDF5 files."
    )
    sub = ap.add_subparsers(dest="mode", required=True)
    aset = sub.add_parser(
        "audioset", help="audio files + an AudioSet segments CSV (resumable)", description=__doc__
    )
    aset.add_argument("--audio-dir", required=True, help="folder with wav/flac/ogg/mp3 files")
    aset.add_argument("--segments", required=True, help="AudioSet segments CSV")
    aset.add_argument("--out", required=True, help="output HDF5 file")
    aset.add_argument(
        "--labels",
        default=None,
        help="class_labels_indices.csv (default: the packaged AudioSet 527 classes)",
    )
    aset.add_argument("--workers", type=int, default=1, help="decoding processes")
    aset.add_argument("--strong", default=None, help="AudioSet-strong table (TSV) of events")
    aset.add_argument(
        "--strong-vocabulary",
        default=None,
        help="MIDs the strong labels can use (first column; default: the table's MIDs)",
    )
    aset.add_argument(
        "--strong-outside",
        choices=("error", "skip"),
        default="error",
        help="table segments not in the segments CSV: an error (default) or counted and skipped",
    )
    from . import pack_custom

    cust = sub.add_parser(
        "custom",
        help="any labelled audio: a CSV filename,labels[,fold] or a folder per class (resumable)",
        description=pack_custom.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cust.add_argument("--audio-dir", required=True, help="folder with the audio files")
    cust.add_argument("--csv", default=None, help="filename,labels[,fold] CSV (else class folders)")
    cust.add_argument("--classes", default=None, help="class list CSV: index,mid,display_name")
    cust.add_argument("--out", required=True, help="output HDF5 file")
    cust.add_argument("--clip-seconds", type=float, default=10.0, help="pad/crop length (10)")
    cust.add_argument("--workers", type=int, default=1, help="decoding processes")
    cust.add_argument("--events", default=None, help="DCASE event table (TSV): strong labels")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.mode == "custom":
            report = pack_custom.pack_custom(
                args.audio_dir, args.out, args.csv, args.classes, args.clip_seconds, args.workers,
                events_tsv=args.events,
            )  # fmt: skip
        else:
            report = pack(
                args.audio_dir, args.segments, args.out, args.labels, args.workers,
                strong_tsv=args.strong, strong_vocabulary=args.strong_vocabulary,
                strong_outside=args.strong_outside,
            )  # fmt: skip
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    brief = {k: (len(v) if isinstance(v, list) else v) for k, v in report.items()}
    if "strong" in report:
        brief["strong"] = {k: v for k, v in report["strong"].items() if not isinstance(v, list)}
        brief["strong"]["unknown_labels"] = len(report["strong"]["unknown_labels"])
    print(json.dumps(brief))
    return 0


if __name__ == "__main__":
    sys.exit(main())
