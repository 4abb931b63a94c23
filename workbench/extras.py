"""Optional dependencies: a missing one is named together with the extra that installs it."""

from __future__ import annotations

import importlib.util

__all__ = ["require"]


def require(module: str, extra: str) -> None:
    """Raise ``ImportError`` naming ``pip install 'workbench[extra]'`` when ``module`` is not importable."""
    if importlib.util.find_spec(module) is None:
        raise ImportError(f"this needs the package providing {module!r}: pip install 'workbench[{extra}]'")
