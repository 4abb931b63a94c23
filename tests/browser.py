"""Headless Chromium with networking disabled: what a page renders, what it tries to load, what errors it logs.

The browser is driven over the DevTools protocol through a pipe (``--remote-debugging-pipe``: JSON
messages separated by NUL bytes on file descriptors 3 and 4), so no client library is needed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # networking off: every host resolves to nothing and every connection goes to a closed port
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
]
# after the load event, the page's timers and animation frames run for this much virtual time (ms)
VIRTUAL_TIME_BUDGET = 20000
TIMEOUT = 180


def chromium() -> str:
    """The Chromium binary; ``make test`` installs Debian's package, so in CI its absence is a failure."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; `make test` installs Debian's chromium package")
        pytest.skip("chromium is not installed (run `make chromium`)")
    return path


class _DevTools:
    """A headless Chromium and its DevTools pipe: ``send`` a command and get its result; events are kept."""

    def __init__(self, arguments: list[str]) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()

        def on_fds_3_and_4() -> None:  # in the child, before exec
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.process = subprocess.Popen(
            [*arguments, "--remote-debugging-pipe"], pass_fds=(3, 4), preexec_fn=on_fds_3_and_4,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(to_browser)
        os.close(from_browser)
        self._buffer, self._last_id, self.events = b"", 0, []
        self._deadline = time.monotonic() + TIMEOUT

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._replies], [], [], max(0.0, self._deadline - time.monotonic()))
            chunk = os.read(self._replies, 1 << 16) if ready else b""
            if not chunk:
                raise RuntimeError("chromium did not answer over its DevTools pipe (timed out or exited)")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._last_id += 1
        command = {"id": self._last_id, "method": method, "params": params or {}, **({"sessionId": session} if session else {})}
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            message = self._receive()
            if message.get("id") == self._last_id:
                assert "error" not in message, f"{method}: {message['error']}"
                return message["result"]
            self.events.append(message)

    def wait_for(self, event: str) -> dict:
        seen = 0
        while True:
            for message in self.events[seen:]:
                if message.get("method") == event:
                    return message
            seen = len(self.events)
            self.events.append(self._receive())

    def close(self) -> None:
        try:
            self.send("Browser.close")
            self.process.wait(timeout=60)
        finally:
            self.process.kill()
            os.close(self._commands)
            os.close(self._replies)


def _error_text(event: dict) -> str | None:
    """What an uncaught exception, a ``console.error``/``console.assert`` call or an error log entry says; else None."""
    method, params = event.get("method"), event.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params["exceptionDetails"]
        return f"{details['text']} {details.get('exception', {}).get('description', '')}".strip()
    if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
        return "console.error: " + " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
    if method == "Log.entryAdded" and params["entry"]["level"] == "error":
        return f"{params['entry']['source']}: {params['entry']['text']}"
    return None


@dataclass(frozen=True)
class Page:
    """A page as the browser left it: its DOM after the scripts ran, the URLs it requested, the errors it logged."""

    dom: str
    requests: list[str]
    errors: list[str]


def open_page(page: Path) -> Page:
    """Load ``page`` in headless Chromium with networking off; let its scripts run; report what happened."""
    with tempfile.TemporaryDirectory() as profile:
        netlog = Path(profile) / "netlog.json"
        browser = _DevTools([chromium(), *FLAGS, f"--user-data-dir={profile}/user", f"--log-net-log={netlog}"])
        try:
            target = next(t["targetId"] for t in browser.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Page"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            browser.wait_for("Page.loadEventFired")
            browser.send("Emulation.setVirtualTimePolicy", {"policy": "advance", "budget": VIRTUAL_TIME_BUDGET}, session=session)
            browser.wait_for("Emulation.virtualTimeBudgetExpired")
            dom = browser.send(
                "Runtime.evaluate", {"expression": "document.documentElement.outerHTML", "returnByValue": True}, session=session,
            )["result"]["value"]
        finally:
            browser.close()  # the net log is complete once the browser has exited
        errors = [text for text in map(_error_text, browser.events) if text is not None]
        return Page(dom, page_requests(json.loads(netlog.read_text())), errors)


def render(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the URLs the page itself asked the network for."""
    opened = open_page(page)
    return opened.dom, opened.requests


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
