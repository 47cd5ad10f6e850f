"""Headless Chromium for the dashboard tests, one per pytest session.

Playwright drives the system's Chromium (Debian's `chromium` package, which
`scripts/airflow.sh` installs when it is missing): Playwright's own browser
downloads need the internet, so `executable_path` points at `/usr/bin/chromium`.

Screenshots of each page go to a folder printed at the end of the session
(`RH_SCREENSHOTS` picks it; `make screenshots` points it at `docs/`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

CHROMIUM = os.environ.get("RH_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


def login_link(url: str, token: str) -> str:
    """A one-time dashboard link for `token` (`POST /v1/ui/login-links`, as `rh ui` asks)."""
    request = urllib.request.Request(f"{url}/v1/ui/login-links", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        link = json.loads(response.read().decode())
    return url + link["path"]


class Dashboard:
    """Signed-in browser pages on the stack's dashboard, and their screenshots."""

    def __init__(self, browser: Any, stack: dict[str, Any], shots: Path) -> None:
        self.browser = browser
        self.stack = stack
        self.url = stack["url"]
        self.shots = shots

    def page(self, token: str | None = None) -> Any:
        """A new browser context signed in with a one-time link for `token` (default: the stack's admin)."""
        context = self.browser.new_context(viewport={"width": 1360, "height": 900})
        page = context.new_page()
        page.dialogs = []  # every dialog a page opens (there must be none)
        page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
        response = page.goto(login_link(self.url, token or self.stack["token"]))
        assert response is not None and response.ok, response
        assert page.url.endswith("/ui/runs"), page.url
        return page

    def shot(self, page: Any, name: str) -> Path:
        path = self.shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


# What the session's summary reports: where the screenshots went, and notes the tests left.
_REPORT: dict[str, Any] = {"shots": None, "notes": []}


def note(line: str) -> None:
    """A line for the end-of-session summary (shown even when output is captured)."""
    _REPORT["notes"].append(line)


@pytest.fixture(scope="session")
def dashboard(browser: Any, stack: dict[str, Any]) -> Iterator[Dashboard]:
    shots = Path(os.environ.get("RH_SCREENSHOTS") or tempfile.mkdtemp(prefix="rh-dashboard-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    _REPORT["shots"] = shots
    yield Dashboard(browser, stack, shots)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT["shots"] is not None:
        terminalreporter.write_line(f"dashboard screenshots: {_REPORT['shots']}")
    for line in _REPORT["notes"]:
        terminalreporter.write_line(line)
