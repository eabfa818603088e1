"""
The dashboard in a real headless Chromium, against a real master and slaves.

Only this shows that the page, the JSON API and the event stream fit
together: rows appear for live slaves, a slave killed outright turns
into a greyed "left" row while the other stays connected, and the runs a
slave holds ready beyond its slots show beside those it runs.
"""

from __future__ import annotations

import os
import re
import signal
import sys
from typing import Any

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import Child, Cluster, child_env, free_port, wait_until
from tests.system.browserhelpers import BrowserThread, Dashboard, chromium_path, playwright_missing

#: Simulated slaves for the dashboard at scale: enough that a page built
#: every row would be slow, few enough for CI's two cores.
HERD = 2000

#: Connects a second the herd starts with: a storm is the scale
#: benchmark's subject, not this test's.
HERD_RATE = 250

#: Seconds the herd may take to join over TLS (some 7 on an idle 2-core
#: machine; CI's may be busier).
HERD_JOINS = 120.0

#: Rows the dashboard builds at most (its PAGE_SIZE).
PAGE_SIZE = 50

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
        """Two slaves show as connected rows; a SIGKILLed one turns left, the other stays, then holds runs ready."""
        cluster = Cluster(self)
        web_port = free_port()
        cluster.master(
            "master", "--web", f"tcp:{web_port}:interface=127.0.0.1",
            "--db", os.path.join(cluster.cwd, "m.db"),
        )
        # One slot and two ready places: three long tasks show prefetch at work.
        staying = cluster.slave("slave-staying", "--slots", "1", "--prefetch", "2")
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

        tasks_cell = f'[data-uuid="{staying_uuid}"] .tasks-cell'
        idle_text = yield browser.call(dashboard.text, tasks_cell)
        self.assertEqual(idle_text.split(), ["0", "/", "1", "running", "/", "slots"])
        client = cluster.client()
        yield client.connect()
        try:
            yield client.submit([{"name": "sleep", "args": {"seconds": 600}}] * 3)
        finally:
            yield client.close()
        yield cluster.wait_until(
            lambda: browser.call(dashboard.text, tasks_cell).addCallback(
                lambda text: text.split() == ["1", "/", "1", "+2", "running", "/", "slots", "+", "ready"]),
            "the staying slave's row to show one run and two held ready",
        )
        yield cluster.wait_until(
            lambda: browser.call(dashboard.text, "#cluster-notes").addCallback(
                lambda text: "1 of 1 slots busy, 2 ready" in text),
            "the cluster's notes to count the ready runs",
        )

        path = yield browser.call(
            dashboard.screenshot, os.path.join(cluster.cwd, "dashboard.png")
        )
        with open(path, "rb") as png:
            image = png.read()
        self.assertTrue(image.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG")
        self.assertGreater(len(image), 10_000, "the screenshot is suspiciously small")

        errors = yield browser.call(lambda: list(dashboard.page_errors))
        self.assertEqual(errors, [], "the page raised errors")


class DashboardAtScaleTests(unittest.TestCase):
    """
    The dashboard of a master with thousands of slaves (a herd of simulated
    ones, as the scale benchmark's, and one real slave) builds one page of
    rows, finds a slave by search, filters, pages, and follows the herd
    going away.
    """

    timeout = 240

    setUp = DashboardBrowserTests.setUp

    @defer.inlineCallbacks
    def test_thousandsOfSlaves(self) -> Any:
        """One page of rows among thousands; search, filter, pages and the trouble tile work."""
        cluster = Cluster(self)
        web_port = free_port()
        # The default keepalive: a herd's TLS handshakes on a busy machine
        # may take longer than the 3 s of silence that --keepalive 1 allows.
        cluster.master("master", "--web", f"tcp:{web_port}:interface=127.0.0.1",
                       "--db", os.path.join(cluster.cwd, "m.db"), "--keepalive", "5")
        real = cluster.slave("slave-real")
        real_uuid = yield cluster.wait_until(lambda: joined_uuid(real), "the real slave joined")
        herd = Child(self, "herd", [
            sys.executable, "-m", "bench.herd", "--master", f"127.0.0.1:{cluster.port}",
            "--count", str(HERD), "--rate", str(HERD_RATE), "--token-file", cluster.slave_token_file,
        ], cwd=cluster.cwd, env=child_env())

        browser = BrowserThread()
        self.addCleanup(browser.stop)
        dashboard = yield browser.call(Dashboard, self.chromium)
        self.addCleanup(browser.call, dashboard.close)
        url = f"http://127.0.0.1:{web_port}/"

        def connected() -> defer.Deferred[int]:
            return browser.call(dashboard.json, url + "api/summary").addCallback(
                lambda summary: summary["slaves"]["connected"])

        yield cluster.wait_until(
            lambda: browser.call(dashboard.answers, url + "api/master"), "the master's web port")
        yield wait_until(lambda: connected().addCallback(lambda n: n == HERD + 1),
                         f"{HERD} simulated slaves and the real one to join",
                         lambda: cluster.report() + herd.report()[-2000:], timeout=HERD_JOINS)
        yield browser.call(dashboard.open, url)

        def text_is(selector: str, wanted: str) -> defer.Deferred[bool]:
            return browser.call(dashboard.text, selector).addCallback(lambda text: text.strip() == wanted)

        yield cluster.wait_until(lambda: text_is("#connected-count", str(HERD + 1)), "the header's count")
        yield cluster.wait_until(lambda: text_is("#page-range", f"1–{PAGE_SIZE} of 2,001"), "the pager")
        rows = yield browser.call(dashboard.count, "#slave-rows tr")
        self.assertEqual(rows, PAGE_SIZE)

        yield browser.call(dashboard.click, "#page-next")
        yield cluster.wait_until(lambda: text_is("#page-range", "51–100 of 2,001"), "the second page")
        yield browser.call(dashboard.fill, "#slave-search", real_uuid[:12].upper())
        yield cluster.wait_until(
            lambda: browser.call(dashboard.row_classes).addCallback(lambda found: list(found) == [real_uuid]),
            "the search to show the real slave alone")

        yield browser.call(dashboard.fill, "#slave-search", "")
        yield browser.call(dashboard.choose, "#slave-state", "left")
        yield cluster.wait_until(lambda: browser.call(dashboard.visible, "#slaves-none-match"),
                                 "no slave has left yet")

        herd.signal(signal.SIGKILL)
        yield herd.wait_for_exit()
        yield cluster.wait_until(lambda: text_is("#connected-count", "1"), "the herd to be gone")
        trouble = yield browser.call(dashboard.text, "#trouble-count")
        self.assertGreater(int(trouble), 0)
        yield browser.call(dashboard.choose, "#slave-state", "")
        yield browser.call(dashboard.click, "#trouble-tile")
        yield cluster.wait_until(
            lambda: browser.call(dashboard.row_classes).addCallback(
                lambda found: len(found) == PAGE_SIZE and all("slave-left" in c for c in found.values())),
            "a page of slaves that left, behind the trouble tile")
        errors = yield browser.call(lambda: list(dashboard.page_errors))
        self.assertEqual(errors, [], "the page raised errors")
