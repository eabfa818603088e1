"""
Tasks end to end in one process: a real master with its SQLite queue, real
slaves running real tasks, and the Python client, over loopback TCP.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, reactor
from twisted.logger import capturedLogs
from twisted.trial import unittest

from picluster.address import MasterAddress
from picluster.client import Client
from picluster.master.service import MasterService
from picluster.slave.runner import TaskRunner
from picluster.slave.session import SlaveFactory, SlaveService
from picluster.tasks.installed import installed_tasks

from . import processes


def wait_until(check: Any, what: str) -> defer.Deferred[Any]:
    return processes.wait_until(check, what, timeout=15.0, poll=0.02)


def naive_prime_count(start: int, stop: int) -> int:
    return sum(1 for n in range(max(start, 2), stop) if all(n % d for d in range(2, int(n**0.5) + 1)))


class TaskLoopbackTests(unittest.TestCase):
    @defer.inlineCallbacks
    def start_master(self, port: int = 0, db: str | None = None) -> Any:
        db = db or os.path.join(processes.temp_dir(self), "tasks.db")
        master = MasterService(f"tcp:{port}:interface=127.0.0.1", keepalive=1, db=db,
                               rejoin_grace=1.0)
        master.startService()
        self.addCleanup(lambda: master.running and master.stopService())
        listening = yield master.when_listening()
        yield master.scheduler.when_ready()
        return master, listening.getHost().port

    def start_slave(self, port: int, slots: int = 2, **runner_settings: Any) -> SlaveService:
        runner = TaskRunner(installed_tasks(), slots=slots, clock=reactor, reactor=reactor,
                            **runner_settings)
        factory = SlaveFactory(MasterAddress("127.0.0.1", port), keepalive=1, initial_delay=0.05,
                               max_delay=0.2, runner=runner)
        slave = SlaveService(factory)
        slave.startService()
        self.addCleanup(lambda: slave.running and slave.stopService())
        return slave

    def client(self, port: int) -> Client:
        client = Client(MasterAddress("127.0.0.1", port), insecure=True, initial_delay=0.05,
                        max_delay=0.2)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def test_primesAcrossSlaves(self) -> Any:
        """A map of primes over two slaves gives every count right, from both slaves."""
        master, port = yield self.start_master()
        self.start_slave(port)
        self.start_slave(port)
        yield wait_until(lambda: len(master.scheduler.workers) == 2, "both slaves offer work")
        client = self.client(port)
        yield client.connect()
        ranges = [(n * 500, n * 500 + 500) for n in range(12)]
        submitted = yield client.submit(
            [{"name": "primes", "args": {"start": a, "stop": b}} for a, b in ranges]
        )
        ids = [t["id"] for t in submitted["tasks"]]
        records = yield client.wait(ids)
        self.assertEqual([records[i]["result"] for i in ids],
                         [naive_prime_count(a, b) for a, b in ranges])
        self.assertEqual({records[i]["state"] for i in ids}, {"done"})
        self.assertEqual(len({records[i]["slave"] for i in ids}), 2)

    @defer.inlineCallbacks
    def test_lostSlaveWorkFinishesElsewhere(self) -> Any:
        """Tasks running on a slave that stops are run by the other one."""
        master, port = yield self.start_master()
        doomed = self.start_slave(port, slots=4)
        yield wait_until(lambda: len(master.scheduler.workers) == 1, "the first slave offers work")
        client = self.client(port)
        submitted = yield client.submit([{"name": "sleep", "args": {"seconds": 0.5}}] * 4)
        ids = [t["id"] for t in submitted["tasks"]]
        yield wait_until(lambda: sum(len(w.running) for w in master.scheduler.workers.values()) == 4,
                         "all four run on the first slave")
        yield doomed.stopService()
        self.start_slave(port, slots=4)
        records = yield client.wait(ids)
        self.assertEqual({r["state"] for r in records.values()}, {"done"})
        self.assertEqual({r["attempts"] for r in records.values()}, {2})

    @defer.inlineCallbacks
    def test_prefetchBooksAgree(self) -> Any:
        """The master's count of a slave's running and ready runs is the slave's own, as they go."""
        master, port = yield self.start_master()
        slave = self.start_slave(port, slots=1, prefetch=3)
        runner = slave.factory.runner
        yield wait_until(lambda: len(master.scheduler.workers) == 1, "the slave offers work")
        (worker,) = master.scheduler.workers.values()
        client = self.client(port)
        # Each stage is ended by a cancel (the slave starts the next ready
        # run) or by the result of a run that ends at once (the slave
        # starts the next before it reports; the master counts it started
        # when it reads the result).
        seconds = [30, 30, 0, 30]
        submitted = yield client.submit([{"name": "sleep", "args": {"seconds": s}} for s in seconds])
        ids = [t["id"] for t in submitted["tasks"]]

        def books() -> tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]:
            held = [run.id for run in runner.holding()]
            slave_books = (held[:min(len(held), runner.slots)], held[runner.slots:])
            return slave_books, (list(worker.running), list(worker.ready))

        for expected, then in (
            (([ids[0]], ids[1:]), ids[0]),
            (([ids[1]], ids[2:]), ids[1]),
            (([ids[3]], []), ids[3]),
        ):
            yield wait_until(lambda: books() == (expected, expected),
                             f"both sides count {expected} running and ready")
            yield client.cancel(then)
        records = yield client.wait(ids)
        self.assertEqual([records[i]["state"] for i in ids], ["cancelled"] * 2 + ["done", "cancelled"])
        self.assertEqual(records[ids[2]]["attempts"], 1)
        yield wait_until(lambda: books() == (([], []), ([], [])), "nothing is held on either side")
        self.assertEqual(master.scheduler.dispatcher.ready_runs, 0)

    @defer.inlineCallbacks
    def test_readyRunsMoveToAnIdleSlave(self) -> Any:
        """Runs held ready behind a long one go to a slave that joins idle, and run there."""
        master, port = yield self.start_master()
        busy = self.start_slave(port, slots=1, prefetch=2)
        yield wait_until(lambda: len(master.scheduler.workers) == 1, "the first slave offers work")
        client = self.client(port)
        submitted = yield client.submit([{"name": "sleep", "args": {"seconds": 30}}]
                                        + [{"name": "sleep", "args": {"seconds": 0}}] * 2)
        long_id, *quick_ids = [t["id"] for t in submitted["tasks"]]
        yield wait_until(lambda: len(busy.factory.runner.holding()) == 3,
                         "the first slave runs one and holds two ready")
        idle = self.start_slave(port, slots=1, prefetch=0)
        records = yield client.wait(quick_ids)
        self.assertEqual({records[i]["state"] for i in quick_ids}, {"done"})
        self.assertEqual({records[i]["slave"] for i in quick_ids}, {idle.factory.uuid})
        self.assertEqual([run.id for run in busy.factory.runner.holding()], [long_id])
        yield client.cancel(long_id)

    @defer.inlineCallbacks
    def test_readyBytesRefusedThenRun(self) -> Any:
        """
        A slave whose ready runs would hold more bytes of arguments than it
        allows refuses the rest; the master queues them again, spending
        none of their retries, and every one runs there in the end.
        """
        master, port = yield self.start_master()
        self.start_slave(port, slots=1, prefetch=4, max_ready_bytes=3000)
        yield wait_until(lambda: len(master.scheduler.workers) == 1, "the slave offers work")
        client = self.client(port)
        blobs = [{"name": "echo", "args": {"n": n, "blob": "x" * 2000}, "retries": 0}
                 for n in range(6)]
        submitted = yield client.submit([{"name": "sleep", "args": {"seconds": 0.3}}, *blobs])
        ids = [t["id"] for t in submitted["tasks"]]
        with capturedLogs() as events:
            records = yield client.wait(ids)
        self.assertEqual([records[i]["state"] for i in ids], ["done"] * 7)
        self.assertEqual([records[i]["result"]["n"] for i in ids[1:]], list(range(6)))
        refusals = [e for e in events if "did not take task" in e.get("log_format", "")
                    and "no free slot" in e.get("problem", "")]
        self.assertTrue(refusals, "the slave refused a run for its ready runs' bytes")

    @defer.inlineCallbacks
    def test_badArgumentsFailWithoutRetry(self) -> Any:
        """Arguments of the wrong shape fail the task once, with a clear error."""
        master, port = yield self.start_master()
        self.start_slave(port)
        client = self.client(port)
        submitted = yield client.submit([{"name": "primes", "args": {"begin": 1}}])
        (task_id,) = [t["id"] for t in submitted["tasks"]]
        records = yield client.wait([task_id])
        record = records[task_id]
        self.assertEqual((record["state"], record["attempts"]), ("failed", 1))
        self.assertEqual(record["error"]["kind"], "bad_arguments")
        self.assertIn("primes", record["error"]["message"])

    @defer.inlineCallbacks
    def test_shellNeedsAllowList(self) -> Any:
        """shell runs only commands on the slave's allow-list."""
        master, port = yield self.start_master()
        self.start_slave(port, allowed_commands=("echo hello",))
        client = self.client(port)
        submitted = yield client.submit([
            {"name": "shell", "args": {"command": ["echo", "hello"]}},
            {"name": "shell", "args": {"command": "rm -rf /tmp/nothing-here"}},
        ])
        allowed, refused = [t["id"] for t in submitted["tasks"]]
        records = yield client.wait([allowed, refused])
        self.assertEqual(records[allowed]["result"]["stdout"], "hello\n")
        self.assertEqual(records[refused]["state"], "failed")
        self.assertEqual(records[refused]["error"]["kind"], "not_permitted")

    @defer.inlineCallbacks
    def test_adminTasksRefusedByDefault(self) -> Any:
        """reboot fails at once, with the reason, on a cluster that allows no admin tasks."""
        master, port = yield self.start_master()
        self.start_slave(port)
        yield wait_until(lambda: len(master.scheduler.workers) == 1, "the slave offers work")
        client = self.client(port)
        submitted = yield client.submit([{"name": "reboot"}])
        (task_id,) = [t["id"] for t in submitted["tasks"]]
        record = (yield client.wait([task_id]))[task_id]
        self.assertEqual(record["state"], "failed")
        self.assertIn("--allow-admin", record["error"]["message"])

    @defer.inlineCallbacks
    def test_waitRidesOutMasterRestart(self) -> Any:
        """A client waiting on tasks gets their results across a master restart."""
        db = os.path.join(processes.temp_dir(self), "tasks.db")
        master, port = yield self.start_master(db=db)
        client = self.client(port)
        submitted = yield client.submit([{"name": "node_time"}, {"name": "node_time"}])
        ids = [t["id"] for t in submitted["tasks"]]
        waiting = client.wait(ids)
        yield master.stopService()
        master, _ = yield self.start_master(port, db=db)
        self.start_slave(port)
        records = yield waiting
        self.assertEqual({r["state"] for r in records.values()}, {"done"})
        self.assertIsInstance(records[ids[0]]["result"]["time"], float)
