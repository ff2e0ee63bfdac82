"""Initialisation from a local timm / ImageNet checkpoint file (never downloaded).

Weights are loaded into the plain timm model *before* the audio stem and the DCLS swap, so the
checkpoint's keys and shapes are those of the image model:

- every tensor whose name and shape match is copied;
- the classifier (timm's ``pretrained_cfg["classifier"]``) is skipped and keeps its fresh init;
- the image stem is loaded and then thrown away when the audio stem replaces it (reported as
  "stem"), so the audio stem is always freshly initialised;
- depthwise 7x7 weights load into the DSC layers; with a DCLS conv choice those layers are then
  replaced by new DCLS layers, so their ImageNet weights are not used (reported as "swapped").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.models import load_state_dict
from torch import nn

from .stem import model_family, stem_conv_name

log = logging.getLogger(__name__)

_FILTERS = {}


def _checkpoint_filter(family: str):
    """timm's remapping of original checkpoints of ``family``; timm-format ones pass through."""
    if not _FILTERS:
        from timm.models import convnext, fastvit, metaformer

        _FILTERS.update(
            convnext=convnext.checkpoint_filter_fn,
            metaformer=metaformer.checkpoint_filter_fn,
            fastvit=fastvit.checkpoint_filter_fn,
        )
    return _FILTERS[family]


@dataclass
class PretrainedReport:
    """What a checkpoint load did: tensors loaded and skipped, by reason."""

    path: str
    loaded: list[str] = field(default_factory=list)
    classifier: list[str] = field(default_factory=list)
    stem: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    swapped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts of each category."""
        return (
            f"pretrained {self.path}: loaded {len(self.loaded)} tensors; "
            f"skipped: classifier {len(self.classifier)}, stem {len(self.stem)}, "
            f"shape mismatch {len(self.shape_mismatch)}, not in model {len(self.unexpected)}, "
            f"replaced by DCLS {len(self.swapped)}; left at init (not in file) {len(self.missing)}"
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read tensors from .pth/.pt/.bin (plain or under 'state_dict'/'model') or .safetensors."""
    try:
        state = load_state_dict(str(path), use_ema=False, device="cpu", weights_only=True)
    except Exception as err:  # unpickling / safetensors errors carry little context on their own
        raise ValueError(
            f"model.pretrained={path}: cannot read a state_dict from this file "
            f"(expected a torch .pth/.pt or .safetensors checkpoint): {err}"
        ) from err
    if not isinstance(state, dict) or not state:
        raise ValueError(f"model.pretrained={path}: file holds no tensors")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"model.pretrained={path}: expected a dict of tensors (or one under 'state_dict' or "
            f"'model'), found keys {sorted(state)[:8]}"
        )
    return tensors


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    min_fraction: float = 0.5,
) -> PretrainedReport:
    """Load every matching tensor of checkpoint ``path`` into the (unmodified) timm ``model``.

    Raises FileNotFoundError for a missing file and ValueError when the file matches less than
    ``min_fraction`` of the model's tensors outside the stem and classifier (wrong architecture).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"model.pretrained={path}: no such file (a local timm/ImageNet checkpoint is expected; "
            f"nothing is downloaded)"
        )
    family = model_family(model)
    state = _read_state_dict(path)
    try:
        state = _checkpoint_filter(family)(state, model)
    except KeyError as err:
        raise ValueError(
            f"model.pretrained={path}: not a checkpoint of a {type(model).__name__} model "
            f"(key {err} has no counterpart)"
        ) from err

    classifier = model.pretrained_cfg.get("classifier", "head.fc")
    classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)

    def under(key: str, prefixes: tuple[str, ...]) -> bool:
        return any(key == p or key.startswith(p + ".") for p in prefixes)

    own = model.state_dict()
    report = PretrainedReport(path=str(path))
    to_load = {}
    for key, value in state.items():
        if under(key, classifier):
            report.classifier.append(key)
        elif key not in own:
            report.unexpected.append(key)
        elif own[key].shape != value.shape:
            report.shape_mismatch.append(key)
        else:
            to_load[key] = value
    # stem tensors are loaded (so timm's norms after the ConvNeXt/MetaFormer stem conv keep theirs)
    # but the conv itself is replaced by the audio stem afterwards
    replaced = (stem_conv_name(family),)
    report.stem = sorted(k for k in state if under(k, replaced))
    report.shape_mismatch = [k for k in report.shape_mismatch if k not in report.stem]
    report.loaded = sorted(k for k in to_load if k not in report.stem)
    body = [k for k in own if not under(k, classifier) and not under(k, replaced)]
    report.missing = sorted(k for k in body if k not in to_load)
    matched = len(body) - len(report.missing)
    if matched == 0 or matched < min_fraction * len(body):
        raise ValueError(
            f"model.pretrained={path}: only {matched} of the {len(body)} tensors of "
            f"{type(model).__name__} outside its stem and classifier match the file by name and "
            f"shape (need {min_fraction:.0%}); is it a checkpoint of this architecture? "
            f"{len(report.shape_mismatch)} shape mismatches, e.g. {report.shape_mismatch[:3]}; "
            f"{len(report.unexpected)} unknown keys, e.g. {report.unexpected[:3]}"
        )
    model.load_state_dict(to_load, strict=False)
    return report
