"""
Tests for L{picluster.master.influx}: line protocol, then the exporter against a
real twisted.web stand-in for InfluxDB (its timers on a L{task.Clock}), then
against a real C{influxd} where one is installed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor, task
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.protocols import policies
from twisted.trial import unittest
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from picluster.master.influx import (
    MAX_RETRY_DELAY,
    InfluxExporter,
    influx_url,
    vitals_fields,
    vitals_line,
)
from picluster.master.registry import SlaveRegistry
from tests import processes

INFLUXD = "/usr/bin/influxd"

UUID_ONE = "a" * 32
UUID_TWO = "b" * 32

VITALS = {
    "cpu_percentage": 12.5,
    "cpu_frequency": 1500.0,
    "ram_free": 512_000,
    "swap_free": None,
    "cpu_temperature": 48.2,
    "load_average": [0.5, 0.25, 0.125],
    "disk_free": 1_000,
    "disk_total": 2_000,
    "uptime": 3600.5,
    "process_rss": 40_000,
    "under_voltage": False,
    "throttling": None,
}


@dataclass
class StandInSlave:
    """The attributes of a L{picluster.master.PeerConnection} the exporter reads."""

    uuid: str
    hostname: str | None = None
    vitals: dict[str, Any] | None = None
    vitals_received_at: float | None = None


def registry_of(*slaves: StandInSlave) -> SlaveRegistry:
    registry = SlaveRegistry()
    for slave in slaves:
        registry.add(slave)  # type: ignore[arg-type]
    return registry


class LineProtocolTests(unittest.TestCase):
    """
    Vitals become one line of InfluxDB line protocol.
    """

    def test_whole_line(self) -> None:
        """Tags sorted by key, fields in the vitals' order, time in whole seconds."""
        line = vitals_line(UUID_ONE, "pi-one", {"cpu_percentage": 1.5, "ram_free": 7}, 1700.9)
        self.assertEqual(line, f"vitals,hostname=pi-one,uuid={UUID_ONE} cpu_percentage=1.5,ram_free=7i 1700")

    def test_tag_escaping(self) -> None:
        """Spaces, commas and equals signs in a tag value are escaped."""
        line = vitals_line(UUID_ONE, "pi one,rack=2", {"uptime": 1.0}, 5)
        self.assertEqual(line, rf"vitals,hostname=pi\ one\,rack\=2,uuid={UUID_ONE} uptime=1.0 5")

    def test_tag_unsafe_characters(self) -> None:
        """Backslashes and line breaks, which line protocol cannot carry, become '_'."""
        line = vitals_line(UUID_ONE, "pi\\\nx\\", {"uptime": 1.0}, 5)
        self.assertEqual(line, f"vitals,hostname=pi__x_,uuid={UUID_ONE} uptime=1.0 5")

    def test_missing_hostname(self) -> None:
        """A slave with no (or an empty) hostname gets no hostname tag."""
        for hostname in (None, ""):
            self.assertEqual(
                vitals_line(UUID_ONE, hostname, {"uptime": 2.0}, 5),
                f"vitals,uuid={UUID_ONE} uptime=2.0 5",
            )

    def test_field_types(self) -> None:
        """Byte counts are integers, readings floats, flags booleans; None is skipped."""
        self.assertEqual(
            vitals_fields(VITALS),
            [
                ("cpu_percentage", "12.5"),
                ("cpu_frequency", "1500.0"),
                ("ram_free", "512000i"),
                ("cpu_temperature", "48.2"),
                ("load1", "0.5"),
                ("load5", "0.25"),
                ("load15", "0.125"),
                ("disk_free", "1000i"),
                ("disk_total", "2000i"),
                ("uptime", "3600.5"),
                ("process_rss", "40000i"),
                ("under_voltage", "false"),
            ],
        )

    def test_types_stay_fixed(self) -> None:
        """A reading sent as an int is still a float field, a whole float count an int."""
        self.assertEqual(
            vitals_fields({"cpu_percentage": 0, "ram_free": 512.0, "swap_free": 1.5}),
            [("cpu_percentage", "0.0"), ("ram_free", "512i")],
        )

    def test_throttling_flattened(self) -> None:
        """The throttling dict becomes throttling_* fields; raw stays an integer."""
        fields = vitals_fields(
            {"throttling": {"raw": 0x50005, "under_voltage": True, "throttled": False},
             "under_voltage": True}
        )
        self.assertEqual(
            fields,
            [("throttling_raw", "327685i"), ("throttling_under_voltage", "true"),
             ("throttling_throttled", "false"), ("under_voltage", "true")],
        )

    def test_unusable_readings_skipped(self) -> None:
        """Strings, non-finite numbers, odd names and bad load lists are left out."""
        fields = vitals_fields(
            {"model": "Pi 4", "cpu_temperature": float("nan"), "uptime": float("inf"),
             "bad name": 1.0, "load_average": [1.0, None, "x"], "newer_reading": 3}
        )
        self.assertEqual(fields, [("load1", "1.0"), ("newer_reading", "3.0")])

    def test_nothing_to_write(self) -> None:
        """Vitals with no usable reading make no line at all."""
        self.assertIsNone(vitals_line(UUID_ONE, "pi", {"cpu_temperature": None}, 5))


class InfluxUrlTests(unittest.TestCase):
    """
    L{influx_url} checks the C{--influxdb} option.
    """

    def test_accepted(self) -> None:
        """http and https URLs with a host pass, without their trailing slash."""
        self.assertEqual(influx_url("http://127.0.0.1:8086/"), "http://127.0.0.1:8086")
        self.assertEqual(influx_url("https://influx.example"), "https://influx.example")
        self.assertEqual(influx_url(" http://proxy/influx/ "), "http://proxy/influx")

    def test_rejected(self) -> None:
        """Anything else raises ValueError saying what is wrong."""
        for text, words in [
            ("127.0.0.1:8086", "http:// or https://"),
            ("ftp://host", "http:// or https://"),
            ("http://", "no host"),
            ("http://:8086", "no host"),
            ("http://host:99999", "bad port"),
            ("http://host:port", "bad port"),
            ("http://user:secret@host", "credentials"),
            ("http://host/?db=x", "query"),
        ]:
            with self.assertRaises(ValueError) as caught:
                influx_url(text)
            self.assertIn(words, str(caught.exception), text)


class InfluxStandIn(resource.Resource):
    """
    A C{/write} endpoint that records what it is sent and answers C{code}
    with C{answer} (or never answers, with C{hang}).
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.code = 204
        self.answer = b""
        self.hang = False
        self.writes: list[tuple[dict[bytes, list[bytes]], list[str]]] = []
        self.hanging: list[server.Request] = []
        self.arrivals: list[defer.Deferred[None]] = []

    def next_write(self) -> defer.Deferred[None]:
        """Fire when the next write request arrives."""
        arrival: defer.Deferred[None] = defer.Deferred()
        self.arrivals.append(arrival)
        return arrival

    @property
    def lines(self) -> list[str]:
        return [line for _, lines in self.writes for line in lines]

    def render_POST(self, request: server.Request) -> bytes | int:
        body = request.content.read().decode("utf-8")
        self.writes.append((request.args, body.split("\n")))
        arrivals, self.arrivals = self.arrivals, []
        for arrival in arrivals:
            arrival.callback(None)
        if self.hang:
            self.hanging.append(request)
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        if self.answer:
            request.setHeader(b"content-type", b"application/json")
        return self.answer


class ConnectionTracker(policies.WrappingFactory):
    """Knows when every connection of the wrapped server has closed."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.waiters: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiters, self.waiters = self.waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def when_closed(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self.waiters.append(waiter)
        return waiter


class ExporterTests(unittest.TestCase):
    """
    The exporter samples on its clock and writes over real HTTP to a stand-in.
    """

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)
        self.clock = task.Clock()
        self.events: list[dict[str, Any]] = []
        self.one = StandInSlave(UUID_ONE, "pi-one", {"cpu_percentage": 1.0}, 0.0)
        self.two = StandInSlave(UUID_TWO, None, {"ram_free": 10}, 0.0)
        self.registry = registry_of(self.one, self.two)

    def serve(self, port: int = 0) -> tuple[InfluxStandIn, str]:
        """A stand-in InfluxDB on 127.0.0.1, and its URL."""
        standin = InfluxStandIn()
        tracker = ConnectionTracker(server.Site(standin))
        listening = reactor.listenTCP(port, tracker, interface="127.0.0.1")
        # Cleanups run last first: stop listening, then wait for connections.
        self.addCleanup(tracker.when_closed)
        self.addCleanup(listening.stopListening)
        return standin, f"http://127.0.0.1:{listening.getHost().port}/"

    def exporter(self, url: str, **settings: Any) -> InfluxExporter:
        """A started exporter of C{self.registry} that stops cleanly at cleanup."""
        settings.setdefault("interval", 10.0)
        exporter = InfluxExporter(
            url, "pi db", self.registry, clock=self.clock, http_client=self.client, **settings
        )
        exporter.log = Logger(observer=self.events.append)
        exporter.startService()

        @defer.inlineCallbacks
        def stop() -> Any:
            exporter.stopService()
            yield exporter.when_idle()
            self.assertEqual(self.clock.getDelayedCalls(), [])

        self.addCleanup(stop)
        return exporter

    def logged(self) -> list[str]:
        """What the exporter logged at info level and above."""
        return [formatEvent(event) for event in self.events
                if event["log_level"] >= LogLevel.info]

    def tick(self, exporter: InfluxExporter, seconds: float = 10.0) -> defer.Deferred[None]:
        """Advance the clock and wait for the write it starts (if any) to end."""
        self.clock.advance(seconds)
        return exporter.when_idle()

    def touch(self, slave: StandInSlave, **vitals: Any) -> None:
        """New vitals from C{slave}, received now."""
        slave.vitals = vitals
        slave.vitals_received_at = self.clock.seconds()

    @defer.inlineCallbacks
    def test_writes_each_interval(self) -> Any:
        """Each interval one POST to /write?db=...&precision=s carries a point per slave."""
        standin, url = self.serve()
        exporter = self.exporter(url)
        yield self.tick(exporter, 9.9)
        self.assertEqual(standin.writes, [])
        yield self.tick(exporter, 0.1)
        [(args, lines)] = standin.writes
        self.assertEqual(args, {b"db": [b"pi db"], b"precision": [b"s"]})
        self.assertEqual(
            lines,
            [f"vitals,hostname=pi-one,uuid={UUID_ONE} cpu_percentage=1.0 0",
             f"vitals,uuid={UUID_TWO} ram_free=10i 0"],
        )
        self.assertEqual((exporter.points_written, exporter.pending), (2, 0))
        self.assertEqual(exporter.write_failures, 0)

    @defer.inlineCallbacks
    def test_only_fresh_vitals(self) -> Any:
        """A slave whose vitals did not change since the last sample adds no point."""
        standin, url = self.serve()
        exporter = self.exporter(url)
        yield self.tick(exporter)
        yield self.tick(exporter)
        self.assertEqual(len(standin.writes), 1)
        self.touch(self.two, ram_free=20)
        self.registry.add(StandInSlave("c" * 32, "pi-three"))  # no vitals yet
        yield self.tick(exporter)
        self.assertEqual(standin.writes[1][1], [f"vitals,uuid={UUID_TWO} ram_free=20i 20"])
        self.assertEqual(exporter.points_written, 3)

    @defer.inlineCallbacks
    def test_backoff_then_recovery(self) -> Any:
        """A 5xx keeps the points; retries come after 1, 2, 4 s; recovery is logged once."""
        standin, url = self.serve()
        standin.code, standin.answer = 500, b'{"error": "timeout"}'
        exporter = self.exporter(url)
        yield self.tick(exporter)
        self.assertEqual((len(standin.writes), exporter.pending, exporter.write_failures), (1, 2, 1))
        for delay in (1.0, 2.0, 4.0):
            yield self.tick(exporter, delay - 0.01)
            self.assertEqual(len(standin.writes), exporter.write_failures)
            yield self.tick(exporter, 0.01)
            self.assertEqual(len(standin.writes), exporter.write_failures)
        self.assertEqual(exporter.write_failures, 4)
        self.touch(self.one, cpu_percentage=2.0)
        standin.code, standin.answer = 204, b""
        yield self.tick(exporter, 8.0)  # the sample at 20 s, then the retry at 25 s
        self.assertEqual(
            standin.writes[-1][1],
            [f"vitals,hostname=pi-one,uuid={UUID_ONE} cpu_percentage=1.0 0",
             f"vitals,uuid={UUID_TWO} ram_free=10i 0",
             f"vitals,hostname=pi-one,uuid={UUID_ONE} cpu_percentage=2.0 17"],
        )
        self.assertEqual((exporter.points_written, exporter.pending), (3, 0))
        logged = self.logged()
        self.assertEqual(len(logged), 2, logged)
        self.assertIn("cannot take points (HTTP 500: timeout)", logged[0])
        self.assertIn(f"InfluxDB at {url.rstrip('/')} is back; wrote 3 points, dropped 0", logged[1])
        # The backoff starts again from one second after a success.
        standin.code = 503
        self.touch(self.two, ram_free=1)
        yield self.tick(exporter)
        yield self.tick(exporter, 1.0)
        self.assertEqual(exporter.write_failures, 6)

    @defer.inlineCallbacks
    def test_backoff_limit(self) -> Any:
        """The delay between retries doubles up to MAX_RETRY_DELAY and stays there."""
        standin, url = self.serve()
        standin.code = 502
        exporter = self.exporter(url, interval=10_000.0)
        yield self.tick(exporter, 10_000.0)
        delays = []
        for _ in range(11):
            [retry] = [call for call in self.clock.getDelayedCalls()
                       if call.getTime() < 20_000.0]
            delay = retry.getTime() - self.clock.seconds()
            delays.append(delay)
            yield self.tick(exporter, delay)
        self.assertEqual(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, MAX_RETRY_DELAY,
                                  MAX_RETRY_DELAY])
        self.assertEqual(exporter.write_failures, 12)
        self.assertEqual(len(self.logged()), 1)

    @defer.inlineCallbacks
    def test_bad_data_dropped(self) -> Any:
        """A 400 drops the batch with InfluxDB's error text and schedules no retry."""
        standin, url = self.serve()
        standin.code = 400
        standin.answer = b'{"error":"partial write: field type conflict dropped=1"}'
        exporter = self.exporter(url)
        yield self.tick(exporter)
        self.assertEqual((exporter.pending, exporter.points_dropped), (0, 2))
        self.assertEqual(exporter.write_failures, 1)
        [retry_or_sample] = self.clock.getDelayedCalls()
        self.assertEqual(retry_or_sample.getTime(), 20.0)
        [error] = self.logged()
        self.assertIn("refused 2 points (HTTP 400: partial write: field type conflict", error)

    @defer.inlineCallbacks
    def test_database_missing_is_retried(self) -> Any:
        """A 404 (no such database) keeps the points: the database may yet be created."""
        standin, url = self.serve()
        standin.code, standin.answer = 404, b'{"error":"database not found: \\"pi db\\""}'
        exporter = self.exporter(url)
        yield self.tick(exporter)
        self.assertEqual((exporter.pending, exporter.points_dropped), (2, 0))
        self.assertIn('HTTP 404: database not found: "pi db"', self.logged()[0])
        standin.code, standin.answer = 204, b""
        yield self.tick(exporter, 1.0)
        self.assertEqual((exporter.pending, exporter.points_written), (0, 2))

    @defer.inlineCallbacks
    def test_database_created(self) -> Any:
        """
        A write that finds no database makes the exporter create it, again
        at most every MAX_RETRY_DELAY seconds while writes keep finding none.
        """
        standin, url = self.serve()
        standin.code, standin.answer = 404, b'{"error":"database not found: \\"pi db\\""}'
        exporter = self.exporter(url)

        def creations() -> list[Any]:
            return [args[b"q"] for args, _ in standin.writes if b"q" in args]

        yield self.tick(exporter)
        yield processes.wait_until(lambda: creations(), "CREATE DATABASE", poll=0.01)
        self.assertEqual(creations(), [[b'CREATE DATABASE "pi db"']])
        for _ in range(5):
            yield self.tick(exporter, 30.0)
        self.assertEqual(len(creations()), 1, "not on every write")
        yield self.tick(exporter, MAX_RETRY_DELAY)
        yield processes.wait_until(lambda: len(creations()) == 2, "a second try", poll=0.01)

    @defer.inlineCallbacks
    def test_full_buffer_drops_oldest(self) -> Any:
        """Past max_points the oldest go, counted, with a single warning."""
        standin, url = self.serve()
        standin.code = 500
        exporter = self.exporter(url, max_points=3)
        for _ in range(4):
            self.touch(self.one, cpu_percentage=self.clock.seconds())
            self.touch(self.two, ram_free=int(self.clock.seconds()))
            yield self.tick(exporter)
        self.assertEqual((exporter.pending, exporter.points_dropped), (3, 5))
        warnings = [text for text in self.logged() if "buffer is full" in text]
        self.assertEqual(len(warnings), 1)
        standin.code = 204
        yield self.tick(exporter, MAX_RETRY_DELAY)
        self.assertEqual(
            standin.writes[-1][1],
            [f"vitals,uuid={UUID_TWO} ram_free=20i 20",
             f"vitals,hostname=pi-one,uuid={UUID_ONE} cpu_percentage=30.0 30",
             f"vitals,uuid={UUID_TWO} ram_free=30i 30"],
        )
        self.assertIn("is back; wrote 3 points, dropped 5", self.logged()[-1])

    @defer.inlineCallbacks
    def test_batches(self) -> Any:
        """A backlog goes out batch_size points at a time, one request after another."""
        standin, url = self.serve()
        standin.code = 500
        exporter = self.exporter(url, batch_size=2)
        for _ in range(3):
            self.touch(self.one, cpu_percentage=1.0)
            self.touch(self.two, ram_free=1)
            yield self.tick(exporter)
        failed = len(standin.writes)
        self.assertEqual(exporter.pending, 6)
        standin.code = 204
        yield self.tick(exporter, MAX_RETRY_DELAY)
        self.assertEqual([len(lines) for _, lines in standin.writes[failed:]], [2, 2, 2])
        self.assertEqual((exporter.pending, exporter.points_written), (0, 6))

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A server that never answers is given up on after timeout seconds."""
        standin, url = self.serve()
        standin.hang = True
        exporter = self.exporter(url, timeout=5.0)
        arrived = standin.next_write()
        self.clock.advance(10.0)
        yield arrived
        self.assertEqual(exporter.write_failures, 0)
        yield self.tick(exporter, 5.0)
        self.assertEqual((exporter.write_failures, exporter.pending), (1, 2))
        self.assertIn("no answer within 5 s", self.logged()[0])

    @defer.inlineCallbacks
    def test_stop_cancels_write(self) -> Any:
        """stopService cancels the request in flight at once, keeping its points."""
        standin, url = self.serve()
        standin.hang = True
        exporter = self.exporter(url)
        arrived = standin.next_write()
        self.clock.advance(10.0)
        yield arrived
        exporter.stopService()
        idle = exporter.when_idle()
        self.assertTrue(idle.called)
        self.assertEqual((exporter.write_failures, exporter.pending), (0, 2))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.logged(), [])

    @defer.inlineCallbacks
    def test_connection_refused(self) -> Any:
        """Nobody listening: points kept, backoff grows; the buffer drains once it listens."""
        port = processes.free_port()
        exporter = self.exporter(f"http://127.0.0.1:{port}")
        yield self.tick(exporter)
        for delay in (1.0, 2.0, 4.0):
            self.assertEqual(exporter.pending, 2)
            [retry] = [call for call in self.clock.getDelayedCalls() if call.getTime() != 20.0]
            self.assertEqual(retry.getTime() - self.clock.seconds(), delay)
            yield self.tick(exporter, delay)
        self.assertEqual(exporter.write_failures, 4)
        self.assertIn("refused", self.logged()[0])
        standin, _ = self.serve(port)
        yield self.tick(exporter, 8.0)
        self.assertEqual(len(standin.lines), 2)
        self.assertEqual((exporter.pending, exporter.points_written), (0, 2))
        self.assertEqual(len(self.logged()), 2)


INFLUXD_CONFIG = """\
reporting-disabled = true
reporting-enabled = false
bind-address = "127.0.0.1:{rpc_port}"

[meta]
  dir = "{dir}/meta"
  logging-enabled = false

[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false

[monitor]
  store-enabled = false

[http]
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
"""


class RealInfluxTests(unittest.TestCase):
    """
    The exporter writes to a real InfluxDB 1.x, started for the test.
    """

    if not os.path.exists(INFLUXD):
        skip = f"{INFLUXD} is not installed (Debian package influxdb)"

    def setUp(self) -> None:
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.client = HTTPClient(Agent(reactor, pool=pool))
        self.addCleanup(pool.closeCachedConnections)

    @defer.inlineCallbacks
    def start_influxd(self) -> Any:
        """A fresh influxd in a temp dir; its base URL once it answers /ping."""
        where = processes.temp_dir(self)
        http_port, rpc_port = processes.free_port(), processes.free_port()
        config = os.path.join(where, "influxdb.conf")
        with open(config, "w") as out:
            out.write(INFLUXD_CONFIG.format(dir=where, http_port=http_port, rpc_port=rpc_port))
        child = processes.Child(
            self, "influxd", [INFLUXD, "run", "-config", config], cwd=where, env=dict(os.environ)
        )
        url = f"http://127.0.0.1:{http_port}"

        @defer.inlineCallbacks
        def answers_ping() -> Any:
            if not child.running:
                raise unittest.FailTest(f"influxd ended early\n{child.report()}")
            try:
                response = yield self.client.get(f"{url}/ping", timeout=1.0)
                yield response.content()
            except Exception:
                return False
            return response.code == 204

        yield processes.wait_until(answers_ping, "influxd to answer /ping", child.report)
        return url, child

    @defer.inlineCallbacks
    def query(self, url: str, text: str, **params: str) -> Any:
        response = yield self.client.post(f"{url}/query", params={"q": text, **params})
        answer = yield treq.json_content(response)
        self.assertEqual(response.code, 200, answer)
        return answer["results"][0]

    @defer.inlineCallbacks
    def test_points_arrive(self) -> Any:
        """Two slaves' vitals can be read back from InfluxDB, tags and fields intact."""
        url, child = yield self.start_influxd()
        # No CREATE DATABASE: the exporter makes the database it was told of.
        now = reactor.seconds()
        registry = registry_of(
            StandInSlave(UUID_ONE, "pi one,rack=2", dict(VITALS), now),
            StandInSlave(UUID_TWO, None, {"cpu_percentage": 0, "under_voltage": True,
                                          "load_average": [1.0, 2.0, 3.0]}, now),
        )
        exporter = InfluxExporter(
            url, "picluster", registry, interval=0.05, http_client=self.client
        )
        exporter.startService()
        self.addCleanup(exporter.when_idle)
        self.addCleanup(exporter.stopService)
        yield processes.wait_until(
            lambda: exporter.points_written >= 2, "two points written", child.report
        )
        self.assertEqual(exporter.write_failures, 1, "the first write found no database")
        result = yield self.query(
            url, "SELECT * FROM vitals ORDER BY time", db="picluster", epoch="s"
        )
        [series] = result["series"]
        rows = sorted(
            (dict(zip(series["columns"], values)) for values in series["values"]),
            key=lambda row: row["uuid"],
        )
        self.assertEqual(len(rows), 2, rows)
        one, two = rows
        self.assertEqual(
            {key: value for key, value in one.items() if value is not None},
            {"time": int(now), "uuid": UUID_ONE, "hostname": "pi one,rack=2",
             "cpu_percentage": 12.5, "cpu_frequency": 1500, "ram_free": 512_000,
             "cpu_temperature": 48.2, "load1": 0.5, "load5": 0.25, "load15": 0.125,
             "disk_free": 1_000, "disk_total": 2_000, "uptime": 3600.5,
             "process_rss": 40_000, "under_voltage": False},
        )
        self.assertEqual(
            {key: value for key, value in two.items() if value is not None},
            {"time": int(now), "uuid": UUID_TWO, "cpu_percentage": 0, "under_voltage": True,
             "load1": 1, "load5": 2, "load15": 3},
        )
        types = yield self.query(url, "SHOW FIELD KEYS FROM vitals", db="picluster")
        field_types = dict(types["series"][0]["values"])
        self.assertEqual(field_types["ram_free"], "integer")
        self.assertEqual(field_types["cpu_percentage"], "float")
        self.assertEqual(field_types["under_voltage"], "boolean")
