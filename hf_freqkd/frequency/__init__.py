"""Frequency transforms: 1-D wavelets of logit vectors (FiGKD), 2-D wavelets of feature maps (FreeKD)."""
