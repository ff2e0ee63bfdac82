"""Dilated Convolution with Learnable Spacings: separable kernels, layers, model surgery."""

from .construct import VERSIONS, construct_kernel
from .layers import Dcls1d, Dcls2d, Dcls3d, DclsNd
from .substitute import clamp_dcls, is_dcls_position, replace_depthwise

__all__ = [
    "VERSIONS",
    "construct_kernel",
    "DclsNd",
    "Dcls1d",
    "Dcls2d",
    "Dcls3d",
    "replace_depthwise",
    "clamp_dcls",
    "is_dcls_position",
]
