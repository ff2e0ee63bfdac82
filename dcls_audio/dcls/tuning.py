"""Block configurations of the Triton depthwise kernels: candidates, per-shape timing, a file.

Each kernel (forward, which also serves the input gradient, and weight gradient) has a default
configuration and a list of candidates (block sizes, the Toeplitz variant, ``num_warps``,
``num_stages``). On CUDA, the first call for a shape times every candidate once (compiling each;
one that fails to compile or launch is left out) and keeps the fastest in :data:`TUNED`; the
interpreter, ``DCLS_TRITON_TUNE=0``, ``DCLS_CONV_AUTOTUNE=0``, deterministic algorithms,
torch.compile tracing and CUDA graph capture use the default (or an earlier choice).
``DCLS_TRITON_CONFIGS=path.json`` names a file of earlier choices read on import (:func:`save`
writes one), so that later processes skip the timing.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "FWD_CANDIDATES",
    "FWD_DEFAULT",
    "TUNED",
    "WGRAD_CANDIDATES",
    "WGRAD_DEFAULT",
    "forward_config",
    "load",
    "save",
    "tuning_enabled",
    "weight_grad_config",
]


def _fwd(bm: int, bw: int, toep: int, warps: int, stages: int, r: int = 1) -> dict:
    cfg = {"BM": bm, "BW": bw, "TOEP": toep, "num_warps": warps, "num_stages": stages}
    return cfg | ({"R": r} if r != 1 else {})  # R 4: four output rows of BM batch items


def _wgrad(br: int, bw: int, programs: int, warps: int, stages: int) -> dict:
    return {"BR": br, "BW": bw, "programs": programs, "num_warps": warps, "num_stages": stages}


# num_stages 1: plain loads, so that the 22 of 23 rows a kernel row shares with the previous one
# come from L1 (the pipelined cp.async copies bypass it)
FWD_DEFAULT = _fwd(128, 32, 1, 8, 1)
FWD_CANDIDATES = [
    FWD_DEFAULT,
    _fwd(64, 32, 1, 4, 1),
    _fwd(128, 32, 1, 4, 1),
    _fwd(256, 32, 1, 8, 1),
    _fwd(128, 64, 1, 8, 1),
    _fwd(128, 32, 0, 8, 1),
    _fwd(256, 32, 0, 8, 1),
    _fwd(64, 32, 1, 4, 2),
    _fwd(128, 32, 1, 8, 2),
    _fwd(64, 16, 1, 4, 1),
    _fwd(128, 16, 1, 4, 1),
    _fwd(256, 16, 1, 8, 1),
    _fwd(128, 16, 0, 4, 1),
    _fwd(64, 32, 0, 4, 1, r=4),
    _fwd(64, 32, 1, 4, 1, r=4),
    _fwd(64, 32, 0, 4, 2, r=4),
    _fwd(64, 16, 0, 4, 1, r=4),
    _fwd(64, 16, 1, 4, 1, r=4),
]
WGRAD_DEFAULT = _wgrad(64, 32, 4096, 4, 1)
WGRAD_CANDIDATES = [
    WGRAD_DEFAULT,
    _wgrad(32, 32, 4096, 4, 1),
    _wgrad(64, 32, 2048, 4, 1),
    _wgrad(64, 32, 8192, 4, 1),
    _wgrad(128, 32, 2048, 8, 1),
    _wgrad(64, 32, 4096, 8, 2),
    _wgrad(32, 32, 4096, 4, 2),
    _wgrad(64, 64, 4096, 8, 1),
    _wgrad(32, 16, 4096, 4, 1),
    _wgrad(64, 16, 4096, 4, 1),
]


# the kernels of any layout (triton_dwconv_cl): channel blocks BC; BWI follows BW
def _sfwd(bc: int, bm: int, bw: int, warps: int, stages: int) -> dict:
    return {"BC": bc, "BM": bm, "BW": bw, "num_warps": warps, "num_stages": stages}


def _swgrad(bc: int, br: int, bw: int, programs: int, warps: int, stages: int) -> dict:
    cfg = {"BC": bc, "BR": br, "BW": bw, "programs": programs}
    return cfg | {"num_warps": warps, "num_stages": stages}


STRIDED_FWD_DEFAULT = _sfwd(8, 32, 16, 4, 1)
STRIDED_FWD_CANDIDATES = [
    STRIDED_FWD_DEFAULT,
    _sfwd(8, 16, 16, 4, 1),
    _sfwd(8, 64, 16, 8, 1),
    _sfwd(16, 16, 16, 4, 1),
    _sfwd(16, 32, 16, 8, 1),
    _sfwd(8, 32, 32, 8, 1),
    _sfwd(4, 64, 32, 8, 1),
    _sfwd(8, 32, 16, 4, 2),
]
STRIDED_WGRAD_DEFAULT = _swgrad(8, 32, 16, 4096, 4, 1)
STRIDED_WGRAD_CANDIDATES = [
    STRIDED_WGRAD_DEFAULT,
    _swgrad(8, 16, 16, 4096, 4, 1),
    _swgrad(8, 64, 16, 4096, 8, 1),
    _swgrad(16, 32, 16, 4096, 8, 1),
    _swgrad(8, 32, 16, 2048, 4, 1),
    _swgrad(8, 32, 16, 8192, 4, 1),
    _swgrad(4, 32, 32, 4096, 8, 1),
    _swgrad(8, 32, 16, 4096, 4, 2),
]

#: (kernel, shape, dtype, device name) -> chosen configuration, with "ms" (its time) and "timed"
TUNED: dict[str, dict] = {}
#: per key, every candidate's time in ms (None: failed); for the tuning report
TIMINGS: dict[str, list[tuple[dict, float | None]]] = {}


def tuning_enabled(device: torch.device) -> bool:
    """Time the candidates: on CUDA, not tracing or capturing, unless switched off.

    ``DCLS_TRITON_TUNE=force`` also times them off CUDA (the interpreter, in rehearsals).
    """
    flag = os.environ.get("DCLS_TRITON_TUNE", "1")
    if torch.compiler.is_compiling() or flag == "0":
        return False
    if device.type != "cuda":
        return flag == "force"
    if os.environ.get("DCLS_CONV_AUTOTUNE", "1") == "0":
        return False
    if torch.are_deterministic_algorithms_enabled():
        return False  # every process computes alike: the default or a configuration file
    return not torch.cuda.is_current_stream_capturing()


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def _key(kind: str, shape: tuple, dtype: torch.dtype, device: torch.device) -> str:
    dims = "x".join(str(int(v)) for v in shape)
    return f"{kind}|{dims}|{str(dtype).removeprefix('torch.')}|{_device_name(device)}"


def _time_ms(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # compiles
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - start) * 1e3 / repeats
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end))
    return best


def _choose(
    key: str, default: dict, candidates: list[dict], run: Callable[[dict], object],
    device: torch.device, valid: Callable[[dict], bool],
) -> dict:  # fmt: skip
    if key in TUNED:
        return TUNED[key]
    if not tuning_enabled(device):
        return default
    timings: list[tuple[dict, float | None]] = []
    for cfg in [c for c in candidates if valid(c)] or [default]:
        try:
            timings.append((cfg, _time_ms(lambda cfg=cfg: run(cfg), 5, device)))
        except Exception as err:  # noqa: BLE001 - a candidate that fails is no candidate
            warnings.warn(f"Triton config {cfg} left out for {key}: {err}", stacklevel=3)
            timings.append((cfg, None))
    TIMINGS[key] = timings
    ok = [(ms, i) for i, (_, ms) in enumerate(timings) if ms is not None]
    if not ok:
        raise RuntimeError(f"no Triton configuration runs for {key}")
    ms, best = min(ok)
    TUNED[key] = dict(timings[best][0], ms=round(ms, 5), timed=len(ok))
    return TUNED[key]


def _config(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in ("ms", "timed")}


_DECIDED: dict[tuple, dict] = {}  # shape tuple -> TUNED entry, without building the key


def _decided(fast: tuple, key: str, cfg: dict) -> dict:
    if key in TUNED:
        _DECIDED[fast] = cfg
    return cfg


def forward_config(
    xa: Tensor, weight: Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int],
    run: Callable[[dict], object],
) -> dict:  # fmt: skip
    """The block configuration of the forward kernel for this shape (timed on first use)."""
    fast = ("fwd", xa.shape, weight.shape, in_hw, out_hw, xa.dtype, xa.device)
    if fast in _DECIDED:
        return _DECIDED[fast]
    n, c = xa.shape[:2]
    kh, kw = weight.shape[-2:]
    shape = (n, c, *in_hw, *out_hw, kh, kw)
    rows = n * out_hw[0]

    def valid(cfg: dict) -> bool:  # no block far larger than the work it covers
        m = n if cfg.get("R", 1) == 4 else rows  # the rows variant's M: batch items
        return cfg["BM"] <= max(32, 2 * m) and cfg["BW"] <= max(16, 2 * out_hw[1])

    key = _key("fwd", shape, xa.dtype, xa.device)
    cfg = _config(_choose(key, FWD_DEFAULT, FWD_CANDIDATES, run, xa.device, valid))
    return _decided(fast, key, cfg)


def weight_grad_config(
    xa: Tensor, kernel_hw: tuple[int, int], out_hw: tuple[int, int], run: Callable[[dict], object]
) -> dict:
    """The block configuration of the weight-gradient kernel for this shape."""
    fast = ("wgrad", xa.shape, kernel_hw, out_hw, xa.dtype, xa.device)
    if fast in _DECIDED:
        return _DECIDED[fast]
    n, c = xa.shape[:2]
    shape = (n, c, xa.shape[2], *out_hw, *kernel_hw)

    def valid(cfg: dict) -> bool:
        return cfg["BW"] <= max(16, 2 * out_hw[1])

    key = _key("wgrad", shape, xa.dtype, xa.device)
    cfg = _config(_choose(key, WGRAD_DEFAULT, WGRAD_CANDIDATES, run, xa.device, valid))
    return _decided(fast, key, cfg)


def _layout(t: Tensor) -> str:
    """``cl`` for channels_last, ``nchw`` for contiguous, else the strides (keys of choices)."""
    if t.is_contiguous():
        return "nchw"
    if t.is_contiguous(memory_format=torch.channels_last):
        return "cl"
    return "s" + "-".join(str(v) for v in t.stride())


def strided_forward_config(
    x: Tensor, weight: Tensor, out_hw: tuple[int, int], run: Callable[[dict], object]
) -> dict:
    """The block configuration of the any-layout forward kernel for this shape and layout."""
    fast = ("sfwd", x.shape, x.stride(), weight.shape, out_hw, x.dtype, x.device)
    if fast in _DECIDED:
        return _DECIDED[fast]
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    rows = n * out_hw[0]

    def valid(cfg: dict) -> bool:  # no block far larger than the work it covers
        return cfg["BM"] <= max(16, 2 * rows) and cfg["BW"] <= max(16, 2 * out_hw[1])

    key = _key(f"sfwd-{_layout(x)}", (n, c, h, w, *out_hw, kh, kw), x.dtype, x.device)
    candidates = STRIDED_FWD_CANDIDATES
    cfg = _config(_choose(key, STRIDED_FWD_DEFAULT, candidates, run, x.device, valid))
    return _decided(fast, key, cfg)


def strided_weight_grad_config(
    x: Tensor, grad: Tensor, kernel_hw: tuple[int, int], run: Callable[[dict], object]
) -> dict:
    """The block configuration of the any-layout weight-gradient kernel."""
    fast = ("swgrad", x.shape, x.stride(), grad.shape, grad.stride(), kernel_hw, x.dtype, x.device)
    if fast in _DECIDED:
        return _DECIDED[fast]
    shape = (*x.shape, *grad.shape[-2:], *kernel_hw)

    def valid(cfg: dict) -> bool:
        return cfg["BW"] <= max(16, 2 * grad.shape[-1])

    key = _key(f"swgrad-{_layout(x)}-{_layout(grad)}", shape, x.dtype, x.device)
    candidates = STRIDED_WGRAD_CANDIDATES
    cfg = _config(_choose(key, STRIDED_WGRAD_DEFAULT, candidates, run, x.device, valid))
    return _decided(fast, key, cfg)


def save(path: str | Path) -> None:
    """Write :data:`TUNED` (merged into the file's earlier entries) as JSON."""
    path = Path(path)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(old | TUNED, indent=1, sort_keys=True) + "\n")


def load(path: str | Path) -> int:
    """Read earlier choices into :data:`TUNED`; returns how many were read."""
    entries = json.loads(Path(path).read_text())
    TUNED.update(entries)
    _DECIDED.clear()
    return len(entries)


if os.environ.get("DCLS_TRITON_CONFIGS") and Path(os.environ["DCLS_TRITON_CONFIGS"]).exists():
    load(os.environ["DCLS_TRITON_CONFIGS"])
