"""The reports site: ``index.html`` lists every run recorded under a reports folder, sortable by column, offline.

A run's last complete record and its current attempt (running, or failed or killed since) are two
rows: a failure is listed beside the report it left in place. A record file that cannot be read is
left out, with a warning naming it.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import os
from pathlib import Path
from urllib.parse import quote

from workbench.files import atomic_write, remove_leftovers
from workbench.runner.record import COMPLETE, RUNNING, RunFiles, RunRecord, find_records
from workbench.runner.staging import staging_folders

__all__ = ["write_index"]

COLUMNS = ("report", "notebook", "sweep", "parameters", "status", "duration (s)", "started", "result files", "log")

# Click a header to sort by it, again to reverse; a cell's data-sort value, when present, is what is compared.
_SORT_SCRIPT = """
document.querySelectorAll("th").forEach((header, column) => header.addEventListener("click", () => {
  const body = header.closest("table").tBodies[0];
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  const key = row => { const cell = row.cells[column]; return cell.dataset.sort ?? cell.textContent.trim(); };
  const compare = (a, b) => {
    const x = key(a), y = key(b), numeric = x !== "" && y !== "" && !isNaN(x) && !isNaN(y);
    return numeric ? Number(x) - Number(y) : x.localeCompare(y);
  };
  [...body.rows].sort((a, b) => ascending ? compare(a, b) : compare(b, a)).forEach(row => body.appendChild(row));
  document.querySelectorAll("th").forEach(other => other.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
}));
"""

_STYLE = (
    "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
    "td,th{padding:.3em .8em;text-align:left;border-bottom:1px solid #ddd;vertical-align:top}"
    "th{cursor:pointer;user-select:none;background:#f4f4f4}th[aria-sort=ascending]::after{content:' \\25B2'}"
    "th[aria-sort=descending]::after{content:' \\25BC'}.failed{color:#b00020}.unfinished{color:#8a6d00}"
)


def _link(path: Path, root: Path, text: str) -> str:
    return f'<a href="{html.escape(quote(path.relative_to(root).as_posix(), safe="/=,+"))}">{html.escape(text)}</a>'


def _results_and_log(files: RunFiles, record: RunRecord) -> tuple[list[Path], Path | None]:
    """The result files and the log of the run ``record`` describes: a complete run's, a failed attempt's (``NAME.failed``),
    or the log of a run under way or killed, in its staging folder."""
    if record.status == RUNNING:
        logs = [staged.log for staged in staging_folders(files)]
        return [], next((log for log in logs if log.exists()), None)
    outputs = files if record.status == COMPLETE else files.failed
    results = sorted(p for p in outputs.results_dir.glob("*") if not p.name.startswith("."))
    return results, outputs.log if outputs.log.exists() else None


def _row(files: RunFiles, record: RunRecord, root: Path) -> str:
    """One ``<tr>``: the run's report link, what ran, how it went and its files."""
    status = "unfinished" if record.status == RUNNING else record.status
    report = files.folder / record.report if record.report else None
    title = _link(report, root, record.title) if report and report.exists() else html.escape(record.title)
    results, log = _results_and_log(files, record)
    duration = (f"{record.duration:.1f}", f"{record.duration:.3f}") if record.duration is not None else ("", "")
    cells = [  # (content, the value a sort compares where it differs from the text)
        (title, None),
        (html.escape(record.notebook), None),
        (html.escape(record.sweep or ""), None),
        (f"<code>{html.escape(json.dumps(record.parameters, default=repr))}</code>", None),
        (f'<span class="{status}">{status}</span>' + (f"<br><small>{html.escape(record.error)}</small>" if record.error else ""), None),
        duration,
        (html.escape(record.started.replace("T", " ")), None),
        (", ".join(_link(p, root, p.name) for p in results), None),
        (_link(log, root, "log") if log else "", None),
    ]
    return "<tr>" + "".join(f"<td>{content}</td>" if key is None else f'<td data-sort="{key}">{content}</td>' for content, key in cells) + "</tr>"


def write_index(output_dir: str | os.PathLike = "reports") -> Path:
    """Write ``OUTPUT/index.html``: one row per record (complete run or attempt) anywhere under ``output_dir``; returns its path."""
    root = Path(output_dir).resolve()
    records = list(find_records(root))
    rows = [_row(files, record, root) for files, record in records]
    complete = sum(record.status == COMPLETE for _, record in records)
    stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = "".join(f"<th>{html.escape(name)}</th>" for name in COLUMNS)
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>MTL workbench reports</title>"
        f"<style>{_STYLE}</style></head><body><h1>MTL workbench reports</h1>"
        f"<p>{complete} complete runs and {len(rows) - complete} failed or unfinished attempts, listed {stamp}. "
        "Click a column's header to sort by it.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<script>{_SORT_SCRIPT}</script></body></html>"
    )
    index = root / "index.html"
    remove_leftovers(root, [index.name])
    with atomic_write(index) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return index
