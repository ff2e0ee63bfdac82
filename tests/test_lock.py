"""The dependency lock and the install self-check: one tested torch family, broken wheels caught."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

from dcls_audio import lockfile, selfcheck

LOCK = ROOT / "requirements.lock"


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_torch_family_is_pinned_exactly_and_agrees_with_the_lock():
    deps = {Requirement(d).name: Requirement(d) for d in _project()["dependencies"]}
    exact = {}
    for name in lockfile.TORCH_FAMILY:
        (spec,) = deps[name].specifier
        assert spec.operator == "==", f"{name} must be pinned exactly, not {spec}"
        exact[name] = spec.version
    assert {n: lockfile.pins(LOCK)[n] for n in lockfile.TORCH_FAMILY} == exact
    # one release train: torchaudio X.Y.Z with torch X.Y.Z, torchvision 0.(Y+15).Z
    major, minor, patch = (int(v) for v in exact["torch"].split("."))
    assert exact["torchaudio"] == exact["torch"]
    assert exact["torchvision"] == f"0.{minor + 15}.{patch}" and major == 2


def test_every_other_dependency_has_an_upper_bound_and_is_in_the_lock():
    locked = lockfile.pins(LOCK)
    for dep in _project()["dependencies"] + _project()["optional-dependencies"]["dev"]:
        req = Requirement(dep)
        ops = {s.operator for s in req.specifier}
        assert ops & {"==", "<"}, f"{dep}: give an upper bound"
        name = lockfile.normalize(req.name)
        assert name in locked and req.specifier.contains(locked[name]), (dep, locked.get(name))
    assert _project()["requires-python"] == ">=3.11"


def test_every_lock_entry_carries_hashes():
    entries = lockfile.entries(LOCK.read_text())
    assert len(entries) > 100
    for name, version, block in entries:
        assert re.search(r"--hash=sha256:[0-9a-f]{64}", block), f"{name}=={version} has no hash"


def test_the_cuda_variant_lock_leaves_out_torch_and_its_cuda_runtime():
    text = LOCK.read_text()
    rest = lockfile.entries(lockfile.without_torch(text))
    names = {n for n, _, _ in rest}
    assert not names & set(lockfile.TORCH_FAMILY)
    assert not [n for n in names if n.startswith("nvidia-") or n.startswith("cuda-")]
    assert {"numpy", "timm", "triton", "hydra-core"} <= names
    kept = {n: b for n, _, b in lockfile.entries(text)}
    assert all(block == kept[n] for n, _, block in rest)  # hashes and markers kept verbatim
    dropped = {n for n, _, _ in lockfile.entries(text)} - names
    assert "nvidia-cudnn-cu13" in dropped and "torch" in dropped


def test_this_environment_is_the_locked_one():
    assert selfcheck.lock_mismatches(LOCK) == []


def test_a_mismatch_and_a_marker_are_read(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text(
        "numpy==0.0.1 \\\n    --hash=sha256:" + "0" * 64 + "\n"
        "colorama==0.0.1 ; sys_platform == 'nonesuch' \\\n    --hash=sha256:" + "0" * 64 + "\n"
    )
    (mismatch,) = selfcheck.lock_mismatches(lock)
    assert mismatch.startswith("numpy: installed ") and mismatch.endswith("lock 0.0.1")
    lock.write_text("# nothing pinned\n")
    with pytest.raises(ValueError, match="no 'name==version' pins"):
        lockfile.pins(lock)


def test_the_installed_extensions_pass():
    checks = selfcheck.run_checks()
    assert [c.package for c in checks][:3] == ["torch", "torchaudio", "torchvision"]
    assert all(c.ok for c in checks), selfcheck.table(checks)


def _shadowed_torchaudio(tmp_path: Path, how: str) -> dict:
    """A copy of torchaudio whose native library is broken, ahead of the venv's on the path."""
    import torchaudio

    src = Path(torchaudio.__file__).parent
    dst = tmp_path / "site" / "torchaudio"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    for lib in (dst / "lib").glob("*torchaudio*.so"):
        if how == "corrupt":
            lib.write_bytes(b"not an ELF file")
        else:
            lib.unlink()
    return {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}


@pytest.mark.parametrize("how", ["corrupt", "removed"])
def test_a_broken_torchaudio_library_fails_the_check_naming_torchaudio(tmp_path, how):
    env = _shadowed_torchaudio(tmp_path, how)
    for module in ("dcls_audio.selfcheck", "dcls_audio.gpu_check"):
        args = [sys.executable, "-m", module] + (["--info"] if module.endswith("gpu_check") else [])
        proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        (row,) = [r for r in proc.stdout.splitlines() if r.startswith("torchaudio ")]
        assert "FAILED" in row
        assert "error: torchaudio 2.11.0 does not work beside torch" in proc.stdout
        assert "make clean install" in proc.stdout
        torch_row = next(r for r in proc.stdout.splitlines() if r.startswith("torch "))
        assert " ok " in torch_row


def test_the_license_is_an_spdx_expression_the_locked_setuptools_builds():
    """SPDX ``license`` with ``license-files``: setuptools >= 77 reads it; older ones refuse it,
    and a table or a pattern matching no file is deprecated (builds fail after 2027-02-18)."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert doc["project"]["license"] == "MIT"
    for pattern in doc["project"]["license-files"]:
        assert list(ROOT.glob(pattern)), f"license-files {pattern!r} matches no file"
    (build,) = [Requirement(r) for r in doc["build-system"]["requires"]]
    assert build.name == "setuptools"
    assert not build.specifier.contains("76.9"), "setuptools < 77 reads the SPDX string as an error"
    assert build.specifier.contains(lockfile.pins(LOCK)["setuptools"]), "the locked one builds it"
