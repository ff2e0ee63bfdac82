"""Model zoo: timm models with the audio stem and a DSC or DCLS depthwise conv choice."""

from .pretrained import PretrainedReport, load_pretrained
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
    "PretrainedReport",
    "build_model",
    "list_models",
    "load_pretrained",
    "model_family",
    "replace_stem",
    "reparameterize",
]
