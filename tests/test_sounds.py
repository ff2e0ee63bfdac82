import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import h5py
import numpy as np
import pytest

from dcls_audio.data import AudioSetHDF5, load_class_labels
from dcls_audio.data.labels import read_class_index
from dcls_audio.datasets.sounds import (
    CLASS_MIDS,
    CLASS_NAMES,
    NUM_CLASSES,
    background,
    compose_clip,
    draw_events,
    main,
    make_clip,
    make_sounds,
    source_event,
)

SR = 32000
ROOT = Path(__file__).resolve().parents[1]
CLIP = 2.0  # seconds: short clips keep the tests fast
N_TRAIN, N_EVAL = 100, 20


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("sounds")
    info = make_sounds(out, n_train=N_TRAIN, n_eval=N_EVAL, seed=0, clip_seconds=CLIP, workers=1)
    return out, info


def read(path):
    with h5py.File(path, "r") as f:
        return f["waveform"][()], f["target"][()], f["audio_name"][()], dict(f.attrs)


def test_layout_and_info(demo):
    out, info = demo
    assert info["num_classes"] == NUM_CLASSES == len(CLASS_NAMES) >= 18
    assert (info["n_train"], info["n_eval"], info["clip_seconds"]) == (N_TRAIN, N_EVAL, CLIP)
    assert {p.name for p in out.iterdir()} == {"train.h5", "eval.h5", "class_labels_indices.csv"}
    for split, n in (("train", N_TRAIN), ("eval", N_EVAL)):
        wav, tgt, names, attrs = read(out / f"{split}.h5")
        assert wav.dtype == np.int16 and wav.shape == (n, int(CLIP * SR))
        assert tgt.dtype == np.bool_ and tgt.shape == (n, NUM_CLASSES)
        assert names.dtype.kind == "S" and len(set(names)) == n and b"" not in set(names)
        assert int(attrs["sample_rate"]) == SR and float(attrs["clip_seconds"]) == CLIP


def test_class_index_round_trips(demo):
    out, _ = demo
    index = read_class_index(out / "class_labels_indices.csv")
    assert index.names == CLASS_NAMES and index.mids == CLASS_MIDS
    assert all(m.startswith("/snd/") for m in index.mids)
    assert load_class_labels(out / "class_labels_indices.csv") == CLASS_NAMES


def test_targets_cover_every_class_with_one_to_three_per_clip(demo):
    out, _ = demo
    tgt = np.concatenate([read(out / "train.h5")[1], read(out / "eval.h5")[1]])
    per_clip = tgt.sum(1)
    assert per_clip.min() >= 1 and per_clip.max() <= 3
    assert set(np.unique(per_clip)) == {1, 2, 3}
    assert tgt.any(0).all(), [CLASS_NAMES[c] for c in np.flatnonzero(~tgt.any(0))]


def test_clips_are_neither_silent_nor_clipped(demo):
    out, _ = demo
    wav = np.concatenate([read(out / "train.h5")[0], read(out / "eval.h5")[0]])
    x = wav.astype(np.float64) / 32768
    assert np.mean(np.abs(wav.astype(np.int32)) >= 32767) < 1e-6
    assert (np.abs(x).max(1) > 0.005).all()  # every clip holds an event above -46 dBFS peak
    rms_db = 10 * np.log10(np.mean(x**2, axis=1))
    assert rms_db.min() > -70 and rms_db.max() < -10
    assert rms_db.max() - rms_db.min() > 15  # levels vary from clip to clip


def test_same_seed_same_bytes_other_seed_other_data(demo, tmp_path):
    out, _ = demo
    for d in ("a", "b"):
        make_sounds(tmp_path / d, n_train=6, n_eval=2, seed=0, clip_seconds=CLIP, workers=1)
    make_sounds(tmp_path / "c", n_train=6, n_eval=2, seed=1, clip_seconds=CLIP, workers=1)
    for split in ("train.h5", "eval.h5", "class_labels_indices.csv"):
        assert (tmp_path / "a" / split).read_bytes() == (tmp_path / "b" / split).read_bytes()
    a, c, full = (
        read(tmp_path / "a/train.h5"),
        read(tmp_path / "c/train.h5"),
        read(out / "train.h5"),
    )
    np.testing.assert_array_equal(a[0], full[0][:6])  # a clip does not depend on the split size
    np.testing.assert_array_equal(a[1], full[1][:6])
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])


def test_worker_count_does_not_change_the_data(demo, tmp_path):
    out, _ = demo
    info = make_sounds(tmp_path, n_train=40, n_eval=20, seed=0, clip_seconds=CLIP, workers=2)
    assert info["workers"] == 2
    for split, n in (("train.h5", 40), ("eval.h5", 20)):
        two, one = read(tmp_path / split), read(out / split)
        for k in range(3):
            np.testing.assert_array_equal(two[k], one[k][:n])


def test_make_clip_interface():
    x, y = make_clip(np.random.default_rng(3), 48000)
    x2, y2 = make_clip(np.random.default_rng(3), 48000)
    assert x.dtype == np.float32 and x.shape == (48000,) and np.abs(x).max() < 1
    assert y.dtype == np.bool_ and y.shape == (NUM_CLASSES,) and 1 <= y.sum() <= 3
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)


def test_written_events_are_the_clips_sources(demo):
    out, _ = demo
    with h5py.File(out / "eval.h5") as f:
        assert f["strong"][()].all() and f["strong_classes"][()].all()
        g = f["events"]
        row, onset, offset, label = (g[k][()] for k in ("row", "onset", "offset", "label"))
        tgt = f["target"][()]
    assert np.all(np.diff(row) >= 0) and np.all(offset > onset) and offset.max() <= CLIP
    for i in range(N_EVAL):
        mine = row == i
        assert set(label[mine].tolist()) == set(np.flatnonzero(tgt[i]).tolist())
        rng = np.random.default_rng([0, 1, i])  # seed 0, split 1 (eval), clip i
        _, _, events = compose_clip(rng, int(CLIP * SR))
        np.testing.assert_allclose(events, np.stack([onset, offset, label], 1)[mine], atol=1e-6)


def test_events_are_where_the_sources_sound():
    n, outside = 10 * SR, 0
    for seed in range(6):
        x, _, events = compose_clip(np.random.default_rng(seed), n)
        rng = np.random.default_rng(seed)
        draw_events(rng, n)
        bg = background(rng, n)  # the same draws as the clip's background
        inside = np.zeros(n, dtype=bool)
        for on, off, _ in events:
            inside[round(on * SR) : round(off * SR)] = True
        out_x, out_bg = x[~inside].astype(np.float64), bg[~inside].astype(np.float64)
        # 1 unless a loud clip was scaled down
        scale = out_x @ out_bg / (out_bg @ out_bg)
        np.testing.assert_allclose(out_x, out_bg * scale, rtol=1e-5, atol=1e-9)  # background only
        for on, off, _ in events:  # each source sounds within its event (pauses may remain)
            a, b = round(on * SR), round(off * SR)
            assert np.abs(x[a:b] - bg[a:b] * scale).max() > 1e-4
        outside += len(out_x)
    assert outside > 6 * SR  # the check saw seconds of background


def test_make_clip_is_unchanged_by_its_events():
    for seed in range(3):
        x, y = make_clip(np.random.default_rng(seed), 32000)
        x2, y2, events = compose_clip(np.random.default_rng(seed), 32000)
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
        assert events.shape == (y.sum(), 3)


def dominant_hz(x):
    p = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return f[np.argmax(np.where(f > 30, p, 0))]


@pytest.mark.parametrize(
    "first, second",
    [
        ("Bowed string", "Reed (clarinet-like)"),
        ("Plucked string", "Singing"),
        ("Siren", "Alarm, phone ring"),
    ],
)
def test_pitch_is_not_the_class(first, second):
    ranges = []
    for name in (first, second):
        c = CLASS_NAMES.index(name)
        f = [dominant_hz(source_event(c, np.random.default_rng([5, c, s]), SR)) for s in range(30)]
        lo, hi = np.log2(np.percentile(f, [10, 90]))
        assert hi - lo >= 1.0, f"{name}: dominant frequencies span less than an octave"
        ranges.append((lo, hi))
    (lo1, hi1), (lo2, hi2) = ranges
    overlap = min(hi1, hi2) - max(lo1, lo2)
    assert overlap >= 0.5 * min(hi1 - lo1, hi2 - lo2), (first, second, 2.0 ** np.array(ranges))


def test_level_is_not_the_class():
    levels = defaultdict(list)
    for i in range(250):
        for ev in draw_events(np.random.default_rng([11, i]), int(CLIP * SR)):
            levels[ev.cls].append(ev.rms_db)
            assert np.abs(ev.wave).max() <= 0.7 + 1e-6  # event peaks are capped
    assert len(levels) == NUM_CLASSES
    for c, db in levels.items():
        assert max(db) - min(db) >= 15, f"{CLASS_NAMES[c]}: RMS spans {max(db) - min(db):.1f} dB"
    tonal = ["Bowed string", "Reed (clarinet-like)", "Brass", "Siren", "Singing", "Bird song"]
    lows = [min(levels[CLASS_NAMES.index(n)]) for n in tonal]
    highs = [max(levels[CLASS_NAMES.index(n)]) for n in tonal]
    assert min(highs) - max(lows) >= 15  # these classes share a 15 dB range of levels


def test_loads_through_the_hdf5_dataset(demo):
    out, _ = demo
    clip_samples = int(CLIP * SR)
    ds = AudioSetHDF5(out / "train.h5", num_classes=NUM_CLASSES, clip_samples=clip_samples)
    wav, tgt, _, _ = read(out / "train.h5")
    assert len(ds) == N_TRAIN and ds.num_skipped == 0
    x, y, events, strong = ds[7]  # the demo set is strongly labelled
    assert tuple(x.shape) == (clip_samples,) and tuple(y.shape) == (NUM_CLASSES,)
    assert bool(strong) and ds.has_strong and ds.strong_classes.all()
    n = len(ds.events(7))
    assert 1 <= n <= 3 and (events[n:, 2] == -1).all()
    assert set(events[:n, 2].long().tolist()) == set(np.flatnonzero(tgt[7]).tolist())
    np.testing.assert_allclose(x.numpy(), wav[7] / 32768, atol=1e-7)
    np.testing.assert_array_equal(y.numpy().astype(bool), tgt[7])
    train = AudioSetHDF5(
        out / "train.h5", num_classes=NUM_CLASSES, train=True, clip_samples=clip_samples
    )
    assert tuple(train[0][0].shape) == (clip_samples,)
    with pytest.raises(ValueError, match="clip_seconds"):
        AudioSetHDF5(out / "train.h5", num_classes=NUM_CLASSES)  # 10 s expected, 2 s stored


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"n_train": -1}, "n_train"),
        ({"n_eval": 1.5}, "n_eval"),
        ({"n_empty": -2}, "n_empty"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"clip_seconds": 0.5}, "clip_seconds"),
        ({"clip_seconds": "long"}, "clip_seconds"),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_sounds(tmp_path, **kwargs)
    assert not (tmp_path / "train.h5").exists()


def test_empty_rows_are_skipped_by_the_dataset(tmp_path):
    make_sounds(tmp_path, n_train=3, n_eval=1, clip_seconds=1.0, n_empty=2, workers=1)
    wav, _, names, _ = read(tmp_path / "train.h5")
    assert list(names[3:]) == [b"", b""] and not wav[3:].any()
    ds = AudioSetHDF5(tmp_path / "train.h5", num_classes=NUM_CLASSES, clip_samples=SR)
    assert len(ds) == 3 and ds.num_skipped == 2


def test_cli_main_and_module(tmp_path, capsys):
    argv = ["--out", str(tmp_path / "m"), "--train", "2", "--eval", "1", "--clip-seconds", "1"]
    assert main([*argv, "--seed", "4", "--workers", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_train"] == 2 and info["clip_seconds"] == 1.0 and "seconds" in info
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcls_audio.datasets.sounds",
            "--out",
            str(tmp_path / "s"),
            *argv[2:],
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert json.loads(r.stdout)["n_eval"] == 1 and "Warning" not in r.stderr
    assert read(tmp_path / "s/eval.h5")[0].shape == (1, SR)
