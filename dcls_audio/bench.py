"""Throughput (samples/s) of every model x conv at the model input size 128 x 1001.

The model input (N, 1, 128, 1001) is fed directly: the log-mel frontend is excluded (it is the
same for every model and conv). Inference runs in eval mode under ``torch.inference_mode`` so DCLS
layers use their cached (and, on small maps, cropped) kernel; a training step is forward, BCE
loss, backward and an AdamW step. Models and inputs are channels_last by default; on CUDA both
bf16 autocast and fp32 are measured, on the CPU fp32.

The convs of one model are measured interleaved: after warm-up, each repeat times every conv in
turn and the reported figure is the median over repeats, so that a DCLS/DSC ratio taken in one run
is fair even on a busy machine.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
INPUT_SHAPE = (1, 128, 1001)

#: Paper Table 1 (V100 inference samples/s) and the DCLS-Gauss / DSC ratio it implies.
PAPER_SAMPLES_PER_S = {
    "convnext_t": {"dsc": 591.4, "dcls_gauss": 509.4},
    "convformer_s18": {"dsc": 513.3, "dcls_gauss": 396.8},
    "fastvit_sa24": {"dsc": 633.6, "dcls_gauss": 551.7},
}
PAPER_RATIO = {m: round(v["dcls_gauss"] / v["dsc"], 3) for m, v in PAPER_SAMPLES_PER_S.items()}


def load_group(group: str, name: str, config_dir: Path = CONFIG_DIR) -> dict[str, Any]:
    """Load configs/<group>/<name>.yaml as a plain dict (model num_classes set to 527)."""
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} '{name}': {path} does not exist (known: {known})")
    cfg = OmegaConf.load(path)
    if group == "model":
        cfg.num_classes = 527  # the yaml interpolates ${data.num_classes}
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; otherwise the named device (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but torch.cuda.is_available() is False")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, got '{device}'")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    """Human-readable name of the device (GPU name, or CPU model and torch thread count)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Runner:
    """One model prepared for a (mode, dtype) measurement; `step()` processes one batch."""

    def __init__(
        self,
        model: nn.Module,
        mode: str,
        device: torch.device,
        dtype: str,
        batch_size: int,
        channels_last: bool,
    ) -> None:
        self.model, self.mode, self.device = model, mode, device
        self.autocast = dtype == "bf16"
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model.to(device=device, memory_format=fmt)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch_size, *INPUT_SHAPE, generator=gen).to(device, memory_format=fmt)
        if mode == "train":
            self.model.train()
            logits_dim = self._num_outputs()
            self.y = (torch.rand(batch_size, logits_dim, generator=gen) < 0.05).float().to(device)
            self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4)
        else:
            self.model.eval()

    def _num_outputs(self) -> int:
        with torch.no_grad():
            self.model.eval()
            n = self.model(self.x[:1]).shape[-1]
            self.model.train()
        return int(n)

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.mode == "infer":
                with torch.inference_mode():
                    self.model(self.x)
                return
            logits = self.model(self.x).float()
            loss = nn.functional.binary_cross_entropy_with_logits(logits, self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def time(self, iters: int) -> float:
        """Seconds for `iters` steps (device synchronised)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(iters):
            self.step()
        _sync(self.device)
        return time.perf_counter() - t0


def measure_model(
    model_name: str,
    convs: Sequence[str],
    mode: str,
    device: torch.device,
    dtype: str,
    batch_size: int,
    iters: int,
    warmup: int,
    repeats: int,
    channels_last: bool,
) -> list[dict[str, Any]]:
    """Interleaved measurement of one model under several convs; one record per conv."""
    from dcls_audio.models import build_model

    model_cfg = load_group("model", model_name)
    model_cfg["pretrained"] = None
    runners = {}
    for conv in convs:
        torch.manual_seed(0)
        model = build_model(model_cfg, load_group("conv", conv))
        runners[conv] = _Runner(model, mode, device, dtype, batch_size, channels_last)
    for runner in runners.values():
        for _ in range(warmup):
            runner.step()
    times: dict[str, list[float]] = {c: [] for c in convs}
    for _ in range(repeats):
        for conv, runner in runners.items():
            times[conv].append(runner.time(iters))
    records = []
    name = device_name(device)
    for conv in convs:
        per_s = [batch_size * iters / t for t in times[conv]]
        records.append(
            {
                "model": model_name,
                "conv": conv,
                "mode": mode,
                "device": device.type,
                "dtype": dtype,
                "batch_size": batch_size,
                "samples_per_s": round(statistics.median(per_s), 3),
                "repeats": [round(v, 3) for v in per_s],
                "iters": iters,
                "warmup": warmup,
                "channels_last": channels_last,
                "device_name": name,
            }
        )
    del runners
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return records


def run_benchmark(
    models: Sequence[str],
    convs: Sequence[str],
    mode: str = "infer",
    batch_size: int = 8,
    device: str = "auto",
    iters: int = 5,
    warmup: int = 2,
    repeats: int = 3,
    channels_last: bool | None = None,
    dtypes: Sequence[str] | None = None,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Measure every model x conv x mode (x dtype on CUDA); returns the list of records."""
    if mode not in ("infer", "train", "both"):
        raise ValueError(f"mode must be infer, train or both, got '{mode}'")
    for n, v in (("batch_size", batch_size), ("iters", iters), ("repeats", repeats)):
        if v < 1:
            raise ValueError(f"{n} must be >= 1, got {v}")
    dev = resolve_device(device)
    if dtypes is None:
        dtypes = ["bf16", "fp32"] if dev.type == "cuda" else ["fp32"]
    if channels_last is None:
        # channels_last everywhere: the format of the CUDA figures; on the CPU measured here it
        # changed the whole-model ratio by less than the noise (docs/benchmarks.md)
        channels_last = True
    modes = ["infer", "train"] if mode == "both" else [mode]
    records: list[dict[str, Any]] = []
    for model_name in models:
        for m in modes:
            for dtype in dtypes:
                recs = measure_model(
                    model_name,
                    convs,
                    m,
                    dev,
                    dtype,
                    batch_size,
                    iters,
                    warmup,
                    repeats,
                    channels_last,
                )
                records.extend(recs)
                if log is not None:
                    for r in recs:
                        log(
                            f"{r['model']:>15} {r['conv']:>13} {r['mode']:>5} {r['device']:>4} "
                            f"{r['dtype']:>4} bs={r['batch_size']:<4} {r['samples_per_s']:9.2f}/s"
                        )
    return records


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """Markdown table of the records with the DCLS/DSC ratio per model beside the paper's."""
    base = {
        (r["model"], r["mode"], r["device"], r["dtype"], r["batch_size"]): r["samples_per_s"]
        for r in records
        if r["conv"] == "dsc"
    }
    lines = [
        "| model | conv | mode | device | dtype | batch | samples/s | ratio to DSC | paper ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        key = (r["model"], r["mode"], r["device"], r["dtype"], r["batch_size"])
        ratio = "" if key not in base else f"{r['samples_per_s'] / base[key]:.3f}"
        paper = ""
        if r["conv"] == "dcls_gauss" and r["mode"] == "infer" and r["model"] in PAPER_RATIO:
            paper = f"{PAPER_RATIO[r['model']]:.3f}"
        lines.append(
            f"| {r['model']} | {r['conv']} | {r['mode']} | {r['device']} | {r['dtype']} | "
            f"{r['batch_size']} | {r['samples_per_s']:.2f} | {ratio} | {paper} |"
        )
    return "\n".join(lines) + "\n"
