"""
The master's web side over real HTTP: every resource of the JSON API, the
page and its assets, C{/metrics} read back with prometheus_client's own
parser, and the live event stream, including a browser that stops reading.
"""

from __future__ import annotations

import gc
import json
import socket
from typing import Any

import msgspec
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.trial import unittest

from picluster.master.web import events
from picluster.master.web.site import MAX_TASKS
from picluster.wire.messages import Vitals
from tests import processes
from tests.webhelpers import PI_VITALS, WebMaster, hold_ready


class ApiTests(unittest.TestCase):
    """The JSON API: shapes, 404s, bad query arguments."""

    def setUp(self) -> None:
        self.web = WebMaster(self)

    @defer.inlineCallbacks
    def test_slavesListed(self) -> Any:
        """Connected slaves are listed by hostname, with their vitals read out."""
        web = self.web
        web.slave("pi-two", "10.0.0.3", vitals=PI_VITALS)
        web.slave("pi-one", "10.0.0.2", vitals=PI_VITALS)
        response = yield web.get("/api/slaves")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")
        shown = response.json()
        self.assertEqual(shown["now"], web.clock.seconds())
        self.assertEqual([s["hostname"] for s in shown["slaves"]], ["pi-one", "pi-two"])
        one = shown["slaves"][0]
        self.assertEqual(one["state"], "connected")
        self.assertEqual(one["address"], "10.0.0.2:4321")
        self.assertEqual(one["cpu_percent"], 12.5)
        self.assertEqual(one["temperature"], 48.2)
        self.assertEqual(one["ram_free"], 512 * 2**20)
        self.assertEqual(one["ram_total"], 1024)
        self.assertEqual(one["disk_free"], 10 * 2**30)
        self.assertEqual(one["load_average"], [0.5, 0.25, 0.125])
        self.assertIs(one["under_voltage"], False)
        self.assertIs(one["throttled"], True)
        self.assertEqual(one["slots"], 2)
        self.assertEqual(one["running_tasks"], 0)
        self.assertEqual(one["ready_tasks"], 0)
        self.assertEqual(one["vitals_at"], web.clock.seconds())
        self.assertIsNone(one["left_at"])
        self.assertNotIn("history", one)

    @defer.inlineCallbacks
    def test_missingReadings(self) -> Any:
        """A slave without vitals yet shows nulls, not errors."""
        self.web.slave("pi-one")
        shown = (yield self.web.get("/api/slaves")).json()
        [one] = shown["slaves"]
        for key in ("cpu_percent", "temperature", "ram_free", "load_average", "throttled",
                    "vitals_at", "uptime"):
            self.assertIsNone(one[key], key)

    @defer.inlineCallbacks
    def test_history(self) -> Any:
        """?history=1 adds each slave's ring of samples, oldest first."""
        web = self.web
        slave = web.slave("pi-one", vitals=PI_VITALS)
        web.clock.advance(10)
        slave.send("vitals", dict(PI_VITALS, cpu_percentage=50.0, cpu_temperature=None))
        shown = (yield web.get("/api/slaves?history=1")).json()
        history = shown["slaves"][0]["history"]
        now = web.clock.seconds()
        self.assertEqual(history["t"], [now - 10, now])
        self.assertEqual(history["cpu_percent"], [12.5, 50.0])
        self.assertEqual(history["temperature"][1], None)
        self.assertAlmostEqual(history["temperature"][0], 48.2, places=4)
        self.assertEqual(history["ram_free"], [512 * 2**20] * 2)

    @defer.inlineCallbacks
    def test_leftSlaveStaysListed(self) -> Any:
        """A slave that left is listed after the connected ones, until forgotten."""
        web = self.web
        gone = web.slave("pi-gone", "10.0.0.9", vitals=PI_VITALS)
        web.slave("pi-here", "10.0.0.2")
        web.clock.advance(5)
        gone.lose()
        shown = (yield web.get("/api/slaves")).json()["slaves"]
        self.assertEqual([(s["hostname"], s["state"]) for s in shown],
                         [("pi-here", "connected"), ("pi-gone", "left")])
        left = shown[1]
        self.assertEqual(left["left_at"], web.clock.seconds())
        self.assertEqual(left["left_reason"], "connection lost")
        self.assertEqual(left["cpu_percent"], 12.5, "its last vitals are kept")
        self.assertIsNone(left["slots"])
        detail = (yield web.get(f"/api/slaves/{gone.uuid}")).json()
        self.assertEqual(detail["state"], "left")

        web.clock.advance(3600.5)
        shown = (yield web.get("/api/slaves")).json()["slaves"]
        self.assertEqual([s["hostname"] for s in shown], ["pi-here"])
        missing = yield web.get(f"/api/slaves/{gone.uuid}")
        self.assertEqual(missing.code, 404)

    @defer.inlineCallbacks
    def test_rejoinKeepsHistory(self) -> Any:
        """A slave back under its uuid is one node again, its charts carried on."""
        web = self.web
        first = web.slave("pi-one", vitals=PI_VITALS)
        first.lose()
        web.clock.advance(10)
        again = web.slave("pi-one", uuid=first.uuid, vitals=PI_VITALS)
        shown = (yield web.get("/api/slaves?history=1")).json()["slaves"]
        self.assertEqual(len(shown), 1)
        self.assertEqual(shown[0]["uuid"], again.uuid)
        self.assertEqual(shown[0]["state"], "connected")
        self.assertEqual(len(shown[0]["history"]["t"]), 2)
        master = (yield web.get("/api/master")).json()
        self.assertEqual(master["wire"]["reconnections"], 1)
        self.assertEqual(master["slaves"], {"connected": 1, "left": 0})

    @defer.inlineCallbacks
    def test_slaveDetail(self) -> Any:
        web = self.web
        slave = web.slave("pi-one", vitals=PI_VITALS)
        response = yield web.get(f"/api/slaves/{slave.uuid.upper()}")
        self.assertEqual(response.code, 200)
        detail = response.json()
        self.assertEqual(detail["uuid"], slave.uuid)
        self.assertEqual(detail["vitals"], msgspec.to_builtins(msgspec.convert(PI_VITALS, Vitals)))
        self.assertEqual(detail["computer_details"]["hostname"], "pi-one")
        self.assertEqual(len(detail["history"]["t"]), 1)

    @defer.inlineCallbacks
    def test_unknownSlave(self) -> Any:
        for path in ("/api/slaves/" + "0" * 32, "/api/slaves/<script>", "/api/slaves/a/b"):
            response = yield self.web.get(path)
            self.assertEqual(response.code, 404, path)
            self.assertEqual(response.header("content-type"), "application/json; charset=utf-8")
            self.assertIn("error", response.json())

    @defer.inlineCallbacks
    def test_clientsNotListed(self) -> Any:
        """A client connection (the picluster command) is not a slave."""
        from tests.taskhelpers import FakeClient

        FakeClient(self.web.master.factory, self.web.clock)
        self.web.slave("pi-one")
        shown = (yield self.web.get("/api/slaves")).json()["slaves"]
        self.assertEqual([s["hostname"] for s in shown], ["pi-one"])
        master = (yield self.web.get("/api/master")).json()
        self.assertEqual(master["clients"], 1)

    @defer.inlineCallbacks
    def test_master(self) -> Any:
        web = self.web
        slave = web.slave("pi-one", vitals=PI_VITALS)
        slave.send("garbage-type")
        web.clock.advance(30)
        shown = (yield web.get("/api/master")).json()
        self.assertEqual(shown["hostname"], "pi-master")
        self.assertEqual(shown["uptime"], 30)
        self.assertEqual(shown["slaves"], {"connected": 1, "left": 0})
        self.assertEqual(shown["computer_details"]["ram"], 4096)
        self.assertEqual(shown["tasks"], {"queued": 0, "running": 0, "done": 0, "failed": 0,
                                          "cancelled": 0})
        wire = shown["wire"]
        self.assertEqual(wire["connections"], 1)
        self.assertEqual(wire["disconnections"], 0)
        self.assertEqual(wire["bad_messages"], 1)
        # hello, computer_details, worker, vitals, the bad one.
        self.assertEqual(wire["frames_in"], 5)
        self.assertEqual(wire["frames_out"], 4)
        slave.lose()
        wire = (yield web.get("/api/master")).json()["wire"]
        self.assertEqual((wire["disconnections"], wire["frames_in"], wire["bad_messages"]), (1, 5, 1))

    @defer.inlineCallbacks
    def test_tasks(self) -> Any:
        """Counts by state and the newest tasks first, without their arguments."""
        from tests.taskhelpers import FakeClient

        web = self.web
        slave = web.slave("pi-one", slots=1)
        client = FakeClient(web.master.factory, web.clock)
        client.submit({"name": "primes", "args": {"start": 1, "stop": 10}},
                      {"name": "primes", "args": {"start": 10, "stop": 20}},
                      {"name": "sleep", "args": {"seconds": 1}})
        [run] = slave.runs()
        slave.finish(run, 4)
        [run] = slave.runs()
        slave.finish(run, error={"type": "ValueError", "message": "no", "traceback": None,
                                 "kind": "exception"})
        response = yield web.get("/api/tasks")
        self.assertEqual(response.code, 200)
        shown = response.json()
        self.assertEqual(shown["counts"], {"queued": 0, "running": 1, "done": 1, "failed": 1,
                                           "cancelled": 0})
        self.assertEqual([t["id"] for t in shown["tasks"]], [3, 2, 1])
        self.assertEqual([t["state"] for t in shown["tasks"]], ["running", "failed", "done"])
        self.assertEqual(shown["tasks"][1]["error"], "ValueError: no")
        self.assertEqual(shown["tasks"][0]["slave_hostname"], "pi-one")
        self.assertNotIn("args", shown["tasks"][0])

        limited = (yield web.get("/api/tasks?limit=1&state=done")).json()
        self.assertEqual([t["id"] for t in limited["tasks"]], [1])
        full = (yield web.get("/api/tasks/1")).json()
        self.assertEqual((full["result"], full["args"]), (4, {"start": 1, "stop": 10}))

    @defer.inlineCallbacks
    def test_taskCountsAfterRestart(self) -> Any:
        """Counts of finished tasks come from the store, not only this run's memory."""
        from tests.taskhelpers import FakeClient

        web = self.web
        scheduler = web.master.scheduler
        slave = web.slave("pi-one", slots=1)
        FakeClient(web.master.factory, web.clock).submit({"name": "sleep", "args": {"seconds": 1}})
        [run] = slave.runs()
        slave.finish(run, None)
        counted = yield scheduler.store.counts()
        self.assertEqual(counted["done"], 1)
        self.assertEqual(scheduler.finished_counts["done"], 1)

    @defer.inlineCallbacks
    def test_badTaskQueries(self) -> Any:
        for path in ("/api/tasks?limit=0", f"/api/tasks?limit={MAX_TASKS + 1}",
                     "/api/tasks?limit=x", "/api/tasks?state=lost", "/api/tasks?state=%ff"):
            response = yield self.web.get(path)
            self.assertEqual(response.code, 400, path)
            self.assertIn("error", response.json())
        for path in ("/api/tasks/99", "/api/tasks/x", "/api/tasks/" + "9" * 40):
            response = yield self.web.get(path)
            self.assertEqual(response.code, 404, path)

    @defer.inlineCallbacks
    def test_taskQueueUnavailable(self) -> Any:
        """A task queue that cannot answer is a 503 with its reason; slaves still show."""
        self.web.master.scheduler._unavailable = "the task queue is unavailable: disk gone"
        response = yield self.web.get("/api/tasks")
        self.assertEqual(response.code, 503)
        self.assertIn("disk gone", response.json()["error"])
        self.assertEqual((yield self.web.get("/api/slaves")).code, 200)

    @defer.inlineCallbacks
    def test_notFound(self) -> Any:
        api = yield self.web.get("/api/nothing")
        self.assertEqual((api.code, api.json()), (404, {"error": "not found: /api/nothing"}))
        page = yield self.web.get("/nothing.html")
        self.assertEqual(page.code, 404)
        self.assertIn("text/html", page.header("content-type"))
        listing = yield self.web.get("/static/")
        self.assertEqual(listing.code, 404, "no directory listing")
        escape = yield self.web.get("/static/../site.py")
        self.assertEqual(escape.code, 404)
        missing = yield self.web.get("/static/missing.js")
        self.assertEqual(missing.code, 404)
        self.assertIn(b"the dashboard is at /", missing.body)

    @defer.inlineCallbacks
    def test_readOnly(self) -> Any:
        """The web port serves no write action."""
        for path in ("/api/slaves", "/api/tasks", "/", "/metrics"):
            response = yield self.web.get(path, method=b"POST")
            self.assertEqual(response.code, 405, path)
        head = yield self.web.get("/api/master", method=b"HEAD")
        self.assertEqual((head.code, head.body), (200, b""))


class PageTests(unittest.TestCase):
    """The dashboard page and its assets come from the master itself."""

    @defer.inlineCallbacks
    def test_pageAndAssets(self) -> Any:
        web = WebMaster(self)
        page = yield web.get("/")
        self.assertEqual(page.code, 200)
        self.assertIn("text/html", page.header("content-type"))
        self.assertIn("script-src 'self'", page.header("content-security-policy"))
        html = page.body.decode()
        for asset, kind in (("/static/dashboard.js", "javascript"),
                            ("/static/dashboard.css", "text/css"),
                            ("/static/favicon.svg", "image/svg+xml")):
            self.assertIn(asset, html)
            response = yield web.get(asset)
            self.assertEqual(response.code, 200, asset)
            self.assertIn(kind, response.header("content-type"), asset)
            self.assertNotIn(b"http://", response.body.replace(b"http://www.w3.org", b""), asset)
        self.assertNotIn("https://", html, "no CDN: the cluster may have no internet")


class MetricsTests(unittest.TestCase):
    """C{/metrics} parses as Prometheus exposition and says what the API says."""

    @defer.inlineCallbacks
    def test_parsed(self) -> Any:
        web = WebMaster(self)
        slave = web.slave("pi-one", vitals=PI_VITALS)
        gone = web.slave("pi-gone", "10.0.0.9", vitals=PI_VITALS)
        gone.lose()
        slave.send("nonsense")
        response = yield web.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn("text/plain", response.header("content-type"))
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}

        def samples(name: str) -> dict[Any, float]:
            return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples}

        one = (("hostname", "pi-one"), ("uuid", slave.uuid))
        left = (("hostname", "pi-gone"), ("uuid", gone.uuid))
        self.assertEqual(samples("picluster_slave_connected"), {one: 1.0, left: 0.0})
        self.assertEqual(samples("picluster_slave_cpu_percent"), {one: 12.5})
        self.assertEqual(samples("picluster_slave_temperature_celsius"), {one: 48.2})
        self.assertEqual(samples("picluster_slave_ram_free_bytes"), {one: 512 * 2**20})
        self.assertEqual(samples("picluster_slave_throttled"), {one: 1.0})
        self.assertEqual(samples("picluster_slaves"), {(("state", "connected"),): 1.0,
                                                       (("state", "left"),): 1.0})
        self.assertEqual(families["picluster_connections"].type, "counter")
        self.assertEqual(samples("picluster_connections"), {(): 2.0})
        self.assertEqual(samples("picluster_disconnections"), {(): 1.0})
        self.assertEqual(samples("picluster_bad_messages"), {(): 1.0})
        self.assertGreater(samples("picluster_frames_received")[()], 6)
        self.assertEqual(samples("picluster_tasks")[(("state", "queued"),)], 0)
        self.assertIn("process_resident_memory_bytes", families)

    @defer.inlineCallbacks
    def test_readyTasks(self) -> Any:
        """Each slave's running and ready runs are gauges; a slave that holds none reads 0."""
        web = WebMaster(self)
        hold_ready(web)
        response = yield web.get("/metrics")
        families = {f.name: f for f in text_string_to_metric_families(response.body.decode())}

        def samples(name: str) -> dict[str, float]:
            return {s.labels["hostname"]: s.value for s in families[name].samples}

        self.assertEqual(samples("picluster_slave_running_tasks"), {"pi-busy": 1.0, "pi-idle": 0.0})
        self.assertEqual(samples("picluster_slave_ready_tasks"), {"pi-busy": 2.0, "pi-idle": 0.0})

    @defer.inlineCallbacks
    def test_openMetrics(self) -> Any:
        """A scraper that asks for OpenMetrics gets it."""
        web = WebMaster(self)
        response = yield web.get("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertIn("application/openmetrics-text", response.header("content-type"))
        self.assertTrue(response.body.endswith(b"# EOF\n"))


class _EventReader(protocol.Protocol):
    """A browser's side of the event stream, reading the raw HTTP response."""

    def __init__(self) -> None:
        self.data = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any) -> None:
        self.closed.callback(None)

    def events(self) -> list[dict[str, Any]]:
        found = []
        for block in self.data.split(b"\n\n"):
            lines = block.split(b"\n")
            if b"event: cluster" in lines:
                [data] = [line for line in lines if line.startswith(b"data: ")]
                found.append(json.loads(data[len(b"data: "):]))
        return found


class EventTests(unittest.TestCase):
    """The live stream: a picture on connect, then one per tick, to each reader."""

    @defer.inlineCallbacks
    def connect(self, web: WebMaster) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", web.port.getHost().port)
        reader = yield connectProtocol(endpoint, _EventReader())
        self.addCleanup(lambda: reader.transport.loseConnection() or reader.closed)
        return reader

    @defer.inlineCallbacks
    def test_stream(self) -> Any:
        web = WebMaster(self)
        web.slave("pi-one", vitals=PI_VITALS)
        reader = yield self.connect(web)
        yield processes.wait_until(lambda: reader.events(), "the first event", poll=0.01)
        self.assertIn(b"content-type: text/event-stream", reader.data.lower())
        [first] = reader.events()
        self.assertNotIn("slaves", first)  # the page asks /api/slaves for its rows
        self.assertEqual(first["summary"]["slaves"], {"connected": 1, "left": 0, "in_trouble": 1})
        self.assertEqual(first["summary"]["in_trouble"][0]["troubles"], ["throttled"])
        self.assertEqual(first["master"]["slaves"]["connected"], 1)
        self.assertNotIn("computer_details", first["master"])
        self.assertEqual(first["tasks"]["counts"]["queued"], 0)

        web.slave("pi-two", "10.0.0.3")
        web.clock.advance(events.INTERVAL)
        yield processes.wait_until(lambda: len(reader.events()) == 2, "the second event", poll=0.01)
        self.assertEqual(reader.events()[1]["summary"]["slaves"]["connected"], 2)

    @defer.inlineCallbacks
    def test_eventSizeDoesNotGrow(self) -> Any:
        """An event is the same size with 5 healthy slaves as with 300: it carries the summary, not the rows."""
        sizes = []
        for count in (5, 300):
            web = WebMaster(self)
            for number in range(count):
                web.slave(f"pi-{number:03}", f"10.0.{number // 250}.{number % 250 + 1}",
                          vitals=dict(PI_VITALS, throttling=None))
            reader = yield self.connect(web)
            yield processes.wait_until(lambda: reader.events(), "the first event", poll=0.01)
            sizes.append(len(reader.data))
        self.assertLess(abs(sizes[1] - sizes[0]), 300, sizes)

    @defer.inlineCallbacks
    def test_nothingBuiltWithoutReaders(self) -> Any:
        """Nobody watching, nothing built."""
        web = WebMaster(self)
        built = []
        self.patch(web.master.scheduler.view, "latest", lambda limit: built.append(limit) or [])
        reader = yield self.connect(web)
        yield processes.wait_until(lambda: reader.events(), "the first event", poll=0.01)
        web.clock.advance(events.INTERVAL)
        self.assertEqual(len(built), 2)
        reader.transport.loseConnection()
        stream = web.site.events
        yield processes.wait_until(lambda: not stream.subscribers, "the reader gone", poll=0.01)
        for _ in range(5):
            web.clock.advance(events.INTERVAL)
        self.assertEqual(len(built), 2)

    @defer.inlineCallbacks
    def test_oneTickAtATime(self) -> Any:
        """
        Readers that come and go while a tick waits for the task queue never
        start a second loop: one event per interval, whatever happened.
        """
        web = WebMaster(self)
        stream = web.site.events
        asked: list[defer.Deferred[Any]] = []

        def latest(limit: int) -> defer.Deferred[Any]:
            asked.append(defer.Deferred())
            return asked[-1]

        self.patch(web.master.scheduler.view, "latest", latest)
        first = yield self.connect(web)
        yield processes.wait_until(lambda: stream.subscribers, "subscribed", poll=0.01)
        web.clock.advance(events.INTERVAL)       # a tick, waiting for the queue
        first.transport.loseConnection()
        yield processes.wait_until(lambda: not stream.subscribers, "gone", poll=0.01)
        second = yield self.connect(web)
        yield processes.wait_until(lambda: stream.subscribers, "subscribed again", poll=0.01)
        for waiting in asked:
            waiting.callback([])
        self.assertEqual(len(asked), 3, "two newcomers' pictures and one tick")
        for _ in range(4):
            web.clock.advance(events.INTERVAL)
            for waiting in asked:
                if not waiting.called:
                    waiting.callback([])
        self.assertEqual(len(asked), 7, "one more per interval, not two")
        yield processes.wait_until(lambda: len(second.events()) == 5, "five events", poll=0.01)

    @defer.inlineCallbacks
    def test_stalledReaderCutOff(self) -> Any:
        """
        A browser that stops reading is skipped while its connection is full,
        then cut off; one that reads goes on getting every event.
        """
        web = WebMaster(self)
        for n in range(40):
            web.slave(f"pi-{n:02}-" + "x" * 40, f"10.0.1.{n}", vitals=PI_VITALS)
        reader = yield self.connect(web)
        stalled = socket.create_connection(("127.0.0.1", web.port.getHost().port))
        self.addCleanup(stalled.close)
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /api/events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        stream = web.site.events
        yield processes.wait_until(lambda: len(stream.subscribers) == 2, "both subscribed", poll=0.01)
        [slow] = [s for s in stream.subscribers
                  if s.request.getClientAddress().port == stalled.getsockname()[1]]

        ticks = 0
        while slow in stream.subscribers:
            ticks += 1
            self.assertLess(ticks, 2000, "the stalled reader was never cut off")
            web.clock.advance(events.INTERVAL)
            # Let the reactor move the bytes before the next tick.
            yield processes.sleep(0.001)
        self.assertTrue(slow.paused)
        self.assertEqual(slow.skipped, events.STALL_LIMIT,
                         "it was cut off for missing events, not for closing")
        sent = len(reader.events())
        self.assertEqual(sent, ticks + 1, "the reading browser got every event")
        yield processes.wait_until(lambda: len(reader.events()) == sent, "all read", poll=0.01)


class StatusInfoTests(unittest.TestCase):
    """C{info status} over the wire carries what the API shows."""

    def test_status(self) -> None:
        from tests.taskhelpers import FakeClient

        web = WebMaster(self)
        slave = web.slave("pi-one", vitals=PI_VITALS)
        client = FakeClient(web.master.factory, web.clock)
        reply = client.request("info", "status")
        self.assertEqual(reply["type"], "status")
        status = reply["payload"]
        self.assertEqual([s["uuid"] for s in status["slaves"]], [slave.uuid])
        self.assertEqual(status["slaves"][0]["cpu_percent"], 12.5)
        self.assertEqual(status["master"]["hostname"], "pi-master")
        self.assertEqual(status["master"]["clients"], 1)
        self.assertEqual(status["tasks"]["queued"], 0)


class EventLimitTests(unittest.TestCase):
    @defer.inlineCallbacks
    def test_tooManyStreams(self) -> Any:
        """Past the limit a stream is refused with 503; one closing makes room."""
        self.patch(events, "MAX_SUBSCRIBERS", 2)
        web = WebMaster(self)
        readers = []
        for _ in range(2):
            endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", web.port.getHost().port)
            reader = yield connectProtocol(endpoint, _EventReader())
            self.addCleanup(lambda r=reader: r.transport.loseConnection() or r.closed)
            readers.append(reader)
        stream = web.site.events
        yield processes.wait_until(lambda: len(stream.subscribers) == 2, "two streams", poll=0.01)
        refused = yield web.get("/api/events")
        self.assertEqual(refused.code, 503)
        self.assertIn("too many", refused.json()["error"])
        readers[0].transport.loseConnection()
        yield processes.wait_until(lambda: len(stream.subscribers) == 1, "one closed", poll=0.01)
        third = yield self.connect_reader(web)
        yield processes.wait_until(lambda: third.events(), "the third stream's event", poll=0.01)

    @defer.inlineCallbacks
    def connect_reader(self, web: WebMaster) -> Any:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", web.port.getHost().port)
        reader = yield connectProtocol(endpoint, _EventReader())
        self.addCleanup(lambda: reader.transport.loseConnection() or reader.closed)
        return reader


class HostilePeerTests(unittest.TestCase):
    """What a slave reports cannot break the views, nor make them huge."""

    @defer.inlineCallbacks
    def test_outOfRangeReadings(self) -> Any:
        """
        Numbers valid in JSON but not in a float32 chart show as missing
        readings; numbers no field can hold are refused, naming the field,
        and the readings before them stay.  The API, the charts and /metrics
        keep working.
        """
        web = WebMaster(self)
        vitals = dict(PI_VITALS, cpu_percentage=1e39, cpu_temperature=-1e300)
        slave = web.slave("pi-odd", vitals=vitals)
        for field, bad in (("ram_free", 10**400), ("load_average", [1, 10**400, 2])):
            reply = slave.request("vitals", dict(PI_VITALS, **{field: bad}))
            self.assertEqual((reply["type"], reply["payload"]["field"].split("[")[0]),
                             ("bad_message", field))
        listed = yield web.get("/api/slaves?history=1")
        self.assertEqual(listed.code, 200)
        [shown] = listed.json()["slaves"]
        self.assertEqual(shown["cpu_percent"], 1e39, "a finite float is shown as it is")
        self.assertEqual(shown["temperature"], -1e300)
        self.assertEqual(shown["ram_free"], PI_VITALS["ram_free"])
        self.assertEqual(shown["history"]["cpu_percent"], [None])
        self.assertEqual(shown["history"]["temperature"], [None])
        detail = yield web.get(f"/api/slaves/{slave.uuid}")
        self.assertEqual(detail.code, 200)
        metrics = yield web.get("/metrics")
        self.assertEqual(metrics.code, 200)
        self.assertIn(b"picluster_slave_cpu_percent{", metrics.body)

    @defer.inlineCallbacks
    def test_hugeTextClipped(self) -> Any:
        """
        Facts over their size limit are refused; long texts within it are
        shown clipped.
        """
        from picluster.text import MAX_TEXT
        from picluster.wire.messages import MAX_FACTS_BYTES

        web = WebMaster(self)
        slave = web.slave("h" * 1000, vitals=PI_VITALS)
        refusal = slave.request("computer_details", {"hostname": "x" * 100_000, "padding": "p" * 100})
        self.assertEqual(refusal["payload"]["limit"], MAX_FACTS_BYTES)
        slave.send("computer_details", {"hostname": "h" * 1500, "model": "m" * 1500,
                                        "padding": "p" * 500})
        [shown] = (yield web.get("/api/slaves")).json()["slaves"]
        self.assertEqual(len(shown["hostname"]), MAX_TEXT)
        self.assertEqual(len(shown["model"]), MAX_TEXT)
        slave.lose()
        [departure] = web.master.registry.departures(web.clock.seconds())
        self.assertEqual(len(departure.hostname), MAX_TEXT)
        self.assertEqual(departure.vitals, msgspec.convert(PI_VITALS, Vitals))

    @defer.inlineCallbacks
    def test_unicodeDigits(self) -> Any:
        """A superscript two is a digit to str.isdigit, not to the API."""
        web = WebMaster(self)
        self.assertEqual((yield web.get("/api/tasks?limit=%C2%B2")).code, 400)
        self.assertEqual((yield web.get("/api/tasks/%C2%B2")).code, 404)

    @defer.inlineCallbacks
    def test_unencodable(self) -> Any:
        """An answer JSON cannot encode is a 500, not a request left hanging."""
        web = WebMaster(self)
        slave = web.slave("pi-one")
        web.master.registry.get(slave.uuid).vitals_received_at = float("inf")
        response = yield web.get("/api/slaves")
        self.assertEqual((response.code, response.json()), (500, {"error": "internal error"}))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    @defer.inlineCallbacks
    def test_browserGoneWhileAsking(self) -> Any:
        """
        A browser that leaves before a slow answer: the answer, when it
        comes, is dropped without an error, and the next browser is served.
        """
        web = WebMaster(self)
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.patch(web.master.scheduler.view, "latest", lambda limit, state=None: waiting)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", web.port.getHost().port)
        reader = yield connectProtocol(endpoint, _EventReader())
        reader.transport.write(b"GET /api/tasks HTTP/1.1\r\nHost: localhost\r\n\r\n")
        yield processes.sleep(0.05)
        reader.transport.loseConnection()
        yield reader.closed
        yield processes.sleep(0.05)
        waiting.callback([])
        # An unhandled failure is only told of when its Deferred is collected.
        gc.collect()
        self.patch(web.master.scheduler.view, "latest", lambda limit, state=None: [])
        self.assertEqual((yield web.get("/api/tasks")).code, 200)
