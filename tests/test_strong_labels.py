"""Strong labels in the data: events moved with the audio, frame targets, mixup, dataset items."""

import hashlib

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dcls_audio.data import AudioSetHDF5, MultiLabelMixup
from dcls_audio.data.strong import (
    MAX_EVENTS,
    EventPastEndError,
    EventTimeError,
    StrongLabelError,
    StrongLabels,
    TooManyEventsError,
    frame_targets,
    max_overlap,
    move_events,
    pad_events,
    write_strong,
)
from dcls_audio.data.waveform import WaveformAugment, speed_length

SR = 32000
L = 2 * SR  # 2-s clips
T = L / SR
F = 20  # frames of 0.1 s (3200 samples)
S = L // F
C = 3
LEVELS = (0.5, 0.25, 0.125)  # square-wave amplitude of each class: its energy tells it apart
TOL = 2.5 / S  # a boundary may fall one sample either side of a frame edge


def burst(events, length=L):
    """Silence with a 4-kHz square-wave burst per event at its class's amplitude (int16)."""
    x = np.zeros(length, dtype=np.float64)
    for on, off, cls in events:
        a, b = int(round(on * SR)), int(round(off * SR))
        x[a:b] = LEVELS[int(cls)] * np.where(np.arange(a, b) % 8 < 4, 1.0, -1.0)
    return np.rint(x * 32768).astype(np.int16)


def energy_envelope(wave):
    """Per frame and class: the energy at the class's amplitude over a full frame's (F, C)."""
    w = np.asarray(wave, dtype=np.float64).reshape(F, S)
    out = np.empty((F, C))
    for c, level in enumerate(LEVELS):
        at = np.abs(np.abs(w) - level) < 1e-3
        out[:, c] = (w**2 * at).sum(1) / (level**2 * S)
    return out


def rendered(events):
    ev = torch.from_numpy(pad_events(np.asarray(events, dtype=np.float32)))[None]
    return frame_targets(ev, F, T, C)[0].numpy()


EVENTS = np.array([[0.30, 0.75, 0], [1.20, 1.95, 1], [0.05, 0.20, 2]], dtype=np.float32)


@pytest.mark.parametrize(
    "shift,rate,offset",
    [
        (0, None, 0),
        (12345, None, 0),  # no wrap
        (int(0.4 * SR), None, 0),  # class 1 wraps around the end: split in two
        (-int(0.5 * SR), None, 0),  # negative roll: class 0 wraps to the end, class 2 moves
        (L, None, 0),  # a full turn
        (-L, None, 0),
        (0, 0.5, 0),  # slower: the resampled clip is cropped at its start...
        (0, 0.5, L // 2),  # ...in the middle
        (0, 0.5, speed_length(L, 0.5) - L),  # ...at its end
        (0, 0.8, 7777),
        (0, 1.25, 0),  # faster: zero padding after the clip...
        (0, 1.25, 5000),  # ...on both sides
        (0, 1.5, L - speed_length(L, 1.5)),  # ...before the clip
        (int(0.4 * SR), 0.7, 9000),  # a wrapped event, then sped up
        (-3333, 1.4, 4000),
    ],
)
def test_moved_events_sit_where_the_energy_is(shift, rate, offset):
    aug = WaveformAugment(length=L)
    wave = aug.apply(burst(EVENTS), shift, rate, offset)
    moved = move_events(EVENTS, shift, rate, offset, L, SR)
    got, want = rendered(moved), energy_envelope(wave)
    np.testing.assert_allclose(got, want, atol=TOL)
    assert got.sum() > 0.5  # something survived the crop
    if rate is None and shift % L == int(0.4 * SR):
        assert sorted(moved[:, 2].tolist()) == [0, 1, 1, 2]  # the wrapped event is two events


def test_stored_clip_is_cropped_or_padded_with_its_events():
    long_events = np.array([[0.5, 1.0, 0], [1.8, 2.4, 1], [2.2, 2.5, 2]], dtype=np.float32)
    aug = WaveformAugment(length=L)
    for raw, events in (
        (burst(long_events, int(2.5 * SR)), long_events),
        (burst(EVENTS[:1], SR), EVENTS[:1]),
    ):
        for shift, rate, offset in ((0, None, 0), (20000, None, 0), (5000, 0.6, 3000)):
            moved = move_events(events, shift, rate, offset, L, SR)
            wave = aug.apply(raw, shift, rate, offset)
            np.testing.assert_allclose(rendered(moved), energy_envelope(wave), atol=TOL)
    cut = move_events(long_events, 0, None, 0, L, SR)
    np.testing.assert_allclose(cut, [[0.5, 1.0, 0], [1.8, 2.0, 1]])  # cut at the end; one gone


def test_frame_targets_fractions_union_and_padding():
    ev = torch.tensor(
        [
            [[0.05, 0.25, 0], [0.20, 0.30, 0], [0.20, 0.22, 0], [0.0, 0.0, -1], [0.5, 0.6, 7]],
            [[0.0, 1.0, 2], [0.15, 0.15, 1], [0.0, 0.0, -1], [0.0, 0.0, -1], [0.0, 0.0, -1]],
        ]
    )
    out = frame_targets(ev, 10, 1.0, C)
    assert out.shape == (2, 10, C) and out.dtype == torch.float32
    expect = torch.zeros(2, 10, C)
    expect[0, 0, 0], expect[0, 1, 0], expect[0, 2, 0] = 0.5, 1.0, 1.0  # union 0.05-0.30, not sum
    expect[1, :, 2] = 1.0  # class 7 is outside the class list, a zero-length event counts nothing
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=0)
    empty = frame_targets(torch.zeros(2, 0, 3), 4, 1.0, C)
    assert empty.shape == (2, 4, C) and not empty.any()
    with pytest.raises(ValueError, match="expected events"):
        frame_targets(torch.zeros(2, 3), 4, 1.0, C)


def union_reference(events, num_frames, length, num_classes):
    """Frame targets by merging each class's intervals in plain Python."""
    out = np.zeros((len(events), num_frames, num_classes))
    edges = np.arange(num_frames + 1) * length / num_frames
    for n, rows in enumerate(events.tolist()):
        for c in range(num_classes):
            spans = sorted((max(a, 0), min(b, length)) for a, b, k in rows if round(k) == c)
            merged = []
            for a, b in spans:
                if b <= a:
                    continue
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            for a, b in merged:
                overlap = np.minimum(b, edges[1:]) - np.maximum(a, edges[:-1])
                out[n, :, c] += np.clip(overlap, 0, None) * num_frames / length
    return out


def test_frame_targets_match_merged_intervals_on_random_overlaps():
    g = torch.Generator().manual_seed(5)
    on = torch.rand(16, 24, generator=g) * 2.4 - 0.2  # some start before the clip or past it
    off = on + torch.rand(16, 24, generator=g) * 0.8 - 0.1  # some empty or reversed
    cls = torch.randint(-1, C + 1, (16, 24), generator=g).float()  # padding and unknown classes
    events = torch.stack([on, off, cls], dim=-1)
    got = frame_targets(events, 13, 2.0, C)
    want = union_reference(events.numpy().astype(np.float64), 13, 2.0, C)
    np.testing.assert_allclose(got.numpy(), want, atol=2e-5)
    assert (got > 0.999).sum() > 20 and ((got > 0.01) & (got < 0.99)).sum() > 20
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a mixed-precision step
        assert torch.equal(frame_targets(events, 13, 2.0, C), got)


def test_max_overlap_counts_what_a_roll_can_split():
    row = np.array([0, 0, 0, 2, 2])
    on = np.array([0.0, 0.5, 1.0, 0.0, 1.0])
    off = np.array([1.0, 1.5, 2.0, 1.0, 2.0])  # row 2: touching events never overlap
    np.testing.assert_array_equal(max_overlap(row, on, off, 3), [2, 0, 1])


def test_mixup_mixes_frames_as_the_clip_labels():
    rng = np.random.default_rng(0)
    clips = [np.array([[rng.uniform(0, 1.5), 1.8, rng.integers(C)]]) for _ in range(6)]
    clips[4] = np.zeros((0, 3))  # a strongly labelled clip without events
    ev = torch.stack([torch.from_numpy(pad_events(c.astype(np.float32))) for c in clips])
    frames = frame_targets(ev, F, T, C)
    envelopes = torch.from_numpy(np.stack([energy_envelope(burst(c).astype(np.float32) / 32768)
                                           for c in clips])).float()  # fmt: skip
    y = (frames.amax(1) > 0).float()
    strong = torch.tensor([True, True, False, True, True, True])
    mix = MultiLabelMixup(alpha=0.8, label_smoothing=0.1)
    mixed_x, mixed_y = mix(envelopes, y, torch.Generator().manual_seed(3))
    mixed_f, mixed_s = mix.mix_frames(frames, strong)
    lam, perm = mix.last_lam, mix.last_perm
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(6))
    # the frames mix as the energy does, then smoothing as the labels: y(1 - eps) + eps / C
    torch.testing.assert_close(mixed_f, mixed_x * 0.9 + 0.1 / C, atol=TOL, rtol=0)
    torch.testing.assert_close(
        mixed_y, (y * 0.9 + 0.1 / C) * lam + (y[perm] * 0.9 + 0.1 / C) * (1 - lam)
    )
    assert torch.equal(mixed_s, strong & strong[perm])
    off = MultiLabelMixup(enabled=False)
    assert off.mix_frames(frames, strong) == (frames, strong)
    with pytest.raises(RuntimeError, match="follows a call"):
        MultiLabelMixup().mix_frames(frames, strong)
    with pytest.raises(ValueError, match="last mixed batch 6"):
        mix.mix_frames(frames[:4], strong[:4])


# the pre-strong-label implementation's output for these draws (WaveformAugment.__call__)
REFERENCE_SHA256 = "1c950fd9c8829b9afa7e628465641c0c91888ccd95fbc8e14c76f53a19b188b1"


def test_augmentation_stream_is_unchanged():
    raw = np.random.default_rng(123).integers(-32768, 32768, 16000).astype(np.int16)
    h, h_apply = hashlib.sha256(), hashlib.sha256()
    for p in (0.5, 1.0):
        aug = WaveformAugment(length=16000, speed_p=p)
        for s in range(40):
            h.update(aug(raw, np.random.default_rng([5, 1, s])).tobytes())
            drawn = aug.draw(np.random.default_rng([5, 1, s]))
            h_apply.update(aug.apply(raw, *drawn).tobytes())
    assert h.hexdigest() == h_apply.hexdigest() == REFERENCE_SHA256


def write_file(path, events, strong, *, classes=None, waves=None, n=None):
    """A 2-s clip file: bursts of ``events`` (rows [row, onset, offset, class]) per row."""
    events = np.asarray(events, dtype=np.float64).reshape(-1, 4)
    n = n or (len(waves) if waves is not None else len(strong))
    if waves is None:
        waves = np.stack([burst(events[events[:, 0] == r, 1:]) for r in range(n)])
    tgt = np.zeros((n, C), dtype=bool)
    tgt[events[:, 0].astype(int), events[:, 3].astype(int)] = True
    with h5py.File(path, "w") as f:
        f.attrs.create("sample_rate", SR, dtype=np.int32)
        f.create_dataset("audio_name", data=np.array([f"c{i}".encode() for i in range(n)], "S8"))
        f.create_dataset("waveform", data=waves)
        f.create_dataset("target", data=tgt)
        if strong is not None:
            labels = StrongLabels(
                np.asarray(strong, dtype=bool), events[:, 0].astype(np.int64),
                events[:, 1].astype(np.float32), events[:, 2].astype(np.float32),
                events[:, 3].astype(np.int32),
                np.ones(C, dtype=bool) if classes is None else np.asarray(classes, dtype=bool),
            )  # fmt: skip
            write_strong(f, labels)
    return waves


ROWS = [[0, 0.3, 0.75, 0], [0, 1.2, 1.95, 1], [1, 0.0, 2.0, 2], [3, 1.5, 1.6, 0]]


def test_training_items_follow_the_audio_and_match_weak_waveforms(tmp_path):
    waves = write_file(tmp_path / "s.h5", ROWS, [True, True, True, True])
    write_file(tmp_path / "w.h5", ROWS, None, waves=waves)
    strong = AudioSetHDF5(tmp_path / "s.h5", C, train=True, seed=1, clip_samples=L)
    weak = AudioSetHDF5(tmp_path / "w.h5", C, train=True, seed=1, clip_samples=L)
    assert strong.has_strong and strong.strong_classes.all()
    assert not weak.has_strong and not weak.strong_classes.any() and len(weak[0]) == 2
    for epoch in range(4):
        strong.set_epoch(epoch)
        weak.set_epoch(epoch)
        for i in range(4):
            wave, target, events, is_strong = strong[i]
            assert torch.equal(wave, weak[i][0]) and torch.equal(target, weak[i][1])
            assert events.shape == (MAX_EVENTS, 3) and events.dtype == torch.float32
            assert is_strong.dtype == torch.bool and is_strong.ndim == 0 and bool(is_strong)
            got = frame_targets(events[None], F, T, C)[0].numpy()
            np.testing.assert_allclose(got, energy_envelope(wave.numpy()), atol=TOL)
    assert not strong.events(2).size and strong.is_strong(2)  # all-negative row, still strong
    batch = next(iter(DataLoader(strong, batch_size=4)))
    assert [tuple(b.shape) for b in batch] == [(4, L), (4, C), (4, MAX_EVENTS, 3), (4,)]


def test_evaluation_items_keep_events_in_place_and_weak_rows_pad(tmp_path):
    write_file(tmp_path / "s.h5", ROWS, [True, True, False, True], classes=[1, 0, 1])
    write_file(tmp_path / "s2.h5", ROWS[:1], [True], classes=[1, 1, 0], n=1)
    write_file(tmp_path / "w.h5", ROWS, None, n=4)
    ds = AudioSetHDF5([tmp_path / "w.h5", tmp_path / "s.h5", tmp_path / "s2.h5"], C, clip_samples=L)
    assert ds.has_strong and ds.strong_classes.tolist() == [True, False, False]  # AND of files
    wave, _, events, strong = ds[4]  # row 0 of s.h5
    np.testing.assert_allclose(events[:2].numpy(), [[0.3, 0.75, 0], [1.2, 1.95, 1]], atol=1e-6)
    assert (events[2:] == torch.tensor([0.0, 0.0, -1.0])).all() and bool(strong)
    for i in range(4):  # weak-only file: not strong, no events
        _, _, events, strong = ds[i]
        assert not bool(strong) and (events[:, 2] == -1).all()
    assert [bool(ds[i][3]) for i in range(4, 9)] == [True, True, False, True, True]


def test_tuning_loader_takes_strong_training_clips_unaugmented(tmp_path):
    """The clips the segment-F1 threshold is chosen on: strong rows only, evenly spread, as
    stored (no augmentation), at most the asked count; None without strong rows."""
    from omegaconf import OmegaConf

    from dcls_audio.train.loaders import tuning_loader

    waves = write_file(tmp_path / "s.h5", ROWS + [[4, 0.1, 0.2, 1]], [True, True, False, True,
                       True])  # fmt: skip
    write_file(tmp_path / "w.h5", ROWS, None, n=4)
    cfg = OmegaConf.create({"num_classes": C, "sample_rate": SR, "clip_seconds": T, "fold": None,
                            "num_workers": 0, "pin_memory": False})  # fmt: skip
    files = [str(tmp_path / "w.h5"), str(tmp_path / "s.h5")]
    loader = tuning_loader(cfg, files, 3, 8, 0, 1, torch.device("cpu"))
    assert loader.dataset.indices == [4, 7, 8]  # strong rows 4, 5, 7, 8 of the set: 3 spread
    wave, _, events, strong = next(iter(loader))
    assert strong.all() and wave.shape == (3, L)
    np.testing.assert_allclose(wave.numpy(), waves[[0, 3, 4]] / 32768.0, atol=1e-7)
    np.testing.assert_allclose(events[1, 0].numpy(), [1.5, 1.6, 0], atol=1e-6)  # row 3, in place
    assert len(tuning_loader(cfg, files, 100, 8, 0, 1, torch.device("cpu")).dataset) == 4
    assert tuning_loader(cfg, files, 0, 8, 0, 1, torch.device("cpu")) is None
    assert tuning_loader(cfg, files[:1], 100, 8, 0, 1, torch.device("cpu")) is None


def test_too_many_events_is_named_at_construction(tmp_path):
    rows = [[0, 0.01 * k, 0.01 * k + 0.005, k % C] for k in range(MAX_EVENTS)]
    rows.append([1, 0.0, 1.0, 0])
    write_file(tmp_path / "a.h5", rows, [True, True])
    assert len(AudioSetHDF5(tmp_path / "a.h5", C, clip_samples=L)[0][2]) == MAX_EVENTS
    with pytest.raises(TooManyEventsError, match=r"a.h5: row 0 has 64 events \(\+1 that a roll"):
        AudioSetHDF5(tmp_path / "a.h5", C, train=True, clip_samples=L)
    ds = AudioSetHDF5(tmp_path / "a.h5", C, train=True, clip_samples=L, max_events=80)
    assert ds[0][2].shape == (80, 3)
    with pytest.raises(TooManyEventsError, match="row 0 has 64 events, more than max_events=32"):
        AudioSetHDF5(tmp_path / "a.h5", C, clip_samples=L, max_events=32)


def test_layout_errors_are_named(tmp_path):
    def broken(name, edit):
        write_file(tmp_path / name, ROWS, [True, True, True, True])
        with h5py.File(tmp_path / name, "a") as f:
            edit(f)
        return tmp_path / name

    def replace(key, value):
        def edit(f):
            del f[key]
            f.create_dataset(key, data=value)

        return edit

    cases = [
        (lambda f: f.__delitem__("strong_classes"), "but not \\['strong_classes'\\]"),
        (replace("strong", np.ones(3, bool)), "'strong' is bool \\(3,\\), expected bool \\(4,\\)"),
        (replace("strong", np.array([1, 0, 1, 1], bool)), "row 1 has events but 'strong'"),
        (replace("events/label", np.array([0, 1, 5, 0], np.int32)), "outside \\[0, 3\\)"),
        (replace("events/row", np.array([0, 1, 0, 3])), "not sorted"),
        (replace("events/offset", np.array([0.3, 2, 2, 1.6], np.float32)), "not after onset"),
    ]
    for k, (edit, message) in enumerate(cases):
        with pytest.raises(StrongLabelError, match=message):
            AudioSetHDF5(broken(f"b{k}.h5", edit), C, clip_samples=L)
    late = broken("late.h5", replace("events/offset", np.array([0.75, 1.95, 2.01, 1.6], "f4")))
    with pytest.raises(EventPastEndError, match="late.h5: event 2: event 0-2.01 s reaches past"):
        AudioSetHDF5(late, C, clip_samples=L)
    assert issubclass(EventTimeError, StrongLabelError) and issubclass(StrongLabelError, ValueError)


def test_write_strong_replaces_what_a_file_holds(tmp_path):
    write_file(tmp_path / "a.h5", ROWS, [True, True, True, True])
    with h5py.File(tmp_path / "a.h5", "a") as f:  # a packer's finish run again after a stop
        write_strong(f, StrongLabels(np.array([True, False, False, False]), np.array([0]),
                                     np.float32([0.5]), np.float32([1.0]), np.int32([2]),
                                     np.array([True, True, False])))  # fmt: skip
        with pytest.raises(StrongLabelError, match="do not match the file's 4 rows and 3"):
            write_strong(f, StrongLabels(np.ones(3, bool), *([np.zeros(0)] * 4), np.ones(3, bool)))
    ds = AudioSetHDF5(tmp_path / "a.h5", C, clip_samples=L)
    assert ds.strong_classes.tolist() == [True, True, False]
    assert ds.events(0).tolist() == [[0.5, 1.0, 2.0]] and not ds.is_strong(1)
