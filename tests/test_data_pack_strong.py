"""Packing strong labels: DCASE tables (pack custom --events), AudioSet-strong (pack audioset
--strong), the long-file generator's tables; every named error, merging, unknown labels."""

import json

import h5py
import numpy as np
import pytest
import soundfile as sf

from dcls_audio.data import AudioSetHDF5
from dcls_audio.data.labels import write_class_index
from dcls_audio.data.strong import EventPastEndError, EventTimeError
from dcls_audio.datasets import pack_custom as pc
from dcls_audio.datasets.longfiles import merge_overlaps, read_annotations, write_long_set
from dcls_audio.datasets.pack import main as pack_main
from dcls_audio.datasets.pack import pack
from dcls_audio.datasets.sounds import CLASS_MIDS, CLASS_NAMES
from dcls_audio.datasets.strong_tables import MissingClipError, TableFormatError

SR = 32000
HEADER = "filename\tonset\toffset\tevent_label\n"


def tone(seconds, freq=440.0):
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * np.sin(2 * np.pi * freq * t)


def events_of(path):
    """{audio_name: [(onset, offset, class), ...]}, strong flags, strong_classes of a file."""
    with h5py.File(path) as f:
        names = [n.decode() for n in f["audio_name"][()]]
        g = f["events"]
        out = {n: [] for n in names}
        columns = (g[k][()].tolist() for k in ("row", "onset", "offset", "label"))
        for r, on, off, c in zip(*columns, strict=True):
            out[names[r]].append((round(on, 4), round(off, 4), c))
        flags = dict(zip(names, f["strong"][()].tolist(), strict=True))
        return out, flags, f["strong_classes"][()].tolist()


@pytest.fixture
def folder(tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    for name in ("a.wav", "b.wav", "sub/c.wav", "d.wav"):
        sf.write(audio / name, tone(2.0), SR, subtype="PCM_16")
    classes = tmp_path / "classes.csv"
    write_class_index(classes, ["/x/dog", "/x/cat", "/x/bird"], ["dog", "cat", "bird"])
    table = tmp_path / "t.tsv"
    table.write_text(
        HEADER + "a.wav\t0.1\t0.5\tdog\n"
        "a.wav\t0.4\t0.9\tdog\n"  # overlaps the first: merged
        "a.wav\t0.9\t1.2\tdog\n"  # touches: merged
        "a.wav\t1.0\t1.5\tcat\n"
        "b.wav\t0.0\t2.0005\tbird\n"  # 0.5 ms past the end: cut at 2 s
        "b.wav\t0.5\t0.7\thorse\n"  # not in the class list: counted
        "sub/c.wav\t\t\t\n"  # listed without events: all-negative
    )
    return audio, classes, table, tmp_path


def test_dcase_table_packs_strong_rows(folder):
    audio, classes, table, tmp = folder
    out = tmp / "s.h5"
    report = pc.pack_custom(audio, out, None, classes, clip_seconds=2.0, progress=False,
                            events_tsv=table)  # fmt: skip
    assert report["written"] == 3 and report["unlabelled"] == [] and report["missing"] == []
    st = report["strong"]
    assert (st["strong_rows"], st["events"], st["merged"]) == (3, 3, 2)
    assert st["unknown_labels"] == {"horse": 1} and st["unknown_label_events"] == 1
    assert json.loads((tmp / "s.h5.report.json").read_text())["strong"] == st
    events, strong, strong_classes = events_of(out)
    assert events == {"a.wav": [(0.1, 1.2, 0), (1.0, 1.5, 1)], "b.wav": [(0.0, 2.0, 2)],
                      "sub/c.wav": []}  # fmt: skip
    assert strong == {"a.wav": True, "b.wav": True, "sub/c.wav": True}
    assert strong_classes == [True, True, True]
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["target"][()], [[1, 1, 0], [0, 0, 1], [0, 0, 0]])
    ds = AudioSetHDF5(out, 3, clip_samples=2 * SR)
    assert ds.has_strong and len(ds) == 3 and ds.is_strong(2) and ds.events(2).shape == (0, 3)
    _, target, ev, is_strong = ds[0]
    assert bool(is_strong) and target.tolist() == [1, 1, 0]
    np.testing.assert_allclose(ev[:2].numpy(), [[0.1, 1.2, 0], [1.0, 1.5, 1]], atol=1e-6)
    # without a class list every event label is a class (sorted): horse is one
    report = pc.pack_custom(audio, tmp / "own.h5", events_tsv=table, clip_seconds=2.0,
                            progress=False)  # fmt: skip
    assert report["num_classes"] == 4 and report["strong"]["unknown_label_events"] == 0
    assert events_of(tmp / "own.h5")[0]["b.wav"] == [(0.0, 2.0, 0), (0.5, 0.7, 3)]


def test_csv_with_events_keeps_other_files_weak_only(folder, capsys):
    audio, classes, table, tmp = folder
    csv = tmp / "meta.csv"
    csv.write_text("filename,labels,fold\na.wav,bird,1\nb.wav,,1\nsub/c.wav,,2\nd.wav,cat,2\n")
    out = tmp / "mixed.h5"
    args = ["custom", "--audio-dir", str(audio), "--csv", str(csv), "--classes", str(classes),
            "--events", str(table), "--clip-seconds", "2", "--out", str(out)]  # fmt: skip
    assert pack_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["strong"]["strong_rows"] == 3 and printed["strong"]["unknown_labels"] == 1
    events, strong, _ = events_of(out)
    assert strong == {"a.wav": True, "b.wav": True, "sub/c.wav": True, "d.wav": False}
    assert events["d.wav"] == [] and len(events["a.wav"]) == 2
    with h5py.File(out) as f:  # CSV labels joined by the events' classes
        np.testing.assert_array_equal(f["target"][()], [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 0]])
        np.testing.assert_array_equal(f["fold"][()], [1, 1, 2, 2])
    short = tmp / "short.csv"
    short.write_text("filename,labels\na.wav,dog\nb.wav,bird\n")
    with pytest.raises(MissingClipError, match=r"t.tsv:8: sub/c.wav is not in the labels CSV"):
        pc.pack_custom(audio, tmp / "x.h5", short, classes, 2.0, events_tsv=table, progress=False)
    assert not (tmp / "x.h5").exists() and not (tmp / "x.h5.partial").exists()


class Crash(BaseException):
    """Not an Exception: the packer cannot take it for an unreadable file."""


def test_interrupted_packing_resumes_to_the_same_strong_labels(folder, monkeypatch):
    audio, classes, table, tmp = folder
    pc.pack_custom(audio, tmp / "ref.h5", None, classes, 2.0, events_tsv=table, progress=False)
    real, calls = pc.load_task, []

    def crash_on_second(task):
        calls.append(task)
        if len(calls) == 2:
            raise Crash
        return real(task)

    monkeypatch.setattr("dcls_audio.datasets.common.FLUSH_EVERY", 1)
    monkeypatch.setattr(pc, "load_task", crash_on_second)
    out = tmp / "resumed.h5"
    with pytest.raises(Crash):
        pc.pack_custom(audio, out, None, classes, 2.0, events_tsv=table, progress=False)
    with h5py.File(tmp / "resumed.h5.partial") as f:
        assert "strong" not in f and f.attrs["rows_done"] == 1  # written when the rows are
    monkeypatch.setattr(pc, "load_task", real)
    pc.pack_custom(audio, out, None, classes, 2.0, events_tsv=table, progress=False)
    assert events_of(out) == events_of(tmp / "ref.h5")


@pytest.mark.parametrize(
    "rows,error,message",
    [
        ("a.wav\t0.5\t0.5\tdog\n", EventTimeError, r"t.tsv:2: a.wav: offset 0.5 s is not after"),
        ("a.wav\t0.2\t0.1\tdog\n", EventTimeError, r"t.tsv:2: a.wav: offset 0.1 s is not after"),
        ("a.wav\t-0.1\t0.1\tdog\n", EventTimeError, r"t.tsv:2: a.wav: onset -0.1 s is before"),
        ("a.wav\t0\t1\tdog\nb.wav\t1.5\t2.01\tdog\n", EventPastEndError,
         r"t.tsv:3: b.wav: event 1.5-2.01 s reaches past the clip's end at 2 s"),
        ("a.wav\t2.0\t2.0005\tdog\n", EventPastEndError, r"t.tsv:2: a.wav: event 2-2.0005 s"),
        ("a.wav\t0\t1\tdog\ngone.wav\t0\t1\tdog\nx/y.wav\t\t\t\n", MissingClipError,
         r"t.tsv:3: gone.wav is not in the audio folder .* \(and 1 more\)"),
        ("a.wav\t0\t\tdog\n", TableFormatError, r"t.tsv:2: a.wav: .* set only in part"),
        ("a.wav\t0\tone\tdog\n", TableFormatError, r"t.tsv:2: a.wav: times '0', 'one' are not"),
        ("\t0\t1\tdog\n", TableFormatError, r"t.tsv:2: empty filename"),
    ],
)  # fmt: skip
def test_dcase_table_errors_name_the_line(folder, rows, error, message):
    audio, classes, _, tmp = folder
    (tmp / "t.tsv").write_text(HEADER + rows)
    with pytest.raises(error, match=message):
        pc.pack_custom(audio, tmp / "e.h5", None, classes, 2.0, events_tsv=tmp / "t.tsv",
                       progress=False)  # fmt: skip
    assert not (tmp / "e.h5.partial").exists()


def test_bad_header_and_cli_error(folder, capsys):
    audio, _, _, tmp = folder
    (tmp / "h.tsv").write_text("filename\tstart\tend\tlabel\na.wav\t0\t1\tdog\n")
    with pytest.raises(TableFormatError, match=r"h.tsv:1: header .* lacks \['onset', 'offset'"):
        pc.pack_custom(audio, tmp / "e.h5", events_tsv=tmp / "h.tsv", progress=False)
    rc = pack_main(["custom", "--audio-dir", str(audio), "--events", str(tmp / "h.tsv"),
                    "--out", str(tmp / "e.h5")])  # fmt: skip
    assert rc == 2 and "h.tsv:1: header" in capsys.readouterr().err


def test_long_file_tables_pack(tmp_path):
    info = write_long_set(tmp_path / "long", files=2, minutes=0.25, seed=0)
    assert info["events"] > 2
    classes = tmp_path / "classes.csv"
    write_class_index(classes, CLASS_MIDS, CLASS_NAMES)
    out = tmp_path / "long.h5"
    args = ["custom", "--audio-dir", str(tmp_path / "long"), "--events",
            str(tmp_path / "long" / "annotations.tsv"), "--classes", str(classes),
            "--clip-seconds", "15", "--out", str(out)]  # fmt: skip
    assert pack_main(args) == 0
    events, strong, _ = events_of(out)
    refs, _ = merge_overlaps(read_annotations(tmp_path / "long" / "annotations.tsv"))
    assert set(strong) == set(refs) and all(strong.values())
    for name, anns in refs.items():
        want = sorted((a.onset, a.offset, CLASS_NAMES.index(a.label)) for a in anns)
        np.testing.assert_allclose(sorted(events[name]), want, atol=1e-4)
    ds = AudioSetHDF5(out, len(CLASS_NAMES), clip_samples=15 * SR, train=True)
    assert ds.has_strong and len(ds[1]) == 4


# ---- AudioSet-strong ----------------------------------------------------------------------
MIDS = ["/m/09x0r", "/m/04rlf", "/t/dd00041", "/m/0jbk", "/g/122z_qxw"]
STRONG_HEADER = "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
STRONG_ROWS = (
    "aaaaaaaaaaa_0\t0.5\t2.0\t/m/09x0r\n"
    "aaaaaaaaaaa_0\t1.5\t3.0\t/m/09x0r\n"  # overlaps: merged
    "aaaaaaaaaaa_0\t4.0\t10.0005\t/m/04rlf\n"  # cut at 10 s
    "aaaaaaaaaaa_0\t5.0\t6.0\t/m/0zzzz\n"  # a MID outside the class list: counted
    "bbbbbbbbbbb_30000\t0.0\t1.0\t/m/0jbk\n"
    "c_c_c_c_c_c_0\t1.0\t2.0\t/t/dd00041\n"  # a YTID with "_"
    "ddddddddddd_10000\t1.0\t2.0\t/m/0jbk\n"  # audio missing: not packed
)


@pytest.fixture
def audioset(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    for name in (
        "Yaaaaaaaaaaa.wav",
        "bbbbbbbbbbb_30.000.wav",
        "c_c_c_c_c_c.wav",
        "fffffffffff.wav",
    ):
        sf.write(audio / name, tone(1.0), SR, subtype="PCM_16")
    labels = tmp_path / "labels.csv"
    write_class_index(labels, MIDS, ["Speech", "Music", "Noise", "Animal", "Firecracker"])
    seg = tmp_path / "segments.csv"
    seg.write_text(
        "# a\n# b\n# YTID, start_seconds, end_seconds, positive_labels\n"
        'aaaaaaaaaaa, 0.000, 10.000, "/m/09x0r,/m/04rlf"\n'
        'bbbbbbbbbbb, 30.000, 40.000, "/t/dd00041"\n'
        'c_c_c_c_c_c, 0.000, 10.000, "/m/0jbk"\n'
        'ddddddddddd, 10.000, 20.000, "/g/122z_qxw"\n'
        'fffffffffff, 0.000, 10.000, "/m/04rlf"\n'
    )
    strong = tmp_path / "strong.tsv"
    strong.write_text(STRONG_HEADER + STRONG_ROWS)
    return audio, labels, seg, strong, tmp_path


def test_audioset_strong_table_packs(audioset):
    audio, labels, seg, strong, tmp = audioset
    out = tmp / "as.h5"
    report = pack(audio, seg, out, labels, strong_tsv=strong)
    assert report["written"] == 4 and report["missing"] == ["ddddddddddd"]
    st = report["strong"]
    assert (st["strong_rows"], st["events"], st["merged"], st["outside_pack"]) == (3, 4, 1, 0)
    assert st["unknown_labels"] == {"/m/0zzzz": 1} and st["not_packed"] == ["ddddddddddd_10000"]
    events, flags, strong_classes = events_of(out)
    assert events == {
        "aaaaaaaaaaa": [(0.5, 3.0, 0), (4.0, 10.0, 1)],
        "bbbbbbbbbbb": [(0.0, 1.0, 3)],
        "c_c_c_c_c_c": [(1.0, 2.0, 2)],
        "fffffffffff": [],
    }
    assert flags == {"aaaaaaaaaaa": True, "bbbbbbbbbbb": True, "c_c_c_c_c_c": True,
                     "fffffffffff": False}  # fmt: skip
    assert strong_classes == [True, True, True, True, False]  # the MIDs the table uses
    with h5py.File(out) as f:  # weak targets stay the segments CSV's
        np.testing.assert_array_equal(f["target"][0], [1, 1, 0, 0, 0])
    ds = AudioSetHDF5(out, 5)
    assert ds.has_strong and ds.strong_classes.tolist() == strong_classes
    assert not bool(ds[3][3]) and bool(ds[0][3])
    vocab = tmp / "mid_to_display_name.tsv"
    vocab.write_text("/m/09x0r\tSpeech\n/g/122z_qxw\tFirecracker\n/m/0zzzz\tOther\n")
    pack(audio, seg, tmp / "v.h5", labels, strong_tsv=strong, strong_vocabulary=vocab)
    assert events_of(tmp / "v.h5")[2] == [True, False, False, False, True]


def test_audioset_segments_outside_the_pack(audioset, capsys):
    audio, labels, seg, strong, tmp = audioset
    strong.write_text(STRONG_HEADER + STRONG_ROWS + "eeeeeeeeeee_0\t0\t1\t/m/0jbk\n"
                      "bbbbbbbbbbb_20000\t0\t1\t/m/0jbk\n")  # fmt: skip
    with pytest.raises(
        MissingClipError,
        match=r"strong.tsv:9: segment eeeeeeeeeee_0 is not in the "
        r"pack: YTID eeeeeeeeeee is not in the segments CSV \(2 table segments",
    ):
        pack(audio, seg, tmp / "e.h5", labels, strong_tsv=strong)  # fmt: skip
    assert not (tmp / "e.h5").exists() and not (tmp / "e.h5.partial").exists()
    strong.write_text(STRONG_HEADER + "bbbbbbbbbbb_20000\t0\t1\t/m/0jbk\n")
    with pytest.raises(
        MissingClipError, match=r"strong.tsv:2: .*starts bbbbbbbbbbb at 30 s, not 20"
    ):
        pack(audio, seg, tmp / "e.h5", labels, strong_tsv=strong)
    strong.write_text(STRONG_HEADER + STRONG_ROWS + "eeeeeeeeeee_0\t0\t1\t/m/0jbk\n")
    args = ["audioset", "--audio-dir", str(audio), "--segments", str(seg), "--labels",
            str(labels), "--strong", str(strong), "--strong-outside", "skip", "--out",
            str(tmp / "s.h5")]  # fmt: skip
    assert pack_main(args) == 0
    printed = json.loads(capsys.readouterr().out)["strong"]
    assert printed["outside_pack"] == 1 and printed["strong_rows"] == 3
    report = json.loads((tmp / "s.h5.report.json").read_text())["strong"]
    assert report["outside_pack_first"] == ["eeeeeeeeeee_0"]


@pytest.mark.parametrize(
    "rows,error,message",
    [
        ("aaaaaaaaaaa\t0\t1\t/m/09x0r\n", TableFormatError, r"strong.tsv:2: segment_id "
         r"'aaaaaaaaaaa' is not <YTID>_<start ms>"),
        ("aaaaaaaaaaa_0\t3\t1\t/m/09x0r\n", EventTimeError, r"strong.tsv:2: aaaaaaaaaaa_0: offset"),
        ("aaaaaaaaaaa_0\t3\t10.01\t/m/09x0r\n", EventPastEndError, r"strong.tsv:2: .* past"),
    ],
)  # fmt: skip
def test_audioset_table_errors_name_the_line(audioset, rows, error, message):
    audio, labels, seg, strong, tmp = audioset
    strong.write_text(STRONG_HEADER + rows)
    with pytest.raises(error, match=message):
        pack(audio, seg, tmp / "e.h5", labels, strong_tsv=strong)
    (tmp / "v.tsv").write_text("mid\tname\n/m/09x0r\tSpeech\nSpeech\t/m/09x0r\n")
    strong.write_text(STRONG_HEADER + STRONG_ROWS)
    with pytest.raises(TableFormatError, match=r"v.tsv:3: 'Speech' is not a MID"):
        pack(audio, seg, tmp / "e.h5", labels, strong_tsv=strong, strong_vocabulary=tmp / "v.tsv")
