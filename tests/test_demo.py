"""
Tests for C{picluster demo}: the L{Demo} service started in this process
(its dashboard fetched over real HTTP, its tasks really run), and the
command as a real process, stopped by a signal.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import sys
from typing import Any

import treq
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster.cli import main as cli
from picluster.cli.demo import Demo, ListenFailed, _SharedSampler, demo_hostnames
from picluster.client import Client

from . import processes

LOOPBACK_ANY_PORT = "tcp:0:interface=127.0.0.1"


def wait_until(check: Any, what: str, report: Any = str) -> defer.Deferred[Any]:
    return processes.wait_until(check, what, report, timeout=20.0, poll=0.05)


async def get(url: str) -> tuple[int, bytes]:
    """GET C{url} on a connection of its own (closed once answered); the status and body."""
    response = await treq.get(url, persistent=False)
    body = await treq.content(response)
    return response.code, body


def get_json(url: str) -> defer.Deferred[Any]:
    async def fetch() -> Any:
        code, body = await get(url)
        assert code == 200, (code, body)
        return json.loads(body)

    return defer.Deferred.fromCoroutine(fetch())


def occupied_port(case: unittest.TestCase) -> int:
    """A loopback port something else listens on for the rest of the test."""
    listening = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),
                                  interface="127.0.0.1")
    case.addCleanup(listening.stopListening)
    return listening.getHost().port


class SharedSamplerTests(unittest.TestCase):
    """
    The demo's slaves share one machine's samples.
    """

    def test_oneSampleForAll(self) -> None:
        """Slaves asking within the freshness window get one sample; later asks take another."""
        taken = []

        class Sampler:
            def sample(self) -> defer.Deferred[dict[str, Any]]:
                taken.append(clock.seconds())
                return defer.succeed({"cpu_percentage": float(len(taken))})

        clock = Clock()
        shared = _SharedSampler(Sampler(), clock, fresh_for=1.0)
        first = [self.successResultOf(shared.sample()) for _ in range(3)]
        clock.advance(1.0)
        later = self.successResultOf(shared.sample())
        self.assertEqual(first, [{"cpu_percentage": 1.0}] * 3)
        self.assertEqual(later, {"cpu_percentage": 2.0})
        self.assertEqual(taken, [0.0, 1.0])
        first[0]["cpu_percentage"] = 99.0
        self.assertEqual(first[1], {"cpu_percentage": 1.0}, "each slave gets its own copy")

    def test_names(self) -> None:
        """Demo slaves are named after this machine, numbered from 1."""
        self.assertEqual(demo_hostnames("pi", 2), ["pi-demo-1", "pi-demo-2"])
        self.assertEqual(demo_hostnames(None, 1), ["localhost-demo-1"])


class DemoServiceTests(unittest.TestCase):
    """
    The Demo service in this process, on loopback.
    """

    def start(self, slaves: int = 2, **settings: Any) -> Demo:
        settings.setdefault("web", LOOPBACK_ANY_PORT)
        settings.setdefault("trickle_interval", None)
        demo = Demo(slaves, reactor=reactor, **settings)
        demo.startService()
        self.addCleanup(demo.remove_state)
        self.addCleanup(self.stop, demo)
        return demo

    @defer.inlineCallbacks
    def stop(self, demo: Demo) -> Any:
        if demo.running:
            yield demo.stopService()
        # The master forgets a connection as its loss is handled, after the
        # Deferreds stopService waits for.
        yield wait_until(lambda: not demo.master.factory.connections, "connections to close")

    def reporting(self, demo: Demo) -> defer.Deferred[Any]:
        """Wait until every slave of the demo has said who it is and sent vitals."""
        return wait_until(
            lambda: sum(1 for slave in demo.master.registry
                        if slave.role == "slave" and slave.hostname and slave.vitals is not None)
            == demo.slave_count,
            "every demo slave to report",
        )

    @defer.inlineCallbacks
    def test_slavesOnDashboard(self) -> Any:
        """The dashboard's API lists the demo's slaves by their demo names, with vitals."""
        demo = self.start(2)
        where = yield demo.when_ready()
        self.assertRegex(where.dashboard, r"^http://127\.0\.0\.1:\d+/$")
        yield self.reporting(demo)
        code, page = yield defer.Deferred.fromCoroutine(get(where.dashboard))
        self.assertEqual(code, 200)
        self.assertIn(b"<html", page)
        listed = yield get_json(where.dashboard + "api/slaves")
        slaves = listed["slaves"]
        self.assertEqual([slave["hostname"] for slave in slaves],
                         demo_hostnames(socket.gethostname(), 2))
        self.assertEqual({slave["state"] for slave in slaves}, {"connected"})
        self.assertEqual({slave["slots"] for slave in slaves}, {1})
        for slave in slaves:
            self.assertIsNotNone(slave["vitals_at"])
            self.assertIsInstance(slave["ram_free"], int)

    @defer.inlineCallbacks
    def test_trickleGetsDone(self) -> Any:
        """With the trickle on, primes tasks are submitted and done by the demo's slaves."""
        demo = self.start(2, trickle_interval=0.1, primes_width=10**5)
        where = yield demo.when_ready()
        yield wait_until(lambda: demo.trickle.finished >= 4, "two batches of demo tasks to end")
        client = Client(where.master, reactor=reactor, reconnect=False,
                        token=demo.trust.token("client"))
        self.addCleanup(client.close)
        done = yield client.tasks(state="done")
        self.assertGreaterEqual(len(done), 4)
        self.assertEqual({record["name"] for record in done}, {"primes"})
        self.assertLessEqual({record["slave_hostname"] for record in done},
                             set(demo_hostnames(socket.gethostname(), 2)))
        # Successive ranges: the first counts the primes below 100000.
        first = min(done, key=lambda record: record["id"])
        self.assertEqual((first["args"], first["result"]), ({"start": 0, "stop": 10**5}, 9592))
        yield client.close()

    @defer.inlineCallbacks
    def test_stopClosesEverything(self) -> Any:
        """Stopping stops the trickle, the slaves and the master, and closes every connection."""
        demo = self.start(2, trickle_interval=0.1, primes_width=10**5)
        yield demo.when_ready()
        yield self.reporting(demo)
        yield wait_until(lambda: demo.trickle.finished >= 2, "a batch of demo tasks to end")
        slaves = list(demo.slaves)
        yield demo.stopService()
        self.assertFalse(demo.master.running)
        self.assertEqual([slave.running for slave in slaves], [False, False])
        self.assertEqual([slave.factory.connection for slave in slaves], [None, None])
        self.assertEqual((demo.slaves, demo.trickle), ([], None))
        yield wait_until(lambda: not demo.master.factory.connections, "connections to close")
        # And trial's own check finds no socket, timer or process left behind.

    @defer.inlineCallbacks
    def test_webPortTaken(self) -> Any:
        """A dashboard port in use fails the start, naming the endpoint and a way out."""
        port = occupied_port(self)
        demo = self.start(2, web=f"tcp:{port}:interface=127.0.0.1")
        failure = yield self.assertFailure(demo.when_ready(), ListenFailed)
        self.assertEqual(str(failure), f"cannot listen on tcp:{port}:interface=127.0.0.1:"
                                       " address in use")
        self.assertEqual((failure.option, failure.any_port), ("web", LOOPBACK_ANY_PORT))
        self.assertEqual(demo.slaves, [])
        yield demo.stopService()

    @defer.inlineCallbacks
    def test_slavePortTaken(self) -> Any:
        """A slave port in use is told apart from the dashboard's."""
        port = occupied_port(self)
        demo = self.start(1, port=f"tcp:{port}:interface=127.0.0.1")
        failure = yield self.assertFailure(demo.when_ready(), ListenFailed)
        self.assertEqual((failure.option, failure.cause), ("port", "address in use"))
        yield demo.stopService()


class DemoUsageTests(unittest.TestCase):
    """
    Bad demo options: exit 2 before anything starts.
    """

    @defer.inlineCallbacks
    def test_badOptions(self) -> Any:
        """The slave count and both endpoints are checked."""
        for argv, error in [
            (["--slaves", "0"], "--slaves must be at least 1, not 0"),
            (["--slaves", "65"], "--slaves must be at most 64, not 65"),
            (["--slaves", "few"], "--slaves must be a whole number, not 'few'"),
            (["--web", "unix:/tmp/dashboard"],
             "--web must be a tcp: or tcp6: endpoint, not 'unix:/tmp/dashboard'"),
            (["--port", "tcp:eighty"],
             "--port: not a usable server endpoint ('tcp:eighty'): invalid literal for int()"
             " with base 10: 'eighty'"),
        ]:
            stdout, stderr = io.StringIO(), io.StringIO()
            code = yield cli.main(["demo", *argv], reactor=reactor, stdout=stdout,
                                  stderr=stderr, environ={})
            self.assertEqual(code, 2, argv)
            self.assertEqual(stderr.getvalue().splitlines()[0], f"picluster demo: error: {error}")


class DemoProcessTests(unittest.TestCase):
    """
    picluster demo as a real process.
    """

    def demo(self, *argv: str) -> processes.Child:
        return processes.Child(
            self, "demo", [sys.executable, "-m", "picluster.cli", "demo", *argv],
            cwd=processes.temp_dir(self), env=processes.child_env(),
        )

    @defer.inlineCallbacks
    def test_runUntilInterrupted(self) -> Any:
        """The demo prints its URL, serves the dashboard with its slaves, and exits 0 on Ctrl-C."""
        child = self.demo("--slaves", "2", "--web", LOOPBACK_ANY_PORT)
        yield wait_until(lambda: "Ctrl-C" in child.stdout(), "the demo to say where it is",
                         child.report)
        [url] = re.findall(r"dashboard: +(http://\S+)", child.stdout())
        code, page = yield defer.Deferred.fromCoroutine(get(url))
        self.assertEqual(code, 200, child.report())
        self.assertIn(b"<html", page)

        @defer.inlineCallbacks
        def both_slaves() -> Any:
            listed = yield get_json(url + "api/slaves")
            return [slave["hostname"] for slave in listed["slaves"]
                    if slave["vitals_at"] is not None] == demo_hostnames(socket.gethostname(), 2)

        yield wait_until(both_slaves, "both slaves on the dashboard", child.report)
        # The status line works as printed: over TLS, with the demo's own token.
        [status_line] = re.findall(r"status: +(picluster status .*)", child.stdout())
        argv = shlex.split(status_line)[1:]
        out, err = io.StringIO(), io.StringIO()
        code = yield cli.main(argv, reactor=reactor, stdout=out, stderr=err, environ={})
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("2 slaves connected", out.getvalue())
        state_dir = argv[argv.index("--state-dir") + 1]
        self.assertTrue(os.path.isdir(state_dir))
        child.signal(signal.SIGINT)
        code = yield child.wait_for_exit()
        self.assertEqual(code, 0, child.report())
        self.assertEqual(child.stderr(), "picluster demo: stopping\n")
        self.assertFalse(os.path.exists(state_dir), "the demo left its CA and tokens behind")

    @defer.inlineCallbacks
    def test_terminated(self) -> Any:
        """SIGTERM stops the demo cleanly too, exit 0."""
        child = self.demo("--slaves", "1", "--no-tasks", "--web", LOOPBACK_ANY_PORT)
        yield wait_until(lambda: "Ctrl-C" in child.stdout(), "the demo to start", child.report)
        self.assertNotIn("tasks:", child.stdout())
        child.signal(signal.SIGTERM)
        code = yield child.wait_for_exit()
        self.assertEqual((code, child.stderr()), (0, "picluster demo: stopping\n"), child.report())

    @defer.inlineCallbacks
    def test_webPortTaken(self) -> Any:
        """A dashboard port in use: one line on stderr, exit 1, no traceback."""
        port = occupied_port(self)
        child = self.demo("--web", f"tcp:{port}:interface=127.0.0.1")
        code = yield child.wait_for_exit()
        self.assertEqual((code, child.stdout()), (1, ""), child.report())
        self.assertEqual(
            child.stderr(),
            f"picluster demo: error: cannot listen on tcp:{port}:interface=127.0.0.1:"
            f" address in use; try --web {LOOPBACK_ANY_PORT}\n",
        )
