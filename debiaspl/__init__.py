"""debiaspl: semi-supervised learning with debiased pseudo-labels on long-tailed data."""

__version__ = "0.1.0"
