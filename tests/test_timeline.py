"""Timeline tagging: streamed reading, score tracks, events, metrics (against sed_eval)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from conftest import cfgs
from scipy import ndimage
from torch import nn

from dcls_audio import events as ev
from dcls_audio import tag, timeline
from dcls_audio.data import LogMelFrontend
from dcls_audio.data.stream import StreamResampler, expand_inputs, stream_audio
from dcls_audio.models.frames import frame_stride

SR = 32000


class EnergyModel(nn.Module):
    """A stand-in model whose logit follows loudness: the last map is the log-mel averaged over
    128-frame blocks (the zoo's time stride), the head maps it to a logit."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.0))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, (x.shape[2], 128))  # (N, 1, 1, frames // 128)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * (x.mean((2, 3)) + 1.0)  # silence -> about -5, noise -> about +7

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def energy_tagger(window_s: float = 5.0, activation: str = "sigmoid") -> tag.Tagger:
    model = EnergyModel().eval()
    return tag.Tagger(
        model, LogMelFrontend().eval(), ["loud"], torch.device("cpu"), "model",
        round(window_s * SR), activation,
    )  # fmt: skip


def burst(seconds: float, on: float, off: float, seed: int = 0) -> np.ndarray:
    """Near-silence with white noise between ``on`` and ``off`` seconds."""
    rng = np.random.default_rng(seed)
    x = 1e-4 * rng.standard_normal(int(seconds * SR)).astype(np.float32)
    x[int(on * SR) : int(off * SR)] += 0.3 * rng.standard_normal(int((off - on) * SR))
    return x


# ---------------------------------------------------------------- streamed reading


def test_stream_equals_whole_file_read(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "s.flac"
    sf.write(path, (0.2 * rng.standard_normal((44100 * 7 + 123, 2))).astype(np.float32), 44100)
    whole, rate = tag.read_audio(path)
    info, blocks = stream_audio(path, block_seconds=0.7)  # ten blocks and a tail
    parts = list(blocks)
    assert info.sample_rate == rate == 44100 and info.channels == 2 and len(parts) > 8
    got = np.concatenate(parts)
    assert len(got) == len(whole) and np.abs(got - whole).max() < 1e-5


@pytest.mark.parametrize("orig", [8000, 22050, 48000])
def test_stream_resampler_any_block_sizes(orig):
    import torchaudio

    x = np.random.default_rng(orig).standard_normal(orig * 3 + 17).astype(np.float32)
    ref = torchaudio.functional.resample(torch.from_numpy(x), orig, SR).numpy()
    r, out, i = StreamResampler(orig, SR, chunk=5000), [], 0
    for size in [1, 999, 4000, 12345, 7, 10**6]:
        out.append(r.push(x[i : i + size]))
        i += size
    got = np.concatenate([*out, r.finish()])
    assert len(got) == len(ref) and np.abs(got - ref).max() < 1e-5


def test_stream_errors_name_the_file(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1), np.float32), 16000)
    with pytest.raises(tag.AudioReadError, match="bad.wav: cannot read audio"):
        stream_audio(tmp_path / "bad.wav")
    with pytest.raises(tag.AudioReadError, match="empty.wav: contains no audio"):
        list(stream_audio(tmp_path / "empty.wav")[1])
    with pytest.raises(tag.AudioReadError, match="nope.ogg: no such file"):
        stream_audio(tmp_path / "nope.ogg")


def test_expand_inputs_folders_and_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.wav", "a.FLAC", "sub/c.ogg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    got = expand_inputs([str(tmp_path), str(tmp_path / "*.wav"), str(tmp_path / "gone.wav")])
    names = [p.replace(str(tmp_path) + "/", "") for p in got]
    assert names == ["a.FLAC", "b.wav", "sub/c.ogg", "gone.wav"]  # no repeats, no .txt


# ---------------------------------------------------------------- score tracks


def test_frames_mode_places_a_burst_and_clip_mode_smears_it():
    tagger = energy_tagger()
    wave = burst(30.0, 12.0, 15.0)
    frames = timeline.score_blocks(tagger, timeline.array_blocks(wave), hop=0.5, mode="frames")
    clip = timeline.score_blocks(tagger, timeline.array_blocks(wave), hop=0.5, mode="clip")
    assert frames.scores.shape == (60, 1) and np.allclose(np.diff(frames.times), 0.5)
    assert frames.times[0] == 0.25 and frames.duration == 30.0
    [f] = ev.detect(frames.scores, 0.5, ["loud"], 0.5)
    [c] = ev.detect(clip.scores, 0.5, ["loud"], 0.5)
    # a column covers 1.28 s: partly loud columns move the edges by less than one column
    assert 11.0 <= f.onset <= 12.0 and 15.0 <= f.offset <= 16.0, f
    # a clip score covers the whole 5-s window: the event spreads over 2.5 s more each side
    assert c.onset <= 10.0 and c.offset >= 17.5 and c.offset - c.onset >= f.offset - f.onset + 3
    assert frames.windows == math.ceil((30.0 - 5.0) / 0.5) + 1


def test_frame_spans_use_the_feature_stride():
    tagger = energy_tagger()
    scorer = timeline.WindowScorer(tagger, "frames")
    assert scorer.stride == 128 * 320
    [spans] = scorer(torch.zeros(1, 5 * SR))
    assert [(a, b) for a, b, _ in spans] == [(0, 40960), (40960, 81920), (81920, 122880)]


@pytest.mark.parametrize(("upsample", "stage", "frames"), [(4, -1, 12), (2, -2, 14)])
def test_frame_head_spans_follow_its_stage_and_upsampling(upsample, stage, frames):
    """A strongly trained model is scored on its frame head: 32 log-mel frames per frame here."""
    from dcls_audio.models import build_model

    m, c = cfgs("convnext_atto", "dsc", 3, frame_head=upsample, frame_stage=stage)
    net = build_model(m, c).eval()
    tagger = tag.Tagger(net, LogMelFrontend().eval(), list("abc"), torch.device("cpu"), "model",
                        5 * SR, "sigmoid")  # fmt: skip
    scorer = timeline.WindowScorer(tagger, "frames")
    assert scorer.stride == 32 * 320
    [spans] = scorer(torch.zeros(1, 5 * SR))  # 5 s: 3 columns x 4, or 7 stage-3 columns x 2
    assert len(spans) == frames and [b - a for a, b, _ in spans] == [10240] * frames
    assert spans[-1][1] == frames * 10240 <= 5 * SR


def test_track_is_independent_of_block_sizes_and_batches():
    tagger = energy_tagger(activation="softmax")
    wave = burst(17.3, 3.0, 6.5, seed=1)
    a = timeline.score_blocks(tagger, timeline.array_blocks(wave, 7919), hop=0.25, batch_size=3)
    b = timeline.score_blocks(tagger, [wave], hop=0.25, batch_size=64)
    assert a.scores.shape == (math.ceil(17.3 / 0.25), 1) and a.windows == b.windows
    assert np.allclose(a.scores, b.scores, atol=1e-6)
    assert np.allclose(a.scores, 1.0)  # softmax over one class


def test_short_file_is_one_padded_window():
    tagger = energy_tagger()
    t = timeline.score_blocks(tagger, [burst(1.2, 0.2, 1.0)], hop=0.5, mel=True)
    assert t.windows == 1 and t.scores.shape == (3, 1) and t.mel.shape == (128, 3)


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory):
    from dcls_audio.models import build_model

    m, c = cfgs("convnext_atto", "dcls_gauss", 4, drop_path_rate=0.0)
    torch.manual_seed(0)
    net = build_model(m, c)
    path = tmp_path_factory.mktemp("tl") / "last.pt"
    config = {"model": m, "conv": c, "data": {"clip_seconds": 5.0}}
    torch.save({"model": net.state_dict(), "config": config, "class_names": list("abcd")}, path)
    return tag.load_tagger(path)


def test_clip_mode_at_window_hop_is_todays_tagging(tiny_tagger):
    wave = burst(12.0, 2.0, 4.0)
    track = timeline.score_blocks(tiny_tagger, [wave], hop=0.5, mode="clip", window_hop=5.0)
    probs = tiny_tagger.probabilities(tag.split_windows(wave, 5 * SR)).numpy()
    which = (np.arange(24) * 0.5 + 0.25) // 5.0
    assert np.allclose(track.scores, probs[which.astype(int)], atol=1e-6)


def _family(model: str) -> tuple[dict, dict]:
    if model == "fastvit_sa24":
        kw = {"timm_name": "fastvit_sa12", "timm_kwargs": {"layers": [1, 1, 1, 1],
              "embed_dims": [16, 32, 64, 64]}}  # fmt: skip
    else:
        kw = {}
    return cfgs(model, "dcls_gauss", 3, drop_path_rate=0.0, **kw)


@pytest.mark.parametrize("model", ["convnext_atto", "convformer_s18", "fastvit_sa24"])
def test_frame_logits_every_family(model):
    from dcls_audio.models import build_model

    m, c = _family(model)
    c.update(dilated_kernel_size=7, kernel_count=5)
    net = build_model(m, c).eval()
    assert frame_stride(net) == 128  # no frame head: a feature column
    x = torch.randn(2, 1, 128, 501)
    with torch.no_grad():
        frames, clip = timeline.frame_logits(net, x), net(x)
        assert frames.shape == (2, net.forward_features(x).shape[-1], 3)
        one = torch.randn(2, 1, 128, 130)  # one column: the frame logits are the clip logits
        assert torch.allclose(timeline.frame_logits(net, one)[:, 0], net(one), atol=1e-5)
    if model == "fastvit_sa24":  # pooling then a linear head: the frames average to the clip
        assert torch.allclose(frames.mean(1), clip, atol=1e-5)


# ---------------------------------------------------------------- events


@pytest.mark.parametrize("size", [1, 3, 5, 9])
def test_median_filter_matches_scipy(size):
    x = np.random.default_rng(size).random((57, 4)).astype(np.float32)
    want = ndimage.median_filter(x, size=(size, 1), mode="nearest")
    assert np.array_equal(ev.median_filter(x, size), want)


def test_detect_hand_computed_events():
    hop, labels = 0.5, ["dog", "bell"]
    dog = [0.1, 0.7, 0.8, 0.2, 0.9, 0.6, 0.1, 0.1, 0.95, 0.1, 0.2, 0.7]
    bell = [0.0, 0.0, 0.3, 0.45, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    scores = np.array([dog, bell], dtype=np.float32).T  # 12 frames, 6 s
    got = ev.detect(scores, hop, labels, np.array([0.5, 0.45]), duration=5.8, file="f.wav")
    want = [
        ("dog", 0.5, 1.5, 0.8), ("bell", 1.5, 3.0, 0.5), ("dog", 2.0, 3.0, 0.9),
        ("dog", 4.0, 4.5, 0.95), ("dog", 5.5, 5.8, 0.7),
    ]  # fmt: skip
    assert [(e.label, e.onset, e.offset, round(e.score, 4)) for e in got] == want
    assert all(e.file == "f.wav" for e in got)
    # a gap of one frame (0.5 s) is filled when min_gap > 0.5; then events under 1.5 s are dropped
    got = ev.detect(scores, hop, labels, 0.5, min_gap=0.6, min_duration=1.5, duration=5.8)
    assert [(e.label, e.onset, e.offset) for e in got] == [("dog", 0.5, 3.0)]
    # a 3-frame median removes the lone peak at 4.0 s and bridges the dip at 1.5 s; the last
    # frame keeps its 0.7 (the edge value repeats: median of 0.2, 0.7, 0.7)
    got = ev.detect(scores[:, :1], hop, labels[:1], 0.5, median=1.5)
    assert [(e.onset, e.offset) for e in got] == [(0.5, 3.0), (5.5, 6.0)]


def test_read_thresholds(tmp_path):
    labels = ["Speech", "Dog, bark", "Bell"]
    assert ev.read_thresholds(0.3, labels).tolist() == [0.3] * 3
    assert ev.read_thresholds("0.4", labels).tolist() == [0.4] * 3
    text = tmp_path / "t.tsv"
    text.write_text("# per class\ndefault\t0.2\nDog, bark\t0.7\n")
    assert ev.read_thresholds(str(text), labels).tolist() == [0.2, 0.7, 0.2]
    js = tmp_path / "t.json"
    js.write_text('{"Bell": 0.9}')
    assert ev.read_thresholds(str(js), labels).tolist() == [0.5, 0.5, 0.9]
    js.write_text('{"Cat": 0.9}')
    with pytest.raises(ValueError, match="unknown class"):
        ev.read_thresholds(str(js), labels)
    with pytest.raises(ValueError, match="neither a number nor a file"):
        ev.read_thresholds(str(tmp_path / "missing"), labels)


# ---------------------------------------------------------------- metrics and the generator


def test_segment_f1_equals_sed_eval():
    pytest.importorskip("sed_eval")
    from dcls_audio.datasets.longfiles import Annotation
    from dcls_audio.timeline_eval import sed_eval_segment, segment_f1

    rng = np.random.default_rng(0)
    labels = ["a", "b", "c"]

    def draw(dur: float, n: int) -> list[tuple[float, float, str]]:
        on = np.sort(rng.uniform(0, dur - 1, n))
        off = np.minimum(on + rng.uniform(0.2, 6, n), dur)
        return [(float(a), float(b), str(rng.choice(labels))) for a, b in zip(on, off, strict=True)]

    refs, ests, durations = {}, {}, {}
    for i in range(3):
        name, dur = f"f{i}.wav", 40.0 + 7.3 * i
        durations[name] = dur
        refs[name] = [Annotation(*t) for t in draw(dur, 8)]
        ests[name] = [ev.Event(name, *t, 1.0) for t in draw(dur, 10)]
    mine = segment_f1(refs, ests, durations, labels)
    ref = sed_eval_segment(refs, ests, durations, labels)
    for key in ("f1", "precision", "recall"):
        assert mine[key] == pytest.approx(ref[key], abs=1e-12)
    assert 0.05 < mine["f1"] < 0.95


def test_long_file_annotations():
    from dcls_audio.datasets.longfiles import long_file
    from dcls_audio.datasets.sounds import CLASS_NAMES

    x, events = long_file(np.random.default_rng(3), 60.0)
    y, again = long_file(np.random.default_rng(3), 60.0)
    assert np.array_equal(x, y) and events == again and len(x) == 60 * SR
    assert len(events) >= 8 and all(0 <= e.onset < e.offset <= 60 for e in events)
    assert all(e.label in CLASS_NAMES and 1.0 <= e.offset - e.onset <= 6.0 for e in events)
    for i, a in enumerate(events):
        overlapping = [b for b in events[i + 1 :] if b.onset < a.offset]
        assert len(overlapping) <= 1 and all(b.label != a.label for b in overlapping)
    on = np.zeros(len(x), bool)
    for e in events:
        on[round(e.onset * SR) : round(e.offset * SR)] = True
    rms = lambda m: float(np.sqrt(np.mean(np.square(x[m], dtype=np.float64))))  # noqa: E731
    background = rms(~on)  # annotated spans hold sound: most events stand 10 dB above it
    levels = [rms(slice(round(e.onset * SR), round(e.offset * SR))) for e in events]
    assert min(levels) > background and np.median(levels) > 3 * background
