"""Dataset makers: AudioSet and own-audio packers, the generated sets (synthetic, demo sounds,
long annotated files). A training run never imports them; they write the HDF5 files it reads."""
