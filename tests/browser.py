"""Headless Chromium with networking disabled: what a page renders and what it tries to load."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # networking off: every host resolves to nothing and every connection goes to a closed port
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
    "--virtual-time-budget=20000",
]


def chromium() -> str:
    """The Chromium binary; ``make test`` installs Debian's package, so in CI its absence is a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs Debian's chromium package")
        pytest.skip("chromium is not installed (run `make chromium`)")
    return path


def render(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the URLs the page itself asked the network for."""
    with tempfile.TemporaryDirectory() as profile:
        netlog = Path(profile) / "netlog.json"
        done = subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}/user", f"--log-net-log={netlog}", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, page_requests(json.loads(netlog.read_text()))


def page_requests(netlog: dict) -> list[str]:
    """URLs of requests started on behalf of a page (the browser's own housekeeping has no origin)."""
    start = netlog["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [
        event["params"]["url"]
        for event in netlog["events"]
        if event["type"] == start and "url" in event.get("params", {}) and event["params"].get("initiator") != "not an origin"
    ]


class _References(HTMLParser):
    """Every ``src`` and ``href`` of the page's elements (script text is not parsed as markup)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found += [value for name, value in attrs if name in ("src", "href") and value]


def external_references(html: str) -> list[str]:
    """References to anything outside the file: absolute URLs other than ``data:`` and in-page anchors."""
    parser = _References()
    parser.feed(html)
    return [ref for ref in parser.found if not (ref.startswith(("#", "data:")) or ("://" not in ref and not ref.startswith("//")))]
