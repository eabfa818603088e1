"""
Master and slave services over real loopback TCP, in this process.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.master import MasterService
from picluster.slave import SlaveFactory, SlaveService


@defer.inlineCallbacks
def wait_until(predicate: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll C{predicate} until it holds; fail naming C{what} after C{timeout}."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        yield task.deferLater(reactor, 0.02, lambda: None)


class LoopbackTests(unittest.TestCase):
    """
    A slave joins a master over TCP and rejoins it after a restart.
    """

    @defer.inlineCallbacks
    def start_master(self, port: int = 0) -> Any:
        master = MasterService(f"tcp:{port}:interface=127.0.0.1", keepalive=1)
        master.startService()
        self.addCleanup(lambda: master.running and master.stopService())
        listening = yield master.when_listening()
        return master, listening.getHost().port

    def start_slave(self, port: int) -> SlaveFactory:
        factory = SlaveFactory(
            MasterAddress("127.0.0.1", port), keepalive=1, initial_delay=0.05, max_delay=0.2
        )
        slave = SlaveService(factory)
        slave.startService()
        self.addCleanup(slave.stopService)
        return factory

    @defer.inlineCallbacks
    def test_joinAndRejoin(self) -> Any:
        """The slave reports to the master, and rejoins a restarted one with its uuid."""
        master, port = yield self.start_master()
        slave = self.start_slave(port)
        yield wait_until(
            lambda: any(s.vitals for s in master.registry), "the slave has reported vitals"
        )
        [record] = list(master.registry)
        self.assertEqual(record.uuid, slave.uuid)
        self.assertIn("hostname", record.computer_details)
        self.assertIn("cpu_percentage", record.vitals)
        uuid = slave.uuid

        yield master.stopService()
        yield wait_until(lambda: slave.connection is None, "the slave has noticed")
        master, _ = yield self.start_master(port)
        yield wait_until(lambda: uuid in master.registry, "the slave has rejoined")
        self.assertEqual(slave.uuid, uuid)
        self.assertEqual(len(master.registry), 1)

    @defer.inlineCallbacks
    def test_masterNotThereYet(self) -> Any:
        """A slave started before its master joins once the master is up."""
        master, port = yield self.start_master()
        yield master.stopService()
        slave = self.start_slave(port)
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertIsNone(slave.uuid)
        master, _ = yield self.start_master(port)
        yield wait_until(lambda: len(master.registry) == 1, "the slave has joined")
