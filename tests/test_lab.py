"""JupyterLab in a real browser: JupyterLab from the project's environment on a local port, driven by Playwright with
the system Chromium (no browser download).

Each notebook is copied into a scratch folder with ``quick = True`` set after its parameters (as papermill sets
them), opened on the project's kernel and run whole: no cell may fail, every figure must render, every widget must
appear (no "Error displaying widget"), and moving an explorer's widget must change what is drawn. The tracked
notebooks are never opened, so they stay untouched (checked).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import chromium
from workbench.viz.explorer_kit import RERUN
from workbench.viz.monitor import RESTARTED

pytestmark = pytest.mark.slow
playwright = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("0*.ipynb"))
RUN_TIMEOUT = 600  # seconds for a quick notebook to run in the browser (about a minute alone on 2 cores)
SETTINGS = {
    "notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the DOM, not only the ones in view
    "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},  # no pop-up over the cells
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scratch_copy(notebook: str, folder: Path, results: Path) -> Path:
    """``notebook`` in ``folder`` with a cell after its parameters that sets ``quick = True`` and the scratch result folders."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    at = next(i for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", []))
    injected = f"quick = True\nresults_dir = {str(results / notebook)!r}\n"
    if "checkpoints_dir" in "".join(nb["cells"][at]["source"]):
        injected += f"checkpoints_dir = {str(results / 'checkpoints')!r}\n"
    cell = {"cell_type": "code", "id": "injected", "metadata": {"tags": ["injected-parameters"]}, "execution_count": None, "outputs": [],
            "source": injected.splitlines(keepends=True)}
    nb["cells"].insert(at + 1, cell)
    copy = folder / notebook
    copy.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    return copy


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a free local port serving a scratch folder: ``(folder, url, token)``."""
    folder = tmp_path_factory.mktemp("lab")
    settings = tmp_path_factory.mktemp("lab-settings")
    for plugin, values in SETTINGS.items():
        file = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(values))
    port, token = _free_port(), secrets.token_hex(16)
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings), "WORKBENCH_DATA": str(tmp_path_factory.mktemp("data"))}
    env.pop("WORKBENCH_BATCH", None)
    command = [
        sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", f"--ServerApp.token={token}", f"--ServerApp.root_dir={folder}",
        "--ServerApp.ip=127.0.0.1", *(["--allow-root"] if os.getuid() == 0 else []),
    ]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail(f"JupyterLab did not start on port {port} (exit {server.poll()})")
            time.sleep(0.5)
    try:
        yield folder, url, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


def _open(browser, lab, name: str):
    folder, url, token = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    # a workspace of its own, reset: JupyterLab would otherwise restore the last one, the previous notebook's tab active
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    page.get_by_text("Python (workbench) | Idle").wait_for(timeout=120_000)  # the kernel is connected: cells can run
    return page


def _prompts(page) -> list[str]:
    return [p.strip() for p in page.eval_on_selector_all(".jp-CodeCell .jp-InputArea-prompt", "nodes => nodes.map(n => n.textContent)")]


def _run_all(page) -> None:
    """Run every cell (the Run menu) and wait until each code cell shows its execution count, or until execution
    halted (no cell running, some never run: a cell failed, which the saved notebook then tells)."""
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
    deadline, idle_since = time.monotonic() + RUN_TIMEOUT, None
    while time.monotonic() < deadline:
        prompts = _prompts(page)
        if prompts and all(p[1:-2].isdigit() for p in prompts):
            return
        halted = "[*]:" not in prompts and any(p[1:-2].isdigit() for p in prompts)
        idle_since = (idle_since or time.monotonic()) if halted else None
        if idle_since and time.monotonic() - idle_since > 10:
            return
        time.sleep(1)
    pytest.fail(f"the notebook did not finish in {RUN_TIMEOUT} s; its prompts: {prompts}")


def _saved_errors(page, path: Path) -> list[str]:
    """Save the notebook and read the errors its outputs hold."""
    before = path.stat().st_mtime_ns
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 30
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.25)
    time.sleep(0.5)  # the save's last bytes
    nb = json.loads(path.read_text())
    return [f"{o['ename']}: {o['evalue']}" for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []) if o["output_type"] == "error"]


def _drawn(page) -> str:
    """A digest of every plotly figure's drawing on the page."""
    return hashlib.sha256("".join(page.eval_on_selector_all(".js-plotly-plot .main-svg", "nodes => nodes.map(n => n.outerHTML)")).encode()).hexdigest()


def _move_a_widget(page) -> bool:
    """Change the first dropdown or slider of an explorer that offers another value; whether one was found."""
    for select in page.query_selector_all(".widget-dropdown select"):
        if not (select.is_visible() and select.is_enabled()):
            continue
        options = select.eval_on_selector_all("option", "nodes => nodes.map(n => n.value)")
        current = select.input_value()
        other = next((o for o in options if o != current), None)
        if other is not None:
            select.select_option(other)
            return True
    for slider in page.query_selector_all(".widget-slider .noUi-handle, .widget-slider .slider-handle"):
        if not slider.is_visible():
            continue
        slider.focus()
        page.keyboard.press("ArrowRight")
        return True
    return False


@pytest.mark.parametrize("notebook", NOTEBOOKS)
def test_a_notebook_runs_in_jupyterlab_and_its_explorer_redraws(lab, browser, notebook, tmp_path):
    tracked = (ROOT / "notebooks" / notebook).read_bytes()
    folder, _, _ = lab
    copy = _scratch_copy(notebook, folder, tmp_path)
    page = _open(browser, lab, copy.name)
    try:
        _run_all(page)
        assert _saved_errors(page, copy) == []
        assert all(p[1:-2].isdigit() for p in _prompts(page)), f"{notebook}: cells left unrun: {_prompts(page)}"
        figures = page.eval_on_selector_all(".js-plotly-plot", "nodes => nodes.filter(n => n.querySelector('.main-svg')).length")
        assert figures >= 1, f"{notebook}: no figure rendered"
        text = page.inner_text(".jp-Notebook")
        assert "Error displaying widget" not in text and RERUN not in text
        explorers = len(page.query_selector_all(".jp-OutputArea .wb-live"))
        widgets = page.query_selector_all(".jp-OutputArea .widget-dropdown, .jp-OutputArea .widget-slider, .jp-OutputArea .widget-select-multiple")
        if widgets:
            before = _drawn(page)
            assert _move_a_widget(page), f"{notebook}: an explorer's widgets offer nothing to change"
            deadline = time.monotonic() + 20
            while _drawn(page) == before and time.monotonic() < deadline:
                time.sleep(0.25)
            assert _drawn(page) != before, f"{notebook}: moving an explorer's widget changed nothing drawn"
        assert explorers >= (1 if widgets else 0), f"{notebook}: widgets outside an explorer's box"
        _saved_errors(page, copy)  # saved with the explorers alive
        _restart_kernel(page)
        assert _rerun_notes(page) == explorers, f"{notebook}: after a kernel restart"
        page.close()
        page = _open(browser, lab, copy.name)  # the saved notebook reopened: its widget models are gone
        assert _rerun_notes(page) == explorers, f"{notebook}: reopened after a kernel restart"
    finally:
        page.close()
    assert (ROOT / "notebooks" / notebook).read_bytes() == tracked, "the tracked notebook changed"


def _restart_kernel(page) -> None:
    page.get_by_role("menuitem", name="Kernel", exact=True).click()
    page.get_by_role("menuitem", name="Restart Kernel…").click()  # its name ends with its shortcut
    page.locator(".jp-Dialog button.jp-mod-accept", has_text="Restart").click()
    page.get_by_text("Python (workbench) | Idle").wait_for(timeout=120_000)


def _rerun_notes(page) -> int:
    """How many "re-run this cell" notes show, once no widget is loading; an "Error displaying widget" fails."""
    deadline = time.monotonic() + 30
    while "Loading widget..." in page.inner_text(".jp-Notebook") and time.monotonic() < deadline:
        time.sleep(0.25)
    text = page.inner_text(".jp-Notebook")
    assert "Error displaying widget" not in text
    return text.count(RERUN)


MONITORED = [
    "from workbench.data import make_synthetic\n"
    "from workbench.models import mlp_encoder\n"
    "from workbench.tasks import MultiTaskModel\n"
    "from workbench.train import train\n"
    "problem = make_synthetic(n_tasks=3, n_samples=512, seed=0)\n"
    "model = MultiTaskModel(mlp_encoder(problem.data.x.shape[1], (32,)), problem.data.tasks, representation_dim=32)\n"
    "run = train(model, problem.data, 200_000, monitor=True, progress=False)",
    "print(f\"stopped after {run.history.attrs['stopped_at']} of {run.history.attrs['steps']} steps\")",
]


def test_the_training_monitor_draws_live_and_its_stop_button_ends_the_run(lab, browser):
    folder, _, _ = lab
    nb = {"cells": [{"cell_type": "code", "id": f"cell{i}", "metadata": {}, "execution_count": None, "outputs": [], "source": source}
                    for i, source in enumerate(MONITORED)],
          "metadata": {"kernelspec": {"name": "workbench", "display_name": "workbench", "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}
    path = folder / "monitored.ipynb"
    path.write_text(json.dumps(nb))
    page = _open(browser, lab, path.name)
    try:
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        stop = page.locator(".jp-OutputArea button", has_text="Stop")
        stop.wait_for(timeout=120_000)
        first = _drawn(page)
        deadline = time.monotonic() + 30
        while _drawn(page) == first and time.monotonic() < deadline:  # the curves grow while it trains
            time.sleep(0.25)
        assert _drawn(page) != first, "the monitor did not redraw while training"
        stop.click()
        page.wait_for_selector("text=/stopped after \\d+ of 200000 steps/", timeout=120_000)
        stopped = int(page.inner_text(".jp-Notebook").split("stopped after ")[1].split(" ")[0])
        assert 0 < stopped < 200_000
        assert _saved_errors(page, path) == []
        _restart_kernel(page)
        text = page.inner_text(".jp-Notebook")
        assert RESTARTED in text and "Error displaying widget" not in text
    finally:
        page.close()
