"""Install self-check: load every compiled extension the project uses and make one call to each.

    python -m dcls_audio.selfcheck            # the last step of `make install`
    dcls-audio-gpu-check --info               # prints the same table

A wheel built for another torch (a torchaudio 2.11.1 beside torch 2.11.0, say) often imports but
fails at its first native call, or torchaudio silently runs without its library; each check
therefore asserts that the library loaded and calls into it. Beside a source tree it also
compares the environment with ``requirements.lock``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dcls_audio.lockfile import normalize, pins

FIX = "reinstall the locked set: `make clean install` (or `pip install -r requirements.lock`)"
LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


@dataclass
class Check:
    """One package's result: its version and whether its native code loaded and ran."""

    package: str
    version: str
    ok: bool
    detail: str


def _version(dist: str) -> str:
    """Installed version of a distribution, or 'not installed'."""
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "not installed"


def _torch() -> str:
    import torch

    x = torch.arange(6.0).reshape(2, 3)
    assert torch.equal(x @ x.T, torch.tensor([[5.0, 14.0], [14.0, 50.0]]))
    return f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"


def _torchaudio() -> str:
    import torch
    import torchaudio
    from torchaudio import _extension

    if not _extension._IS_TORCHAUDIO_EXT_AVAILABLE:
        raise RuntimeError("torchaudio/lib/_torchaudio did not load (torchaudio runs without it)")
    # forced alignment runs in libtorchaudio: a call fails if the library does not match torch
    emission = torch.log_softmax(torch.zeros(1, 4, 3), dim=-1)
    targets = torch.tensor([[1, 2]], dtype=torch.int32)
    labels, _ = torchaudio.functional.forced_align(emission, targets)
    assert labels.shape == (1, 4)
    mel = torchaudio.transforms.MelSpectrogram(sample_rate=32000, n_fft=64, n_mels=8)
    assert mel(torch.zeros(1, 320)).shape[1] == 8
    return "libtorchaudio loaded, forced_align ran"


def _torchvision() -> str:
    import torch
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
    assert keep.tolist() == [0]
    return "ops.nms ran"


def _h5py() -> str:
    import h5py
    import numpy as np

    with h5py.File(io.BytesIO(), "w") as f:
        f["x"] = np.arange(3, dtype=np.int16)
        assert f["x"][2] == 2
    return f"HDF5 {h5py.version.hdf5_version}"


def _soundfile() -> str:
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(16, dtype=np.int16), 32000, format="FLAC")
    buf.seek(0)
    assert sf.read(buf, dtype="int16")[0].shape == (16,)
    return f"libsndfile {sf.__libsndfile_version__}"


def _onnxruntime() -> str:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})
    assert y.tolist() == [0.0, 2.0]
    return f"onnx {onnx.__version__}, Relu ran"


def _triton() -> str:
    import triton
    import triton.language  # noqa: F401  (the compiler front end)

    return "imported"


def _scientific() -> str:
    import numpy as np
    import scipy.signal
    from sklearn.metrics import average_precision_score

    y = scipy.signal.lfilter([1.0], [1.0, -0.5], np.ones(3))
    assert np.allclose(y, [1.0, 1.5, 1.75])
    assert average_precision_score([0, 1], [0.1, 0.9]) == 1.0
    return f"numpy {np.__version__}, scipy {scipy.__version__}"


# (package as reported, distribution whose version is shown, check)
CHECKS: list[tuple[str, str, Callable[[], str]]] = [
    ("torch", "torch", _torch),
    ("torchaudio", "torchaudio", _torchaudio),
    ("torchvision", "torchvision", _torchvision),
    ("h5py", "h5py", _h5py),
    ("soundfile", "soundfile", _soundfile),
    ("onnxruntime", "onnxruntime", _onnxruntime),
    ("numpy/scipy/sklearn", "scikit-learn", _scientific),
]


def run_checks() -> list[Check]:
    """Every extension check (triton only where installed); failures are recorded, not raised."""
    checks = list(CHECKS)
    if _version("triton") != "not installed":
        checks.append(("triton", "triton", _triton))
    found = []
    for package, dist, fn in checks:
        try:
            found.append(Check(package, _version(dist), True, fn()))
        except Exception as err:  # a broken wheel raises anything from OSError to AssertionError
            detail = f"{type(err).__name__}: {err}".splitlines()[0][:200]
            found.append(Check(package, _version(dist), False, detail))
    return found


def lock_mismatches(lock: Path = LOCK) -> list[str]:
    """'name: installed X, lock Y' for each locked package of this platform installed otherwise."""
    from packaging.markers import Marker
    from packaging.version import Version

    text = lock.read_text()
    out = []
    for line in text.splitlines():
        if not line[:1].isalnum() or "==" not in line:
            continue
        spec, _, marker = line.rstrip(" \\").partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, _, want = spec.strip().partition("==")
        have = _version(name)
        # a CUDA variant of torch carries a local label (2.11.0+cu126): compare the release
        if have == "not installed" or Version(have).public.split("+")[0] != Version(want).public:
            out.append(f"{normalize(name)}: installed {have}, lock {want}")
    pins(lock)  # a lock without pins is an error, not an empty comparison
    return out


def table(checks: list[Check]) -> str:
    """The checks as a fixed-width table, one package per line."""
    torch_version = _version("torch")
    lines = [f"{'package':<20} {'version':<16} {'status':<7} detail"]
    for c in checks:
        lines.append(f"{c.package:<20} {c.version:<16} {'ok' if c.ok else 'FAILED':<7} {c.detail}")
    for c in checks:
        if not c.ok:
            lines.append(
                f"error: {c.package} {c.version} does not work beside torch {torch_version}; {FIX}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """CLI: print the table; exit 1 if an extension fails or the venv differs from the lock."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lock", default=str(LOCK), help="compare with this lock (if it exists)")
    args = ap.parse_args(argv)
    checks = run_checks()
    print(table(checks))
    ok = all(c.ok for c in checks)
    lock = Path(args.lock)
    if lock.is_file():
        wrong = lock_mismatches(lock)
        for w in wrong:
            print(f"error: {w} ({lock}); {FIX}")
        print(f"lock: {'all locked versions installed' if not wrong else 'MISMATCH'} ({lock})")
        ok = ok and not wrong
    print("self-check passed" if ok else "self-check FAILED", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
