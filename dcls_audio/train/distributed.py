"""Process-group set-up for torchrun and SLURM (submitit) launches, and batch arithmetic.

torchrun exports RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT; SLURM (and so Hydra's
submitit launcher) exports SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / SLURM_NODELIST instead.
`resolve_env` translates the second into the first, in this one place.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Rank layout of this process: global rank, rank on the node, number of processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = DEFAULT_MASTER_PORT

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that does all file, console and wandb output."""
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """First host name of a SLURM node list such as ``gpu[003-005,010],cpu1`` -> ``gpu003``."""
    nodelist = nodelist.strip()
    if not nodelist:
        raise ValueError("SLURM_NODELIST is empty")
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?([^,]*)", nodelist)
    if match is None:
        raise ValueError(f"cannot parse SLURM_NODELIST={nodelist!r}")
    prefix, ranges, suffix = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first + suffix


def resolve_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Rank layout from torchrun's variables, else SLURM's, else a single process.

    torchrun's variables win when both are present (torchrun started inside a SLURM allocation).
    SLURM variables are only used when SLURM_NTASKS > 1 or torchrun's are absent, so that a plain
    ``python train.py`` inside ``salloc`` stays a single process.
    """
    env = os.environ if environ is None else environ
    port = int(env.get("MASTER_PORT", DEFAULT_MASTER_PORT))
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            world_size=int(env["WORLD_SIZE"]),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=port,
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        if "MASTER_ADDR" in env:
            addr = env["MASTER_ADDR"]
        else:
            nodelist = env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", ""))
            addr = first_slurm_host(nodelist) if nodelist else "127.0.0.1"
        if "MASTER_PORT" not in env and "SLURM_JOB_ID" in env:
            # Distinct jobs sharing a node must not collide on the rendezvous port.
            port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            world_size=int(env["SLURM_NTASKS"]),
            master_addr=addr,
            master_port=port,
        )
    return DistEnv()


def pick_device(choice: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """Device for this process from ``trainer.device`` (auto | cpu | cuda | cuda:N).

    ``auto`` falls back to the CPU only for a single process: a multi-process job (torchrun,
    SLURM) without CUDA is almost always a broken install or allocation, not a wish to run
    gloo-DDP on CPUs, so it is an error unless ``trainer.device=cpu`` says so.
    """
    choice = str(choice).lower()
    if choice not in {"auto", "cpu"} and not choice.startswith("cuda"):
        raise ValueError(f"trainer.device={choice!r}: expected auto, cpu, cuda or cuda:N")
    if choice == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if choice == "auto" and world_size == 1:
            return torch.device("cpu")
        why = f"a {world_size}-process job (torchrun/SLURM)" if choice == "auto" else "requested"
        raise RuntimeError(
            f"trainer.device={choice}: CUDA is not available ({why}) in this process: "
            f"{cuda_diagnosis()}. Fix the GPU allocation or the torch install "
            "(`dcls-audio-gpu-check --info` prints what it supports), or set trainer.device=cpu "
            "to train on CPUs deliberately."
        )
    if choice.startswith("cuda:"):
        return torch.device(choice)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def cuda_diagnosis() -> str:
    """Why ``torch.cuda.is_available()`` is False, as far as torch can tell."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable GPU or driver"


def describe_device(device: torch.device, amp: bool, world_size: int) -> dict[str, object]:
    """Device, GPU name and capability, compute dtype, world size and DDP backend of a run."""
    info: dict[str, object] = {"device": str(device), "name": None, "capability": None}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f"sm_{major}{minor}")
    info["dtype"] = "bf16 autocast" if amp else "fp32"
    info["world_size"] = world_size
    info["backend"] = None if world_size == 1 else ("nccl" if device.type == "cuda" else "gloo")
    return info


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused: bool) -> torch.nn.Module:
    """DDP around ``model`` (gradient buckets as views: no copy of the gradients)."""
    return torch.nn.parallel.DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused,
        gradient_as_bucket_view=True,
    )


def sync_buffers(model: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over ranks.

    DDP broadcasts rank 0's buffers at the start of each forward, so after the last training
    step every rank holds its own local update; evaluating shards with different statistics, or
    saving rank 0's alone, would not describe one model. Integer buffers (batch counters) are
    equal on every rank already.
    """
    if not dist.is_initialized():
        return
    world = dist.get_world_size()
    for buf in model.buffers():
        if buf.is_floating_point():
            dist.all_reduce(buf)
            buf.div_(world)


def init_distributed(env: DistEnv, device: torch.device) -> None:
    """Join the process group (NCCL on GPU, gloo on CPU) when more than one process runs."""
    if not env.distributed or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        device_id=device if device.type == "cuda" else None,
    )


def cleanup_distributed() -> None:
    """Leave the process group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Send a picklable object from ``src`` to every rank (identity when not distributed)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: object) -> list:
    """List of ``obj`` from every rank, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks."""
    if not dist.is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def accumulation_steps(global_batch_size: int, batch_size: int, world_size: int) -> int:
    """Micro-steps per optimizer step: batch_size x world_size x steps = global_batch_size."""
    per_step = batch_size * world_size
    if batch_size <= 0 or world_size <= 0 or global_batch_size <= 0:
        raise ValueError(
            f"trainer.global_batch_size={global_batch_size}, trainer.batch_size={batch_size} and "
            f"world size {world_size} must all be positive"
        )
    if global_batch_size % per_step:
        raise ValueError(
            f"trainer.global_batch_size={global_batch_size} is not divisible by "
            f"trainer.batch_size={batch_size} x world size {world_size} = {per_step}; "
            "choose values whose product divides the global batch"
        )
    return global_batch_size // per_step


def maybe_no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync`` on accumulation micro-steps that must not all-reduce gradients."""
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


@contextlib.contextmanager
def distributed_session(env: DistEnv, device: torch.device) -> Iterator[None]:
    """Join the process group for the duration of a run, and always leave it."""
    init_distributed(env, device)
    try:
        yield
        barrier()  # leave together: gloo aborts a rank whose peer tore down first
    finally:
        cleanup_distributed()
