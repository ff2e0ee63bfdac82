"""The frame head of every model family: its time axis, what it returns, its checkpoints."""

import pytest
import torch
from conftest import train_cfg

from dcls_audio.config import load_group
from dcls_audio.models import build_model
from dcls_audio.models.frames import feature_stride, frame_seconds, has_frame_head
from dcls_audio.train.frames import FrameLoss, build_frame_loss, clip_frames, emit_frames

# (model, columns of a 10-s clip's last feature map: ConvNeXt crops, the others pad)
FAMILIES = [("convnext_t", 7), ("convformer_s18", 8), ("fastvit_sa24", 8)]


def build(name: str, conv: str, frame_head, stage: int = -1):
    cfg = load_group("model", name, ["data.num_classes=10"])
    cfg["frame_head"], cfg["frame_stage"] = frame_head, stage
    torch.manual_seed(0)
    return build_model(cfg, load_group("conv", conv)).eval()


@pytest.mark.parametrize("conv", ["dsc", "dcls_gauss"])
@pytest.mark.parametrize(("name", "columns"), FAMILIES)
def test_frame_head_of_every_family(name, columns, conv):
    """Clip logits unchanged by the head; frames at 4x the columns, 0.32 s each."""
    plain, framed = build(name, conv, None), build(name, conv, 4)
    assert not has_frame_head(plain) and has_frame_head(framed)
    x = torch.randn(2, 1, 128, 1001, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        clip = plain(x)
        torch.testing.assert_close(framed(x), clip)  # not emitting: the clip logits only
        emit_frames(framed, True)
        both, frames = framed(x)
    torch.testing.assert_close(both, clip)
    assert frames.shape == (2, 4 * columns, 10)
    assert feature_stride(framed) == 128 and frame_seconds(framed) == pytest.approx(0.32)
    keys = set(framed.state_dict()) - set(plain.state_dict())
    assert keys == {"frame_head.norm.weight", "frame_head.norm.bias", "frame_head.fc.weight",
                    "frame_head.fc.bias"}  # fmt: skip


# (model, columns of a 10-s clip's stage-3 map: 64 log-mel frames each)
STAGE3 = [("convnext_t", 15), ("convformer_s18", 16), ("fastvit_sa24", 16)]


@pytest.mark.parametrize(("name", "columns"), STAGE3)
def test_frame_head_on_the_stage_before_the_last(name, columns):
    """stage=-2: the head reads the third stage's map (0.64-s columns, 2x: 0.32-s frames)."""
    from dcls_audio.models.frames import frame_logits, frame_stride

    plain, framed = build(name, "dsc", None), build(name, "dsc", 2, stage=-2)
    framed.load_state_dict(plain.state_dict(), strict=False)  # same trunk and clip head
    x = torch.randn(2, 1, 128, 1001, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        emit_frames(framed, True)
        clip, frames = framed(x)
        torch.testing.assert_close(clip, plain(x))
        mid = framed.stem(x)  # the reference: the stages run by hand, the last one left out
        for stage in framed.stages[:-1]:
            mid = stage(mid)
        torch.testing.assert_close(frames, framed.frame_head(mid))
        torch.testing.assert_close(frame_logits(framed, x), frames)
    assert mid.shape[-1] == columns and frames.shape == (2, 2 * columns, 10)
    assert framed.frame_head.fc.in_features == mid.shape[1]
    assert frame_stride(framed) == 32 and frame_seconds(framed) == pytest.approx(0.32)


def test_frame_stage_is_checked():
    with pytest.raises(ValueError, match=r"model.frame_stage=0: expected -1 .* down to -4"):
        build("convnext_atto", "dsc", 2, stage=0)
    with pytest.raises(ValueError, match=r"model.frame_stage=-5"):
        build("convnext_atto", "dsc", 2, stage=-5)


def test_frame_head_upsamples_the_columns_it_reads():
    """Frame k of an upsampled head lies between the columns it interpolates."""
    from dcls_audio.models.frames import FrameHead

    head = FrameHead(3, 2, upsample=2)
    with torch.no_grad():
        head.norm.weight.fill_(1.0)
        head.norm.bias.zero_()
    feats = torch.zeros(1, 3, 4, 2)
    feats[..., 0, 0], feats[..., 0, 1] = (
        torch.tensor([1.0, 0.0, -1.0]),
        torch.tensor([0.0, 1.0, 0.0]),
    )
    out = head(feats)
    assert out.shape == (1, 4, 2)
    # linear interpolation at half-column steps (align_corners=False): frames 0 and 3 are the
    # columns themselves, 1 and 2 mix them 3:1 and 1:3
    mean = feats.mean(2)[0].T  # (2 columns, 3 channels)
    want = torch.stack([mean[0], 0.75 * mean[0] + 0.25 * mean[1],
                        0.25 * mean[0] + 0.75 * mean[1], mean[1]])  # fmt: skip
    torch.testing.assert_close(out[0], head.fc(head.norm(want)))


def test_frame_options_are_checked(synthetic_root):
    cfg = train_cfg(synthetic_root(2), "frames=strong", conv="dsc")
    model = build_model(cfg.model, cfg.conv)

    class Weak:  # a training set without strong labels
        has_strong = False

    with pytest.raises(ValueError, match=r"frames=strong needs strong labels in data.train_files"):
        build_frame_loss(cfg.frames, model, Weak(), torch.device("cpu"), ["a.h5"])
    cfg.frames.weight = 0.0
    with pytest.raises(ValueError, match=r"model.frame_head is set but frames.weight=0"):
        build_frame_loss(cfg.frames, model, Weak(), torch.device("cpu"), ["a.h5"])
    plain = train_cfg(synthetic_root(2), "frames.weight=0.5", conv="dsc")
    plain_model = build_model(plain.model, plain.conv)
    with pytest.raises(ValueError, match=r"frames.weight=0.5 needs a frame head"):
        build_frame_loss(plain.frames, plain_model, Weak(), "cpu", [])
    default = train_cfg(synthetic_root(2), conv="dsc").frames  # frames=none: nothing to do
    assert build_frame_loss(default, plain_model, Weak(), "cpu", []) is None
    for bad in (-1, 2.5, "all"):
        default.tune_clips = bad
        with pytest.raises(ValueError, match=r"frames.tune_clips=.*expected an integer >= 0"):
            build_frame_loss(default, plain_model, Weak(), "cpu", [])


def test_clip_frames_resamples_to_the_clip():
    probs = torch.arange(7.0).view(1, 7, 1).numpy()  # 7 frames of 1.28 s: 8.96 s of 10
    out = clip_frames(probs, 1.28, 10.0, rate=10)
    assert out.shape == (1, 100, 1)
    assert out[0, 0, 0] == 0 and out[0, 12, 0] == 0 and out[0, 13, 0] == 1  # 1.25 / 1.35 s
    assert (out[0, 90:, 0] == 6).all()  # past 8.96 s: the last frame repeated


def test_frame_loss_masks_weak_clips_and_unlabelled_classes():
    class NoMix:
        def mix_frames(self, frames, strong):
            return frames, strong

    loss = FrameLoss(weight=1.0, frame_s=1.0, class_mask=torch.tensor([True, False]))
    events = torch.tensor([[[0.0, 2.0, 0.0], [0.0, 0.0, -1.0]],
                           [[1.0, 3.0, 1.0], [0.0, 0.0, -1.0]]])  # fmt: skip
    logits = torch.zeros(2, 4, 2, requires_grad=True)
    value = loss(logits, events, torch.tensor([True, False]), NoMix())
    value.backward()
    assert value.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # BCE at 0.5
    assert logits.grad[1].abs().sum() == 0  # the weak clip: no frame gradient
    assert logits.grad[0, :, 1].abs().sum() == 0  # a class the vocabulary does not label
    # clip 0, class 0: targets 1 on frames 0-1, 0 on 2-3 -> gradients of opposite signs
    assert (logits.grad[0, :2, 0] < 0).all() and (logits.grad[0, 2:, 0] > 0).all()


def add_strong_labels(path, clip_seconds: float, seed: int, weak_rows: int = 0) -> None:
    """Give every labelled row of a packed file one event per class (the last rows weak-only)."""
    import h5py
    import numpy as np

    from dcls_audio.data.strong import StrongLabels, write_strong

    rng = np.random.default_rng(seed)
    with h5py.File(path, "r+") as f:
        target = f["target"][()].astype(bool)
        rows, classes = np.nonzero(target)
        onset = rng.uniform(0, clip_seconds / 2, len(rows)).astype(np.float32)
        offset = (onset + rng.uniform(0.5, clip_seconds / 2, len(rows))).astype(np.float32)
        strong = np.ones(len(target), dtype=bool)
        if weak_rows:
            strong[-weak_rows:] = False
        keep = strong[rows]
        labels = StrongLabels(
            strong=strong, row=rows[keep], onset=onset[keep], offset=offset[keep],
            label=classes[keep].astype(np.int32), strong_classes=np.ones(target.shape[1], bool),
        )  # fmt: skip
        write_strong(f, labels)


@pytest.mark.slow
def test_a_run_with_strong_labels_logs_the_frame_loss_and_scores_events(synthetic_root, tmp_path):
    """frames=strong on a synthetic set with events: a frame-loss term in metrics.jsonl, the
    event metrics in results.json and the console; the checkpoint carries the frame head."""
    import json
    import shutil

    from dcls_audio.train import run

    root = tmp_path / "data"
    shutil.copytree(synthetic_root(8), root)
    add_strong_labels(root / "train.h5", 10.0, seed=0, weak_rows=2)
    add_strong_labels(root / "eval.h5", 10.0, seed=1)
    overrides = (
        "frames=strong", "trainer.batch_size=4", "trainer.global_batch_size=4",
        "optim.lr_ref_batch=4", "trainer.epochs=1", "trainer.warmup_epochs=0",
        "+model.timm_kwargs.dims=[8,16,32,64]", "+model.timm_kwargs.depths=[1,1,1,1]",
    )  # fmt: skip
    metrics = run(train_cfg(root, *overrides), run_dir=tmp_path / "run")
    assert metrics["event_clips"] == 5 and 0.0 <= metrics["segment_f1"] <= 1.0
    assert 0.0 < metrics["segment_ap"] <= 1.0 and metrics["segment_threshold"] == 0.5
    # F1 also at the threshold chosen on the 6 strongly labelled training clips (2 are weak)
    assert metrics["tune_clips"] == 6 and 0.0 <= metrics["segment_f1_tuned"] <= 1.0
    assert 0.0 < metrics["segment_f1_train"] <= 1.0 and "segment_threshold_tuned" in metrics
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["segment_ap"] == metrics["segment_ap"]
    assert results["segment_f1_tuned"] == metrics["segment_f1_tuned"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in lines if e.get("type") == "train"]
    assert train and all(e["frame_loss"] > 0 for e in train)
    assert "chosen on 6 training clips" in (tmp_path / "run" / "train.log").read_text()
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert "frame_head.fc.weight" in state
    # the same data without frames=strong: clip training, events scored from the feature columns
    weak_cfg = train_cfg(root, *[o for o in overrides if o != "frames=strong"])
    weak = run(weak_cfg, run_dir=tmp_path / "weak")
    assert weak["event_clips"] == 5 and 0.0 < weak["segment_ap"] <= 1.0
    assert "frame_loss" not in (tmp_path / "weak" / "metrics.jsonl").read_text()


def test_tuned_threshold_uses_the_strong_classes_only():
    import numpy as np

    from dcls_audio.train.frames import tuned_threshold

    scores = np.zeros((2, 2, 2), np.float32)  # 2 clips x 2 segments x 2 classes
    scores[0, :, 0], scores[1, :, 0] = [0.7, 0.2], [0.4, 0.1]
    scores[:, :, 1] = 0.05  # class 1's events score low: left out by the mask
    events = np.array([[[0.0, 1.0, 0.0], [0.0, 0.0, -1.0]],
                       [[0.0, 2.0, 1.0], [0.0, 0.0, -1.0]]], np.float32)  # fmt: skip
    got = tuned_threshold((scores, events), np.array([True, False]), 2.0)
    assert got == {"segment_threshold_tuned": pytest.approx(0.55), "segment_f1_train": 1.0,
                   "tune_clips": 2}  # fmt: skip
    everything = tuned_threshold((scores, events), np.array([True, True]), 2.0)
    assert everything["segment_threshold_tuned"] < 0.05  # class 1 positives pull it down
    assert tuned_threshold((scores[:0], events[:0]), np.array([True, True]), 2.0) is None
