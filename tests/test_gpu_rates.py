"""The GPU rates run's CPU-side pieces: records, train.py rates, the summary and its checks."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcls_audio.benchmarks import gpu_rates, gpu_summary

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_rates.sh"
KEYS = {"model", "conv", "mode", "device", "device_name", "dtype", "batch_size", "channels_last",
        "compiled", "samples_per_s", "date", "commit", "command"}  # fmt: skip


def _rec(model, conv, mode, sps, compiled=False, **kw):
    rec = {"model": model, "conv": conv, "mode": mode, "device": "cuda", "device_name": "GPU A",
           "dtype": "bf16", "batch_size": 64, "channels_last": True, "compiled": compiled,
           "samples_per_s": sps}  # fmt: skip
    return {**rec, **kw}


def _meeting():
    """Records that meet every goal, each by a small margin."""
    recs = []
    for compiled in (False, True):
        recs += [_rec("convnext_t", "dsc", "infer", 1000.0, compiled),
                 _rec("convnext_t", "dcls_gauss", "infer", 870.0, compiled),
                 _rec("convnext_t", "dsc", "train", 400.0, compiled),
                 _rec("convnext_t", "dcls_gauss", "train", 300.0, compiled)]  # fmt: skip
    for model in ("convformer_s18", "fastvit_sa24"):
        for mode in ("infer", "train"):
            recs += [_rec(model, "dsc", mode, 100.0), _rec(model, "dcls_gauss", mode, 50.0)]
    recs += [
        _rec("convnext_t", "dsc", "trainer", 380.0),  # 0.95 of the model-only 400
        _rec("convnext_t", "dcls_gauss", "trainer", 310.0),
    ]  # 0.816 of DSC's 380
    return recs


def _summary(recs):
    pairs = gpu_summary.pair_ratios(recs)
    return pairs, gpu_summary.bar_checks(pairs)


def _check(bar, prefix):
    found = [c for c in bar["checks"] if c["check"].startswith(prefix)]
    assert len(found) == 1, (prefix, [c["check"] for c in bar["checks"]])
    return found[0]


def test_ratios_pair_dsc_and_dcls_of_one_setting():
    recs = [_rec("convnext_t", "dsc", "infer", 1000.0),
            _rec("convnext_t", "dcls_gauss", "infer", 600.0),
            _rec("convnext_t", "dsc", "infer", 500.0, batch_size=32),  # another setting: unpaired
            _rec("convnext_t", "dcls_gauss", "infer", 700.0, compiled=True)]  # fmt: skip
    pairs = {(p["batch_size"], p["compiled"]): p for p in gpu_summary.pair_ratios(recs)}
    assert pairs[(64, False)]["ratio"] == 0.6
    assert pairs[(32, False)]["ratio"] is None and pairs[(32, False)]["dcls_gauss"] is None
    assert pairs[(64, True)]["ratio"] is None and pairs[(64, True)]["dsc"] is None


def test_all_goals_met_by_records_that_meet_them():
    _, bar = _summary(_meeting())
    assert bar["met"], [c for c in bar["checks"] if not c["ok"]]
    assert _check(bar, "ConvNeXt-T model-only infer, eager")["value"] == 0.87
    assert _check(bar, "ConvNeXt-T model-only train, compiled")["value"] == 0.75
    assert _check(bar, "ConvNeXt-T train.py, eager: DCLS/DSC")["value"] == pytest.approx(0.8158)
    assert _check(bar, "ConvNeXt-T train.py, eager: DSC / model-only")["value"] == 0.95


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        (lambda r: r["compiled"] and r["mode"] == "train" and r["conv"] == "dcls_gauss"
         and r.update(samples_per_s=290.0), "ConvNeXt-T model-only train, compiled"),
        (lambda r: not r["compiled"] and r["mode"] == "infer" and r["model"] == "convnext_t"
         and r["conv"] == "dcls_gauss" and r.update(samples_per_s=850.0),
         "ConvNeXt-T model-only infer, eager"),
        (lambda r: r["mode"] == "trainer" and r["conv"] == "dcls_gauss"
         and r.update(samples_per_s=300.0), "ConvNeXt-T train.py, eager: DCLS/DSC"),
        # a slower DSC run flatters the ratio (330 / 350) but shows the loader as a ceiling
        (lambda r: r["mode"] == "trainer"
         and r.update(samples_per_s=350.0 if r["conv"] == "dsc" else 330.0),
         "ConvNeXt-T train.py, eager: DSC / model-only"),
        (lambda r: r["model"] == "fastvit_sa24" and r["mode"] == "train"
         and r.update(conv="other"), "all three models"),
        (lambda r: r["model"] == "convformer_s18" and r.update(device_name="GPU B"),
         "one CUDA device"),
    ],
)  # fmt: skip
def test_each_goal_fails_alone(change, failing):
    recs = _meeting()
    for r in recs:
        change(r)
    _, bar = _summary(recs)
    assert not bar["met"]
    assert [c["check"] for c in bar["checks"] if not c["ok"]] == [_check(bar, failing)["check"]]


def test_trainer_goal_needs_the_trainer_records():
    recs = [r for r in _meeting() if r["mode"] != "trainer"]
    _, bar = _summary(recs)
    assert not bar["met"] and not _check(bar, "ConvNeXt-T train.py")["ok"]


def test_summary_of_an_output_folder(tmp_path):
    (tmp_path / "records").mkdir()
    recs = [{**r, "date": "2026-12-07T01:00:00+00:00", "commit": "abc1234"} for r in _meeting()]
    (tmp_path / "records" / "a.json").write_text(json.dumps(recs[:10]))
    (tmp_path / "records" / "b.json").write_text(json.dumps(recs[10:]))
    (tmp_path / "records" / "cut.json").write_text('[{"model": ')  # a step killed mid-write
    (tmp_path / "steps.txt").write_text("model_convnext exit=0 seconds=40\n")
    assert gpu_summary.main([str(tmp_path), "--command", "scripts/gpu_rates.sh OUT"]) == 0
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["bar"]["met"] and doc["commits"] == ["abc1234"] and len(doc["records"]) == 18
    text = (tmp_path / "summary.md").read_text()
    assert "| convnext_t | infer | False | bf16 | 64 | True | 1000.0 | 870.0 | 0.870 |" in text
    assert "| convnext_t | trainer | False | bf16 | 64 | True | 380.0 | 310.0 | 0.816 |" in text
    assert "All goals met: yes" in text and "model_convnext exit=0" in text


def test_steady_rate_leaves_out_each_epochs_first_windows():
    rows = [{"epoch": e, "samples_per_s": r} for e, r in
            [(0, 90.0), (0, 500.0), (0, 1000.0), (0, 900.0), (0, 1100.0), (1, 80.0), (1, 400.0),
             (1, 950.0)]]  # fmt: skip
    out = gpu_rates.steady_rate(rows, skip=2)
    assert out["samples_per_s"] == 975.0 and out["steady_windows"] == 4  # 1000 900 1100 950
    assert gpu_rates.steady_rate(rows[:2], skip=2)["samples_per_s"] is None


def test_trainer_record_of_a_run_cut_short(tmp_path):
    (tmp_path / "train.log").write_text(
        "device: device cuda:0, name NVIDIA H200, capability sm_90, dtype bf16 autocast, "
        "world_size 1, channels_last True, compile none\nrun dir ...\n"
    )
    lines = [json.dumps({"type": "train", "epoch": 0, "step": 8 * (k + 1), "samples_per_s": r})
             for k, r in enumerate([100.0, 700.0, 1200.0, 1000.0, 1100.0])]  # fmt: skip
    lines.insert(2, json.dumps({"type": "eval", "step": 16, "map": 0.1}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"type": "tr')  # cut mid-line
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- model=convnext_t\n- conv=dsc\n")
    rec = gpu_rates.trainer_record(tmp_path, "convnext_t", "dsc", 64, skip=2)
    assert KEYS <= set(rec) and rec["mode"] == "trainer" and not rec["finished"]
    assert (rec["device"], rec["device_name"], rec["dtype"]) == ("cuda", "NVIDIA H200", "bf16")
    assert rec["channels_last"] is True and rec["compiled"] is False
    assert rec["samples_per_s"] == 1100.0 and rec["steps"] == 40
    assert rec["command"] == "python train.py model=convnext_t conv=dsc"


def test_model_rates_on_the_cpu_write_complete_records(tmp_path):
    out = tmp_path / "model.json"
    gpu_rates.main(["model", "--device", "cpu", "--dtype", "fp32", "--batch", "1", "--tiny",
                    "--modes", "infer", "--iters", "1", "--warmup", "0", "--repeats", "1",
                    "--json", str(out)])  # fmt: skip
    recs = json.loads(out.read_text())
    assert [(r["conv"], r["mode"]) for r in recs] == [("dsc", "infer"), ("dcls_gauss", "infer")]
    for r in recs:
        assert KEYS <= set(r) and r["samples_per_s"] > 0 and r["channels_last"] is True
        assert r["command"].startswith("python -m dcls_audio.benchmarks.gpu_rates model")
    assert gpu_summary.pair_ratios(recs)[0]["ratio"] > 0


def test_script_parses_and_its_step_limits_fit_nine_minutes():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    # the steps that always run (the others run only in what is left of the budget)
    core = re.findall(r"^step \w+ (\d+) ", text, re.M)
    core += re.findall(r"^trainer \w+ (\d+) 0 ", text, re.M)
    reserve = int(re.search(r"^RESERVE=(\d+)", text, re.M).group(1))
    assert len(core) == 7
    assert sum(map(int, core)) + reserve + 20 <= 540  # 20 s for the wheels and the set-up
    assert re.search(r"BUDGET=\$\{BUDGET:-540\} DEV=cuda", text)


def test_exactness_rows_flag_a_path_off_its_bound(tmp_path, monkeypatch):
    from dcls_audio.benchmarks import gpu_exact
    from dcls_audio.dcls import dwconv

    out = tmp_path / "exact.json"
    rows = gpu_exact.exact("cpu", 2, ["float32"], 96, ["cudnn", "fft"], str(out))
    assert [r["check"] for r in rows[:3]] == ["construction", "cudnn", "fft"] and len(rows) == 12
    assert all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert json.loads(out.read_text())["rows"] == rows
    run_path = dwconv.run_path

    def off(path, x, kernel, bias, pads):  # the FFT path's output 1e-4 too large
        y = run_path(path, x, kernel, bias, pads)
        return y * (1 + 1e-4) if path == "fft" else y

    monkeypatch.setattr(dwconv, "run_path", off)
    rows = gpu_exact.exact("cpu", 2, ["float32"], 96, ["cudnn", "fft"], str(out))
    assert [r["check"] for r in rows if not r["ok"]] == ["fft"] * 4


@pytest.mark.slow
def test_script_rehearses_a_step_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "STEPS": "model_convnext",
           "WORK": str(tmp_path / "work")}  # fmt: skip
    out = tmp_path / "out"
    subprocess.run(["bash", str(SCRIPT), str(out), "cpu"], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    assert "model_convnext exit=0" in (out / "steps.txt").read_text()
    recs = json.loads((out / "records" / "model_convnext.json").read_text())
    assert {(r["conv"], r["mode"]) for r in recs} == {
        (c, m) for c in ("dsc", "dcls_gauss") for m in ("infer", "train")
    }
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["pairs"]) == 2 and not summary["bar"]["met"]
    assert "| convnext_t | train | False | fp32 | 2 | True |" in (out / "summary.md").read_text()
