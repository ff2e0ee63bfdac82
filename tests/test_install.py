"""A non-editable install works from any directory: configs ship inside the package."""

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import ROOT


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_wheel_install_runs_every_command_from_another_directory(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    site = Path(
        sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)})
    )
    # the dependencies come from this interpreter's environment (no network, no editable finder)
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    bin_dir = env_dir / "bin"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    # the build uses the locked setuptools of this environment, not the one ensurepip bundles
    _run([str(bin_dir / "python"), "-m", "pip", "uninstall", "-q", "-y", "setuptools"], tmp_path,
         env)  # fmt: skip
    _run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-deps",
         "--no-build-isolation", str(ROOT)],
        tmp_path, env,
    )  # fmt: skip
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(bin_dir / "python"), "-c", "import dcls_audio; print(dcls_audio.__file__)"],
                 work, env)  # fmt: skip
    assert Path(where.strip()).is_relative_to(env_dir)

    _run(["dcls-audio-bench-throughput", "--models", "convnext_atto", "--convs", "dsc",
          "--iters", "1", "--repeats", "1", "--warmup", "0", "--batch-size", "1",
          "--device", "cpu"], work, env)  # fmt: skip
    assert "| ConvNeXt-T | dcls_gauss |" in _run(["dcls-audio-model-table"], work, env)
    _run(["dcls-audio-synthetic", "--out", "syn", "--train", "4", "--eval", "3"], work, env)
    _run(["dcls-audio-train", "experiment=demo", "data=synthetic", "data.root=syn",
          "data.num_workers=0", "trainer.max_steps=1", "trainer.global_batch_size=2",
          "trainer.batch_size=2", "hydra.run.dir=run"], work, env)  # fmt: skip
    assert (work / "run" / "results.json").is_file()
    sf.write(work / "a.wav", np.random.default_rng(0).normal(0, 0.1, 8000), 16000)
    tags = json.loads(
        _run(["dcls-audio-tag", "a.wav", "--checkpoint", "run/last.pt", "--json"], work, env)
    )
    assert tags["results"][0]["num_windows"] == 1 and len(tags["results"][0]["top"]) == 10
    assert "mAP" in _run(["dcls-audio-results", "run"], work, env)
