"""Constants of the DCLS kernel construction shared by its PyTorch and Triton implementations."""

#: sigma = |SIG| + SIGMA_OFFSET (the reference package's)
SIGMA_OFFSET = 0.27
#: every element is divided by (its sum over the grid + NORM_EPS)
NORM_EPS = 1e-7
