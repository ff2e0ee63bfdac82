"""Dataset over one or more PANNs-layout AudioSet HDF5 files."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from .sampling import EpochIndex
from .strong import (
    MAX_EVENTS,
    TooManyEventsError,
    max_overlap,
    move_events,
    pad_events,
    read_strong,
)
from .waveform import CLIP_SAMPLES, INT16_SCALE, SAMPLE_RATE, WaveformAugment

log = logging.getLogger(__name__)

REQUIRED_KEYS = ("audio_name", "waveform", "target")


class DataReadError(OSError):
    """A clip that cannot be read from its HDF5 file; the message names the file and the row."""


def row_end(wav: h5py.Dataset, row: int) -> int | None:
    """Byte offset just past row ``row`` of a 2-D dataset in its file (None: not known).

    Contiguous datasets: from the data offset; chunked ones: the chunk holding the row's last
    column. HDF5 reads bytes past the end of a truncated file as zeros, without an error, so
    comparing this with the file's size is how a truncated file is noticed.
    """
    layout = wav.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        offset = wav.id.get_offset()
        return None if offset is None else offset + (row + 1) * wav.shape[1] * wav.dtype.itemsize
    if layout == h5py.h5d.CHUNKED:
        rows, cols = wav.chunks
        last_col = (wav.shape[1] - 1) // cols * cols
        info = wav.id.get_chunk_info_by_coord((row // rows * rows, last_col))
        return None if info.byte_offset is None else info.byte_offset + info.size
    return None


def validate_file(
    path: Path, num_classes: int, sample_rate: int | None = None, clip_samples: int = CLIP_SAMPLES
) -> np.ndarray:
    """Check one file's layout; return its ``audio_name`` column. Raises naming file and key.

    ``sample_rate`` (``data.sample_rate``) states the rate of files that lack the
    ``sample_rate`` attribute (other packers omit it); None requires the attribute.
    """
    if not path.is_file():
        raise FileNotFoundError(f"HDF5 file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise OSError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        for key in REQUIRED_KEYS:
            if key not in f:
                raise KeyError(f"{path}: missing key '{key}' (expected {list(REQUIRED_KEYS)})")
        sr = f.attrs.get("sample_rate")
        if sr is None and sample_rate is None:
            raise ValueError(
                f"{path}: missing attribute 'sample_rate' (expected {SAMPLE_RATE}); if the file "
                f"holds {SAMPLE_RATE} Hz audio, say so with data.sample_rate={SAMPLE_RATE}"
            )
        if sr is not None:
            sr = int(np.asarray(sr).reshape(-1)[0])
            if sample_rate is not None and int(sample_rate) != sr:
                raise ValueError(
                    f"{path}: attribute 'sample_rate' is {sr} but data.sample_rate={sample_rate}"
                )
        rate = sr if sr is not None else int(sample_rate)
        if rate != SAMPLE_RATE:
            source = "attribute 'sample_rate'" if sr is not None else "data.sample_rate"
            raise ValueError(
                f"{path}: {source} is {rate}, expected {SAMPLE_RATE} (resample when packing)"
            )
        wav, tgt, names = f["waveform"], f["target"], f["audio_name"]
        if wav.dtype != np.int16:
            raise TypeError(f"{path}: key 'waveform' has dtype {wav.dtype}, expected int16")
        if wav.ndim != 2 or wav.shape[1] != clip_samples:
            raise ValueError(
                f"{path}: key 'waveform' has shape {wav.shape}, expected (N, {clip_samples}) "
                f"({clip_samples / SAMPLE_RATE:g} s at {SAMPLE_RATE} Hz: data.clip_seconds); "
                "set data.clip_seconds to the packed clip length or pack again"
            )
        n = wav.shape[0]
        if tgt.dtype != np.bool_:
            raise TypeError(f"{path}: key 'target' has dtype {tgt.dtype}, expected bool")
        if tgt.shape != (n, num_classes):
            raise ValueError(
                f"{path}: key 'target' has shape {tgt.shape}, expected ({n}, {num_classes}) "
                f"(num_classes={num_classes})"
            )
        if names.dtype.kind != "S" or names.shape != (n,):
            raise ValueError(
                f"{path}: key 'audio_name' has dtype {names.dtype} and shape {names.shape}, "
                f"expected fixed-length bytes (e.g. S20) of shape ({n},)"
            )
        return names[()]


def select_fold(path: Path, rows: int, fold: int, mode: str) -> np.ndarray:
    """Row mask of fold ``fold`` (mode "only") or of every other fold (mode "exclude")."""
    with h5py.File(path, "r") as f:
        if "fold" not in f:
            raise KeyError(
                f"{path}: data.fold={fold} but the file has no 'fold' key (pack it with a "
                "fold column: dcls-audio-pack custom --csv with filename,labels,fold)"
            )
        folds = f["fold"][()]
    if folds.shape != (rows,):
        raise ValueError(f"{path}: key 'fold' has shape {folds.shape}, expected ({rows},)")
    if fold not in folds:
        raise ValueError(
            f"{path}: data.fold={fold} is not among the file's folds {sorted(set(folds.tolist()))}"
        )
    if mode not in ("only", "exclude"):
        raise ValueError(f"fold mode {mode!r}; expected 'only' or 'exclude'")
    return (folds == fold) if mode == "only" else (folds != fold)


def read_packed_targets(path: Path, rows: np.ndarray, block: int = 65536) -> np.ndarray:
    """Targets of the given rows, bit-packed along classes (uint8), read in blocks of rows."""
    with h5py.File(path, "r") as f:
        tgt = f["target"]
        out = np.empty((len(rows), (tgt.shape[1] + 7) // 8), dtype=np.uint8)
        for lo in range(0, tgt.shape[0], block):
            hi = min(lo + block, tgt.shape[0])
            sel = (rows >= lo) & (rows < hi)
            if sel.any():
                out[sel] = np.packbits(tgt[lo:hi][rows[sel] - lo], axis=1)
    return out


class AudioSetHDF5(Dataset):
    """AudioSet clips from PANNs-layout HDF5 files: item -> (waveform (320000,), target (C,)).

    With strong labels in any file (`has_strong`; layout in `dcls_audio.data.strong`) an item is
    (waveform, target, events (max_events, 3) float32, strong bool scalar): the clip's events as
    ``[onset_s, offset_s, class]`` rows padded with ``[0, 0, -1]``, moved exactly as the training
    augmentation moves the audio (`move_events`), and whether the row is strongly labelled (rows
    of weak-only files are not). `strong_classes` (C,) is the AND over the files with strong
    labels (a class counts as labelled only where every such file labels it; all False if none).

    Every file is validated at construction; rows with an empty ``audio_name`` (clips missing
    from a PANNs pack) are skipped and counted. Files are opened lazily in each process, so the
    dataset can be handed to DataLoader workers. Targets are read once at construction and kept
    bit-packed in memory (66 bytes per row for 527 classes), so an item costs one waveform read.
    With ``train=True`` every clip is rolled and
    speed-perturbed with a generator seeded by (seed, epoch, index): the result of an item does
    not depend on the number of workers; ``augment`` sets the roll and speed perturbation
    (default: the paper's). ``clip_samples`` is the stored clip length (``data.clip_seconds``);
    ``fold`` keeps only that fold (``fold_mode="only"``) or every other (``"exclude"``) of files
    with a ``fold`` key. An item's epoch is the one its index carries (an `EpochIndex`, as the
    training sampler yields them: it reaches persistent workers), else the one `set_epoch` set.
    """

    def __init__(
        self,
        files: str | os.PathLike | Sequence[str | os.PathLike],
        num_classes: int = 527,
        train: bool = False,
        seed: int = 0,
        augment: WaveformAugment | None = None,
        sample_rate: int | None = None,
        clip_samples: int = CLIP_SAMPLES,
        fold: int | None = None,
        fold_mode: str = "only",
        max_events: int = MAX_EVENTS,
    ) -> None:
        if isinstance(files, (str, os.PathLike)):
            files = [files]
        self.files = [Path(p) for p in files]
        if not self.files:
            raise ValueError("AudioSetHDF5 needs at least one HDF5 file")
        self.num_classes = int(num_classes)
        self.train = bool(train)
        self.seed = int(seed)
        self.epoch = 0
        self.clip_samples = int(clip_samples)
        self.max_events = int(max_events)
        file_idx, rows, targets, strong = [], [], [], []
        self.skipped_per_file: dict[str, int] = {}
        for i, path in enumerate(self.files):
            audio_name = validate_file(path, self.num_classes, sample_rate, clip_samples)
            usable = np.flatnonzero(audio_name != b"")
            self.skipped_per_file[str(path)] = len(audio_name) - len(usable)
            if fold is not None:  # data.fold: the held-out fold ("only") or the others
                usable = usable[select_fold(path, len(audio_name), fold, fold_mode)[usable]]
            file_idx.append(np.full(len(usable), i, dtype=np.int32))
            rows.append(usable.astype(np.int64))
            targets.append(read_packed_targets(path, usable))
            strong.append(read_strong(path, len(audio_name), self.num_classes,
                                      clip_samples / SAMPLE_RATE))  # fmt: skip
        self._file_idx = np.concatenate(file_idx)
        self._rows = np.concatenate(rows)
        self._targets = np.concatenate(targets)  # (rows, ceil(C / 8)) uint8, bit-packed
        self._gather_strong(strong, rows)
        self.num_skipped = sum(self.skipped_per_file.values())
        if self.num_skipped:
            detail = ", ".join(f"{p}: {k}" for p, k in self.skipped_per_file.items() if k)
            log.warning(
                "skipped %d rows with an empty audio_name (missing clips) out of %d (%s)",
                self.num_skipped,
                self.num_skipped + len(self._rows),
                detail,
            )
        self.augment = augment if augment is not None else WaveformAugment(length=clip_samples)
        if self.augment.length != clip_samples:
            raise ValueError(
                f"augmentation length {self.augment.length} != clip length {clip_samples} samples"
            )
        self._pid: int | None = None
        self._handles: list[h5py.File | None] = []
        self._waves: list[h5py.Dataset | None] = []

    def _gather_strong(self, labels: list, rows: list[np.ndarray]) -> None:
        """Keep the usable rows' strong flags and events (CSR by dataset row) in memory."""
        self.has_strong = any(s is not None for s in labels)
        self.strong_classes = np.zeros(self.num_classes, dtype=bool)
        if self.has_strong:
            masks = [s.strong_classes for s in labels if s is not None]
            self.strong_classes = np.logical_and.reduce(masks)
            if any(not np.array_equal(m, masks[0]) for m in masks):
                log.warning("the files' strong_classes differ: a class is strongly labelled only "
                            "where every file labels it (%d classes)",
                            int(self.strong_classes.sum()))  # fmt: skip
        flags, counts, events = [], [], []
        for i, (s, usable) in enumerate(zip(labels, rows, strict=True)):
            if s is None:
                flags.append(np.zeros(len(usable), dtype=bool))
                counts.append(np.zeros(len(usable), dtype=np.int64))
                continue
            flags.append(s.strong[usable])
            pos = np.searchsorted(usable, s.row)  # usable rows are sorted
            kept = (pos < len(usable)) & (usable[np.minimum(pos, len(usable) - 1)] == s.row)
            pos = pos[kept]  # events of skipped rows (empty names, other folds) are dropped
            count = np.bincount(pos, minlength=len(usable))
            depth = max_overlap(pos, s.onset[kept], s.offset[kept], len(usable))
            room = count + depth if self.train else count  # a roll splits the events it cuts
            if len(room) and room.max() > self.max_events:
                j = int(room.argmax())
                raise TooManyEventsError(
                    f"{self.files[i]}: row {int(usable[j])} has {int(count[j])} events"
                    + (f" (+{int(depth[j])} that a roll can split)" if self.train else "")
                    + f", more than max_events={self.max_events}; raise max_events"
                )
            counts.append(count)
            block = np.stack([s.onset[kept], s.offset[kept], s.label[kept]], axis=1)
            events.append(block.astype(np.float32))  # sorted by row, as stored
        self._strong = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
        self._ev_ptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64)
        self._events = np.concatenate(events) if events else np.zeros((0, 3), dtype=np.float32)

    def __len__(self) -> int:
        return len(self._rows)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentation draws the next items use."""
        self.epoch = int(epoch)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pid"] = None
        state["_handles"] = []
        state["_waves"] = []
        return state

    def _waveforms(self, file_index: int) -> h5py.Dataset:
        pid = os.getpid()
        if self._pid != pid:  # first use in this process (e.g. a forked worker): fresh handles
            self._pid = pid
            self._handles = [None] * len(self.files)
            self._waves = [None] * len(self.files)
        wav = self._waves[file_index]
        if wav is None:
            f = h5py.File(self.files[file_index], "r")
            self._handles[file_index] = f
            wav = self._waves[file_index] = f["waveform"]  # group lookups are slow: cache
        return wav

    def _read_row(self, file_index: int, row: int) -> np.ndarray:
        """Row ``row`` of file ``file_index``; `DataReadError` names the file and row on failure."""
        path = self.files[file_index]
        try:
            wav = self._waveforms(file_index)
            raw = wav[row]
            end = row_end(wav, row)
            size = os.fstat(self._handles[file_index].id.get_vfd_handle()).st_size
        except Exception as err:  # h5py/HDF5 open and read errors (I/O errors, a vanished file)
            raise DataReadError(
                f"{path}: cannot read row {row} of 'waveform' ({type(err).__name__}: {err})"
            ) from err
        if end is not None and end > size:  # checked after the read: it may have read zeros
            raise DataReadError(
                f"{path}: cannot read row {row} of 'waveform': it ends at byte {end} but the "
                f"file now has {size} bytes (truncated or rewritten after it was opened)"
            )
        return raw

    def read_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``index`` as stored: (int16 waveform, bool target); `DataReadError` on failure."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} rows")
        index %= len(self)
        raw = self._read_row(int(self._file_idx[index]), int(self._rows[index]))
        return raw, self.target(index)

    def target(self, index: int) -> np.ndarray:
        """Bool target row of usable row ``index`` (kept in memory, no file access)."""
        return np.unpackbits(self._targets[index], count=self.num_classes).view(np.bool_)

    def events(self, index: int) -> np.ndarray:
        """Stored events (E, 3) ``[onset_s, offset_s, class]`` of usable row ``index``."""
        index %= len(self)
        return self._events[self._ev_ptr[index] : self._ev_ptr[index + 1]]

    def strong_rows(self) -> np.ndarray:
        """The usable rows that are strongly labelled, in dataset order."""
        return np.flatnonzero(self._strong)

    def is_strong(self, index: int) -> bool:
        """Whether usable row ``index`` is strongly labelled (its events are complete)."""
        return bool(self._strong[index])

    def __getitem__(self, index: int | EpochIndex) -> tuple[torch.Tensor, ...]:
        epoch = self.epoch
        if isinstance(index, EpochIndex):
            epoch, index = index
        raw, target = self.read_raw(index)
        events = self.events(index) if self.has_strong else None
        if self.train:
            rng = np.random.default_rng([self.seed, epoch, index % len(self)])
            if events is None:
                wave = self.augment(raw, rng)
            else:  # the same draws as __call__: the clip does not depend on strong labels
                shift, rate, offset = self.augment.draw(rng)
                wave = self.augment.apply(raw, shift, rate, offset)
                events = move_events(events, shift, rate, offset, self.clip_samples, SAMPLE_RATE)
        else:
            wave = np.multiply(raw, INT16_SCALE)
        item = (torch.from_numpy(wave), torch.from_numpy(target.astype(np.float32)))
        if events is None:
            return item
        padded = torch.from_numpy(pad_events(events, self.max_events))
        return (*item, padded, torch.tensor(self.is_strong(index % len(self))))

    def audio_names(self) -> np.ndarray:
        """``audio_name`` (bytes) of every usable row, in dataset order."""
        names = []
        for i, path in enumerate(self.files):  # rows of file i are contiguous, files in order
            with h5py.File(path, "r") as f:
                names.append(f["audio_name"][()][self._rows[self._file_idx == i]])
        return np.concatenate(names)

    def targets(self) -> np.ndarray:
        """All usable rows' targets as a bool matrix (rows, C)."""
        return np.unpackbits(self._targets, axis=1, count=self.num_classes).view(np.bool_)

    def __repr__(self) -> str:
        return (
            f"AudioSetHDF5(files={[str(p) for p in self.files]}, rows={len(self)}, "
            f"skipped={self.num_skipped}, num_classes={self.num_classes}, train={self.train}, "
            f"strong={int(self._strong.sum())})"
        )
