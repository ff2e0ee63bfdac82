import logging
import pickle

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dcls_audio.data import CLIP_SAMPLES, SAMPLE_RATE, AudioSetHDF5
from dcls_audio.data.waveform import (
    WaveformAugment,
    float_to_int16,
    pad_or_truncate,
    roll_to_float,
    speed_perturb,
)

C = 5


def write_h5(
    path,
    n=6,
    empty=(),
    *,
    classes=C,
    length=CLIP_SAMPLES,
    wav_dtype=np.int16,
    tgt_dtype=bool,
    sr=SAMPLE_RATE,
    drop=None,
    seed=0,
):
    rng = np.random.default_rng(seed)
    wav = rng.integers(-20000, 20000, (n, length)).astype(wav_dtype)
    tgt = rng.random((n, classes)) < 0.4
    names = np.array([f"Yclip{i:05d}.wav".encode() for i in range(n)], dtype="S20")
    for i in empty:  # PANNs-style missing clip: empty name, silence, no label
        names[i], wav[i], tgt[i] = b"", 0, False
    with h5py.File(path, "w") as f:
        if sr is not None:
            f.attrs.create("sample_rate", sr, dtype=np.int32)
        data = {"audio_name": names, "waveform": wav, "target": tgt.astype(tgt_dtype)}
        for key, val in data.items():
            if key != drop:
                f.create_dataset(key, data=val)
    return wav, tgt, names


def test_eval_items_skip_empty_rows(tmp_path, caplog):
    wav, tgt, _ = write_h5(tmp_path / "a.h5", n=6, empty=(1, 4))
    with caplog.at_level(logging.WARNING):
        ds = AudioSetHDF5(tmp_path / "a.h5", num_classes=C)
    assert len(ds) == 4 and ds.num_skipped == 2
    assert sum("empty audio_name" in r.message for r in caplog.records) == 1
    for i, row in enumerate([0, 2, 3, 5]):
        x, y = ds[i]
        assert x.dtype == torch.float32 and x.shape == (CLIP_SAMPLES,)
        assert y.dtype == torch.float32 and y.shape == (C,)
        np.testing.assert_array_equal(x.numpy(), wav[row].astype(np.float64) / 32768)
        np.testing.assert_array_equal(y.numpy(), tgt[row].astype(np.float32))
    np.testing.assert_array_equal(ds.targets(), tgt[[0, 2, 3, 5]])
    with pytest.raises(IndexError):
        ds[4]


def test_several_files_concatenate(tmp_path):
    wa, ta, _ = write_h5(tmp_path / "a.h5", n=3, empty=(0,), seed=1)
    wb, tb, _ = write_h5(tmp_path / "b.h5", n=2, seed=2)
    ds = AudioSetHDF5([str(tmp_path / "a.h5"), tmp_path / "b.h5"], num_classes=C)
    assert len(ds) == 4 and ds.skipped_per_file[str(tmp_path / "a.h5")] == 1
    expect = [(wa, ta, 1), (wa, ta, 2), (wb, tb, 0), (wb, tb, 1)]
    for i, (w, t, r) in enumerate(expect):
        x, y = ds[i]
        np.testing.assert_array_equal(x.numpy(), w[r] / 32768)
        np.testing.assert_array_equal(y.numpy(), t[r])


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(drop="target"), "missing key 'target'"),
        (dict(drop="audio_name"), "missing key 'audio_name'"),
        (dict(wav_dtype=np.float32), "'waveform' has dtype float32, expected int16"),
        (dict(length=16000 * 10), r"'waveform' has shape \(2, 160000\), expected \(N, 320000\)"),
        (dict(classes=C + 1), r"'target' has shape \(2, 6\), expected \(2, 5\)"),
        (dict(tgt_dtype=np.float32), "'target' has dtype float32, expected bool"),
        (dict(sr=16000), "'sample_rate' is 16000, expected 32000"),
        (dict(sr=None), "missing attribute 'sample_rate'"),
    ],
)
def test_bad_files_raise_named_errors(tmp_path, kwargs, pattern):
    path = tmp_path / "bad.h5"
    write_h5(path, n=2, **kwargs)
    with pytest.raises((KeyError, TypeError, ValueError), match=pattern) as e:
        AudioSetHDF5(path, num_classes=C)
    assert "bad.h5" in str(e.value)


def test_sample_rate_stated_in_the_config_for_files_without_the_attribute(tmp_path):
    wav, _, _ = write_h5(tmp_path / "a.h5", n=3, sr=None)
    ds = AudioSetHDF5(tmp_path / "a.h5", num_classes=C, sample_rate=SAMPLE_RATE)
    np.testing.assert_allclose(ds[1][0].numpy(), wav[1] / 32768.0, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"a.h5: data.sample_rate is 16000, expected 32000"):
        AudioSetHDF5(tmp_path / "a.h5", num_classes=C, sample_rate=16000)
    write_h5(tmp_path / "b.h5", n=2, sr=None, length=16000 * 10)  # 10 s at 16 kHz, stated 32 kHz
    with pytest.raises(ValueError, match=r"b.h5: key 'waveform' has shape \(2, 160000\)"):
        AudioSetHDF5(tmp_path / "b.h5", num_classes=C, sample_rate=SAMPLE_RATE)
    write_h5(tmp_path / "c.h5", n=2)  # attribute 32000 but the config says otherwise
    with pytest.raises(ValueError, match=r"c.h5: attribute 'sample_rate' is 32000 but data"):
        AudioSetHDF5(tmp_path / "c.h5", num_classes=C, sample_rate=44100)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5"):
        AudioSetHDF5(tmp_path / "nope.h5", num_classes=C)


def reference_augment(raw, shift, rate, offset):
    x = np.roll(raw.astype(np.float64) / 32768, shift)
    if rate is None:
        return x
    n = len(x)
    m = int(np.ceil(n / rate))  # number of k with floor(k * rate) < n
    y = x[np.floor(np.arange(m) * rate).astype(int)]
    if m >= n:
        return y[offset : offset + n]
    out = np.zeros(n)
    out[offset : offset + m] = y
    return out


@pytest.mark.parametrize(
    "rate, offset",
    [(0.5, 123), (0.75, 0), (1.25, 777), (1.5, 5000), (0.6103515625, 204288), (1.0, 0)],
)
def test_speed_perturb_matches_reference(rate, offset):
    raw = np.random.default_rng(0).integers(-30000, 30000, CLIP_SAMPLES).astype(np.int16)
    got = speed_perturb(roll_to_float(raw, -4321), rate, offset)
    np.testing.assert_array_equal(got, reference_augment(raw, -4321, rate, offset))


def test_augment_matches_reference_and_draw_statistics():
    aug = WaveformAugment()
    raw = np.random.default_rng(1).integers(-30000, 30000, CLIP_SAMPLES).astype(np.int16)
    for s in range(6):
        got = aug(raw, np.random.default_rng(s))
        shift, rate, offset = aug.draw(np.random.default_rng(s))
        np.testing.assert_allclose(got, reference_augment(raw, shift, rate, offset), atol=0)
    draws = [aug.draw(np.random.default_rng([7, i])) for i in range(2000)]
    shifts = np.array([d[0] for d in draws])
    rates = np.array([d[1] for d in draws if d[1] is not None])
    assert abs(len(rates) / 2000 - 0.5) < 0.05
    assert rates.min() >= 0.5 and rates.max() <= 1.5 and abs(rates.mean() - 1.0) < 0.03
    assert shifts.min() >= -CLIP_SAMPLES and shifts.max() <= CLIP_SAMPLES
    assert shifts.min() < -CLIP_SAMPLES // 2 and shifts.max() > CLIP_SAMPLES // 2


def test_pad_truncate_and_int16_conversion():
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(pad_or_truncate(x, 8), [0, 1, 2, 3, 4, 0, 0, 0])
    np.testing.assert_array_equal(pad_or_truncate(x, 3), [0, 1, 2])
    q = float_to_int16(np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 0.99999, 1.5]))
    np.testing.assert_array_equal(q, [-32768, -32768, -16384, 0, 16384, 32767, 32767])


def test_train_augmentation_is_seeded_by_seed_epoch_index(tmp_path):
    write_h5(tmp_path / "a.h5", n=4)
    ds = AudioSetHDF5(tmp_path / "a.h5", num_classes=C, train=True, seed=3)
    raw, _ = ds.read_raw(2)
    a = ds[2][0]
    np.testing.assert_array_equal(ds[2][0], a)
    expect = WaveformAugment()(raw, np.random.default_rng([3, 0, 2]))
    np.testing.assert_array_equal(a.numpy(), expect)
    ds.set_epoch(1)
    assert not torch.equal(ds[2][0], a)
    ds.set_epoch(0)
    other = AudioSetHDF5(tmp_path / "a.h5", num_classes=C, train=True, seed=4)
    assert not torch.equal(other[2][0], a)
    # same items whatever the number of worker processes; the dataset pickles after use
    pickle.loads(pickle.dumps(ds))
    batches = []
    for workers in (0, 2):
        dl = DataLoader(ds, batch_size=2, num_workers=workers)
        batches.append(torch.cat([x for x, _ in dl]))
    torch.testing.assert_close(batches[0], batches[1], rtol=0, atol=0)


def test_augment_settings_reach_items_and_survive_pickling(tmp_path):
    wav, _, _ = write_h5(tmp_path / "a.h5", n=3)
    aug = WaveformAugment(speed_p=0.0)
    ds = AudioSetHDF5(tmp_path / "a.h5", num_classes=C, train=True, seed=3, augment=aug)
    ds.set_epoch(2)
    copy = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives
    assert copy.augment.speed_p == 0.0 and copy.augment.speed_range == (0.5, 1.5)
    for i in range(3):
        # speed_p = 0: every clip is the plain circular roll of its row, shift drawn first
        shift = int(
            np.random.default_rng([3, 2, i]).integers(-CLIP_SAMPLES, CLIP_SAMPLES, endpoint=True)
        )
        expect = np.roll(wav[i].astype(np.float64) / 32768, shift)
        np.testing.assert_array_equal(ds[i][0].numpy(), expect)
        np.testing.assert_array_equal(copy[i][0].numpy(), expect)
    with pytest.raises(ValueError, match="speed_p must be in"):
        WaveformAugment(speed_p=1.5)
