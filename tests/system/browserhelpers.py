"""
Helpers for driving a real headless Chromium from trial tests.

Playwright's sync API blocks, and its objects belong to the thread that made
them; the reactor, meanwhile, must keep turning for the tests' bounded waits
on real processes.  So one dedicated thread owns Playwright, and the test
talks to it through Deferreds (L{BrowserThread}).  Debian's chromium is used
as installed: no browser is ever downloaded.
"""

from __future__ import annotations

import importlib
import os
import queue
import shutil
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.python.failure import Failure

#: Flags for a quiet, offline, root-friendly headless run.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """Debian's chromium, or whatever C{chromium} is on the path, or C{None}."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium")


def playwright_missing() -> str | None:
    """Why Playwright cannot be used here, or C{None} when it can."""
    try:
        importlib.import_module("playwright.sync_api")
    except ImportError as problem:
        return f"the playwright module is not installed ({problem})"
    return None


class BrowserThread:
    """
    One daemon thread that runs blocking calls in order, each answered by a
    Deferred fired in the reactor thread.

    Daemon, so that a browser call stuck past the test's end cannot keep the
    test runner from exiting; L{stop} still joins it in the normal case.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="playwright", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            call = self._calls.get()
            if call is None:
                return
            function, args, answer = call
            try:
                result = function(*args)
            except BaseException:
                reactor.callFromThread(answer.errback, Failure())
            else:
                reactor.callFromThread(answer.callback, result)

    def call(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run C{function(*args)} in the thread, after the calls before it."""
        answer: defer.Deferred[Any] = defer.Deferred()
        self._calls.put((function, args, answer))
        return answer

    def stop(self, timeout: float = 10.0) -> None:
        """Let the calls already queued finish, then end the thread."""
        self._calls.put(None)
        self._thread.join(timeout)


class Dashboard:
    """
    A headless Chromium with one page, to be used only from one
    L{BrowserThread} (Playwright's sync objects stay in their thread).
    """

    def __init__(self, executable: str, width: int = 1280, height: int = 900) -> None:
        from playwright.sync_api import sync_playwright

        self.page_errors: list[str] = []
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, args=CHROMIUM_ARGS, timeout=15000
            )
        except BaseException:
            self._playwright.stop()
            raise
        self.page = self._browser.new_page(viewport={"width": width, "height": height})
        self.page.set_default_timeout(10000)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def answers(self, url: str) -> bool:
        """Whether C{url} answers 200 right now (without loading it in the page)."""
        from playwright.sync_api import Error

        try:
            return self.page.request.get(url, timeout=2000).ok
        except Error:
            return False

    def open(self, url: str) -> None:
        self.page.goto(url)

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def fill(self, selector: str, text: str) -> None:
        self.page.locator(selector).fill(text)

    def choose(self, selector: str, value: str) -> None:
        self.page.locator(selector).select_option(value)

    def click(self, selector: str) -> None:
        self.page.locator(selector).click()

    def visible(self, selector: str) -> bool:
        return self.page.locator(selector).is_visible()

    def json(self, url: str) -> Any:
        """What C{url} answers, as JSON (without loading it in the page)."""
        return self.page.request.get(url, timeout=5000).json()

    def row_classes(self) -> dict[str, list[str]]:
        """The classes of every slave row, by its C{data-uuid}."""
        return self.page.evaluate(
            """() => Object.fromEntries(
                Array.from(document.querySelectorAll("[data-uuid]"),
                           (row) => [row.dataset.uuid, Array.from(row.classList)]))"""
        )

    def screenshot(self, path: str) -> str:
        self.page.screenshot(path=path, full_page=True)
        return path

    def close(self) -> None:
        """Close the browser and stop Playwright's driver, whatever happened."""
        try:
            self._browser.close()
        finally:
            self._playwright.stop()
