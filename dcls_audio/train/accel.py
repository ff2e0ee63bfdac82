"""Speed options of the trainer and the inference commands: channels_last and torch.compile.

``trainer.channels_last`` (``auto``: true on CUDA, where the DCLS Triton kernels and cuDNN's
pointwise layers read channels_last directly; on the CPU false: it measured no faster there,
see `CPU_CHANNELS_LAST`) converts the model and its input batches.
``trainer.compile`` compiles the module that takes the training steps (after DDP wraps it, as
timm does): ``none`` | ``default`` | ``max-autotune-no-cudagraphs`` | ``reduce-overhead`` (CUDA
graphs; CUDA and one process only). The weights a run saves and evaluates are always the plain
module's, so checkpoint keys never carry ``_orig_mod.`` and a compiled run and an eager one
resume each other's files.

Per-layer choices that are timed eagerly (the CUDA depthwise path and Triton block sizes) fall
back to a heuristic while torch.compile traces; `warm_up` makes them on the real shapes first,
in eager mode, without drawing random numbers or changing any weight or buffer, so a resumed
run stays bit-exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead")
# On the CPU, measured on a quiet 2-core machine (2 threads, fp32), channels_last / NCHW time:
# ConvNeXt-T batch 2 DSC 0.99 train / 0.98 infer, DCLS-Gauss 1.00 / 1.01; the demo model batch
# 16 DSC 1.00 / 0.98, DCLS 1.00 / 1.01: no difference, so the CPU keeps NCHW (no conversions).
# On CUDA channels_last is the layout the Triton DCLS kernels and cuDNN's pointwise layers read
# directly.
CPU_CHANNELS_LAST = {"dcls": False, "dsc": False}


def resolve_channels_last(
    value: Any, device: torch.device, conv_type: str = "dcls", option: str = "trainer.channels_last"
) -> bool:
    """``trainer.channels_last`` as a bool; ``auto``: true on CUDA, on the CPU by conv type."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if isinstance(value, str) and value.lower() == "auto":
        return device.type == "cuda" or CPU_CHANNELS_LAST.get(conv_type, False)
    raise ValueError(f"{option}={value!r}: expected auto, true or false")


def check_compile(
    mode: Any, device: torch.device, world_size: int, option: str = "trainer.compile"
) -> str:
    """``trainer.compile`` checked against where the run is; an error says what works instead."""
    mode = "none" if mode is None or mode is False else str(mode)
    if mode not in COMPILE_MODES:
        raise ValueError(f"{option}={mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise ValueError(
            f"{option}=reduce-overhead captures CUDA graphs and needs a CUDA device (this "
            f"run is on {device}); use {option}=default or none"
        )
    if mode == "reduce-overhead" and world_size > 1:
        raise ValueError(
            f"{option}=reduce-overhead under DDP ({world_size} processes): the gradient "
            "all-reduce hooks run between the captured graphs, which CUDA graphs cannot "
            f"replay; use {option}=max-autotune-no-cudagraphs or default"
        )
    return mode


def memory_format(channels_last: bool) -> torch.memory_format:
    """``torch.channels_last`` or ``torch.contiguous_format``."""
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_module(module: nn.Module, mode: str) -> nn.Module:
    """``torch.compile(module)`` in ``mode`` (inductor); the module itself for ``none``.

    Static shapes (``dynamic=False``): a training step's shapes never change, and the DCLS
    layers plan their kernel crop from the input size in Python; a shape seen earlier in the
    process (another model of the same class) would otherwise turn on dynamic shapes.
    """
    if mode == "none":
        return module
    return torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)


def prepare_inference(
    model: nn.Module, device: torch.device, channels_last: Any = "auto", compile: Any = "none"
) -> nn.Module:
    """The module an inference command calls: ``model`` in its layout, compiled or not.

    ``channels_last`` and ``compile`` as the trainer's (``--channels-last``, ``--compile``);
    the kernels of DCLS layers are built inside the compiled graph from the current weights.
    """
    from dcls_audio.dcls import DclsNd

    conv_type = "dcls" if any(isinstance(m, DclsNd) for m in model.modules()) else "dsc"
    layout = resolve_channels_last(channels_last, device, conv_type, "--channels-last")
    mode = check_compile(compile, device, 1, "--compile")  # no DDP wrapper in inference
    model.to(memory_format=memory_format(layout))
    return compile_module(model, mode)


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run a block that leaves the random streams, buffers and gradients as they were.

    Parameters are not saved: the block must not step an optimizer.
    """
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    training = model.training
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        try:
            yield
        finally:
            model.train(training)
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for p, g in grads:
                p.grad = g


def warm_up(
    model: nn.Module,
    batch_shape: tuple[int, ...],
    device: torch.device,
    *,
    amp: bool,
    channels_last: bool,
    training: bool = True,
) -> None:
    """One eager forward (and backward when ``training``) on zeros, so timed choices are made.

    The per-layer path and block-size choices are cached by shape; a compiled model traced
    afterwards finds them instead of the heuristic. Nothing observable changes (`untouched`).
    """
    x = torch.zeros(batch_shape, device=device).contiguous(
        memory_format=memory_format(channels_last)
    )
    with untouched(model, device):
        model.train(training)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            if training:
                model(x).float().sum().backward()
            else:
                with torch.no_grad():
                    model(x)
