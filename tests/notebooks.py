"""Tiny throwaway notebooks for the runner and sweep tests: they start a kernel and finish in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat

PARAMETERS = "fail = False\nquick = False\nseed = 0\nscale = 1.0\nresults_dir = 'out'"

# Saves one result, metrics.nc: value over two steps, seed * scale and one more.
SAVES_METRICS = """\
from pathlib import Path
import xarray as xr
from workbench import results
assert not fail, 'asked to fail'
results.save(xr.Dataset({'value': ('step', [seed * scale, seed * scale + 1])}), Path(results_dir) / 'metrics.nc')
"""

# Saves seedN.txt, then, with HOLD_FILE present, writes its kernel's pid to HOLD_FILE.pid and waits to be killed; then fails if asked to.
SAVES_THEN_STOPS = """\
import os, time
from pathlib import Path
Path(results_dir).mkdir(parents=True, exist_ok=True)
Path(results_dir, f'seed{seed}.txt').write_text(str(seed))
hold = Path(os.environ.get('HOLD_FILE', '/nonexistent'))
if hold.exists():
    hold.with_suffix('.pid').write_text(str(os.getpid()))
    time.sleep(600)
assert not fail, 'asked to fail'
"""


def write_notebook(path: Path, source: str, parameters: str = PARAMETERS) -> Path:
    """A notebook at ``path``: a markdown title, the ``parameters`` cell, then one code cell with ``source``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = [
        nbformat.v4.new_markdown_cell("# A small experiment"),
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(source),
    ]
    metadata = {"kernelspec": {"name": "workbench", "display_name": "w", "language": "python"}}
    nbformat.write(nbformat.v4.new_notebook(cells=cells, metadata=metadata), path)
    return path


def kill_while_held(command: list[str], hold: Path, env: dict[str, str] | None = None) -> int:
    """Start ``command`` with ``HOLD_FILE=hold`` (``hold`` created); once its kernel writes ``hold.pid`` (the notebook waits
    there), kill the command's session and the kernel (which runs in a session of its own) with SIGKILL; returns the command's pid."""
    hold.write_text("")
    started = subprocess.Popen(
        command, env={**os.environ, **(env or {}), "HOLD_FILE": str(hold)}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    pid_file, deadline = hold.with_suffix(".pid"), time.monotonic() + 300
    while not pid_file.exists() and started.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), started.communicate(timeout=60)[0] if started.poll() is not None else "never started"
    os.killpg(started.pid, signal.SIGKILL)
    os.kill(int(pid_file.read_text()), signal.SIGKILL)
    started.communicate(timeout=60)
    return started.pid
