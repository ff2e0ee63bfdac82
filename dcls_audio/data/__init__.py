"""AudioSet data pipeline: HDF5 dataset, waveform augmentation, log-mel frontend, mixup."""

from .frontend import LogMelFrontend
from .hdf5 import AudioSetHDF5
from .labels import load_class_labels
from .mixup import MultiLabelMixup
from .waveform import CLIP_SAMPLES, SAMPLE_RATE, WaveformAugment

__all__ = [
    "AudioSetHDF5",
    "CLIP_SAMPLES",
    "LogMelFrontend",
    "MultiLabelMixup",
    "SAMPLE_RATE",
    "WaveformAugment",
    "load_class_labels",
]
