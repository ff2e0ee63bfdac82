import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dcls_audio.data import AudioSetHDF5, load_class_labels
from dcls_audio.datasets.synthetic import (
    CLASS_NAMES,
    CLASSES,
    NUM_CLASSES,
    make_banks,
    make_synthetic,
)

SR = 32000
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    info = make_synthetic(out, n_train=12, n_eval=4, seed=0, n_empty=2)
    return out, info


def test_layout_labels_and_empty_rows(syn):
    out, info = syn
    assert info["num_classes"] == NUM_CLASSES == 16
    assert load_class_labels(out / "class_labels_indices.csv") == CLASS_NAMES
    ds = AudioSetHDF5(out / "train.h5", num_classes=16)
    assert len(ds) == 12 and ds.num_skipped == 2
    assert len(AudioSetHDF5(out / "eval.h5", num_classes=16)) == 4
    y = ds.targets()
    assert ((y.sum(1) >= 1) & (y.sum(1) <= 3)).all()
    for i in range(len(ds)):
        x, _ = ds[i]
        assert 0.003 < x.abs().max() < 0.95 and x.std() > 0.0035  # events above the noise floor


def test_deterministic_from_seed(syn, tmp_path):
    out, _ = syn
    make_synthetic(tmp_path / "a", n_train=3, n_eval=1, seed=0)
    make_synthetic(tmp_path / "b", n_train=3, n_eval=1, seed=1)
    with (
        h5py.File(out / "train.h5") as f0,
        h5py.File(tmp_path / "a" / "train.h5") as fa,
        h5py.File(tmp_path / "b" / "train.h5") as fb,
    ):
        np.testing.assert_array_equal(fa["waveform"][()], f0["waveform"][:3])  # size-independent
        np.testing.assert_array_equal(fa["target"][()], f0["target"][:3])
        assert not np.array_equal(fa["waveform"][()], fb["waveform"][()])


def band_energy_fraction(x, lo, hi):
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / SR)
    return p[(f >= lo) & (f <= hi)].sum() / p.sum()


@pytest.mark.parametrize(
    "name, lo, hi",
    [
        ("Low tone", 140, 310),
        ("High tone", 4900, 7100),
        ("Very high tone", 9900, 12100),
        ("Low noise band", 190, 460),
        ("Mid noise band", 1490, 2510),
        ("High noise band", 7990, 10010),
        ("AM tone", 880, 1120),
        ("FM tone", 1840, 2660),
        ("Siren", 590, 1410),
        ("Beeps", 3400, 4100),
    ],
)
def test_class_spectra_are_where_the_names_say(name, lo, hi):
    fn = dict(CLASSES)[name]
    banks = make_banks(np.random.default_rng(0))
    t = np.arange(2 * SR, dtype=np.float32) / SR
    for s in range(3):
        assert band_energy_fraction(fn(t, np.random.default_rng(s), banks), lo, hi) > 0.95


def test_chirps_clicks_and_stacks():
    t = np.arange(3 * SR, dtype=np.float32) / SR
    banks = make_banks(np.random.default_rng(0))
    fns = dict(CLASSES)

    def centroid(x):
        p = np.abs(np.fft.rfft(x)) ** 2
        return (p * np.fft.rfftfreq(len(x), 1 / SR)).sum() / p.sum()

    up = fns["Chirp up"](t, np.random.default_rng(0), banks)
    down = fns["Chirp down"](t, np.random.default_rng(0), banks)
    half = len(t) // 2
    assert centroid(up[:half]) < centroid(up[half:])
    assert centroid(down[:half]) > centroid(down[half:])
    for name, lo, hi in [("Slow clicks", 3, 6), ("Fast clicks", 25, 50)]:
        x = fns[name](t, np.random.default_rng(1), banks)
        clicks = np.flatnonzero((np.abs(x[1:]) > 0.5) & (np.abs(x[:-1]) <= 0.5))
        rate = len(clicks) / 3.0
        assert lo - 1 <= rate <= hi + 1
    low = fns["Low harmonic stack"](t, np.random.default_rng(2), banks)
    assert band_energy_fraction(low, 90, 1500) > 0.99 and band_energy_fraction(low, 90, 190) < 0.7


def test_make_synthetic_script(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcls_audio.datasets.synthetic",
            "--out",
            str(tmp_path),
            "--train",
            "2",
            "--eval",
            "1",
            "--seed",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert '"n_train": 2' in r.stdout
    assert {p.name for p in tmp_path.iterdir()} == {
        "train.h5",
        "eval.h5",
        "class_labels_indices.csv",
    }
