"""
Fixtures for the web tests: a master whose time is a L{Clock}, its slaves
played over StringTransports, and its web site on a real loopback port,
asked over real HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from picluster.master.service import MasterService
from picluster.master.web.site import DashboardSite
from tests.helpers import MASTER_FACTS
from tests.taskhelpers import FakeClient, FakeSlave, started_scheduler

#: A full vitals report, as a slave on a Pi sends it.
PI_VITALS = {
    "cpu_percentage": 12.5, "cpu_frequency": 1500.0, "ram_free": 512 * 2**20,
    "swap_free": 0, "cpu_temperature": 48.2, "load_average": [0.5, 0.25, 0.125],
    "disk_free": 10 * 2**30, "disk_total": 32 * 2**30, "uptime": 3600.0,
    "process_rss": 30 * 2**20,
    "throttling": {"under_voltage": False, "frequency_capped": False, "throttled": True,
                   "soft_temperature_limit": False},
    "under_voltage": False,
}


class Response:
    def __init__(self, code: int, headers: Headers, body: bytes):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class WebMaster:
    """
    A master service that is never started: its scheduler runs on a
    synchronous SQLite store, its clock is a L{Clock}, and only its web
    site listens, on a real port, so that browsers' requests are real.
    """

    def __init__(self, case: unittest.TestCase, **settings: Any):
        self.case = case
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.master = MasterService(
            "tcp:0", reactor=self.clock, web=None,
            scheduler=started_scheduler(self.clock),
            computer_details=dict(MASTER_FACTS), keepalive=100.0, dead_after=300.0,
            **settings,
        )
        self.master.started_at = self.clock.seconds()
        self.site = DashboardSite(self.master)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        case.addCleanup(self._close)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.http = HTTPClient(Agent(reactor, pool=self.pool))
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def _close(self) -> defer.Deferred[Any]:
        self.site.events.close()
        return defer.gatherResults([
            defer.maybeDeferred(self.port.stopListening),
            self.pool.closeCachedConnections(),
        ])

    def slave(self, hostname: str = "pi-one", host: str = "10.0.0.2",
              vitals: dict[str, Any] | None = None, **kwargs: Any) -> FakeSlave:
        slave = FakeSlave(self.master.factory, self.clock, host, hostname=hostname, **kwargs)
        if vitals is not None:
            slave.send("vitals", vitals)
        return slave

    @defer.inlineCallbacks
    def get(self, path: str, method: bytes = b"GET", headers: dict[str, str] | None = None,
            follow: bool = True) -> Any:
        raw = Headers({name: [value] for name, value in (headers or {}).items()})
        response = yield self.http.request(method.decode(), self.base + path, headers=raw,
                                           allow_redirects=follow)
        body = yield response.content()
        return Response(response.code, response.headers, body)


def hold_ready(web: WebMaster) -> tuple[FakeSlave, FakeClient, list[dict[str, Any]]]:
    """
    Slaves pi-busy, running one long task and holding two ready (one slot,
    two ready places), and pi-idle, holding none; the client that
    submitted the tasks and pi-busy's three runs.  pi-idle offers no
    C{sleep}, so that its idle slot takes none of pi-busy's ready runs.
    """
    busy = web.slave("pi-busy", "10.0.0.2", slots=1, prefetch=2)
    web.slave("pi-idle", "10.0.0.3", slots=1, prefetch=2, tasks=("primes",))
    client = FakeClient(web.master.factory, web.clock)
    client.submit(*[{"name": "sleep", "args": {"seconds": 60}}] * 3)
    runs = busy.runs()
    assert len(runs) == 3, runs
    return busy, client, runs
