"""Execute the parameterised notebooks with papermill and export them as offline HTML reports.

``run_notebook`` checks the parameters against the notebook's ``parameters`` cell before anything
runs, executes it under the project's kernel into a temporary file, and only on success replaces
``reports/NAME.ipynb`` and writes ``reports/NAME.html``; the notebook's result files go to
``reports/NAME/``. A failed run leaves the previous report untouched and keeps the failed notebook
as ``reports/NAME.failed.ipynb``. ``run_all`` does this for every notebook and writes ``index.html``.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as _dt
import html
import json
import os
import sys
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from workbench.files import atomic_write
from workbench.progress import ENV_VARIABLE as PROGRESS_VARIABLE

__all__ = [
    "KERNEL_NAME",
    "Parameter",
    "notebook_parameters",
    "check_parameters",
    "parse_cli_value",
    "ensure_kernel",
    "run_notebook",
    "export_html",
    "write_index",
    "run_all",
]

KERNEL_NAME = "workbench"
TEMPLATE_DIR = Path(__file__).parent / "templates"
RESULTS_PARAMETER = "results_dir"


@dataclass(frozen=True)
class Parameter:
    """A knob of a notebook's ``parameters`` cell: its name, default value and the type of that default."""

    name: str
    default: Any

    @property
    def kind(self) -> type:
        return type(self.default)

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` fits the default's type (an int fits a float; a bool fits only a bool)."""
        if self.default is None:
            return True
        if isinstance(self.default, bool) or isinstance(value, bool):
            return isinstance(value, bool) and isinstance(self.default, bool)
        if isinstance(self.default, float):
            return isinstance(value, (int, float))
        if isinstance(self.default, (list, tuple)):
            return isinstance(value, (list, tuple))
        return isinstance(value, self.kind)


def _parameters_cell(nb: nbformat.NotebookNode, path: Path) -> nbformat.NotebookNode:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return cell
    raise ValueError(f"{path} has no code cell tagged 'parameters'")


def notebook_parameters(path: str | os.PathLike) -> dict[str, Parameter]:
    """The parameters declared in the notebook's ``parameters`` cell (``name = literal`` lines), in order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}")
    cell = _parameters_cell(nbformat.read(path, as_version=4), path)
    parameters = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target, value = node.target.id, node.value
        else:
            continue
        try:
            parameters[target] = Parameter(target, ast.literal_eval(value))
        except ValueError as error:
            raise ValueError(f"{path}: parameter {target!r} must have a literal default") from error
    return parameters


def parse_cli_value(text: str) -> Any:
    """A command-line value as a Python literal where it is one (``50``, ``0.1``, ``True``, ``[1, 2]``), else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(path: str | os.PathLike, values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` checked against the notebook's parameters; raises ``ValueError`` naming them all on a mismatch.

    A value given as a string for a string parameter stays a string even if it looks like a number.
    """
    declared = notebook_parameters(path)
    listing = ", ".join(f"{p.name}={p.default!r}" for p in declared.values())
    checked, problems = {}, []
    for name, value in values.items():
        if name not in declared:
            problems.append(f"unknown parameter {name!r}")
            continue
        parameter = declared[name]
        if isinstance(parameter.default, str) and not isinstance(value, str):
            value = str(value)
        if not parameter.accepts(value):
            problems.append(f"parameter {name!r} takes a {parameter.kind.__name__}, got {value!r} ({type(value).__name__})")
            continue
        checked[name] = float(value) if isinstance(parameter.default, float) else value
    if problems:
        raise ValueError(f"{Path(path).name}: " + "; ".join(problems) + f". Its parameters are: {listing}")
    return checked


def ensure_kernel() -> str:
    """Make the ``workbench`` Jupyter kernel run this Python; returns its name.

    The kernel spec lives in this environment (``sys.prefix/share/jupyter``) and is (re)written when
    missing or pointing at another Python. That directory is put first on ``JUPYTER_PATH`` for this
    process, so a ``workbench`` kernel of another environment cannot shadow it.
    """
    data_dir = Path(sys.prefix) / "share" / "jupyter"
    spec_file = data_dir / "kernels" / KERNEL_NAME / "kernel.json"
    current = json.loads(spec_file.read_text()).get("argv", [None])[0] if spec_file.exists() else None
    if current != sys.executable:
        from ipykernel.kernelspec import install

        install(kernel_name=KERNEL_NAME, display_name="Python (workbench)", prefix=sys.prefix)
    paths = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
    if str(data_dir) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(data_dir), *filter(None, paths)])
    return KERNEL_NAME


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block (kernels started inside inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def export_html(notebook: str | os.PathLike, html_path: str | os.PathLike | None = None) -> Path:
    """Export an executed notebook to a self-contained HTML page that loads nothing from the network."""
    from nbconvert import HTMLExporter

    notebook = Path(notebook)
    html_path = Path(html_path) if html_path else notebook.with_suffix(".html")
    exporter = HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="offline")
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    with atomic_write(html_path) as temporary:
        temporary.write_text(body, encoding="utf-8")
    return html_path


@dataclass(frozen=True)
class Report:
    """The files one notebook run wrote."""

    notebook: Path
    html: Path
    results_dir: Path
    parameters: dict


def run_notebook(
    notebook: str | os.PathLike,
    parameters: Mapping[str, Any] | None = None,
    output_dir: str | os.PathLike = "reports",
    progress: bool = True,
) -> Report:
    """Execute ``notebook`` with ``parameters`` and write ``OUTPUT/NAME.ipynb``, ``OUTPUT/NAME.html`` and ``OUTPUT/NAME/``."""
    import papermill

    notebook = Path(notebook).resolve()
    checked = check_parameters(notebook, parameters or {})
    output_dir = Path(output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    name = notebook.stem
    results_dir = output_dir / name
    if RESULTS_PARAMETER in notebook_parameters(notebook):
        checked.setdefault(RESULTS_PARAMETER, str(results_dir))
    final = output_dir / f"{name}.ipynb"
    failed = output_dir / f"{name}.failed.ipynb"
    with atomic_write(final, suffix=".ipynb") as temporary, _environment({PROGRESS_VARIABLE: "0"}):
        # the kernel inherits WORKBENCH_PROGRESS=0: no widget frames frozen in the report
        try:
            papermill.execute_notebook(
                str(notebook), str(temporary), parameters=checked, kernel_name=ensure_kernel(),
                cwd=str(notebook.parent), progress_bar=progress,
            )
        except BaseException:
            shutil.copyfile(temporary, failed)
            print(f"{name} failed; the partly executed notebook is {failed}", file=sys.stderr)
            raise
    failed.unlink(missing_ok=True)
    return Report(final, export_html(final), results_dir, checked)


def _title(notebook: Path) -> str:
    for cell in nbformat.read(notebook, as_version=4).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return notebook.stem


def write_index(reports: Sequence[Report], output_dir: str | os.PathLike = "reports") -> Path:
    """``OUTPUT/index.html``: one link per report with its title, parameters and result files."""
    output_dir = Path(output_dir).resolve()
    rows = []
    for report in reports:
        results = sorted(report.results_dir.glob("*")) if report.results_dir.exists() else []
        files = ", ".join(f'<a href="{html.escape(str(p.relative_to(output_dir)))}">{html.escape(p.name)}</a>' for p in results)
        rows.append(
            f'<tr><td><a href="{html.escape(report.html.name)}">{html.escape(_title(report.notebook))}</a></td>'
            f"<td><code>{html.escape(json.dumps({k: v for k, v in report.parameters.items() if k != RESULTS_PARAMETER}))}</code></td>"
            f"<td>{files}</td></tr>"
        )
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MTL workbench reports</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd}</style>"
        f"</head><body><h1>MTL workbench reports</h1><p>Generated {stamp}.</p>"
        "<table><tr><th>report</th><th>parameters</th><th>result files</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    index = output_dir / "index.html"
    with atomic_write(index) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return index


def run_all(
    notebooks_dir: str | os.PathLike = "notebooks",
    output_dir: str | os.PathLike = "reports",
    parameters: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[Report]:
    """Run every ``NN_*.ipynb`` in ``notebooks_dir`` (``parameters`` go to each notebook that declares them), then the index."""
    notebooks = sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks named NN_*.ipynb in {notebooks_dir}")
    declared_by = {path: notebook_parameters(path) for path in notebooks}
    unknown = set(parameters or {}) - {name for declared in declared_by.values() for name in declared}
    if unknown:
        raise ValueError(f"no notebook in {notebooks_dir} has the parameters {sorted(unknown)}")
    reports = []
    for notebook, declared in declared_by.items():
        own = {k: v for k, v in (parameters or {}).items() if k in declared}
        reports.append(run_notebook(notebook, own, output_dir, progress))
    write_index(reports, output_dir)
    return reports
