"""dcls-audio: AudioSet tagging with Dilated Convolution with Learnable Spacings."""

__version__ = "0.1.0"
