"""
A real Prometheus server scrapes a real master's C{/metrics}.

The master and a slave run in this process over loopback; Prometheus
(Debian's C{prometheus}, which C{.ci/run} installs) runs as a child that
scrapes every second, and is asked over its HTTP API what it stored.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any
from urllib.parse import urlencode

from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web.client import Agent, HTTPConnectionPool

from picluster.address import MasterAddress
from picluster.master.service import MasterService
from picluster.slave.session import SlaveFactory, SlaveService
from tests import processes

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


class ScrapeTests(unittest.TestCase):
    if not os.access(PROMETHEUS, os.X_OK):
        skip = "needs Debian's prometheus (apt-get install prometheus; .ci/run installs it)"

    @defer.inlineCallbacks
    def test_scraped(self) -> Any:
        master = MasterService("tcp:0:interface=127.0.0.1", web="tcp:0:interface=127.0.0.1",
                               keepalive=1)
        master.startService()
        self.addCleanup(master.stopService)
        slave_port = (yield master.when_listening()).getHost().port
        web_port = (yield master.when_web_listening()).getHost().port
        factory = SlaveFactory(MasterAddress("127.0.0.1", slave_port), keepalive=1,
                               vitals_interval=0.5, initial_delay=0.05, max_delay=0.2)
        slave = SlaveService(factory)
        slave.startService()
        self.addCleanup(slave.stopService)

        folder = processes.temp_dir(self)
        config = os.path.join(folder, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n  - job_name: picluster\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{web_port}']\n"
            )
        api_port = processes.free_port()
        server = processes.Child(self, "prometheus", [
            PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder}/data",
            f"--web.listen-address=127.0.0.1:{api_port}",
        ], cwd=folder, env=dict(os.environ))

        pool = HTTPConnectionPool(reactor, persistent=False)
        http = HTTPClient(Agent(reactor, pool=pool))

        @defer.inlineCallbacks
        def query(expression: str) -> Any:
            url = f"http://127.0.0.1:{api_port}/api/v1/query?" + urlencode({"query": expression})
            try:
                response = yield http.get(url)
                body = yield response.content()
            except Exception:
                return None  # Not listening yet.
            if response.code != 200:
                return None
            return json.loads(body)["data"]["result"] or None

        found = yield processes.wait_until(
            lambda: factory.uuid and query(
                f'picluster_slave_cpu_percent{{uuid="{factory.uuid}"}}'),
            "Prometheus has scraped the slave's CPU use", server.report, timeout=30, poll=0.5,
        )
        [sample] = found
        self.assertEqual(sample["metric"]["job"], "picluster")
        self.assertEqual(sample["metric"]["hostname"], factory.computer_details["hostname"])
        self.assertGreaterEqual(float(sample["value"][1]), 0.0)
        [up] = yield query('up{job="picluster"}')
        self.assertEqual(up["value"][1], "1", "the scrape itself succeeded")
        [connected] = yield query('picluster_slaves{state="connected"}')
        self.assertEqual(connected["value"][1], "1")
        server.kill()
        yield server.wait_for_exit()
