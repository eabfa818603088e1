"""
The task database: real SQLite, through adbapi where threads matter.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

import msgspec
from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from picluster.master.store import (
    DISK_FULL,
    SCHEMA_VERSION,
    KeyConflict,
    StoreError,
    TaskStore,
    check_database,
    row_to_record,
)
from picluster.master.taskspec import TaskSpec
from tests.processes import temp_dir
from tests.taskhelpers import SynchronousPool


def spec(**fields: object) -> TaskSpec:
    return TaskSpec.parse({"name": "primes", "args": {"start": 0, "stop": 10}, **fields})


class ThreadedStoreTests(unittest.TestCase):
    """The store as the master runs it: adbapi's thread pool on a file."""

    @defer.inlineCallbacks
    def test_submitQueryAndSaveRoundTrip(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """Tasks submitted, saved and read back through adbapi keep every field."""
        path = os.path.join(temp_dir(self), "tasks.db")
        store = yield TaskStore.open(path, reactor)
        self.addCleanup(store.close)
        stored = yield store.submit([spec(key="a"), spec(timeout=5, retries=0)], 100.0)
        self.assertEqual([(r["id"], duplicate) for r, duplicate in stored], [(1, False), (2, False)])
        record = dict(stored[0][0], state="done", result={"count": 4}, attempts=1, finished_at=101.0)
        yield store.save(record)
        (found,) = yield store.query(ids=[1])
        self.assertEqual((found["state"], found["result"], found["key"]), ("done", {"count": 4}, "a"))
        queued = yield store.query(states=("queued",))
        self.assertEqual([(r["id"], r["timeout"], r["retries"]) for r in queued], [(2, 5.0, 0)])
        self.assertEqual(os.path.exists(path), True)

    @defer.inlineCallbacks
    def test_reopenedFileKeepsTasks(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """A store closed and opened again finds what was committed, and ids go on."""
        path = os.path.join(temp_dir(self), "tasks.db")
        store = yield TaskStore.open(path, reactor)
        yield store.submit([spec(), spec()], 1.0)
        yield store.close()
        store = yield TaskStore.open(path, reactor)
        self.addCleanup(store.close)
        stored = yield store.submit([spec()], 2.0)
        self.assertEqual(stored[0][0]["id"], 3)
        self.assertEqual(len((yield store.query())), 3)


    @defer.inlineCallbacks
    def test_pruneThroughAdbapi(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """Pruning, and giving the pages back, work in adbapi's thread as in the tests'."""
        path = os.path.join(temp_dir(self), "tasks.db")
        store = yield TaskStore.open(path, reactor)
        self.addCleanup(store.close)
        stored = yield store.submit([spec(), spec(), spec()], 1.0)
        for record, _ in stored[:2]:
            yield store.save(dict(record, state="done", result="r" * 10_000, finished_at=2.0))
        counts = yield store.prune(3.0, 100, 50)
        self.assertEqual(counts, {"done": 2})
        self.assertEqual([r["id"] for r in (yield store.query())], [3])
        self.assertGreater(store.size(), 0)


class GroupCommitTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = SynchronousPool()
        self.store = self.successResultOf(TaskStore.open(":memory:", self.clock, pool=self.pool))

    def test_savesCoalesce(self) -> None:
        """Saves of one task made while a write runs become one newest write."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        record = stored[0]
        self.store._busy = True  # a transaction is under way
        waits = [self.store.save(dict(record, attempts=n)) for n in (1, 2, 3)]
        before = self.pool.interactions
        self.store._busy = False
        self.store._kick()
        self.assertEqual(self.pool.interactions - before, 1)
        for saved in waits:
            self.successResultOf(saved)
        (found,) = self.successResultOf(self.store.query(ids=[record["id"]]))
        self.assertEqual(found["attempts"], 3)

    def test_saveWritesWhatChanges(self) -> None:
        """A save writes the columns a task's life changes, and only those."""
        (stored,) = self.successResultOf(self.store.submit([spec(key="a")], 1.0))
        record = stored[0]
        changed = dict(record, state="done", slave="u-1", slave_hostname="pi", attempts=2,
                       started_at=2.0, finished_at=3.0, result={"count": [4]},
                       error={"type": "X", "message": "m"}, name="renamed", args={"other": 1})
        self.successResultOf(self.store.save(changed))
        (found,) = self.successResultOf(self.store.query(ids=[record["id"]]))
        self.assertEqual(found, dict(changed, name="primes", args=record["args"]))

    def test_argumentsHeldAsJSON(self) -> None:
        """
        A task's arguments stay the JSON they were submitted as, in the
        record the master keeps for an open task and in one read back: the
        bytes counted against a quota are the bytes held, and they decode to
        what was submitted.
        """
        args = {"words": ["ab", "cd", "\u2603"], "n": 2**70, "x": -1.5}
        submitted = spec(args=args)
        (stored,) = self.successResultOf(self.store.submit([submitted], 1.0))
        (found,) = self.successResultOf(self.store.query(ids=[stored[0]["id"]]))
        for record in (stored[0], found):
            self.assertIsInstance(record["args"], msgspec.Raw)
            self.assertEqual((len(record["args"]), msgspec.json.decode(record["args"])),
                             (submitted.args_size, args))

    def test_sameKeyOtherArgumentsRefused(self) -> None:
        """
        A key already taken is the same task only with the same arguments,
        compared as values (key order does not matter), not as text.
        """
        self.successResultOf(self.store.submit([spec(key="k", args={"a": 1, "b": [2]})], 1.0))
        ((again, duplicate),) = self.successResultOf(
            self.store.submit([spec(key="k", args={"b": [2], "a": 1})], 2.0))
        self.assertEqual((again["id"], duplicate), (1, True))
        self.failureResultOf(self.store.submit([spec(key="k", args={"a": 2, "b": [2]})], 3.0),
                             KeyConflict)

    def test_failedSaveIsRetried(self) -> None:
        """A save the disk refuses stays pending and is written once it can be."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.pool.fill_disk()
        saved = self.store.save(dict(stored[0], result="z" * 100_000, state="done"))
        self.assertNoResult(saved)
        self.assertEqual(self.store.pending_saves(), 1)
        self.clock.advance(1)  # still full: the retry fails and backs off
        self.assertNoResult(saved)
        self.pool.free_disk()
        self.clock.advance(2)
        self.successResultOf(saved)
        self.assertEqual(self.store.pending_saves(), 0)

    def test_writeIsRetriedToo(self) -> None:
        """A write nobody waits for is retried like a save; the store says when it is back."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.pool.fill_disk()
        self.assertIsNone(self.store.write(dict(stored[0], state="running", attempts=1,
                                                error={"message": "z" * 100_000})))
        self.assertEqual(self.store.pending_saves(), 1)
        self.pool.free_disk()
        with capturedLogs() as events:
            self.clock.advance(1)
        self.assertEqual(self.store.pending_saves(), 0)
        self.assertIn("Task database writable again; pending task changes saved",
                      [formatEvent(event) for event in events])
        (found,) = self.successResultOf(self.store.query())
        self.assertEqual((found["state"], found["attempts"]), ("running", 1))

    def test_queryRunsWhileDiskIsFull(self) -> None:
        """Reading tasks still works while writes are failing."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.pool.fill_disk()
        self.store.save(dict(stored[0], result="z" * 100_000))
        found = self.successResultOf(self.store.query())
        self.assertEqual(len(found), 1)

    def test_submitAnswersTheStoredRows(self) -> None:
        """The records a submission answers are the rows as stored, field for field."""
        stored = self.successResultOf(self.store.submit([
            spec(key="a"), spec(timeout=5, retries=0, requirements={"tags": ["b", "a"]}),
            spec(args={"nested": {"list": [1.5, None, True, "x"]}}),
        ], 12.5))
        found = self.successResultOf(self.store.query())
        self.assertEqual([record for record, _ in stored], found)
        self.assertEqual(found[1]["requirements"], {"tags": ["a", "b"]})

    def test_keysLookedUpTogether(self) -> None:
        """Many keys, some seen before, are answered as duplicates or stored, in order."""
        self.successResultOf(self.store.submit([spec(key=f"k{n}") for n in range(0, 1200, 2)], 1.0))
        specs = [spec(key=f"k{n}") for n in range(1200)]
        stored = self.successResultOf(self.store.submit(specs, 2.0))
        self.assertEqual([duplicate for _, duplicate in stored], [n % 2 == 0 for n in range(1200)])
        self.assertEqual([record["key"] for record, _ in stored], [f"k{n}" for n in range(1200)])
        found = {record["id"]: record for record in self.successResultOf(self.store.query())}
        self.assertEqual(len(found), 1200)
        for record, _ in stored:
            self.assertEqual(found[record["id"]], record)

    def test_keyConflictStoresNothing(self) -> None:
        """A key naming a task with other arguments refuses the whole submission."""
        self.successResultOf(self.store.submit([spec(key="a")], 1.0))
        failure = self.failureResultOf(self.store.submit(
            [spec(key="b"), spec(key="a", args={"start": 1, "stop": 2})], 2.0), KeyConflict)
        self.assertEqual(failure.value.index, 1)
        self.assertEqual(len(self.successResultOf(self.store.query())), 1)

    def test_closeOnFullDiskTriesOnce(self) -> None:
        """
        Closing while the disk is full tries the pending saves once, says
        how many were not saved, and closes: it does not spin on retries.
        """
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.pool.fill_disk()
        self.store.save(dict(stored[0], state="cancelled", result="z" * 100_000))
        with capturedLogs() as events:
            closed = self.store.close()
        self.successResultOf(closed)
        self.assertTrue(self.pool.closed)
        messages = [formatEvent(event) for event in events]
        self.assertIn("Closing the task database with 1 task changes unsaved", messages)
        self.assertEqual(sum("Cannot write the task database" in m for m in messages), 1)

    def test_manyIdsQueried(self) -> None:
        """A query naming more ids than SQLite takes in one statement finds them all."""
        self.successResultOf(self.store.submit([spec() for _ in range(1200)], 1.0))
        found = self.successResultOf(self.store.query(ids=list(range(1, 1300))))
        self.assertEqual([r["id"] for r in found], list(range(1, 1201)))

    def test_closeWritesPendingSaves(self) -> None:
        """Closing writes what is dirty before closing the pool."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.store._busy = True
        self.store.save(dict(stored[0], state="cancelled"))
        self.store._busy = False
        self.successResultOf(self.store.close())
        self.assertTrue(self.pool.closed)
        (state,) = self.pool.connection.execute("SELECT state FROM tasks").fetchone()
        self.assertEqual(state, "cancelled")
        self.failureResultOf(self.store.query(), StoreError)


class CommitIntervalTests(unittest.TestCase):
    """A store with a commit interval starts a transaction at most that often."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = SynchronousPool()
        self.store = self.successResultOf(
            TaskStore.open(":memory:", self.clock, pool=self.pool, commit_interval=0.005))

    def test_firstWriteAtOnce(self) -> None:
        """An idle store starts a transaction at once: nothing waits for the interval."""
        before = self.pool.interactions
        stored = self.successResultOf(self.store.submit([spec()], 1.0))
        self.assertEqual(self.pool.interactions - before, 1)
        self.assertEqual(len(stored), 1)

    def test_changesWithinTheIntervalShareATransaction(self) -> None:
        """What comes within the interval of the last transaction goes in one, once it is over."""
        (first,) = self.successResultOf(self.store.submit([spec()], 1.0))
        before = self.pool.interactions
        saved = self.store.save(dict(first[0], state="running", attempts=1))
        submitted = self.store.submit([spec(), spec()], 2.0)
        self.store.write(dict(first[0], state="done", attempts=1))
        self.assertNoResult(saved)
        self.assertNoResult(submitted)
        self.assertEqual(self.pool.interactions, before)
        self.clock.advance(0.005)
        self.assertEqual(self.pool.interactions - before, 1)
        self.successResultOf(saved)
        self.assertEqual([record["id"] for record, _ in self.successResultOf(submitted)], [2, 3])
        (state,) = self.pool.connection.execute(
            "SELECT state FROM tasks WHERE id = ?", (first[0]["id"],)).fetchone()
        self.assertEqual(state, "done")

    def test_laterWriteAtOnce(self) -> None:
        """A change made once the interval has passed is written at once."""
        self.successResultOf(self.store.submit([spec()], 1.0))
        self.clock.advance(0.01)
        before = self.pool.interactions
        self.successResultOf(self.store.submit([spec()], 2.0))
        self.assertEqual(self.pool.interactions - before, 1)

    def test_closeDoesNotWait(self) -> None:
        """Closing writes what waits for the interval at once, and leaves no timer behind."""
        (stored,) = self.successResultOf(self.store.submit([spec()], 1.0))
        self.store.save(dict(stored[0], state="cancelled"))
        self.successResultOf(self.store.close())
        (state,) = self.pool.connection.execute("SELECT state FROM tasks").fetchone()
        self.assertEqual(state, "cancelled")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class CheckDatabaseTests(unittest.TestCase):
    def test_createsASchema(self) -> None:
        """A new file gets the schema and its version."""
        path = os.path.join(temp_dir(self), "new.db")
        check_database(path)
        with sqlite3.connect(path) as connection:
            (version,) = connection.execute("PRAGMA user_version").fetchone()
        self.assertEqual(version, SCHEMA_VERSION)

    def test_versionOneGainsSubmittedBy(self) -> None:
        """A version 1 database (before submitted_by) is upgraded in place, its tasks kept."""
        path = os.path.join(temp_dir(self), "old.db")
        with sqlite3.connect(path) as connection:
            connection.execute(
                "CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,"
                " name TEXT NOT NULL, args TEXT NOT NULL, requirements TEXT NOT NULL,"
                " timeout REAL, retries INTEGER NOT NULL, state TEXT NOT NULL, slave TEXT,"
                " slave_hostname TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
                " submitted_at REAL NOT NULL, started_at REAL, finished_at REAL, result TEXT,"
                " error TEXT)")
            connection.execute(
                "INSERT INTO tasks (name, args, requirements, retries, state, submitted_at)"
                " VALUES ('primes', '{}', '{}', 3, 'done', 1.0)")
            connection.execute("PRAGMA user_version = 1")
        connection.close()
        record = upgraded(self, path)
        self.assertEqual((record["name"], record["state"], record["submitted_by"], record["unstarted"]),
                         ("primes", "done", None, 0))

    def test_versionTwoGainsUnstarted(self) -> None:
        """A version 2 database (before unstarted) is upgraded in place, its tasks kept."""
        record = upgraded(self, version_two_database(self))
        self.assertEqual((record["state"], record["unstarted"]), ("queued", 0))

    def test_missingDirectory(self) -> None:
        """A path in a directory that does not exist is refused, naming it."""
        path = os.path.join(temp_dir(self), "nowhere", "tasks.db")
        error = self.assertRaises(StoreError, check_database, path)
        self.assertIn(path, str(error))

    def test_notADatabase(self) -> None:
        """A file that is not SQLite is refused, and left as it was."""
        path = os.path.join(temp_dir(self), "notes.txt")
        with open(path, "w") as f:
            f.write("shopping list\n" * 100)
        error = self.assertRaises(StoreError, check_database, path)
        self.assertIn("not a database", str(error))
        with open(path) as f:
            self.assertTrue(f.read().startswith("shopping list"))


def _pragma(path: str, name: str) -> int:
    connection = sqlite3.connect(path)
    try:
        (value,) = connection.execute(f"PRAGMA {name}").fetchone()
    finally:
        connection.close()
    return value


class PruneTests(unittest.TestCase):
    """Pruning finished tasks, and the file giving their space back."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.path = os.path.join(temp_dir(self), "tasks.db")
        self.pool = SynchronousPool(self.path)
        self.addCleanup(self.pool.connection.close)
        self.store = self.successResultOf(TaskStore.open(self.path, self.clock, pool=self.pool))

    def finished(self, count: int, state: str = "done", result: object = 1) -> list[int]:
        """C{count} tasks finished at 1, 2, 3, ... seconds after the last ones."""
        stored = self.successResultOf(self.store.submit([spec() for _ in range(count)], 0.0))
        (latest,) = self.pool.connection.execute("SELECT MAX(finished_at) FROM tasks").fetchone()
        for n, (record, _) in enumerate(stored, 1):
            self.store.write(dict(record, state=state, result=result, finished_at=(latest or 0) + n))
        return [record["id"] for record, _ in stored]

    def ids(self) -> list[int]:
        return [row[0] for row in self.pool.connection.execute("SELECT id FROM tasks ORDER BY id")]

    def test_byAge(self) -> None:
        """Tasks finished before the cutoff go; open tasks stay, however old."""
        self.finished(3)
        cancelled = self.finished(2, "cancelled")
        (stored,) = self.successResultOf(self.store.submit([spec()], 0.0))
        counts = self.successResultOf(self.store.prune(4.5, 100, 50))
        self.assertEqual(counts, {"done": 3, "cancelled": 1})
        self.assertEqual(self.ids(), [cancelled[1], stored[0]["id"]])

    def test_byCount(self) -> None:
        """Past C{keep}, the tasks finished first go first."""
        ids = self.finished(6)
        self.finished(0)
        self.assertEqual(self.successResultOf(self.store.prune(0.0, 4, 50)), {"done": 2})
        self.assertEqual(self.ids(), ids[2:])
        self.assertEqual(self.successResultOf(self.store.prune(0.0, 4, 50)), {})

    def test_ageThenCountInOneBatch(self) -> None:
        """One batch takes the too old, then the oldest past the count, never more than the batch."""
        ids = self.finished(10)
        self.assertEqual(self.successResultOf(self.store.prune(3.5, 5, 4)), {"done": 4})
        self.assertEqual(self.ids(), ids[4:])
        self.assertEqual(self.successResultOf(self.store.prune(3.5, 5, 4)), {"done": 1})
        self.assertEqual(self.ids(), ids[5:])

    def test_idsGoOn(self) -> None:
        """A pruned task's id is never given to another."""
        ids = self.finished(3)
        self.successResultOf(self.store.prune(100.0, 0, 50))
        (stored,) = self.successResultOf(self.store.submit([spec()], 0.0))
        self.assertEqual(stored[0]["id"], ids[-1] + 1)

    def test_spaceGivenBack(self) -> None:
        """A new database is incremental: the pages pruned tasks held leave the file."""
        self.assertEqual(_pragma(self.path, "auto_vacuum"), 2)
        self.finished(40, result="r" * 20_000)
        (grown,) = self.pool.connection.execute("PRAGMA page_count").fetchone()
        self.successResultOf(self.store.prune(1000.0, 0, 50))
        (pages,) = self.pool.connection.execute("PRAGMA page_count").fetchone()
        (free,) = self.pool.connection.execute("PRAGMA freelist_count").fetchone()
        self.assertLess(pages, grown / 4)
        self.assertEqual(free, 0)
        self.pool.connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.assertLess(os.path.getsize(self.path), 100_000)


def upgraded(case: unittest.TestCase, path: str) -> dict[str, Any]:
    """Open the older database at C{path} as a master does; its one task, as now recorded."""
    check_database(path)
    with sqlite3.connect(path) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
        row = connection.execute("SELECT * FROM tasks").fetchone()
    connection.close()
    case.assertEqual(version, SCHEMA_VERSION)
    return row_to_record(row)


def version_two_database(case: unittest.TestCase) -> str:
    """A version 2 database (before unstarted and incremental vacuum) of one queued task."""
    path = os.path.join(temp_dir(case), "old.db")
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA auto_vacuum = NONE")
    connection.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT UNIQUE,"
                       " name TEXT NOT NULL, args TEXT NOT NULL, requirements TEXT NOT NULL,"
                       " timeout REAL, retries INTEGER NOT NULL, state TEXT NOT NULL, slave TEXT,"
                       " slave_hostname TEXT, attempts INTEGER NOT NULL DEFAULT 0,"
                       " submitted_at REAL NOT NULL, started_at REAL, finished_at REAL,"
                       " result TEXT, error TEXT, submitted_by TEXT)")
    connection.execute("INSERT INTO tasks (name, args, requirements, retries, state, submitted_at)"
                       " VALUES ('primes', '{}', '{}', 3, 'queued', 1.0)")
    connection.execute("PRAGMA user_version = 2")
    connection.commit()
    connection.close()
    case.assertEqual(_pragma(path, "auto_vacuum"), 0)
    return path


class ConversionTests(unittest.TestCase):
    """A database from before pruning is converted to give space back, once and carefully."""

    def test_converted(self) -> None:
        """An older file becomes incremental at start, its tasks kept."""
        path = version_two_database(self)
        with capturedLogs() as events:
            check_database(path)
        self.assertEqual(_pragma(path, "auto_vacuum"), 2)
        self.assertIn("Converting the task database", formatEvent(events[0]))
        with sqlite3.connect(path) as connection:
            self.assertEqual(connection.execute("SELECT name FROM tasks").fetchall(), [("primes",)])
        connection.close()
        with capturedLogs() as events:
            check_database(path)
        self.assertEqual(events, [])

    def test_notWithoutRoom(self) -> None:
        """Without room for the copy a VACUUM makes, the file is left as it is, and says so."""
        from picluster.master import space

        path = version_two_database(self)
        self.patch(space, "_free_bytes", lambda path: 1000)
        with capturedLogs() as events:
            check_database(path)
        self.assertEqual(_pragma(path, "auto_vacuum"), 0)
        self.assertIn("needs", formatEvent(events[0]))
        self.assertIn("1000 are", formatEvent(events[0]))

    def test_failedConversionIsNotFatal(self) -> None:
        """A VACUUM that fails (the disk filled meanwhile) leaves a database that still works."""
        from picluster.master import space, store

        path = version_two_database(self)

        def no_vacuum(connection: sqlite3.Connection, path: str) -> None:
            real(_Refusing(connection), path)

        real = space.convert_to_incremental
        self.patch(store, "convert_to_incremental", no_vacuum)
        with capturedLogs() as events:
            check_database(path)
        self.assertIn("Could not convert the task database", formatEvent(events[-1]))
        self.assertIn(DISK_FULL, formatEvent(events[-1]))
        self.assertEqual(_pragma(path, "auto_vacuum"), 0)


class _Refusing:
    """A connection whose VACUUM fails as on a full disk."""

    def __init__(self, connection: sqlite3.Connection):
        self.connection = connection

    def execute(self, sql: str) -> sqlite3.Cursor:
        if sql == "VACUUM":
            raise sqlite3.OperationalError(DISK_FULL)
        return self.connection.execute(sql)
