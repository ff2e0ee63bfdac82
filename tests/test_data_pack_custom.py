"""dcls-audio-pack custom: CSV and folder-per-class packing, class list, folds, report, resume."""

import json

import h5py
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from dcls_audio.data.labels import read_class_index, read_packed_classes, write_class_index
from dcls_audio.data.waveform import float_to_int16, pad_or_truncate
from dcls_audio.datasets import pack_custom as pc
from dcls_audio.datasets.pack import main as pack_main

SR = 32000


class Crash(BaseException):
    """Not an Exception: the packer cannot take it for an unreadable file."""


def tone(freq, sr, seconds, channels=1):
    t = np.arange(int(sr * seconds)) / sr
    x = 0.4 * np.sin(2 * np.pi * freq * t)
    return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def expected(path, seconds):
    """Independent reference: mono mean, torchaudio resample, pad/crop, int16."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != SR:
        x = AF.resample(torch.from_numpy(x), sr, SR).numpy()
    return float_to_int16(pad_or_truncate(x, int(seconds * SR)))


@pytest.fixture
def corpus(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "dog1.wav", tone(300, 44100, 6.5, 2), 44100, subtype="PCM_16")
    sf.write(audio / "dog2.flac", tone(350, 16000, 3), 16000)
    sf.write(audio / "sub" / "cat1.ogg", tone(800, 22050, 5), 22050)
    sf.write(audio / "cat2.wav", tone(900, SR, 5), SR, subtype="PCM_16")
    sf.write(audio / "bird.wav", tone(3000, 48000, 2), 48000, subtype="PCM_16")
    (audio / "broken.wav").write_bytes(b"RIFF nonsense")
    (audio / "silent_label.wav").write_bytes(b"")
    csv = tmp_path / "meta.csv"
    csv.write_text(
        "filename,fold,labels,comment\n"
        "dog1.wav,1,dog,x\n"
        "dog2.flac,2,dog,x\n"
        "sub/cat1.ogg,1,cat,x\n"
        "cat2.wav,2,cat,x\n"
        "bird.wav,2,bird;dog,x\n"
        "broken.wav,1,cat,x\n"
        "gone.wav,1,dog,x\n"
        "silent_label.wav,2,,x\n"
    )
    return audio, csv, tmp_path


def test_csv_round_trip_labels_folds_rates_channels_lengths(corpus):
    audio, csv, tmp = corpus
    out = tmp / "packed" / "own.h5"
    report = pc.pack_custom(audio, out, csv, clip_seconds=5.0, workers=1, progress=False)
    assert report["written"] == 5 and report["num_classes"] == 3
    assert report["missing"] == ["gone.wav"] and report["unlabelled"] == ["silent_label.wav"]
    assert [r["file"] for r in report["unreadable"]] == ["broken.wav"]
    assert report["folds"] == {"1": 2, "2": 3}
    assert json.loads((tmp / "packed" / "own.h5.report.json").read_text())["written"] == 5
    assert not (tmp / "packed" / "own.h5.partial").exists()
    with h5py.File(out) as f:
        names = [n.decode() for n in f["audio_name"][()]]
        assert names == ["dog1.wav", "dog2.flac", "sub/cat1.ogg", "cat2.wav", "bird.wav"]
        assert f["waveform"].shape == (5, 5 * SR) and f["waveform"].dtype == np.int16
        assert int(f.attrs["sample_rate"]) == SR and float(f.attrs["clip_seconds"]) == 5.0
        assert list(f["class_names"].asstr()[()]) == ["bird", "cat", "dog"]  # sorted labels
        np.testing.assert_array_equal(f["fold"][()], [1, 2, 1, 2, 2])
        tgt = f["target"][()]
        np.testing.assert_array_equal(tgt, [[0, 0, 1], [0, 0, 1], [0, 1, 0], [0, 1, 0], [1, 0, 1]])
        for row, name in enumerate(names):
            np.testing.assert_array_equal(f["waveform"][row], expected(audio / name, 5.0))
        assert np.all(f["waveform"][1, 3 * SR + 10 :] == 0)  # 3 s clip padded with zeros
    classes = read_class_index(pc.classes_csv_path(out))
    assert classes.names == ["bird", "cat", "dog"]
    assert read_packed_classes(out).names == ["bird", "cat", "dog"]


def test_given_class_list_by_name_mid_or_index_and_unknown_label_named(corpus, tmp_path):
    audio, _, tmp = corpus
    classes = tmp / "classes.csv"
    write_class_index(classes, ["/m/dog", "/m/cat", "/m/bird", "/m/cow"], ["Dog", "Cat", "B", "C"])
    csv = tmp / "ok.csv"
    csv.write_text("dog1.wav,/m/dog\nsub/cat1.ogg,Cat\nbird.wav,2;0\n")  # no header: positional
    out = tmp / "given.h5"
    report = pc.pack_custom(audio, out, csv, classes_csv=classes, progress=False)
    assert report["num_classes"] == 4 and report["written"] == 3
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["target"][()], [[1, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]])
        assert "fold" not in f and f["waveform"].shape[1] == 10 * SR
    bad = tmp / "bad.csv"
    bad.write_text("filename,labels\ndog1.wav,Dog\ncat2.wav,Cat;Horse\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: file cat2.wav: label 'Horse' is not in"):
        pc.pack_custom(audio, tmp / "bad.h5", bad, classes_csv=classes, progress=False)
    assert not (tmp / "bad.h5").exists() and not (tmp / "bad.h5.partial").exists()


def test_folder_per_class(tmp_path):
    for cls, freq in (("rain", 100), ("wind", 200)):
        for i in range(2):
            (tmp_path / "tree" / cls).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "tree" / cls / f"{i}.flac", tone(freq + i, 16000, 1), 16000)
    out = tmp_path / "tree.h5"
    assert pack_main(["custom", "--audio-dir", str(tmp_path / "tree"), "--out", str(out),
                      "--clip-seconds", "1"]) == 0  # fmt: skip
    with h5py.File(out) as f:
        assert [n.decode() for n in f["audio_name"][()]] == [
            "rain/0.flac", "rain/1.flac", "wind/0.flac", "wind/1.flac",
        ]  # fmt: skip
        np.testing.assert_array_equal(f["target"][()].argmax(1), [0, 0, 1, 1])
        assert f["waveform"].shape == (4, SR)


def test_bad_csv_rows_are_named(tmp_path):
    (tmp_path / "a.csv").write_text("filename,labels,fold\nx.wav,dog,one\n")
    with pytest.raises(ValueError, match=r"a.csv:2: file x.wav: fold 'one' is not an integer"):
        pc.read_label_csv(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("x.wav,dog\nx.wav,cat\n")
    with pytest.raises(ValueError, match=r"b.csv:2: file x.wav already listed at line 1"):
        pc.read_label_csv(tmp_path / "b.csv")


def test_resume_after_interruption_and_parallel(corpus, monkeypatch):
    audio, csv, tmp = corpus
    ref = tmp / "ref.h5"
    pc.pack_custom(audio, ref, csv, clip_seconds=2.0, workers=2, progress=False)
    calls = []
    real = pc.load_task

    def crash_on_third(task):
        calls.append(task[1])
        if len(calls) == 3:
            raise Crash
        return real(task)

    monkeypatch.setattr("dcls_audio.datasets.common.FLUSH_EVERY", 1)  # append_row flushes
    monkeypatch.setattr(pc, "load_task", crash_on_third)
    out = tmp / "resumed.h5"
    with pytest.raises(Crash):
        pc.pack_custom(audio, out, csv, clip_seconds=2.0, progress=False)
    assert not out.exists() and (tmp / "resumed.h5.partial").exists()
    monkeypatch.setattr(pc, "load_task", real)
    pc.pack_custom(audio, out, csv, clip_seconds=2.0, progress=False)
    with h5py.File(ref) as a, h5py.File(out) as b:
        for key in ("audio_name", "waveform", "target", "fold"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
    with pytest.raises(ValueError, match="partial file was started with another"):
        monkeypatch.setattr(pc, "load_task", crash_on_third)
        calls.clear()
        with pytest.raises(Crash):
            pc.pack_custom(audio, tmp / "x.h5", csv, clip_seconds=2.0, progress=False)
        pc.pack_custom(audio, tmp / "x.h5", csv, clip_seconds=3.0, progress=False)
