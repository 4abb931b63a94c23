"""Executed notebooks as self-contained HTML pages that load nothing from the network."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat

from workbench.files import atomic_write

__all__ = ["export_html"]

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike | None = None) -> Path:
    """Export an executed notebook to ``html_path`` (default: beside it, ending in ``.html``), atomically."""
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    html_path = Path(html_path) if html_path else notebook.with_suffix(".html")
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="offline")
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_write(html_path) as temporary:
        temporary.write_text(body, encoding="utf-8")
    return html_path
