"""
The bounds on what a submitter may put in the task queue, each gone over:
per-submitter quotas, the retention of finished tasks, the database cap.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster.master.quotas import Quotas, submitter_key
from picluster.wire.errors import ServiceError
from tests.processes import temp_dir
from tests.taskhelpers import FakeClient, FakeSlave, SynchronousPool, task_master

PRIMES = {"name": "primes", "args": {"start": 0, "stop": 100}}


def padded(size: int) -> dict[str, Any]:
    """A task whose arguments are C{size} bytes of JSON, give or take a dozen."""
    return {"name": "primes", "args": {"pad": "x" * size}}


class QueueTestCase(unittest.TestCase):
    """A master on a SQLite database run synchronously, with a flooder and a neighbour."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.pool = self.make_pool()
        self.master = task_master(self.clock, self.pool, **self.settings())
        self.scheduler = self.master.scheduler
        self.flooder = FakeClient(self.master, self.clock, "10.0.0.66")
        self.neighbour = FakeClient(self.master, self.clock, "10.0.0.50")
        self.addCleanup(self.scheduler.stop)

    def make_pool(self) -> SynchronousPool:
        return SynchronousPool()

    def settings(self) -> dict[str, Any]:
        return {}

    def stored(self) -> int:
        (count,) = self.pool.connection.execute("SELECT COUNT(*) FROM tasks").fetchone()
        return count

    def assertRefused(self, reply: dict[str, Any], text: str) -> None:
        self.assertEqual(reply["type"], "error", reply)
        self.assertIn(text, reply["payload"]["error"])

    def assertSubmitted(self, reply: dict[str, Any]) -> list[int]:
        self.assertEqual(reply["type"], "submitted", reply)
        return [task["id"] for task in reply["payload"]["tasks"]]


class QuotaTests(QueueTestCase):
    """Each submitter's quotas: going over costs that submitter alone."""

    def test_openQuotaCostsOnlyTheFlooder(self) -> None:
        """A submitter at its open-task quota is refused whole; another still submits."""
        self.scheduler.quotas.max_open = 5
        self.assertSubmitted(self.flooder.submit(*[PRIMES] * 4))
        before = self.stored()
        self.assertRefused(self.flooder.submit(PRIMES, PRIMES), "over your quota of open tasks")
        self.assertEqual(self.stored(), before)
        self.assertEqual(len(self.assertSubmitted(self.neighbour.submit(*[PRIMES] * 5))), 5)
        self.assertSubmitted(self.flooder.submit(PRIMES))

    def test_floodAtTheDefaults(self) -> None:
        """The flood of the issue (10 submits of 10,000) fills one quota, not the queue."""
        flood = [PRIMES] * 10_000
        self.assertEqual(len(self.assertSubmitted(self.flooder.submit(*flood))), 10_000)
        for _ in range(9):
            self.assertRefused(self.flooder.submit(*flood), "over your quota of open tasks")
        self.assertEqual(len(self.scheduler.open), 10_000)
        self.assertEqual(len(self.assertSubmitted(self.neighbour.submit(*[PRIMES] * 100))), 100)

    def test_openQuotaMessageNamesTheOption(self) -> None:
        """The refusal says which quota, how full it is, and its option."""
        self.scheduler.quotas.max_open = 1
        self.flooder.submit(PRIMES)
        error = self.flooder.submit(PRIMES)["payload"]["error"]
        self.assertEqual(error, "over your quota of open tasks: 1 open, 1 more would pass the 1"
                                " a submitter may have (--quota-open); wait for some to end")

    def test_argsQuotaCostsOnlyTheFlooder(self) -> None:
        """Arguments past a submitter's byte quota are refused; another's fit."""
        self.scheduler.quotas.max_args = 3000
        self.assertSubmitted(self.flooder.submit(padded(1000), padded(1000)))
        before = self.stored()
        self.assertRefused(self.flooder.submit(padded(1000)), "over your quota of argument bytes")
        self.assertEqual(self.stored(), before)
        self.assertSubmitted(self.neighbour.submit(padded(1000), padded(1000)))

    def test_rateQuotaIsATokenBucket(self) -> None:
        """Past the burst a submitter waits for the bucket to refill on the master's clock."""
        quotas = self.scheduler.quotas
        quotas.rate, quotas.burst = 10.0, 20
        self.assertSubmitted(self.flooder.submit(*[PRIMES] * 20))
        self.assertRefused(self.flooder.submit(PRIMES), "over your quota of submissions")
        self.assertSubmitted(self.neighbour.submit(*[PRIMES] * 20))
        self.clock.advance(0.5)
        self.assertSubmitted(self.flooder.submit(*[PRIMES] * 5))
        self.assertRefused(self.flooder.submit(PRIMES), "refilled at 10 tasks a second")
        self.clock.advance(100)
        self.assertSubmitted(self.flooder.submit(*[PRIMES] * 20))

    def test_submissionPastTheBurstRefused(self) -> None:
        """A submission larger than the burst can never pass: the refusal says to split it."""
        self.scheduler.quotas.burst = 3
        self.assertRefused(self.flooder.submit(*[PRIMES] * 4), "submit them in parts")
        self.assertEqual(self.stored(), 0)

    def test_endedTasksGiveTheirShareBack(self) -> None:
        """A task that ends (done, or cancelled) no longer counts against its submitter."""
        self.scheduler.quotas.max_open = 2
        slave = FakeSlave(self.master, self.clock, slots=1)
        first, second = self.assertSubmitted(self.flooder.submit(PRIMES, PRIMES))
        self.assertRefused(self.flooder.submit(PRIMES), "quota of open tasks")
        (run,) = slave.runs()
        slave.request("task_result", {"id": run["id"], "attempt": 1, "outcome": "done", "result": 1})
        self.assertSubmitted(self.flooder.submit(PRIMES))
        self.flooder.request("cancel", {"id": second})
        self.assertSubmitted(self.flooder.submit(PRIMES))
        self.assertRefused(self.flooder.submit(PRIMES), "quota of open tasks")

    def test_duplicatesAreNotCharged(self) -> None:
        """A resubmitted key is the stored task: it takes no more of the quota."""
        self.scheduler.quotas.max_open = 2
        self.assertSubmitted(self.flooder.submit(dict(PRIMES, key="a")))
        for _ in range(3):
            self.assertSubmitted(self.flooder.submit(dict(PRIMES, key="a")))
        self.assertSubmitted(self.flooder.submit(PRIMES))

    def test_storeFailureGivesTheShareBack(self) -> None:
        """A submission the disk refuses is charged nothing."""
        self.scheduler.quotas.max_open = 20
        self.pool.fill_disk()
        self.assertRefused(self.flooder.submit(*[padded(5000)] * 20), "cannot store the tasks")
        self.pool.free_disk()
        self.assertEqual(len(self.assertSubmitted(self.flooder.submit(*[PRIMES] * 20))), 20)

    def test_globalLimitStaysTheLastLine(self) -> None:
        """Within their quotas, submitters together still meet the master's open-task limit."""
        self.scheduler.max_open_tasks = 6
        self.assertSubmitted(self.flooder.submit(*[PRIMES] * 4))
        self.assertRefused(self.neighbour.submit(*[PRIMES] * 3), "the queue is full")
        self.assertSubmitted(self.neighbour.submit(*[PRIMES] * 2))

    def test_restartCountsOpenTasksAgain(self) -> None:
        """After a restart, a submitter's open tasks count against it as before."""
        self.assertSubmitted(self.flooder.submit(padded(1000), padded(1000)))
        restarted = task_master(self.clock, self.pool)
        key = submitter_key(f"plain client at {self.flooder.protocol.peer_address}")
        share = restarted.scheduler.quotas.shares[key]
        self.assertEqual(share.open, 2)
        self.assertGreater(share.args, 2000)
        restarted.scheduler.stop()


class SubmitterKeyTests(unittest.TestCase):
    def test_credentialInSecureMode(self) -> None:
        """A proven hello's submitter is its credential and host, whatever its port."""
        self.assertEqual(submitter_key("client at 10.0.0.5:40000"), "client at 10.0.0.5")
        self.assertEqual(submitter_key("client at 10.0.0.5:40001"), "client at 10.0.0.5")
        self.assertEqual(submitter_key("client at [fe80::1]:40000"), "client at [fe80::1]")
        self.assertEqual(submitter_key("read-only at 10.0.0.5:40000"), "read-only at 10.0.0.5")

    def test_connectionInPlainMode(self) -> None:
        """A plain submitter is its one connection: its address and port."""
        self.assertEqual(submitter_key("plain client at 10.0.0.5:40000"), "plain client at 10.0.0.5:40000")
        self.assertIsNone(submitter_key(None))


    def test_keyFromTheConnection(self) -> None:
        """What a connection records as its submitter yields its credential and host, or itself when plain."""
        from types import SimpleNamespace

        from picluster.master.connection import PeerConnection

        secure = SimpleNamespace(credential="client", role="client", address="10.0.0.5:40000")
        plain = SimpleNamespace(credential=None, role="client", address="10.0.0.5:40001")
        self.assertEqual(submitter_key(PeerConnection.submitter(secure)), "client at 10.0.0.5")  # type: ignore[arg-type]
        self.assertEqual(submitter_key(PeerConnection.submitter(plain)),  # type: ignore[arg-type]
                         "plain client at 10.0.0.5:40001")


class QuotasTests(unittest.TestCase):
    def test_idleSubmittersForgotten(self) -> None:
        """Submitters holding nothing, with full buckets, are not kept for ever."""
        clock = Clock()
        quotas = Quotas(clock, rate=1.0, burst=1)
        for n in range(1000):
            quotas.give_back(quotas.charge(n, 1, 10))
        clock.advance(2)
        held = quotas.charge("busy", 1, 10)
        for n in range(1000, 2000):
            quotas.give_back(quotas.charge(n, 1, 10))
        self.assertFalse([n for n in range(1000) if n in quotas.shares])
        self.assertEqual(quotas.shares["busy"].open, 1)
        quotas.give_back(held)

    def test_refusalTakesNothing(self) -> None:
        """A refused charge leaves the submitter's share as it was."""
        quotas = Quotas(Clock(), max_open=3, max_args=100, rate=1.0, burst=5)
        quotas.charge("a", 2, 50)
        for tasks, args in ((2, 10), (1, 60), (4, 0)):
            self.assertRaises(ServiceError, quotas.charge, "a", tasks, args)
        share = quotas.shares["a"]
        self.assertEqual((share.open, share.args, share.tokens), (2, 50, 3.0))


class DatabaseCapTests(QueueTestCase):
    """--max-db: a task database at its cap takes no new tasks, and still takes results."""

    def make_pool(self) -> SynchronousPool:
        self.path = os.path.join(temp_dir(self), "tasks.db")
        pool = SynchronousPool(self.path)
        self.addCleanup(pool.connection.close)
        return pool

    def settings(self) -> dict[str, Any]:
        return {"max_db": 400_000}

    def test_fullDatabaseRefusesSubmissions(self) -> None:
        """At --max-db, submissions are refused with a clear error; running tasks' results are stored."""
        slave = FakeSlave(self.master, self.clock, slots=1)
        self.assertSubmitted(self.neighbour.submit(PRIMES))
        (run,) = slave.runs()
        for _ in range(20):
            reply = self.flooder.submit(*[padded(30_000)] * 3)
            if reply["type"] == "error":
                break
        self.assertRefused(reply, "the task database is full")
        self.assertIn("at most 400000 (--max-db)", reply["payload"]["error"])
        stored = self.stored()
        self.assertRefused(self.neighbour.submit(PRIMES), "the task database is full")
        self.assertEqual(self.stored(), stored)
        self.assertGreaterEqual(os.path.getsize(self.path) + os.path.getsize(self.path + "-wal"),
                                400_000)
        slave.request("task_result", {"id": run["id"], "attempt": 1, "outcome": "done",
                                      "result": "r" * 50_000})
        self.assertEqual(self.neighbour.record(run["id"])["result"], "r" * 50_000)
        (state,) = self.pool.connection.execute(
            "SELECT state FROM tasks WHERE id = ?", (run["id"],)).fetchone()
        self.assertEqual(state, "done")

    def test_fullDiskIsAClearError(self) -> None:
        """A disk with no room refuses a submission in words, and loses nothing stored."""
        ids = self.assertSubmitted(self.neighbour.submit(PRIMES, PRIMES))
        self.pool.fill_disk()
        reply = self.flooder.submit(*[padded(20_000)] * 10)
        self.assertRefused(reply, "cannot store the tasks: the disk holding the task database is"
                                  " full (database or disk is full)")
        self.assertEqual(sorted(self.neighbour.records(*ids)), ids)
        self.pool.free_disk()
        self.assertSubmitted(self.flooder.submit(PRIMES))


class RetentionTests(QueueTestCase):
    """Finished tasks are pruned by age and by count, on the master's clock, a batch at a time."""

    def finish(self, count: int) -> list[int]:
        """Submit C{count} tasks and cancel them, one a second; their ids."""
        ids = []
        for _ in range(count):
            (task_id,) = self.assertSubmitted(self.neighbour.submit(PRIMES))
            self.neighbour.request("cancel", {"id": task_id})
            ids.append(task_id)
            self.clock.advance(1)
        return ids

    def ids(self) -> list[int]:
        return [row[0] for row in self.pool.connection.execute("SELECT id FROM tasks ORDER BY id")]

    def test_prunedByAge(self) -> None:
        """A task finished longer ago than --keep-finished-days goes; open and newer ones stay."""
        retention = self.scheduler.retention
        old = self.finish(3)
        (still_open,) = self.assertSubmitted(self.flooder.submit(PRIMES))
        self.clock.advance(retention.keep_days * 86400 - 10)
        # Silent for days, the first clients were dropped long ago.
        self.neighbour = FakeClient(self.master, self.clock, "10.0.0.51")
        recent = self.finish(2)
        self.clock.advance(retention.interval)
        self.assertEqual(self.ids(), sorted([still_open, *recent]))
        reply = self.neighbour.request("tasks", {"ids": old})
        self.assertEqual(reply["payload"]["tasks"], [])
        self.assertEqual(self.scheduler.finished_counts["cancelled"], 2)
        self.assertEqual(self.scheduler.view.state_counts()["queued"], 1)

    def test_prunedByCount(self) -> None:
        """Past --keep-finished, the oldest finished tasks go first."""
        self.scheduler.retention.keep = 3
        ids = self.finish(7)
        self.clock.advance(self.scheduler.retention.interval)
        self.assertEqual(self.ids(), ids[-3:])

    def test_prunedInBatches(self) -> None:
        """A long backlog is pruned a batch a transaction, every batch in one round."""
        retention = self.scheduler.retention
        retention.keep, retention.batch = 2, 3
        ids = self.finish(12)
        before = self.pool.interactions
        self.clock.advance(retention.interval - 12)
        self.assertEqual(self.ids(), ids[-2:])
        self.assertEqual(self.pool.interactions - before, 4)
        self.assertEqual(self.scheduler.finished_counts["cancelled"], 2)

    def test_stopLeavesNoTimers(self) -> None:
        """A stopped scheduler prunes no more and leaves no call behind."""
        self.flooder.lose()
        self.neighbour.lose()
        self.successResultOf(self.scheduler.stop())
        self.assertEqual(self.clock.getDelayedCalls(), [])


class OptionsTests(unittest.TestCase):
    """The master's options for each bound, with their defaults."""

    def service(self, *arguments: str) -> Any:
        from picluster.tap import master as master_tap

        options = master_tap.Options()
        options.parseOptions(["--insecure", "--web", "none", *arguments])
        return master_tap.makeService(options)

    def test_defaults(self) -> None:
        """
        Without options: 10,000 open tasks, 256 MiB, 1,000 tasks/s (burst
        10,000), 7 days, 100,000, 1 GiB; 64 MiB of results waiting for the disk.
        """
        scheduler = self.service().scheduler
        quotas, retention = scheduler.quotas, scheduler.retention
        self.assertEqual((quotas.max_open, quotas.max_args, quotas.rate, quotas.burst),
                         (10_000, 256 * 1024**2, 1000.0, 10_000))
        self.assertEqual((retention.keep_days, retention.keep), (7.0, 100_000))
        self.assertEqual(scheduler.max_db, 1024**3)
        self.assertEqual(scheduler.max_open_tasks, 100_000)
        self.assertEqual(scheduler.max_results_waiting, 64 * 1024**2)

    def test_settings(self) -> None:
        """Each option reaches the part that keeps its bound."""
        scheduler = self.service(
            "--quota-open", "50", "--quota-args", "2M", "--quota-rate", "2.5", "--quota-burst", "40",
            "--keep-finished", "0", "--keep-finished-days", "0.5", "--max-db", "64M",
            "--max-results-waiting", "8M",
        ).scheduler
        quotas, retention = scheduler.quotas, scheduler.retention
        self.assertEqual((quotas.max_open, quotas.max_args, quotas.rate, quotas.burst),
                         (50, 2 * 1024**2, 2.5, 40))
        self.assertEqual((retention.keep_days, retention.keep), (0.5, 0))
        self.assertEqual(scheduler.max_db, 64 * 1024**2)
        self.assertEqual(scheduler.max_results_waiting, 8 * 1024**2)

    def test_badValues(self) -> None:
        """A bound that makes no sense is refused, naming its option."""
        from twisted.python import usage

        from picluster.tap import master as master_tap

        for option, value in (("quota-open", "0"), ("quota-args", "0"), ("quota-rate", "-1"),
                              ("quota-burst", "x"), ("keep-finished", "-1"),
                              ("keep-finished-days", "0"), ("max-db", "lots"),
                              ("max-results-waiting", "0")):
            error = self.assertRaises(usage.UsageError, master_tap.Options().parseOptions,
                                      ["--insecure", f"--{option}", value])
            self.assertIn(f"--{option}", str(error))
