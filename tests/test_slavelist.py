"""
Tests for L{picluster.master.slavelist} and the lists built on it: slaves a
page at a time over the wire (C{info slaves}, C{status}, C{slave_details})
and the web (C{/api/slaves}), and the summary whose size does not grow
with the cluster.  A real master service on a L{Clock}, its slaves played
by hand over StringTransports.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from twisted.internet import defer
from twisted.trial import unittest

from picluster.master import slavelist
from picluster.master.slavelist import BadSlaveQuery, SlaveQuery
from picluster.wire.messages import MAX_SLAVES_LIMIT
from tests.taskhelpers import FakeClient
from tests.webhelpers import PI_VITALS, WebMaster, hold_ready


def names(page: dict[str, Any]) -> list[str]:
    return [slave["hostname"] for slave in page["slaves"]]


class Cluster:
    """A master with slaves pi-00, pi-01, ... and a client asking it."""

    def __init__(self, case: unittest.TestCase, slaves: int, **settings: Any):
        self.web = WebMaster(case, **settings)
        self.clock = self.web.clock
        self.slaves = []
        for number in range(slaves):
            self.clock.advance(1)
            self.slaves.append(self.web.slave(f"pi-{number:02}", f"10.0.{number // 250}.{number % 250 + 1}",
                                              vitals=dict(PI_VITALS, throttling=None)))
        self.client = FakeClient(self.web.master.factory, self.clock)

    def ask(self, question: Any) -> dict[str, Any]:
        return self.client.request("info", question)

    def every_page(self, **query: Any) -> tuple[list[str], list[dict[str, Any]]]:
        """Every hostname over every page of C{info slaves}, and the pages."""
        shown: list[str] = []
        pages = []
        after = None
        while True:
            reply = self.ask({"question": "slaves", **query, "after": after})
            assert reply["type"] == "slaves", reply
            pages.append(reply["payload"])
            shown += names(reply["payload"])
            if not reply["payload"]["more"]:
                return shown, pages
            after = reply["payload"]["next"]


class PagingTests(unittest.TestCase):
    """C{info slaves}: pages in order, each slave once, with the total."""

    def test_byHostname(self) -> None:
        """Pages of 3 give every slave once, by hostname, each page saying the total."""
        cluster = Cluster(self, 8)
        shown, pages = cluster.every_page(limit=3)
        self.assertEqual(shown, [f"pi-{n:02}" for n in range(8)])
        self.assertEqual([len(page["slaves"]) for page in pages], [3, 3, 2])
        self.assertEqual({page["total"] for page in pages}, {8})
        self.assertIsNone(pages[-1]["next"])

    def test_newest(self) -> None:
        """order newest lists the slaves that joined last first."""
        cluster = Cluster(self, 5)
        shown, _ = cluster.every_page(limit=2, order="newest")
        self.assertEqual(shown, ["pi-04", "pi-03", "pi-02", "pi-01", "pi-00"])

    def test_leftAfterConnected(self) -> None:
        """Slaves that left come after the connected ones, saying so."""
        cluster = Cluster(self, 4)
        cluster.slaves[0].lose()
        reply = cluster.ask({"question": "slaves"})["payload"]
        self.assertEqual(names(reply), ["pi-01", "pi-02", "pi-03", "pi-00"])
        self.assertEqual(reply["slaves"][-1]["state"], "left")
        self.assertEqual(reply["slaves"][-1]["troubles"], ["left"])

    def test_changesBetweenPages(self) -> None:
        """A slave joining or leaving between two pages shows no other slave twice or never."""
        cluster = Cluster(self, 6)
        first = cluster.ask({"question": "slaves", "limit": 3, "state": "connected"})["payload"]
        self.assertEqual(names(first), ["pi-00", "pi-01", "pi-02"])
        cluster.slaves[1].lose()
        cluster.web.slave("pi-00a", "10.9.0.1")
        cluster.web.slave("pi-99", "10.9.0.2")
        rest = cluster.ask({"question": "slaves", "limit": 10, "state": "connected",
                            "after": first["next"]})["payload"]
        self.assertEqual(names(rest), ["pi-03", "pi-04", "pi-05", "pi-99"])

    def test_search(self) -> None:
        """search keeps the slaves whose hostname, address or uuid holds it, in any case."""
        cluster = Cluster(self, 12)
        by_name = cluster.ask({"question": "slaves", "search": "PI-1"})["payload"]
        self.assertEqual(names(by_name), ["pi-10", "pi-11"])
        self.assertEqual(by_name["total"], 2)
        by_address = cluster.ask({"question": "slaves", "search": "10.0.0.4:"})["payload"]
        self.assertEqual(names(by_address), ["pi-03"])
        by_uuid = cluster.ask({"question": "slaves", "search": cluster.slaves[5].uuid[:12]})["payload"]
        self.assertEqual(names(by_uuid), ["pi-05"])

    def test_stateFilter(self) -> None:
        """state narrows the list to connected slaves, those that left, or those in trouble."""
        cluster = Cluster(self, 4)
        cluster.slaves[2].lose()
        cluster.slaves[3].send("vitals", dict(PI_VITALS, cpu_temperature=84.0, throttling=None))

        def listed(state: str) -> list[str]:
            return names(cluster.ask({"question": "slaves", "state": state})["payload"])

        self.assertEqual(listed("connected"), ["pi-00", "pi-01", "pi-03"])
        self.assertEqual(listed("left"), ["pi-02"])
        self.assertEqual(listed("trouble"), ["pi-03", "pi-02"])

    def test_pageFitsAFrame(self) -> None:
        """A page is cut to fit the master's frame, and says there is more."""
        cluster = Cluster(self, 40, max_frame=16384)
        reply = cluster.ask({"question": "slaves", "limit": MAX_SLAVES_LIMIT})
        self.assertEqual(reply["type"], "slaves")
        page = reply["payload"]
        self.assertTrue(page["more"])
        self.assertLess(len(page["slaves"]), 40)
        self.assertLessEqual(len(msgspec.json.encode(page)), 16384)
        shown, _ = cluster.every_page(limit=MAX_SLAVES_LIMIT)
        self.assertEqual(shown, [f"pi-{n:02}" for n in range(40)])


class LargeAnswersTests(unittest.TestCase):
    """
    The questions that listed every slave at once answer a page, whatever
    the cluster's size (the hostility issue: they were answered C{error}
    past some 1,700 slaves, when the answer outgrew a frame).
    """

    def setUp(self) -> None:
        self.cluster = Cluster(self, 60, max_frame=16384)

    def test_plainSlaveDetails(self) -> None:
        """A plain info slave_details answers the slaves a frame holds, not an error."""
        reply = self.cluster.ask("slave_details")
        self.assertEqual(reply["type"], "slave_details")
        self.assertIsInstance(reply["payload"], list)
        self.assertTrue(0 < len(reply["payload"]) < 60)

    def test_pagedSlaveDetails(self) -> None:
        """Asked with a query, slave_details pages through every slave with its raw vitals."""
        seen = []
        after = None
        while True:
            page = self.cluster.ask({"question": "slave_details", "limit": 25, "after": after})["payload"]
            seen += [detail["uuid"] for detail in page["slaves"]]
            self.assertIn("computer_details", page["slaves"][0])
            if not page["more"]:
                break
            after = page["next"]
        self.assertEqual(sorted(seen), sorted(slave.uuid for slave in self.cluster.slaves))

    def test_plainStatus(self) -> None:
        """A plain info status answers the summary and a first page that fits the frame."""
        reply = self.cluster.ask("status")
        self.assertEqual(reply["type"], "status")
        status = reply["payload"]
        self.assertEqual(status["summary"]["slaves"]["connected"], 60)
        self.assertEqual(status["total"], 60)
        self.assertTrue(status["more"])
        self.assertLessEqual(len(msgspec.json.encode(status)), 16384)
        rest = self.cluster.ask({"question": "slaves", "after": status["next"], "limit": 100})["payload"]
        self.assertEqual(names(rest)[0], f"pi-{len(status['slaves']):02}")


class RefusalTests(unittest.TestCase):
    """A query the master cannot take is refused with what was wrong."""

    def setUp(self) -> None:
        self.cluster = Cluster(self, 3)

    def refusal(self, query: dict[str, Any]) -> dict[str, Any]:
        reply = self.cluster.ask({"question": "slaves", **query})
        self.assertEqual(reply["type"], "bad_message")
        return reply["payload"]

    def test_limit(self) -> None:
        """A limit over the most a page holds is refused, naming the field."""
        refused = self.refusal({"limit": MAX_SLAVES_LIMIT + 1})
        self.assertEqual(refused["field"], "limit")

    def test_unknownOrder(self) -> None:
        """An order the master does not know is refused, naming the field."""
        self.assertEqual(self.refusal({"order": "random"})["field"], "order")

    def test_forgedCursor(self) -> None:
        """A cursor the master did not make is refused."""
        self.assertEqual(self.refusal({"after": "not a cursor!"})["error"],
                         "after is not a cursor this master gave")

    def test_cursorOfAnotherOrder(self) -> None:
        """A cursor from a list in another order is refused, not misread."""
        first = self.cluster.ask({"question": "slaves", "limit": 1})["payload"]
        self.assertEqual(self.refusal({"after": first["next"], "order": "newest"})["error"],
                         "after is not a cursor of a list in newest order")

    def test_longCursor(self) -> None:
        """A cursor longer than any the master makes is refused by the decoder."""
        self.assertEqual(self.refusal({"after": "A" * 601})["field"], "after")

    def test_longQuestion(self) -> None:
        """An info question over its 4 KiB is refused before it is decoded."""
        reply = self.cluster.ask({"question": "slaves", "search": "x" * 5000})
        self.assertEqual(reply["type"], "bad_message")

    def test_slaveCannotList(self) -> None:
        """A slave credential asks about the master, not the cluster (secure masters only)."""
        # In plain mode anyone may ask; the secure refusal is test_trust's.
        reply = self.cluster.slaves[0].request("info", {"question": "summary"})
        self.assertEqual(reply["type"], "summary")

    def test_queryChecksItself(self) -> None:
        """SlaveQuery refuses what the web might hand it, with the reason."""
        for bad in ({"limit": 0}, {"limit": True}, {"order": "x"}, {"state": "lost"},
                    {"search": "x" * 201}, {"after": "%%%"}):
            self.assertRaises(BadSlaveQuery, SlaveQuery, **bad)


class SummaryTests(unittest.TestCase):
    """The summary: counts, the hottest, the nodes in trouble, worst first."""

    def test_troubles(self) -> None:
        """Each trouble is counted and each troubled node named, worst first."""
        cluster = Cluster(self, 6)
        slaves = cluster.slaves
        slaves[1].send("vitals", dict(PI_VITALS, under_voltage=True, throttling=None))
        slaves[2].send("vitals", dict(PI_VITALS, throttling={"throttled": True}))
        slaves[3].send("vitals", dict(PI_VITALS, cpu_temperature=83.5, throttling=None))
        slaves[4].lose()
        cluster.clock.advance(260)  # past two and a half keepalives (100 s): all silent...
        for slave in slaves[:4]:
            slave.send("ping", 1.0)  # ...but these four
        summary = cluster.ask("summary")["payload"]
        self.assertEqual(summary["slaves"], {"connected": 5, "left": 1, "in_trouble": 5})
        self.assertEqual(summary["troubles"], {"left": 1, "silent": 1, "under-voltage": 1,
                                               "throttled": 1, "hot": 1, "cloned": 0})
        self.assertEqual([(node["hostname"], node["troubles"]) for node in summary["in_trouble"]], [
            ("pi-04", ["left"]), ("pi-05", ["silent"]), ("pi-01", ["under-voltage"]),
            ("pi-02", ["throttled"]), ("pi-03", ["hot"]),
        ])
        self.assertEqual(summary["hottest"][0], {"uuid": slaves[3].uuid, "hostname": "pi-03",
                                                 "temperature": 83.5})
        self.assertEqual(summary["silent_after"], 250.0)

    def test_sizeDoesNotGrow(self) -> None:
        """With every node in trouble, the summary names a few and counts the rest."""
        small = Cluster(self, 25)
        large = Cluster(self, 250)
        for cluster in (small, large):
            cluster.clock.advance(260)
        sizes = []
        for cluster in (small, large):
            summary = cluster.ask("summary")["payload"]
            self.assertEqual(len(summary["in_trouble"]), slavelist.MAX_TROUBLE_SHOWN)
            self.assertEqual(len(summary["hottest"]), slavelist.HOTTEST_SHOWN)
            self.assertEqual(summary["slaves"]["in_trouble"], len(cluster.slaves))
            sizes.append(len(json.dumps(summary)))
        self.assertLess(abs(sizes[1] - sizes[0]), 200, sizes)

    def test_slotsCounted(self) -> None:
        """The summary adds up the slaves' slots."""
        summary = Cluster(self, 3).ask("summary")["payload"]
        self.assertEqual((summary["slots"], summary["running_tasks"], summary["ready_tasks"]), (6, 0, 0))


class ReadyTasksTests(unittest.TestCase):
    """
    The runs a slave holds ready beyond its slots (prefetch) are counted
    beside those it runs, in every list of slaves and in the summary.
    """

    def setUp(self) -> None:
        self.cluster = Cluster(self, 0)
        self.busy, _, self.runs = hold_ready(self.cluster.web)

    def counts(self, slaves: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
        """Each slave's (running_tasks, ready_tasks), by hostname."""
        return {slave["hostname"]: (slave["running_tasks"], slave["ready_tasks"]) for slave in slaves}

    def test_wireLists(self) -> None:
        """info slaves, slave_details and status count each slave's ready runs; one with none shows 0."""
        wanted = {"pi-busy": (1, 2), "pi-idle": (0, 0)}
        for question in ("slaves", "slave_details", "status"):
            reply = self.cluster.ask({"question": question})
            self.assertEqual(self.counts(reply["payload"]["slaves"]), wanted, question)
        self.assertEqual(self.counts(self.cluster.ask("slave_details")["payload"]), wanted)

    def test_readyRunStarts(self) -> None:
        """When the running run ends, a ready one takes its slot: one fewer is ready."""
        self.busy.finish(self.runs[0], {"slept": 60})
        shown = self.cluster.ask({"question": "slaves"})["payload"]["slaves"]
        self.assertEqual(self.counts(shown), {"pi-busy": (1, 1), "pi-idle": (0, 0)})
        summary = self.cluster.ask("summary")["payload"]
        self.assertEqual((summary["running_tasks"], summary["ready_tasks"]), (1, 1))

    def test_summary(self) -> None:
        """The summary adds up the ready runs beside the running ones; a slave that left holds none."""
        summary = self.cluster.ask("summary")["payload"]
        self.assertEqual((summary["slots"], summary["running_tasks"], summary["ready_tasks"]), (2, 1, 2))
        self.busy.lose()
        summary = self.cluster.ask("summary")["payload"]
        self.assertEqual((summary["slots"], summary["running_tasks"], summary["ready_tasks"]), (1, 0, 0))

    @defer.inlineCallbacks
    def test_web(self) -> Any:
        """/api/slaves and /api/summary show the same counts as the wire."""
        shown = (yield self.cluster.web.get("/api/slaves")).json()
        self.assertEqual(self.counts(shown["slaves"]), {"pi-busy": (1, 2), "pi-idle": (0, 0)})
        summary = (yield self.cluster.web.get("/api/summary")).json()
        self.assertEqual(summary["ready_tasks"], 2)


class WebTests(unittest.TestCase):
    """C{/api/slaves} pages as the wire does; C{/api/summary} is the summary."""

    @defer.inlineCallbacks
    def test_pages(self) -> Any:
        """limit and after page through the slaves; the answer says the total and whether more."""
        cluster = Cluster(self, 5)
        first = (yield cluster.web.get("/api/slaves?limit=2")).json()
        self.assertEqual((names(first), first["total"], first["more"]), (["pi-00", "pi-01"], 5, True))
        rest = (yield cluster.web.get(f"/api/slaves?limit=10&after={first['next']}")).json()
        self.assertEqual((names(rest), rest["more"], rest["next"]), (["pi-02", "pi-03", "pi-04"], False, None))
        newest = (yield cluster.web.get("/api/slaves?order=newest&search=pi-0&state=connected")).json()
        self.assertEqual(names(newest), ["pi-04", "pi-03", "pi-02", "pi-01", "pi-00"])

    @defer.inlineCallbacks
    def test_badQueries(self) -> Any:
        """Bad arguments are a 400 saying which."""
        cluster = Cluster(self, 1)
        for path, error in [
            ("/api/slaves?limit=0", "limit must be a whole number from 1 to 1000"),
            ("/api/slaves?limit=x", "limit must be a whole number from 1 to 1000"),
            ("/api/slaves?history=1&limit=101", "limit must be at most 100 with history"),
            ("/api/slaves?order=oldest", "order must be one of hostname, newest"),
            ("/api/slaves?state=gone", "state must be one of connected, left, trouble"),
            ("/api/slaves?after=zzz", "after is not a cursor this master gave"),
        ]:
            response = yield cluster.web.get(path)
            self.assertEqual((response.code, response.json()), (400, {"error": error}), path)

    @defer.inlineCallbacks
    def test_summary(self) -> Any:
        """/api/summary is what info summary answers."""
        cluster = Cluster(self, 3)
        cluster.slaves[0].lose()
        shown = (yield cluster.web.get("/api/summary")).json()
        self.assertEqual(shown, cluster.ask("summary")["payload"])
        self.assertEqual(shown["slaves"], {"connected": 2, "left": 1, "in_trouble": 1})
