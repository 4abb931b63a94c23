"""The MTL workbench: how tasks interact, how to train them together, how to merge their models."""

__version__ = "0.1.0"
