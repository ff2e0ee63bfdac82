import json

import h5py
import numpy as np
import pytest
import soundfile as sf

from dcls_audio.data import CLIP_SAMPLES, AudioSetHDF5
from dcls_audio.data.labels import load_class_labels, read_class_index, write_class_index
from dcls_audio.datasets import common
from dcls_audio.datasets.pack import match_files, pack, read_segments

MIDS = ["/m/09x0r", "/m/04rlf", "/t/dd00041", "/m/0jbk", "/g/122z_qxw"]
NAMES = ["Speech", "Music", "Noise, loud", "Animal", "Firecracker"]
SR = 32000


class Crash(BaseException):
    """Not an Exception, so the packer cannot mistake it for an unreadable file."""


def sine(freq, sr, seconds, channels=1, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture
def corpus(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    exact = (rng.uniform(-0.9, 0.9, CLIP_SAMPLES) * 32768).round() / 32768
    sf.write(audio / "Yaaaaaaaaaaa.wav", exact, SR, subtype="PCM_16")  # PANNs name, exact PCM
    sf.write(audio / "sub" / "bbbbbbbbbbb_30.000.flac", sine(1000, 44100, 12, 2), 44100)
    sf.write(audio / "Yc_c_c_c_c_c_0.000_10.000.ogg", sine(440, 16000, 4), 16000)
    sf.write(audio / "ddddddddddd.mp3", sine(300, SR, 10), SR, format="MP3")
    (audio / "Yeeeeeeeeeee.wav").write_bytes(b"not audio at all")
    (audio / "notes.txt").write_text("ignored")
    labels = tmp_path / "labels.csv"
    write_class_index(labels, MIDS, NAMES)
    seg = tmp_path / "segments.csv"
    seg.write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=6, num_segs=6, num_unique_labels=5, num_positive_labels=8\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaaaaaaaaaa, 0.000, 10.000, "/m/09x0r,/m/04rlf"\n'
        'fffffffffff, 30.000, 40.000, "/m/0jbk"\n'
        'bbbbbbbbbbb, 30.000, 40.000, "/t/dd00041"\n'
        'c_c_c_c_c_c, 0.000, 10.000, "/m/0jbk,/g/122z_qxw,/m/09x0r"\n'
        'eeeeeeeeeee, 0.000, 10.000, "/m/04rlf"\n'
        'ddddddddddd, 10.000, 20.000, "/g/122z_qxw"\n'
    )
    return {
        "audio": audio,
        "labels": labels,
        "segments": seg,
        "exact": exact,
        "out": tmp_path / "out" / "train.h5",
    }


def test_labels_files():
    names = load_class_labels()
    idx = read_class_index()
    assert len(names) == 527 and len(set(idx.mids)) == 527
    assert (idx.mids[0], names[0]) == ("/m/09x0r", "Speech")
    assert (idx.mids[137], names[137]) == ("/m/04rlf", "Music")
    assert names[1] == "Male speech, man speaking"
    assert (idx.mids[526], names[526]) == ("/m/07hvw1", "Field recording")


def test_pack_end_to_end(corpus):
    corpus["out"].parent.mkdir()
    report = pack(corpus["audio"], corpus["segments"], corpus["out"], corpus["labels"])
    assert report["missing"] == ["fffffffffff"]
    assert [u["ytid"] for u in report["unreadable"]] == ["eeeeeeeeeee"]
    assert report["written"] == 4
    on_disk = json.loads((corpus["out"].parent / "train.h5.report.json").read_text())
    assert on_disk["missing"] == ["fffffffffff"]
    assert not (corpus["out"].parent / "train.h5.partial").exists()
    with h5py.File(corpus["out"]) as f:
        names = [n.decode() for n in f["audio_name"][()]]
        tgt = f["target"][()]
        assert f.attrs["sample_rate"] == SR
    assert names == ["aaaaaaaaaaa", "bbbbbbbbbbb", "c_c_c_c_c_c", "ddddddddddd"]
    np.testing.assert_array_equal(
        tgt, [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 1, 1], [0, 0, 0, 0, 1]]
    )
    ds = AudioSetHDF5(corpus["out"], num_classes=5)
    np.testing.assert_array_equal(ds[0][0].numpy(), corpus["exact"].astype(np.float32))
    # 44.1 kHz stereo 12 s -> 32 kHz mono 10 s, same 1 kHz tone
    x = ds[1][0].numpy()
    ref = sine(1000, SR, 10)
    assert np.abs(x[1000:-1000] - ref[1000:-1000]).max() < 2e-3
    # 16 kHz 4 s -> 32 kHz, zero-padded to 10 s
    y = ds[2][0].numpy()
    assert np.abs(y[1000:120000] - sine(440, SR, 4)[1000:120000]).max() < 2e-2
    assert np.all(y[128500:] == 0)
    z = ds[3][0].numpy()  # lossy mp3: compare spectra, not samples
    spec = np.abs(np.fft.rfft(z))
    assert abs(np.argmax(spec) * SR / len(z) - 300) < 1 and 0.3 < np.abs(z).max() < 0.7


def test_file_matching_rule(tmp_path):
    for name in [
        "Yabc.wav",
        "abc_30.000.wav",
        "xyz_1.flac",
        "Yx_y_10.000_20.000.ogg",
        "Yother.wav",
        "xyz.flac",
    ]:
        (tmp_path / name).write_bytes(b"")
    found, dups = match_files(tmp_path, {"abc", "xyz", "x_y", "Yother", "missing"})
    assert found["abc"].name == "Yabc.wav"  # exact match wins over "abc_30.000"
    assert found["xyz"].name == "xyz.flac"
    assert found["x_y"].name == "Yx_y_10.000_20.000.ogg"
    assert found["Yother"].name == "Yother.wav"  # an id starting with "Y" still matches as is
    assert "missing" not in found
    assert {d["file"].split("/")[-1] for d in dups} == {"abc_30.000.wav", "xyz_1.flac"}


def test_unknown_mid_names_csv_row(corpus):
    bad = corpus["segments"].with_name("bad.csv")
    bad.write_text('# a\n# b\n# c\nxxxxxxxxxxx, 0.0, 10.0, "/m/09x0r,/m/nope"\n')
    mid_index = read_class_index(corpus["labels"]).mid_to_index()
    with pytest.raises(ValueError, match=r"bad.csv:4: YTID xxxxxxxxxxx: label mids \['/m/nope'\]"):
        read_segments(bad, mid_index)
    with pytest.raises(ValueError, match="bad.csv:4"):
        pack(corpus["audio"], bad, corpus["out"], corpus["labels"])


def test_resume_after_interruption_and_parallel(corpus, monkeypatch):
    corpus["out"].parent.mkdir()
    calls, resumed = [], False
    real = common.load_clip

    def flaky(path):
        calls.append(path)
        if len(calls) == 3 and not resumed:
            raise Crash  # simulated crash after two rows
        return real(path)

    monkeypatch.setattr(common, "load_clip", flaky)
    monkeypatch.setattr(common, "FLUSH_EVERY", 1)
    with pytest.raises(Crash):
        pack(corpus["audio"], corpus["segments"], corpus["out"], corpus["labels"])
    assert not corpus["out"].exists()
    partial = corpus["out"].with_name("train.h5.partial")
    with h5py.File(partial) as f:
        assert f.attrs["rows_done"] == 2
    calls.clear()
    resumed = True
    report = pack(corpus["audio"], corpus["segments"], corpus["out"], corpus["labels"])
    assert report["written"] == 4 and len(calls) == 3  # c, e (unreadable) and d only
    monkeypatch.undo()
    fresh = corpus["out"].with_name("fresh.h5")
    pack(corpus["audio"], corpus["segments"], fresh, corpus["labels"], workers=2)
    with h5py.File(corpus["out"]) as a, h5py.File(fresh) as b:
        for key in ("audio_name", "waveform", "target"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
