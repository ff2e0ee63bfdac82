"""Model zoo: timm model → audio stem → conv choice → (optional) weights from a checkpoint.

``build_model(cfg.model, cfg.conv)`` builds the paper's three models (ConvNeXt-T, ConvFormer-S18,
FastViT-SA24) and a small ConvNeXt-atto for demos and tests, from timm's maintained code, with
their depthwise 7x7 convolutions kept (DSC) or replaced by DCLS layers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import timm
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .frames import add_frame_head
from .pretrained import INIT_MODES, init_from_checkpoint
from .stem import replace_stem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """A named model of the zoo: its timm entry point and the paper's parameter count."""

    name: str
    timm_name: str
    paper_params_m: float | None  # paper Table 1, 1000-class head; None if not in the paper
    title: str


MODEL_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        ModelSpec("convnext_t", "convnext_tiny", 28.6, "ConvNeXt-T"),
        ModelSpec("convformer_s18", "convformer_s18", 26.8, "ConvFormer-S18"),
        ModelSpec("fastvit_sa24", "fastvit_sa24", 21.5, "FastViT-SA24"),
        ModelSpec("convnext_atto", "convnext_atto", None, "ConvNeXt-atto"),
    )
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)
DCLS_VERSIONS: tuple[str, ...] = ("gauss", "bilinear")

# The keys of configs/model/*.yaml and configs/conv/*.yaml: the configs are the one source of
# their values (dcls_audio.config.load_group gives them to library callers).
MODEL_KEYS = (
    "name",
    "timm_name",
    "num_classes",
    "drop_path_rate",
    "pretrained",
    "init",
    "in_chans",
    "stem_kernel",
    "timm_kwargs",
    "frame_head",
    "frame_stage",
)
# keys a model config may leave out (configs of runs made before they existed)
MODEL_DEFAULTS = {"frame_head": None, "frame_stage": -1}
CONV_KEYS = {
    "dsc": ("name", "type", "kernel_size"),
    "dcls": (
        "name",
        "type",
        "kernel_size",
        "dilated_kernel_size",
        "kernel_count",
        "version",
        "share_positions",
        "position_init",
    ),
}
# The file each Table-1 row starts from (paper §3.1), named when model.init=imagenet lacks one.
PAPER_INIT_FILES = {
    ("convnext_t", "dsc"): "convnext_tiny_1k_224_ema.pth (official ConvNeXt ImageNet-1k) or timm's "
    "convnext_tiny weights",
    ("convnext_t", "dcls_gauss"): "convnext_dcls_gauss_tiny_1k_224_ema.pth (the DCLS authors' "
    "ImageNet-1k ConvNeXt-T DCLS-Gauss, Zenodo record 8029747)",
    ("convformer_s18", "dsc"): "convformer_s18.pth (official MetaFormer ImageNet-1k) or timm's "
    "convformer_s18 weights",
    ("convformer_s18", "dcls_gauss"): "the DCLS authors' ImageNet-1k ConvFormer-S18 DCLS-Gauss "
    "checkpoint (official MetaFormer names)",
}
# set by build_model itself; not accepted in model.timm_kwargs
_RESERVED_TIMM_KWARGS = ("pretrained", "num_classes", "in_chans", "drop_path_rate")


def list_models() -> list[str]:
    """Names accepted by ``build_model`` as ``model_cfg.name``."""
    return list(MODEL_NAMES)


def _plain(
    cfg: Any,
    what: str,
    keys: Sequence[str],
    ignored: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Config (DictConfig or mapping) -> plain dict with exactly ``keys``; else a named error.

    Keys in ``ignored`` may be present and are dropped; ``defaults`` fill keys left out.
    """
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{what} config must be a mapping, got {type(cfg).__name__}")
    cfg = {**(defaults or {}), **{k: v for k, v in cfg.items() if k not in ignored}}
    missing = [k for k in keys if k not in cfg]
    unknown = sorted(set(cfg) - set(keys))
    if missing or unknown:
        raise ValueError(
            f"{what} config: missing key(s) {missing}, unknown key(s) {unknown}; expected "
            f"{list(keys)} (start from configs/{what}/*.yaml, e.g. "
            f"dcls_audio.config.load_group('{what}', NAME))"
        )
    return dict(cfg)


def _check_int(cfg: Mapping[str, Any], key: str, what: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def build_model(model_cfg: Any, conv_cfg: Any) -> nn.Module:
    """Build a zoo model for (N, in_chans, 128, 1001) spectrograms → (N, num_classes) logits.

    ``model_cfg`` keys: name, timm_name, num_classes, drop_path_rate, pretrained, init
    (none|imagenet|finetune, see :mod:`.pretrained`), in_chans, stem_kernel, timm_kwargs (extra
    keyword arguments of the timm constructor, e.g. ``ls_init_value`` of ConvNeXt), frame_head
    (null, or the time upsampling of a frame-level head: :mod:`.frames`), frame_stage (the stage
    whose map that head reads: -1 the last, -2 the one before).
    ``conv_cfg`` keys: name, type (dsc|dcls), kernel_size, dilated_kernel_size, kernel_count,
    version (gauss|bilinear), share_positions, position_init (normal|uniform) (the DCLS keys
    only for type dcls).
    The returned model carries ``build_info`` (dict: name, conv, swapped layer names, init,
    the LoadReport of ``model.pretrained`` or None).
    """
    mcfg = _plain(model_cfg, "model", MODEL_KEYS, defaults=MODEL_DEFAULTS)
    conv_type = conv_cfg.get("type") if isinstance(conv_cfg, Mapping) else None
    if conv_type not in CONV_KEYS:
        raise ValueError(f"conv.type={conv_type!r}; expected one of {list(CONV_KEYS)}")
    # DCLS-only keys on a DSC conv are ignored, so that one experiment file (e.g. the demo) can
    # set them and still run with conv=dsc; any other unknown key is an error.
    ignored = set(CONV_KEYS["dcls"]) - set(CONV_KEYS["dsc"]) if conv_type == "dsc" else ()
    ccfg = _plain(conv_cfg, "conv", CONV_KEYS[conv_type], ignored)
    name = mcfg.get("name")
    if name not in MODEL_SPECS:
        raise ValueError(
            f"model.name={name!r} is not a known model; valid names: {list(MODEL_NAMES)}"
        )
    spec = MODEL_SPECS[name]
    timm_name = mcfg["timm_name"] or spec.timm_name
    if not timm.is_model(timm_name):
        raise ValueError(f"model.timm_name={timm_name!r} is not a timm model (model.name={name})")
    num_classes = _check_int(mcfg, "num_classes", "model", 1)
    in_chans = _check_int(mcfg, "in_chans", "model", 1)
    drop_path = mcfg["drop_path_rate"]
    if isinstance(drop_path, bool) or not isinstance(drop_path, (int, float)):
        raise ValueError(f"model.drop_path_rate must be a number in [0, 1), got {drop_path!r}")
    if not 0.0 <= drop_path < 1.0:
        raise ValueError(f"model.drop_path_rate must be in [0, 1), got {drop_path}")

    extra = mcfg["timm_kwargs"] or {}
    if not isinstance(extra, Mapping):
        raise ValueError(f"model.timm_kwargs must be a mapping, got {extra!r}")
    reserved = sorted(set(extra) & set(_RESERVED_TIMM_KWARGS))
    if reserved:
        raise ValueError(f"model.timm_kwargs may not set {reserved}: use the model.* keys")
    try:
        model = timm.create_model(
            timm_name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            drop_path_rate=drop_path,
            **extra,
        )
    except TypeError as err:
        raise ValueError(
            f"model.timm_kwargs={dict(extra)} not accepted by timm model {timm_name!r}: {err}"
        ) from err
    init, pretrained = _check_init(mcfg, name, ccfg["name"])
    replace_stem(model, kernel=mcfg["stem_kernel"], in_chans=in_chans)
    swapped: list[str] = []
    if ccfg["type"] == "dcls":
        swapped = _swap_convs(model, ccfg)
    if mcfg["frame_head"] is not None:  # strong labels: frame logits beside the clip's
        add_frame_head(model, mcfg["frame_head"], mcfg["frame_stage"])
    # weights load into the finished model, so DCLS checkpoints load their P, SIG and weights
    report = init_from_checkpoint(model, pretrained, init) if init != "none" else None
    model.build_info = {
        "name": name,
        "timm_name": timm_name,
        "conv": ccfg["name"],
        "swapped": swapped,
        "init": init,
        "pretrained": report,
        # what results.json records: how the weights started
        "init_record": {
            "mode": init,
            "pretrained": str(pretrained) if pretrained else None,
            **({"report": report.summary()} if report is not None else {}),
        },
    }
    return model


def _check_init(mcfg: Mapping[str, Any], name: str, conv: str) -> tuple[str, str | None]:
    """Validate model.init against model.pretrained; the error names the file to supply."""
    init, pretrained = mcfg["init"], mcfg["pretrained"]
    if pretrained == "???":  # OmegaConf's mandatory marker, left unset
        pretrained = None
    if init not in INIT_MODES:
        raise ValueError(f"model.init={init!r}; expected one of {list(INIT_MODES)}")
    if init == "none" and pretrained:
        raise ValueError(
            f"model.pretrained={pretrained} is set but model.init=none; set model.init=imagenet "
            "(image weights: stem and head skipped) or model.init=finetune (audio weights)"
        )
    if init != "none" and not pretrained:
        wanted = PAPER_INIT_FILES.get((name, conv), "a local checkpoint file of this model")
        raise ValueError(
            f"model.init={init} needs model.pretrained=PATH (nothing is downloaded): supply "
            f"{wanted}; or train from scratch with model.init=none"
        )
    return init, pretrained


def _swap_convs(model: nn.Module, ccfg: Mapping[str, Any]) -> list[str]:
    """Replace the depthwise convs of ``model`` by DCLS layers as ``ccfg`` says; return names."""
    from dcls_audio.dcls import replace_depthwise

    if ccfg["version"] not in DCLS_VERSIONS:
        raise ValueError(f"conv.version={ccfg['version']!r}; expected one of {list(DCLS_VERSIONS)}")
    kernel_size = _check_int(ccfg, "kernel_size", "conv", 1)
    swapped = replace_depthwise(
        model,
        kernel_size=kernel_size,
        dilated_kernel_size=_check_int(ccfg, "dilated_kernel_size", "conv", 1),
        kernel_count=_check_int(ccfg, "kernel_count", "conv", 1),
        version=ccfg["version"],
        share_positions=bool(ccfg["share_positions"]),
        position_init=ccfg["position_init"],
    )
    if not swapped:
        raise ValueError(
            f"conv.type=dcls but the model has no depthwise {kernel_size}x{kernel_size} Conv2d to "
            f"replace (conv.kernel_size={kernel_size})"
        )
    return swapped
