"""dcls-audio-tag --timeline on a mixed folder; export at the checkpoint's clip length."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from conftest import cfgs

from dcls_audio import export, tag, timeline

NAMES = ["tone", "noise", "click"]
# (name, seconds, rate, channels, format/subtype): shorter and longer than the 5-s clip
FILES = [
    ("short.wav", 2.0, 32000, 1, None),
    ("long.flac", 12.3, 44100, 2, None),
    ("sub/mid.ogg", 7.0, 48000, 2, "VORBIS"),
    ("narrow.wav", 6.0, 16000, 1, "PCM_16"),
]


def checkpoint(path, clip_seconds: float | None = 5.0):
    """A small ConvNeXt DCLS checkpoint (a run's layout) trained for ``clip_seconds`` clips."""
    from dcls_audio.models import build_model

    m, c = cfgs("convnext_atto", "dcls_gauss", len(NAMES), drop_path_rate=0.0)
    c.update(dilated_kernel_size=9, kernel_count=5)
    torch.manual_seed(0)
    net = build_model(m, c)
    config = {"model": m, "conv": c}
    if clip_seconds is not None:
        config["data"] = {"clip_seconds": clip_seconds}
    torch.save({"model": net.state_dict(), "config": config, "class_names": NAMES}, path)
    return net.eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    (d / "sub").mkdir()
    rng = np.random.default_rng(0)
    for name, seconds, rate, channels, subtype in FILES:
        x = 0.1 * rng.standard_normal((int(seconds * rate), channels)).astype(np.float32)
        sf.write(d / name, x, rate, subtype=subtype)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + rng.bytes(300))
    (d / "readme.txt").write_text("not audio")
    ckpt = d / "last.pt"  # a .pt file in the folder is no sound file: not an input
    checkpoint(ckpt)
    return d


def test_timeline_cli_on_a_mixed_folder(folder, tmp_path, capsys):
    thresholds = tmp_path / "thr.tsv"
    thresholds.write_text("default\t0.5\nclick\t0.9\n")
    out = tmp_path / "out"
    rc = tag.main(
        [str(folder), "--checkpoint", str(folder / "last.pt"), "--timeline", "--out", str(out),
         "--threshold", str(thresholds), "--median", "1.0", "--no-progress"]
    )  # fmt: skip
    stdout, err = capsys.readouterr()
    assert rc == 0
    assert "corrupt.wav" in err and "cannot read audio" in err and "readme" not in err
    assert "4 of 5 file(s) done" in stdout
    tsv = list(csv.DictReader(open(out / "events.tsv"), delimiter="\t"))
    for name, seconds, *_ in FILES:
        stem = name.split("/")[-1].rsplit(".", 1)[0]
        for suffix in (".events.csv", ".events.json", ".scores.npz", ".png"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0, stem + suffix
        npz = np.load(out / f"{stem}.scores.npz")
        assert set(npz.files) == {"scores", "times", "labels"}
        assert npz["labels"].tolist() == NAMES
        assert npz["scores"].shape == (math.ceil(seconds / 0.5), len(NAMES))
        step = np.diff(npz["times"])
        assert np.allclose(step, 0.5) and step.max() <= 0.5 and npz["times"][0] == 0.25
        assert ((npz["scores"] >= 0) & (npz["scores"] <= 1)).all()
        doc = json.loads((out / f"{stem}.events.json").read_text())
        assert doc["duration_s"] == pytest.approx(seconds, abs=1e-3) and doc["median_s"] == 1.0
        rows = list(csv.DictReader(open(out / f"{stem}.events.csv")))
        assert len(rows) == len(doc["events"])
        mine = [r for r in tsv if r["filename"] == name.split("/")[-1]]
        assert [(float(r["onset"]), r["event_label"]) for r in mine] == [
            (e["onset"], e["class"]) for e in doc["events"]
        ]
        for e in doc["events"]:
            assert 0 <= e["onset"] < e["offset"] <= seconds + 1e-6
            assert e["peak_score"] >= (0.9 if e["class"] == "click" else 0.5)
    assert not (out / "corrupt.events.csv").exists()
    with open(out / "long.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_timeline_cli_globs_and_all_failing(folder, tmp_path, capsys):
    ckpt = str(folder / "last.pt")
    out = tmp_path / "o"
    rc = tag.main([str(folder / "*.flac"), "--checkpoint", ckpt, "--timeline", "--out", str(out)])
    assert rc == 0 and sorted(p.name for p in out.iterdir())[0] == "events.tsv"
    rc = tag.main(
        [str(folder / "corrupt.wav"), str(folder / "gone.ogg"), "--checkpoint", ckpt,
         "--timeline", "--out", str(tmp_path / "none")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "corrupt.wav" in err and "gone.ogg: no such file" in err


def test_timeline_needs_out(folder, capsys):
    with pytest.raises(SystemExit):
        tag.main([str(folder / "short.wav"), "--checkpoint", "x.pt", "--timeline"])
    assert "--timeline needs --out" in capsys.readouterr().err


def test_timeline_tracks_equal_in_memory_scoring(folder):
    """The CLI path (streamed from a 44.1 kHz stereo file) equals scoring the whole signal."""
    tagger = tag.load_tagger(folder / "last.pt")
    track = timeline.score_file(tagger, folder / "long.flac", block_seconds=2.0)
    wave, _ = tag.read_audio(folder / "long.flac")
    ref = timeline.score_blocks(tagger, [wave])
    assert track.windows == ref.windows == math.ceil((12.3 - 5.0) / 0.5) + 1
    assert np.allclose(track.scores, ref.scores, atol=1e-5)


def test_export_uses_the_checkpoint_clip_length(tmp_path):
    ckpt = tmp_path / "five.pt"
    net = checkpoint(ckpt, clip_seconds=5.0)
    audio = tmp_path / "a.wav"
    sf.write(audio, np.random.default_rng(1).standard_normal(7 * 32000).astype(np.float32) * 0.1,
             32000)  # fmt: skip
    out = export.export(str(ckpt), str(tmp_path / "m.onnx"), audio=str(audio), repeats=1)
    assert out["clip_seconds"] == 5.0 and out["input"].startswith("logmel (1, 128, 501)")
    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [1, 128, 501]
    assert out["onnx_rel_err"] <= 1e-4
    # the waveform graph takes 5 s of samples and the frame-level graph gives 3 columns
    out = export.export(str(ckpt), str(tmp_path / "w.onnx"), waveform=True, frames=True, repeats=1)
    assert out["input"].startswith("waveform (160000,)") and out["output"].startswith(
        "logits (3, 3)"
    )
    assert out["onnx_rel_err"] <= 1e-4
    import onnxruntime as ort

    x = export.test_signal(5.0)[None] * 0.7
    got = ort.InferenceSession(str(tmp_path / "w.onnx")).run(None, {"waveform": x.numpy()})[0]
    with torch.no_grad():
        from dcls_audio.data import LogMelFrontend

        want = timeline.frame_logits(net, LogMelFrontend().eval()(x)).numpy()
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()


def test_export_defaults_to_ten_seconds_without_a_clip_length(tmp_path):
    ckpt = tmp_path / "old.pt"
    checkpoint(ckpt, clip_seconds=None)
    out = export.export(str(ckpt), torchscript_path=str(tmp_path / "m.ts"), repeats=1)
    assert out["clip_seconds"] == 10.0 and "(1, 128, 1001)" in out["input"]


@pytest.mark.slow
def test_timeline_eval_end_to_end(tmp_path):
    """Generated splits, five methods, settings tuned on one split, scored on the other."""
    pytest.importorskip("sed_eval")
    pytest.importorskip("sed_scores_eval")
    from dcls_audio import timeline_eval
    from dcls_audio.datasets.sounds import CLASS_NAMES
    from dcls_audio.models import build_model

    m, c = cfgs("convnext_atto", "dcls_gauss", len(CLASS_NAMES), drop_path_rate=0.0)
    c.update(dilated_kernel_size=7, kernel_count=5)
    torch.manual_seed(0)
    ckpt = tmp_path / "demo.pt"
    config = {"model": m, "conv": c, "data": {"clip_seconds": 5.0}}
    torch.save(
        {"model": build_model(m, c).state_dict(), "config": config, "class_names": CLASS_NAMES},
        ckpt,
    )
    grid = {
        "threshold": (0.3, 0.5),
        "median": (0.0, 1.0),
        "min_duration": (0.0,),
        "min_gap": (0.0,),
    }
    doc = timeline_eval.evaluate(
        str(ckpt), tmp_path / "long", tune_files=1, test_files=2, minutes=0.75,
        cache=tmp_path / "cache", grid=grid,
    )  # fmt: skip
    assert set(doc["methods"]) == set(timeline_eval.METHODS)
    for row in doc["methods"].values():
        assert row["settings"]["threshold"] in grid["threshold"]
        assert 0 <= row["f1"] <= 1 and 0 <= row["segment_ap"] <= 1
    assert doc["test_audio_s"] == pytest.approx(90.0)
    assert (tmp_path / "cache" / "test" / "timeline.npz").is_file()
    tracks, _ = timeline_eval.score_set(
        tag.load_tagger(ckpt), tmp_path / "long" / "test", ["file", "windows"],
        tmp_path / "cache" / "test",
    )  # fmt: skip
    for name, track in tracks["file"].items():  # today's outputs: constant, and 5-s steps
        assert track.shape == (90, len(CLASS_NAMES)) and np.ptp(track, axis=0).max() == 0
        assert np.array_equal(tracks["windows"][name][10:20], tracks["windows"][name][[10] * 10])
    assert "| timeline |" in timeline_eval.table(doc)


# a DCASE table with events of one class that overlap or touch in one file (real references do)
TABLE = """filename\tonset\toffset\tevent_label
a.wav\t1.0\t4.0\ttone
a.wav\t3.0\t6.0\ttone
a.wav\t6.0\t7.5\ttone
a.wav\t2.0\t5.0\tnoise
a.wav\t9.0\t10.0\ttone
b.wav\t0.5\t2.0\tnoise
b.wav\t1.0\t1.5\tnoise
b.wav\t3.0\t4.0\tclick
"""


def test_overlapping_reference_events_are_merged(tmp_path):
    from dcls_audio.datasets.longfiles import Annotation, merge_overlaps, read_annotations

    (tmp_path / "annotations.tsv").write_text(TABLE)
    merged, counts = merge_overlaps(read_annotations(tmp_path / "annotations.tsv"))
    assert counts == {"a.wav": 2, "b.wav": 1}
    assert merged["a.wav"] == [Annotation(1.0, 7.5, "tone"), Annotation(2.0, 5.0, "noise"),
                               Annotation(9.0, 10.0, "tone")]  # fmt: skip
    assert merged["b.wav"] == [Annotation(0.5, 2.0, "noise"), Annotation(3.0, 4.0, "click")]
    assert merge_overlaps(merged) == (merged, {})


def test_timeline_eval_on_a_table_with_overlapping_events(tmp_path, capsys):
    """sed_scores_eval asserts on connected events of one class: they are merged first."""
    pytest.importorskip("sed_eval")
    pytest.importorskip("sed_scores_eval")
    from dcls_audio import timeline_eval

    checkpoint(tmp_path / "m.pt")
    rng = np.random.default_rng(1)
    for split in ("tune", "test"):
        d = tmp_path / "data" / split
        d.mkdir(parents=True)
        for name in ("a.wav", "b.wav"):
            sf.write(d / name, 0.1 * rng.standard_normal(12 * 32000).astype(np.float32), 32000)
        (d / "annotations.tsv").write_text(TABLE)
        (d / "durations.tsv").write_text("filename\tduration\na.wav\t12.0\nb.wav\t12.0\n")
    grid = {"threshold": (0.5,), "median": (0.0,), "min_duration": (0.0,), "min_gap": (0.0,)}
    doc = timeline_eval.evaluate(
        str(tmp_path / "m.pt"), tmp_path / "data", methods=["timeline", "file"], grid=grid
    )
    assert doc["test_merged_events"] == doc["tune_merged_events"] == {"a.wav": 2, "b.wav": 1}
    assert all(0 <= r["segment_ap"] <= 1 for r in doc["methods"].values())
    out = capsys.readouterr().out
    assert "test: merged 3 overlapping or touching same-class reference events in 2 files: " \
        "a.wav (2), b.wav (1)" in out  # fmt: skip
