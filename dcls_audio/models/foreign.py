"""Checkpoint files of other code, read safely and put into this package's (timm) tensor names.

Three layouts are recognised from a file's contents (or named explicitly):

- ``dcls-audio``: this package's run checkpoints (``{"model", "ema", "config", ...}``) and plain
  state dicts in timm names whose DCLS ``P``/``SIG`` follow our axis convention;
- ``official``: the original ConvNeXt / MetaFormer / FastViT names (``downsample_layers.*``,
  ``network.*``, ``patch_embed.*``), as in the DCLS-Audio authors' AudioSet checkpoints, the DCLS
  authors' ImageNet checkpoints and the official ImageNet files. Their DCLS layers are the
  ``dcls`` package's ``Dcls2d``: weight ``(C, 1, count)``, ``P``/``SIG`` ``(2, C, 1, count)``
  with ``P[0]`` moving along the *width*; ours moves along axis ``d``, so ``P`` and ``SIG`` are
  flipped along their first dimension. Names go through timm's own ``checkpoint_filter_fn``;
- ``timm``: timm's names (timm ImageNet files, .safetensors included).

Files are read with ``torch.load(weights_only=True)``; the only class allowed beyond tensors and
containers is ``argparse.Namespace`` (the ``args`` entry of the authors' files).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .stem import model_family

FORMATS = ("auto", "dcls-audio", "official", "timm")
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP/EMA wrappers, torch.compile
_OFFICIAL_PREFIXES = ("downsample_layers.", "network.", "patch_embed.")
# the authors' model names (their --model argument) -> (our model, our conv)
AUTHOR_MODELS = {
    "convnext_audio_tiny": ("convnext_t", "dsc"),
    "convnext_dcls_audio_tiny": ("convnext_t", "dcls_gauss"),
    "convformer_audio_s18": ("convformer_s18", "dsc"),
    "convformer_dcls_audio_s18": ("convformer_s18", "dcls_gauss"),
    "fastvit_audio_sa24": ("fastvit_sa24", "dsc"),
    "fastvit_dcls_audio_sa24": ("fastvit_sa24", "dcls_gauss"),
}
# (family, stem width) -> our model name
_MODEL_BY_STEM = {
    ("convnext", 96): "convnext_t",
    ("convnext", 40): "convnext_atto",
    ("metaformer", 64): "convformer_s18",
    ("fastvit", 64): "fastvit_sa24",
}
_STEM_KEYS = {
    "convnext": ("downsample_layers.0.0.weight", "stem.0.weight"),
    "metaformer": ("downsample_layers.0.conv.weight", "stem.conv.weight"),
    "fastvit": ("patch_embed.weight", "stem.weight"),
}
_CLASSIFIER_KEYS = ("head.fc.fc2.weight", "head.fc2.weight", "head.fc.weight", "head.weight")


@dataclass
class Source:
    """The tensors of one checkpoint file and what the file says about them."""

    path: Path
    state: dict[str, torch.Tensor]
    format: str  # "dcls-audio", "official" or "timm"
    weights: str  # the file entry the tensors came from: "ema", "model_ema", "model", ...
    config: dict[str, Any] | None = None  # a dcls-audio run's resolved config
    class_names: list[str] | None = None
    author_model: str | None = None  # the authors' --model argument, when the file has args


def read_file(path: str | os.PathLike) -> Any:
    """Load a .pt/.pth (weights_only, Namespace allowed) or .safetensors file; named errors."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file (nothing is ever downloaded)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused, truncated file, not a torch file, ...
        reason = (str(err).strip().splitlines() or [""])[0][:300]
        raise ValueError(f"checkpoint {path}: cannot be loaded safely ({reason})") from err


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    """``obj`` as a non-empty dict of tensors (wrapper prefixes stripped), else None."""
    if not isinstance(obj, dict) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        return None
    for prefix in WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


def read_source(path: str | os.PathLike, prefer_ema: bool = True, fmt: str = "auto") -> Source:
    """Read a checkpoint file's tensors (EMA ones when present and preferred) and its layout."""
    if fmt not in FORMATS:
        raise ValueError(f"checkpoint format {fmt!r}; expected one of {FORMATS}")
    path = Path(path).expanduser()
    obj = read_file(path)
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint {path}: expected a dict, got {type(obj).__name__}")
    ours = "config" in obj and "model" in obj
    order = ("ema", "model") if ours else ("model_ema", "model", "state_dict", "module")
    if not prefer_ema:
        order = tuple(k for k in order if k not in ("ema", "model_ema"))
    state, weights = None, ""
    for key in order:
        state = _tensors(obj.get(key))
        if state is not None:
            weights = key
            break
    if state is None:
        state, weights = _tensors(obj), "file"
    if state is None:
        raise ValueError(
            f"checkpoint {path}: no state dict found; expected a dict of tensors or one under "
            f"{list(order)} (found keys {sorted(map(str, obj))[:8]})"
        )
    args = obj.get("args")
    author_model = getattr(args, "model", None) if isinstance(args, argparse.Namespace) else None
    if fmt == "auto":
        if ours:
            fmt = "dcls-audio"
        elif any(k.startswith(_OFFICIAL_PREFIXES) for k in state):
            fmt = "official"
        else:
            fmt = "dcls-audio" if any(k.endswith(".P") for k in state) else "timm"
    return Source(
        path=path,
        state=state,
        format=fmt,
        weights=weights,
        config=obj.get("config") if ours else None,
        class_names=obj.get("class_names") if ours else None,
        author_model=author_model if isinstance(author_model, str) else None,
    )


def _family_of_keys(state: dict[str, torch.Tensor]) -> str | None:
    keys = list(state)
    fastvit = ("network.", "patch_embed", "final_conv.")
    if any(k.startswith(fastvit) or ".mixer." in k for k in keys):
        return "fastvit"
    if any(".token_mixer.pwconv1." in k for k in keys):
        return "metaformer"
    if any("pwconv1" in k or ".conv_dw." in k for k in keys):
        return "convnext"
    return None


def infer_architecture(source: Source) -> tuple[str, str, int]:
    """(model name, conv name, class count) of a foreign checkpoint, from its args or tensors."""
    state = source.state
    family = _family_of_keys(state)
    if family is None:
        raise ValueError(
            f"checkpoint {source.path}: cannot tell which model it holds (not a ConvNeXt, "
            "ConvFormer or FastViT layout); pass --model and --conv"
        )
    width = next((state[k].shape[0] for k in _STEM_KEYS[family] if k in state), None)
    name = _MODEL_BY_STEM.get((family, width))
    if name is None and source.author_model in AUTHOR_MODELS:  # the tensors decide first
        name = AUTHOR_MODELS[source.author_model][0]
    if name is None:
        raise ValueError(
            f"checkpoint {source.path}: a {family} model with stem width {width} is not in the "
            f"zoo; pass --model and --conv"
        )
    if any(k.endswith(".P") for k in state):
        conv = "dcls_gauss" if any(k.endswith(".SIG") for k in state) else "dcls_bilinear"
    else:
        conv = "dsc"
    head = next((k for k in _CLASSIFIER_KEYS if k in state), None)
    if head is None:
        raise ValueError(f"checkpoint {source.path}: no classifier weight ({_CLASSIFIER_KEYS})")
    return name, conv, int(state[head].shape[0])


def kernel_count(source: Source) -> int | None:
    """Elements per DCLS kernel in the file (the last dim of a DCLS weight), None without DCLS."""
    for key, value in source.state.items():
        if key.endswith(".P"):
            return int(value.shape[-1])
    return None


def _filter(family: str):
    from timm.models import convnext, fastvit, metaformer

    return {
        "convnext": convnext.checkpoint_filter_fn,
        "metaformer": metaformer.checkpoint_filter_fn,
        "fastvit": fastvit.checkpoint_filter_fn,
    }[family]


def is_position(key: str) -> bool:
    """True for a DCLS position or sigma tensor name (``...P`` / ``...SIG``)."""
    return re.search(r"(^|\.)(P|SIG)$", key) is not None


def to_model_names(source: Source, model: nn.Module) -> dict[str, torch.Tensor]:
    """The file's tensors under ``model``'s names, DCLS positions in our axis convention."""
    state = dict(source.state)
    file_dcls = any(is_position(k) for k in state)
    model_dcls = any(is_position(k) for k in model.state_dict())
    if file_dcls != model_dcls:
        have, want = ("DCLS", "DSC") if file_dcls else ("DSC", "DCLS")
        raise ValueError(
            f"checkpoint {source.path}: the file holds {have} layers (tensors P/SIG "
            f"{'present' if file_dcls else 'absent'}) but the model was built with {want} "
            f"convolutions; choose conv={'dcls_gauss' if file_dcls else 'dsc'}"
        )
    if source.format != "official":
        return state
    family = model_family(model)
    try:
        state = _filter(family)(state, model)
    except KeyError as err:
        raise ValueError(
            f"checkpoint {source.path}: official-layout key maps to {err}, which a "
            f"{type(model).__name__} ({family}) model does not have; is it a {family} checkpoint?"
        ) from err
    # the dcls package's P[0] is the width axis; ours P[d] is spatial axis d
    return {k: (v.flip(0) if is_position(k) else v) for k, v in state.items()}
