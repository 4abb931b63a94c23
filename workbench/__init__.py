"""The MTL workbench: how tasks interact, how to train them together, how to merge their models."""

from workbench.version import __version__

__all__ = ["__version__", "load_sweep"]


def __getattr__(name: str):
    # load_sweep lives with the runner; importing it lazily keeps `import workbench` light in every kernel
    if name == "load_sweep":
        from workbench.runner.combine import load_sweep

        return load_sweep
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")
