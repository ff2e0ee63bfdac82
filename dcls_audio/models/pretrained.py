"""Initialise a built model from a checkpoint file (``model.init`` = imagenet | finetune).

The model is complete when weights load: audio stem in place and DCLS layers swapped in, so
the P, SIG and DCLS weights of a DCLS checkpoint load too. Loading is strict: every tensor of
the file is used or skipped for a stated reason, every tensor of the model is loaded or is new
for a stated reason, and anything else is an error naming the keys and shapes.

- ``imagenet``: an image model's weights (timm, official, or the DCLS authors' ImageNet DCLS
  files). The image stem and the classifier are skipped (the audio stem and the head stay new),
  as the paper does; every other tensor must match.
- ``finetune``: an audio model's weights (our run checkpoints or the DCLS-Audio authors' files):
  the audio stem loads; the classifier is replaced (new) only when the class count differs.
  A stem conv without bias in the file (the authors' ConvFormer and FastViT) leaves our stem's
  bias at zero, which computes the same function.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from .foreign import Source, read_source, to_model_names
from .stem import model_family, stem_conv_name

log = logging.getLogger(__name__)

INIT_MODES = ("none", "imagenet", "finetune")
# what the image stem is called in an image checkpoint, in timm names
_IMAGE_STEM = {"convnext": "stem.0", "metaformer": "stem.conv", "fastvit": "stem"}


@dataclass
class LoadReport:
    """What a checkpoint load did: tensors loaded, skipped (file) and new (model), by reason."""

    path: str
    mode: str
    format: str = ""
    weights: str = ""
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # reason -> file tensors
    new: dict[str, list[str]] = field(default_factory=dict)  # reason -> model tensors at init

    @property
    def missing(self) -> list[str]:
        """Model tensors not taken from the file (all reasons)."""
        return sorted(k for keys in self.new.values() for k in keys)

    def summary(self) -> str:
        """One line: counts of loaded, skipped and new tensors with their reasons."""
        skipped = ", ".join(f"{r} {len(k)}" for r, k in self.skipped.items() if k) or "none"
        new = ", ".join(f"{r} {len(k)}" for r, k in self.new.items() if k) or "none"
        return (
            f"init={self.mode} from {self.path} ({self.format} layout, '{self.weights}' "
            f"weights): loaded {len(self.loaded)} tensors; skipped from the file: {skipped}; "
            f"new in the model: {new}"
        )

    def as_dict(self) -> dict:
        """JSON-ready form (for results and logs)."""
        return {
            "path": self.path,
            "mode": self.mode,
            "format": self.format,
            "weights": self.weights,
            "loaded": len(self.loaded),
            "skipped": {r: list(k) for r, k in self.skipped.items()},
            "new": {r: list(k) for r, k in self.new.items()},
        }


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def classifier_name(model: nn.Module) -> str:
    """Qualified name of the last (class-count) layer, from timm's pretrained_cfg."""
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "head.fc")
    return name[0] if isinstance(name, (list, tuple)) else name


def _shared_groups(model: nn.Module) -> list[list[str]]:
    """Names of state-dict entries that are one shared Parameter (DCLS positions per stage)."""
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    return [names for names in groups.values() if len(names) > 1]


def _fmt(keys: list[str], n: int = 8) -> str:
    return f"{keys[:n]}{' ...' if len(keys) > n else ''}"


def load_source(model: nn.Module, source: Source, mode: str) -> LoadReport:
    """Load ``source``'s tensors into ``model`` as ``mode`` says; strict, with a report."""
    if mode not in INIT_MODES[1:]:
        raise ValueError(f"model.init={mode!r}; loading needs one of {INIT_MODES[1:]}")
    path = str(source.path)
    state = to_model_names(source, model)
    own = model.state_dict()
    family = model_family(model)
    stem = stem_conv_name(family)
    head = classifier_name(model)
    report = LoadReport(path, mode, source.format, source.weights)
    skipped: dict[str, list[str]] = {"image stem": [], "classifier": []}
    new: dict[str, list[str]] = {"audio stem": [], "classifier": [], "stem bias (zero)": []}

    replace_head = mode == "imagenet"
    head_w = head + ".weight"
    if mode == "finetune" and head_w in state and head_w in own:
        replace_head = state[head_w].shape != own[head_w].shape
    to_load = {}
    for key, value in state.items():
        if mode == "imagenet" and _under(key, _IMAGE_STEM[family]):
            skipped["image stem"].append(key)
        elif replace_head and _under(key, head):
            skipped["classifier"].append(key)
        else:
            to_load[key] = value
    fill = {}
    for key in own:
        if key in to_load:
            continue
        if mode == "imagenet" and _under(key, stem):
            new["audio stem"].append(key)
        elif replace_head and _under(key, head):
            new["classifier"].append(key)
        elif mode == "finetune" and key == stem + ".bias" and stem + ".weight" in to_load:
            new["stem bias (zero)"].append(key)
            fill[key] = torch.zeros_like(own[key])

    unexpected = sorted(k for k in to_load if k not in own)
    shapes = [
        f"{k}: file {tuple(to_load[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(to_load)
        if k in own and to_load[k].shape != own[k].shape
    ]
    accounted = set(to_load) | {k for keys in new.values() for k in keys}
    missing = sorted(k for k in own if k not in accounted)
    if unexpected or shapes or missing:
        raise ValueError(
            f"checkpoint {path} ({source.format} layout, '{source.weights}' weights) does not fit "
            f"the {type(model).__name__} model (init={mode}): "
            f"{len(unexpected)} file tensors not in the model {_fmt(unexpected)}; "
            f"{len(shapes)} shape mismatches {_fmt(shapes, 4)}; "
            f"{len(missing)} model tensors not in the file {_fmt(missing)}"
        )
    for names in _shared_groups(model):
        values = [to_load[n] for n in names if n in to_load]
        if any(not torch.equal(values[0], v) for v in values[1:]):
            raise ValueError(
                f"checkpoint {path}: tensors {names} are one shared parameter in the model "
                "(DCLS positions shared per stage) but differ in the file; build the model with "
                "conv.share_positions=false"
            )
    result = model.load_state_dict({**to_load, **fill}, strict=False)
    left = sorted(set(result.missing_keys) - {k for keys in new.values() for k in keys})
    if left or result.unexpected_keys:  # cannot happen after the checks above
        raise RuntimeError(f"checkpoint {path}: load left {left} / {result.unexpected_keys}")
    report.loaded = sorted(to_load)
    report.skipped = {r: sorted(k) for r, k in skipped.items() if k}
    report.new = {r: sorted(k) for r, k in new.items() if k}
    return report


def init_from_checkpoint(
    model: nn.Module,
    path: str | os.PathLike,
    mode: str,
    *,
    fmt: str = "auto",
    prefer_ema: bool = True,
) -> LoadReport:
    """Initialise a built zoo model from ``path`` (``mode`` imagenet or finetune); report it."""
    report = load_source(model, read_source(path, prefer_ema=prefer_ema, fmt=fmt), mode)
    log.info(report.summary())
    return report
