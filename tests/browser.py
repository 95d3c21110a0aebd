"""Headless Chromium for the explorer's browser tests, driven by selenium.

Debian's ``chromium`` and ``chromium-driver`` (/usr/bin/chromium, /usr/bin/chromedriver; .ci/run
installs them). Selenium is told both paths, so it never tries to download a browser or driver.
Without them the browser tests are skipped on a developer's machine, and FAIL under CI=true: a
CI run that silently skipped them would show a green that tested nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("P2PCHAIN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("P2PCHAIN_CHROMEDRIVER", "/usr/bin/chromedriver")
# Flags that work on these machines: no sandbox (root), no GPU, and no background connections
# (the network is closed, and Chromium would otherwise try Google's hosts at every start).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
]


def require_browser() -> None:
    """Skip (or, under CI=true, fail) when Chromium, its driver or selenium is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (Path(p).is_file() and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (the test extra: python3 scripts/bootstrap.py)")
    if not missing:
        return
    message = f"browser tests need {', '.join(missing)}: apt-get install chromium chromium-driver"
    if os.environ.get("CI") == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def chromium() -> Iterator[Any]:
    """A fresh headless Chromium (its own empty profile), quit and removed on exit."""
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="p2pchain-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(driver: Any, predicate: Callable[[Any], Any], timeout: float, what: str) -> Any:
    """Wait until ``predicate(driver)`` is truthy (returned); fail saying what was awaited and
    what the page showed."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(predicate)
    except TimeoutException:
        body = driver.find_element("tag name", "body").text[:2000]
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; the page shows:\n{body}") from None
