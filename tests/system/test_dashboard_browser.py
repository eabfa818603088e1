"""
The dashboard in a real headless Chromium, against a real master and slaves.

Only this shows that the page, the JSON API and the event stream fit
together: rows appear for live slaves, and a slave killed outright turns
into a greyed "left" row while the other stays connected.
"""

from __future__ import annotations

import os
import re
import signal
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import Child, Cluster, free_port
from tests.system.browserhelpers import BrowserThread, Dashboard, chromium_path, playwright_missing

#: How a slave's log says which uuid the master gave it.
JOINED = re.compile(r"Joined master \S+ as ([0-9a-f]{32})")


def joined_uuid(child: Child) -> str | None:
    match = JOINED.search(child.output())
    return match.group(1) if match else None


class DashboardBrowserTests(unittest.TestCase):
    """
    The master's dashboard follows its slaves live in Chromium.
    """

    timeout = 90

    def setUp(self) -> None:
        self.chromium = chromium_path()
        if self.chromium is None:
            raise unittest.SkipTest("no chromium binary (/usr/bin/chromium or on PATH)")
        missing = playwright_missing()
        if missing:
            raise unittest.SkipTest(missing)

    @defer.inlineCallbacks
    def test_killedSlaveTurnsLeft(self) -> Any:
        """Two slaves show as connected rows; a SIGKILLed one turns left, the other stays."""
        cluster = Cluster(self)
        web_port = free_port()
        cluster.master(
            "master", "--web", f"tcp:{web_port}:interface=127.0.0.1",
            "--db", os.path.join(cluster.cwd, "m.db"),
        )
        staying = cluster.slave("slave-staying")
        leaving = cluster.slave("slave-leaving")
        staying_uuid = yield cluster.wait_until(lambda: joined_uuid(staying), "slave-staying joined")
        leaving_uuid = yield cluster.wait_until(lambda: joined_uuid(leaving), "slave-leaving joined")

        browser = BrowserThread()
        self.addCleanup(browser.stop)
        dashboard = yield browser.call(Dashboard, self.chromium)
        self.addCleanup(browser.call, dashboard.close)

        url = f"http://127.0.0.1:{web_port}/"
        yield cluster.wait_until(
            lambda: browser.call(dashboard.answers, url + "api/master"), "the master's web port"
        )
        yield browser.call(dashboard.open, url)

        def rows_are(wanted: dict[str, str]) -> defer.Deferred[Any]:
            """Whether each uuid's row has the class wanted for it."""
            return browser.call(dashboard.row_classes).addCallback(
                lambda rows: all(
                    "slave" in rows.get(uuid, ()) and cls in rows[uuid]
                    for uuid, cls in wanted.items()
                )
            )

        yield cluster.wait_until(
            lambda: rows_are({staying_uuid: "slave-connected", leaving_uuid: "slave-connected"}),
            "two connected slave rows",
        )
        connected_rows = yield browser.call(dashboard.count, ".slave.slave-connected")
        self.assertEqual(connected_rows, 2)

        leaving.signal(signal.SIGKILL)
        yield leaving.wait_for_exit()
        yield cluster.wait_until(
            lambda: rows_are({staying_uuid: "slave-connected", leaving_uuid: "slave-left"}),
            "slave-leaving's row to turn left while slave-staying's stays connected",
        )
        yield cluster.wait_until(
            lambda: browser.call(dashboard.text, "#connected-count").addCallback(
                lambda text: text.strip() == "1"
            ),
            "the header to count one connected slave",
        )
        left_text = yield browser.call(dashboard.text, f'[data-uuid="{leaving_uuid}"]')
        self.assertIn("left", left_text)

        path = yield browser.call(
            dashboard.screenshot, os.path.join(cluster.cwd, "dashboard.png")
        )
        with open(path, "rb") as png:
            image = png.read()
        self.assertTrue(image.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG")
        self.assertGreater(len(image), 10_000, "the screenshot is suspiciously small")

        errors = yield browser.call(lambda: list(dashboard.page_errors))
        self.assertEqual(errors, [], "the page raised errors")
