import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomErasing

from dcls_audio.data import LogMelFrontend, MultiLabelMixup
from dcls_audio.data.frontend import random_erasing_boxes

SR, N_FFT, HOP = 32000, 1024, 320


def realistic_audio(n_clips=2, seed=0):
    """Tones with vibrato and harmonics, an amplitude envelope, bursts and a pink noise floor."""
    rng = np.random.default_rng(seed)
    t = np.arange(320000) / SR
    out = []
    for _ in range(n_clips):
        f0 = rng.uniform(150, 600)
        x = sum(
            np.sin(2 * np.pi * k * f0 * t + 3 * np.sin(2 * np.pi * 4 * t)) / k for k in range(1, 6)
        )
        x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 0.3 * t) ** 2)
        x += 0.3 * np.sin(2 * np.pi * rng.uniform(2000, 9000) * t) * (t % 1 < 0.2)
        spec = np.fft.rfft(rng.standard_normal(len(t)))
        pink = np.fft.irfft(spec / np.sqrt(np.maximum(np.arange(len(spec)), 100)), len(t))
        x += 0.05 * pink / pink.std()  # 1/f noise floor, as in recordings
        out.append(0.2 * x / np.abs(x).max())
    return np.stack(out)


def htk_mel_filterbank(n_mels=128, f_min=50.0, f_max=14000.0):
    hz_to_mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    mel_to_hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    freqs = np.arange(N_FFT // 2 + 1) * SR / N_FFT
    fb = np.zeros((N_FFT // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (c - lo)
        falling = (hi - freqs) / (hi - c)
        fb[:, m] = np.clip(np.minimum(rising, falling), 0, None)
    return fb


def reference_power(x):
    padded = np.pad(x, N_FFT // 2, mode="reflect")
    n_frames = 1 + len(x) // HOP
    frames = np.stack([padded[i * HOP : i * HOP + N_FFT] for i in range(n_frames)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    return np.abs(np.fft.rfft(frames * window, axis=1)) ** 2  # (frames, 513)


def reference_logmel(power):
    mel = power @ htk_mel_filterbank()  # (frames, 128)
    db = 10 * np.log10(np.maximum(mel, 1e-10))
    return ((db + 18.2696) / 30.5735).T  # (128, frames)


def test_logmel_matches_numpy_reference():
    audio = realistic_audio()
    fe = LogMelFrontend().eval()
    out = fe(torch.from_numpy(audio).float())
    assert out.shape == (2, 1, 128, 1001) and out.dtype == torch.float32
    for i in range(2):
        ref = reference_logmel(reference_power(audio[i].astype(np.float32).astype(np.float64)))
        np.testing.assert_allclose(out[i, 0].numpy(), ref, atol=1e-4, rtol=0)
    # silence hits the 1e-10 floor: (-100 + 18.2696) / 30.5735
    silent = fe(torch.zeros(1, 320000))
    torch.testing.assert_close(silent, torch.full_like(silent, (-100 + 18.2696) / 30.5735))
    # autocast does not change the result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(fe(torch.from_numpy(audio).float()), out)


def test_training_mode_erases_power_spectrogram_boxes():
    audio = realistic_audio(8, seed=1)
    fe = LogMelFrontend().train()
    out = fe(torch.from_numpy(audio).float(), generator=torch.Generator().manual_seed(5))
    boxes = random_erasing_boxes(8, 513, 1001, p=0.25, generator=torch.Generator().manual_seed(5))
    assert (boxes[:, 2] > 0).any() and (boxes[:, 2] == 0).any()
    eval_out = LogMelFrontend().eval()(torch.from_numpy(audio).float())
    for i in range(8):
        top, left, h, w = boxes[i].tolist()
        power = reference_power(audio[i].astype(np.float32).astype(np.float64))
        power[left : left + w, top : top + h] = 0.0  # (frames, freq) here
        np.testing.assert_allclose(out[i, 0].numpy(), reference_logmel(power), atol=1e-4)
        if h == 0:
            torch.testing.assert_close(out[i], eval_out[i])
        else:
            assert (out[i] < eval_out[i] - 1e-3).any()


def test_erasing_box_statistics_follow_torchvision():
    h_img, w_img, n = 513, 1001, 4000
    g = torch.Generator().manual_seed(0)
    boxes = random_erasing_boxes(n, h_img, w_img, p=0.25, generator=g)
    top, left, h, w = boxes.T
    erased = h > 0
    assert abs(erased.float().mean().item() - 0.25) < 0.03
    assert (top + h <= h_img).all() and (left + w <= w_img).all() and (top >= 0).all()
    area = (h * w)[erased].double() / (h_img * w_img)
    assert area.min() > 0.018 and area.max() < 0.335
    aspect = (h / w)[erased].double()
    assert aspect.min() > 0.28 and aspect.max() < 3.5
    # compare with torchvision's own parameter draws (same semantics, its Python loop)
    torch.manual_seed(1)
    img = torch.zeros(1, h_img, w_img)
    tv = [RandomErasing.get_params(img, (0.02, 0.33), (0.3, 3.3), value=[0.0]) for _ in range(2000)]
    tv_area = torch.tensor([b[2] * b[3] / (h_img * w_img) for b in tv], dtype=torch.float64)
    tv_log_aspect = torch.tensor([math.log(b[2] / b[3]) for b in tv], dtype=torch.float64)
    assert abs(area.mean() - tv_area.mean()) < 0.02
    assert abs(aspect.log().mean() - tv_log_aspect.mean()) < 0.15
    assert abs(aspect.log().std() - tv_log_aspect.std()) < 0.1
    assert abs((top[erased].double() / (h_img - h[erased] + 1)).mean() - 0.5) < 0.05


def test_mixup_hand_computed(monkeypatch):
    mix = MultiLabelMixup(alpha=0.8, label_smoothing=0.1)
    monkeypatch.setattr(mix, "draw", lambda n, generator=None: (0.25, torch.tensor([2, 0, 1])))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    y = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    xm, ym = mix(x, y)
    # x[0] = 0.25 * x0 + 0.75 * x2, ...
    torch.testing.assert_close(xm, torch.tensor([[4.0, 5.0], [1.5, 2.5], [3.5, 4.5]]))
    hi, lo = 0.9 + 0.025, 0.025  # smoothed 1 and 0 with eps = 0.1, C = 4
    expect = torch.tensor(
        [
            [0.25 * hi + 0.75 * lo, lo, lo, 0.25 * hi + 0.75 * lo],
            [0.25 * lo + 0.75 * hi, 0.25 * hi + 0.75 * lo, lo, 0.25 * lo + 0.75 * hi],
            [lo, 0.25 * lo + 0.75 * hi, lo, lo],
        ]
    )
    torch.testing.assert_close(ym, expect)


def test_mixup_disabled_and_lambda_distribution():
    x, y = torch.randn(4, 1, 8, 8), (torch.rand(4, 527) < 0.1).float()
    off = MultiLabelMixup(enabled=False)
    xo, yo = off(x, y)
    assert xo is x and yo is y
    mix = MultiLabelMixup()
    g = torch.Generator().manual_seed(0)
    lams = np.array([mix.draw(4, g)[0] for _ in range(4000)])
    assert abs(lams.mean() - 0.5) < 0.02
    assert abs(lams.var() - 0.64 / (2.56 * 2.6)) < 0.008  # Beta(0.8, 0.8) variance
    x1, y1 = mix(x, y, generator=torch.Generator().manual_seed(3))
    x2, y2 = mix(x, y, generator=torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    lam = mix.last_lam
    perm = mix.draw(4, torch.Generator().manual_seed(3))[1]
    torch.testing.assert_close(x1, lam * x + (1 - lam) * x[perm])
    assert (y1 >= 0.1 / 527 - 1e-7).all() and (y1 <= 1).all()


@pytest.mark.parametrize("bad", [torch.zeros(320000), torch.zeros(2, 1, 320000)])
def test_frontend_rejects_bad_shapes(bad):
    with pytest.raises(ValueError, match="expected waveforms"):
        LogMelFrontend()(bad)
