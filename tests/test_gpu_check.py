"""The GPU self-check: its checks and report, run on the CPU with a small model."""

import json

import torch

from dcls_audio import gpu_check


def test_checks_pass_on_a_small_model_and_write_the_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = gpu_check.main(
        ["--models", "convnext_atto", "--device", "cpu", "--batch-size", "2", "--steps", "2",
         "--frames", "256", "--json", str(out)]
    )  # fmt: skip
    assert rc == 0 and "all checks passed" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ok"] and [c["conv"] for c in report["checks"]] == ["dsc", "dcls_gauss"]
    for check in report["checks"]:
        assert check["resume_same_weights"] and check["resume_same_outputs"]
        assert check["dtype"] == "fp32" and check["train_samples_per_s"] > 0
        assert len(check["losses"]) == 2 and check["losses"][0] != check["losses"][1]
    assert report["install"]["torch"] == torch.__version__


def test_a_failing_model_is_reported_and_the_exit_status_says_so(monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr("dcls_audio.models.build_model", broken)
    rc = gpu_check.main(["--models", "convnext_atto", "--convs", "dsc", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 1 and "FAILED" in out and "no kernel image" in out


def test_info_and_a_missing_gpu(capsys):
    assert gpu_check.main(["--info"]) == 0
    out = capsys.readouterr().out
    assert "torchaudio" in out and "self-check" not in out  # the table, without the lock part
    info = json.loads(out[out.index("\n{") :])
    assert info["cuda_available"] == torch.cuda.is_available()
    assert len(info["devices"]) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    if not torch.cuda.is_available():
        assert gpu_check.main(["--device", "cuda"]) == 2
        assert "finds no usable GPU" in capsys.readouterr().err


def test_a_v100_is_not_supported_by_a_build_for_sm_75_and_newer():
    cu130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
    assert not gpu_check.arch_supported("sm_70", cu130)
    assert gpu_check.arch_supported("sm_90", cu130)
    assert gpu_check.arch_supported("sm_90", ["sm_80", "compute_80"])  # PTX: JIT-compiled
    assert not gpu_check.arch_supported("sm_70", ["sm_80", "compute_80"])  # not for older GPUs
