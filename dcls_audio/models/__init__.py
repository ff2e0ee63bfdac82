"""Model zoo: timm models with the audio stem and a DSC or DCLS depthwise conv choice."""

from .pretrained import INIT_MODES, LoadReport, init_from_checkpoint
from .reparam import reparameterize
from .stem import model_family, replace_stem
from .zoo import (
    CONV_KEYS,
    MODEL_KEYS,
    MODEL_NAMES,
    MODEL_SPECS,
    ModelSpec,
    build_model,
    list_models,
)

__all__ = [
    "CONV_KEYS",
    "MODEL_KEYS",
    "MODEL_NAMES",
    "MODEL_SPECS",
    "ModelSpec",
    "INIT_MODES",
    "LoadReport",
    "build_model",
    "list_models",
    "init_from_checkpoint",
    "model_family",
    "replace_stem",
    "reparameterize",
]
