"""Tagging CLI: reading any audio, windowing, EMA preference, errors and exit status."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import cfgs

from dcls_audio import tag
from dcls_audio.models.checkpoint import class_names_for

NAMES = ["tone", "noise", "click", "chirp", "hum"]
MODEL_CFG, CONV_CFG = cfgs("convnext_atto", "dcls_gauss", len(NAMES), drop_path_rate=0.0)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny checkpoint with distinct raw and EMA weights, as the trainer writes it."""
    from dcls_audio.models import build_model

    torch.manual_seed(1)
    raw = build_model(MODEL_CFG, CONV_CFG)
    torch.manual_seed(2)
    ema = build_model(MODEL_CFG, CONV_CFG)
    with torch.no_grad():  # make the head differ clearly so EMA vs raw is visible in the output
        for p in ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    torch.save(
        {
            "model": raw.state_dict(),
            "ema": ema.state_dict(),
            "config": {"model": MODEL_CFG, "conv": CONV_CFG, "seed": 0},
            "class_names": NAMES,
            "epoch": 1,
            "step": 10,
        },
        path,
    )
    return path, raw.eval(), ema.eval()


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """A mono 32 kHz wav (3 s), a stereo 44.1 kHz flac (25 s), a corrupt and an empty file."""
    d = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    sf.write(d / "mono.wav", (0.3 * rng.standard_normal(3 * 32000)).astype(np.float32), 32000)
    t = np.arange(25 * 44100) / 44100
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 1000 * t), 0.1 * np.sin(2 * np.pi * 1000 * t)], 1)
    sf.write(d / "stereo.flac", stereo.astype(np.float32), 44100)
    (d / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + rng.bytes(200))
    sf.write(d / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    return d


def test_read_audio_mixes_down_and_resamples(audio):
    wave, rate = tag.read_audio(audio / "stereo.flac")
    assert rate == 44100 and wave.dtype == np.float32
    assert abs(len(wave) - 25 * 32000) <= 1
    # The mean of the two channels is a 1 kHz sine of amplitude 0.3, now sampled at 32 kHz.
    t = np.arange(len(wave)) / 32000
    expected = 0.3 * np.sin(2 * np.pi * 1000 * t)
    mid = slice(32000, len(wave) - 32000)
    assert np.max(np.abs(wave[mid] - expected[mid])) < 2e-3


def test_split_windows_pads_last_and_short():
    w = tag.split_windows(np.ones(25 * 32000, np.float32))
    assert w.shape == (3, 320000)
    assert w[2, : 5 * 32000].eq(1).all() and w[2, 5 * 32000 :].eq(0).all()
    short = tag.split_windows(np.ones(100, np.float32))
    assert short.shape == (1, 320000) and short.sum() == 100


def test_tag_file_matches_direct_model_and_prefers_ema(ckpt, audio):
    from dcls_audio.data import LogMelFrontend

    path, raw, ema = ckpt
    tagger = tag.load_tagger(path)
    assert tagger.weights == "ema" and tagger.class_names == NAMES
    result = tag.tag_file(tagger, audio / "stereo.flac", top_k=3)
    assert result["num_windows"] == 3 and result["duration_s"] == pytest.approx(25.0, abs=1e-3)

    wave, _ = tag.read_audio(audio / "stereo.flac")
    x = torch.zeros(3 * 320000)
    x[: len(wave)] = torch.from_numpy(wave)
    with torch.no_grad():
        probs = torch.sigmoid(ema(LogMelFrontend().eval()(x.view(3, 320000))))
        raw_probs = torch.sigmoid(raw(LogMelFrontend().eval()(x.view(3, 320000))))
    mean = probs.mean(0)
    assert not torch.allclose(mean, raw_probs.mean(0), atol=1e-3)
    best = torch.argsort(mean, descending=True)[:3]
    assert [t["label"] for t in result["top"]] == [NAMES[i] for i in best]
    for t in result["top"]:
        assert t["probability"] == pytest.approx(float(mean[t["index"]]), abs=1e-5)
        assert t["max_over_windows"] == pytest.approx(float(probs[:, t["index"]].max()), abs=1e-5)
    for i, w in enumerate(result["windows"]):
        assert w["top"][0]["probability"] == pytest.approx(float(probs[i].max()), abs=1e-5)
    assert result["windows"][-1]["end_s"] == pytest.approx(25.0, abs=1e-3)


def test_cli_tags_good_files_and_names_bad_ones(ckpt, audio, capsys):
    path = ckpt[0]
    files = [audio / "mono.wav", audio / "stereo.flac", audio / "corrupt.wav", audio / "empty.wav"]
    rc = tag.main([*map(str, files), "--checkpoint", str(path), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "mono.wav" in out and "stereo.flac" in out
    assert sum(name in out for name in NAMES) >= 2
    assert "corrupt.wav" in err and "cannot read audio" in err
    assert "empty.wav" in err and "no audio samples" in err
    assert "corrupt.wav" not in out


def test_cli_fails_only_when_every_file_fails(ckpt, audio, capsys):
    rc = tag.main(
        [str(audio / "corrupt.wav"), str(audio / "missing.ogg"), "--checkpoint", str(ckpt[0])]
    )
    _, err = capsys.readouterr()
    assert rc != 0 and "corrupt.wav" in err and "missing.ogg: no such file" in err
    rc = tag.main([str(audio / "mono.wav"), "--checkpoint", str(audio / "nope.pt")])
    _, err = capsys.readouterr()
    assert rc != 0 and "nope.pt" in err


def test_cli_json_module_entry_point(ckpt, audio):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcls_audio.tag",
            str(audio / "mono.wav"),
            str(audio / "corrupt.wav"),
            "--checkpoint",
            str(ckpt[0]),
            "--json",
            "--top-k",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["weights"] == "ema"
    assert [r["file"] for r in doc["results"]] == [str(audio / "mono.wav")]
    assert doc["errors"][0]["file"] == str(audio / "corrupt.wav")
    top = doc["results"][0]["top"]
    assert len(top) == 3 and all(t["label"] in NAMES for t in top)
    assert all(0.0 <= t["probability"] <= 1.0 for t in top)
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


def test_audioset_names_fallback_for_527_outputs():
    names = class_names_for({}, 527)
    assert len(names) == 527 and names[0] == "Speech"
    assert class_names_for({"class_names": ["a", "b"]}, 2) == ["a", "b"]
    with pytest.raises(ValueError, match="class_names"):
        class_names_for({"class_names": ["a"]}, 2)
