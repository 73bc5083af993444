"""A real Chromium for the portal's browser tests, driven by Playwright.

The browser is the system's (Debian's ``chromium``, which .ci/run installs) or the one named by
``AWARENESS_CHROMIUM``; Playwright never downloads one. Without a browser the tests skip, and with
``AWARENESS_REQUIRE_SERVICES=1`` they fail instead.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import _missing
from tests.support.suite import Backend, postgres_backend

# Chromium's own calls home are refused by this network; without these flags it retries them.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def chromium_path() -> str | None:
    named = os.environ.get("AWARENESS_CHROMIUM", "")
    if named:
        return named if Path(named).is_file() else None
    for candidate in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def backend(postgres_url: str, redis_url: str) -> Iterator[Backend]:
    """A fresh PostgreSQL database and Redis key prefix for a module's `awareness up` suite."""
    with postgres_backend(postgres_url, redis_url) as created:
        yield created


# Per module: sync Playwright keeps an event loop running while it is open, which the async tests
# of other modules could not start theirs beside.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    path = chromium_path()
    if path is None:
        _missing("a Chromium browser (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: object) -> Iterator[object]:
    from playwright.sync_api import Browser

    assert isinstance(browser, Browser)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    opened = context.new_page()
    try:
        yield opened
    finally:
        context.close()
