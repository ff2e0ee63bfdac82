"""Throughput benchmark: record format, interleaved medians, markdown ratios, the script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dcls_audio.benchmarks import throughput as bench

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"model", "conv", "mode", "device", "dtype", "batch_size", "samples_per_s"}


def test_paper_ratio_is_dcls_over_dsc_inference_speed():
    # Paper Table 1, V100 samples/s: ConvNeXt-T 509.4 / 591.4, ConvFormer 396.8 / 513.3,
    # FastViT 551.7 / 633.6.
    assert bench.PAPER_RATIO == {
        "convnext_t": 0.861,
        "convformer_s18": 0.773,
        "fastvit_sa24": 0.871,
    }


def test_markdown_ratio_is_against_dsc_of_same_setting():
    recs = [
        {
            "model": "convnext_t",
            "conv": "dsc",
            "mode": "infer",
            "device": "cpu",
            "dtype": "fp32",
            "batch_size": 8,
            "samples_per_s": 10.0,
        },
        {
            "model": "convnext_t",
            "conv": "dcls_gauss",
            "mode": "infer",
            "device": "cpu",
            "dtype": "fp32",
            "batch_size": 8,
            "samples_per_s": 9.5,
        },
        {
            "model": "convnext_t",
            "conv": "dcls_gauss",
            "mode": "train",
            "device": "cpu",
            "dtype": "fp32",
            "batch_size": 8,
            "samples_per_s": 3.0,
        },
    ]
    table = bench.markdown_table(recs).splitlines()
    assert len(table) == 2 + 3
    assert table[3].split("|")[8].strip() == "0.950"
    assert table[3].split("|")[9].strip() == "0.861"
    assert table[4].split("|")[8].strip() == ""  # no DSC train record to compare with


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="mode"):
        bench.run_benchmark(["convnext_atto"], ["dsc"], mode="fast")
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        bench.load_group("model", "nope")
    with pytest.raises(ValueError, match="device"):
        bench.resolve_device("tpu")


@pytest.mark.slow
def test_benchmark_script_tiny_run(tmp_path):
    js, md = tmp_path / "b.json", tmp_path / "b.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcls_audio.benchmarks.throughput",
            "--models",
            "convnext_atto",
            "--convs",
            "dsc,dcls_gauss",
            "--mode",
            "both",
            "--batch-size",
            "1",
            "--device",
            "cpu",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--repeats",
            "2",
            "--json",
            str(js),
            "--markdown",
            str(md),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    records = json.loads(js.read_text())
    assert [(r["conv"], r["mode"]) for r in records] == [
        ("dsc", "infer"),
        ("dcls_gauss", "infer"),
        ("dsc", "train"),
        ("dcls_gauss", "train"),
    ]
    for r in records:
        assert KEYS <= set(r)
        assert (r["model"], r["device"], r["dtype"], r["batch_size"]) == (
            "convnext_atto",
            "cpu",
            "fp32",
            1,
        )
        assert len(r["repeats"]) == 2 and r["samples_per_s"] > 0
        lo, hi = sorted(r["repeats"])
        assert r["samples_per_s"] == pytest.approx((lo + hi) / 2, abs=1.5e-3)  # median
    rows = [line for line in md.read_text().splitlines() if line.startswith("| convnext_atto")]
    assert len(rows) == 4
    ratio = float(rows[1].split("|")[8])
    assert ratio == pytest.approx(
        records[1]["samples_per_s"] / records[0]["samples_per_s"], abs=1e-3
    )
