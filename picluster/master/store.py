"""
The master's task queue on disk: one SQLite file, written off the reactor.

The scheduler holds the live state of every open task in memory; this store
makes it durable.  Two kinds of work reach it:

  - B{saves} of a task's row (the columns its life changes).  They coalesce
    (only the newest row of a task is written) and are never lost: when a
    write fails (a full SD card, a read-only remount) the rows stay dirty and
    are written again with backoff, in memory meanwhile.
  - B{operations} (submissions, queries), which either run or fail back to
    whoever asked, so a client learns at once that nothing was stored.

Everything queued while a transaction runs goes into the next one, a group
commit: with C{synchronous=FULL} each commit costs an fsync, so on an SD
card batching is what keeps a busy master fast.  The connection pool has a
single connection, which serialises all of it.  Pruning finished tasks is
one more operation (L{picluster.master.space} holds how).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from twisted.enterprise import adbapi
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from picluster import wire
from picluster.master.space import (
    INCREMENTAL,
    WAL_SIZE_LIMIT,
    convert_to_incremental,
    database_size,
    prune,
)
from picluster.master.taskspec import TaskSpec
from picluster.wire.messages import TASK_STATES

log = Logger()

#: Version of the schema below, kept in SQLite's C{user_version}.  Version 2
#: added C{submitted_by}, version 3 C{unstarted}; an older database gains
#: the columns on opening.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT UNIQUE,
    name TEXT NOT NULL,
    args TEXT NOT NULL,
    requirements TEXT NOT NULL,
    timeout REAL,
    retries INTEGER NOT NULL,
    state TEXT NOT NULL,
    slave TEXT,
    slave_hostname TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    result TEXT,
    error TEXT,
    submitted_by TEXT,
    unstarted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS tasks_by_state ON tasks (state, id);
CREATE INDEX IF NOT EXISTS tasks_by_finish ON tasks (finished_at, id) WHERE finished_at IS NOT NULL;
"""

#: Columns of a task row, in table order.
COLUMNS = (
    "id", "key", "name", "args", "requirements", "timeout", "retries", "state", "slave",
    "slave_hostname", "attempts", "submitted_at", "started_at", "finished_at", "result", "error",
    "submitted_by", "unstarted",
)

#: Columns holding JSON text in the table and JSON values in a row dict.
_JSON_COLUMNS = ("requirements", "result", "error")


def held_arguments(text: str) -> msgspec.Raw:
    """
    A task's arguments as a row dict holds them: their JSON, not decoded.

    Nothing on the master looks inside them; it only stores them, counts
    them and sends them on, and an open task keeps its row dict for its
    whole life.  Decoded, a submitter's quota of arguments would take up
    to a dozen times the bytes it is counted in (a list of short strings:
    some 60 bytes an item against 5); as JSON, it takes those bytes.  The
    wire's encoder writes them as they are.
    """
    return msgspec.Raw(text.encode("utf-8"))


#: A result of C{null}, held as none.
_NULL = msgspec.Raw(b"null")


def held_result(raw: msgspec.Raw) -> msgspec.Raw | None:
    """
    A task's result as its record holds it until stored and shown: the JSON
    the slave sent (C{None} for C{null}), not decoded, as L{held_arguments}.

    The frame's decoder checked that it is JSON, but not that its strings
    are UTF-8, which the database's text and every reader need.

    @raise wire.BadMessage: it is not.
    """
    if raw == _NULL:
        return None
    try:
        str(raw, "utf-8")
    except UnicodeDecodeError as e:
        raise wire.BadMessage(f"the result is not UTF-8 text: {e.reason} at byte {e.start}") from None
    return raw


#: States after which a task never changes again.
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
STATES = TASK_STATES

#: Seconds before the first retry of a failed write, and the longest wait.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0

#: Seconds from the start of one transaction to the start of the next, at
#: least, on a master (L{TaskStore.commit_interval}).
COMMIT_INTERVAL = 0.005

#: What SQLite says when a write finds no room (SQLITE_FULL).
DISK_FULL = "database or disk is full"


class StoreError(Exception):
    """The task database cannot be opened or used."""


class KeyConflict(Exception):
    """An idempotency key already names a different task."""

    def __init__(self, index: int, key: str, task_id: int):
        super().__init__(f"task {index}: key {key!r} already names task {task_id}, with other arguments")
        self.index = index
        self.key = key
        self.task_id = task_id


def _prepare(connection: sqlite3.Connection) -> None:
    """
    Per-connection settings: durable commits, tolerant of a slow card; a new
    database gives the pages of pruned tasks back to the file system (set
    before anything is written: an older file is converted by
    L{check_database}).
    """
    connection.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")


def _create_schema(txn: Any) -> None:
    txn.execute("PRAGMA user_version")
    (version,) = txn.fetchone()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the task database has schema version {version}; this picluster knows"
            f" only {SCHEMA_VERSION} (was it made by a newer picluster?)"
        )
    if version == 1:
        txn.execute("ALTER TABLE tasks ADD COLUMN submitted_by TEXT")
    if 1 <= version < 3:
        txn.execute("ALTER TABLE tasks ADD COLUMN unstarted INTEGER NOT NULL DEFAULT 0")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            txn.execute(statement)
    txn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def check_database(path: str) -> None:
    """
    Open the database once, synchronously, before the master starts, so that
    a bad C{--db} stops it with one clear line instead of a master that
    cannot keep tasks.

    @raise StoreError: saying what is wrong with the file.
    """
    if path == ":memory:":
        return
    try:
        connection = sqlite3.connect(path)
        try:
            _prepare(connection)
            _create_schema(connection.cursor())
            connection.commit()
            convert_to_incremental(connection, path)
        finally:
            connection.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot use task database {path}: {e}") from None


def open_pool(path: str, reactor: Any) -> adbapi.ConnectionPool:
    """A one-connection adbapi pool on the SQLite file at C{path}."""
    return adbapi.ConnectionPool(
        "sqlite3", path, check_same_thread=False, cp_min=1, cp_max=1,
        cp_openfun=_prepare, cp_reactor=reactor, cp_noisy=False,
    )


def row_to_record(row: Iterable[Any]) -> dict[str, Any]:
    """A table row as the task record the wire shows."""
    record = dict(zip(COLUMNS, row))
    record["args"] = held_arguments(record["args"])
    for column in _JSON_COLUMNS:
        if record[column] is not None:
            record[column] = json.loads(record[column])
    return record


#: The columns a task's life changes; the others (its key, name, arguments,
#: requirements, timeout, retries and submission time) are written once, when
#: it is submitted, and a save leaves them be.
CHANGING = (
    "state", "slave", "slave_hostname", "attempts", "unstarted", "started_at", "finished_at",
    "result", "error",
)


def _json_text(value: Any) -> str:
    """A JSON value (one that came as JSON, so free of NaNs) as compact JSON text, as frames carry it."""
    return wire.encode(value).decode()


def _changing_values(record: dict[str, Any]) -> tuple[Any, ...]:
    """The changing columns of C{record}, then its id: the parameters of L{_UPDATE}."""
    result, error = record.get("result"), record.get("error")
    return (
        record.get("state"), record.get("slave"), record.get("slave_hostname"),
        record.get("attempts"), record.get("unstarted", 0), record.get("started_at"),
        record.get("finished_at"),
        None if result is None else _json_text(result),
        None if error is None else _json_text(error),
        record["id"],
    )


_UPDATE = "UPDATE tasks SET " + ", ".join(f"{c} = ?" for c in CHANGING) + " WHERE id = ?"
_SELECT = "SELECT " + ", ".join(COLUMNS) + " FROM tasks"


@dataclass
class _Operation:
    run: Callable[[Any], Any]
    done: defer.Deferred[Any] = field(default_factory=defer.Deferred)


class TaskStore:
    """
    The task table, reached only through the single-connection C{pool}.

    @ivar pool: An L{adbapi.ConnectionPool}, or anything with its
        C{runInteraction} and C{close} (the tests run SQLite synchronously).
    """

    def __init__(self, pool: Any, clock: Any, path: str = ":memory:", *,
                 commit_interval: float = 0.0):
        self.pool = pool
        self.clock = clock
        #: The database file (C{":memory:"} for none).
        self.path = path
        #: Seconds from the start of one transaction to the start of the
        #: next, at least.  A transaction costs a commit (an fsync, a
        #: handover to the writer's thread and back) whatever it holds; a
        #: busy master whose writes are each soon done would otherwise
        #: commit every few tasks, and pay for it in CPU.  What waits is
        #: only ever late by this much, and an idle store starts at once.
        self.commit_interval = commit_interval
        self._last_start = float("-inf")
        self._pace_call: Any = None
        self._dirty: dict[int, dict[str, Any]] = {}
        self._save_waiters: dict[int, list[defer.Deferred[None]]] = {}
        self._operations: list[_Operation] = []
        self._busy = False
        self._retry_delay = 0.0
        self._retry_call: Any = None
        self._closed: defer.Deferred[None] | None = None
        #: Whether the write made while closing failed: it is not tried again.
        self._close_failed = False

    @classmethod
    def open(cls, path: str, reactor: Any, pool: Any = None, *,
             commit_interval: float = 0.0) -> defer.Deferred[TaskStore]:
        """Open (creating if need be) the task database at C{path}."""
        pool = pool if pool is not None else open_pool(path, reactor)
        store = cls(pool, reactor, path, commit_interval=commit_interval)

        def explain(failure: Failure) -> Failure:
            pool.close()
            if failure.check(StoreError):
                return failure
            raise StoreError(f"cannot open task database {path}: {failure.getErrorMessage()}")

        opened = pool.runInteraction(_create_schema)
        return opened.addCallbacks(lambda _: store, explain)

    # -- what the scheduler asks -------------------------------------------

    def save(self, record: dict[str, Any]) -> defer.Deferred[None]:
        """
        Write C{record} (a whole task row, of which the L{CHANGING} columns
        are written); fires once it, or a newer row of the same task, is
        committed.  It never fails: a write that fails is tried again later.
        """
        saved: defer.Deferred[None] = defer.Deferred()
        self._save_waiters.setdefault(record["id"], []).append(saved)
        self.write(record)
        return saved

    def write(self, record: dict[str, Any]) -> None:
        """L{save}, for a caller that need not know when the row is committed."""
        self._dirty[record["id"]] = record
        self._kick()

    def submit(self, specs: list[TaskSpec], now: float,
               submitted_by: str | None = None) -> defer.Deferred[list[tuple[dict[str, Any], bool]]]:
        """
        Store new tasks in one transaction; fires with (record, duplicate)
        per spec.  A spec whose key was seen before gets the stored task.
        C{submitted_by} says who submitted them (credential and address).

        @raise KeyConflict: (as a failure) a key names a task with another
            name or other arguments; nothing is stored.
        """
        return self._operate(lambda txn: _insert(txn, specs, now, submitted_by))

    def query(
        self, *, ids: list[int] | None = None, states: Iterable[str] | None = None,
        after: int | None = None, limit: int | None = None, newest_first: bool = False,
        max_bytes: int | None = None,
    ) -> defer.Deferred[list[dict[str, Any]]]:
        """
        Task records by id, state, or both, ordered by id (the newest first
        with C{newest_first}; C{after} is then a page's last id, and the
        records have smaller ones).

        With C{max_bytes}, the records stop at the first whose arguments,
        results and errors take the total past it (that one included): a
        peer asking for a thousand tasks with megabyte results costs the
        master one reply's worth of memory, not a gigabyte.
        """
        return self._operate(
            lambda txn: _select(txn, ids, states, after, limit, newest_first, max_bytes))

    def counts(self) -> defer.Deferred[dict[str, int]]:
        """How many tasks are stored in each state."""
        return self._operate(_count_by_state)

    def prune(self, before: float, keep: int, batch: int) -> defer.Deferred[dict[str, int]]:
        """
        Delete at most C{batch} finished tasks: those finished before
        C{before}, then the oldest of those past the newest C{keep}.  Fires
        with how many were deleted in each state.
        """
        return self._operate(lambda txn: prune(txn, before, keep, batch))

    def size(self) -> int:
        """Bytes of the database on disk (its file and write-ahead log)."""
        return database_size(self.path)

    def pending_saves(self) -> int:
        """Rows waiting to be written (for status pages and tests)."""
        return len(self._dirty)

    def close(self) -> defer.Deferred[None]:
        """Write what is dirty (trying once), then close the pool."""
        if self._closed is None:
            self._closed = defer.Deferred()
            if self._retry_call is not None and self._retry_call.active():
                self._retry_call.cancel()
                self._retry_call = None
                self._retry_delay = 0.0
            if self._pace_call is not None and self._pace_call.active():
                self._pace_call.cancel()
            self._pace_call = None
            self._kick()
        return self._closed

    # -- the writer ----------------------------------------------------------

    def _operate(self, run: Callable[[Any], Any]) -> defer.Deferred[Any]:
        if self._closed is not None:
            return defer.fail(StoreError("the task database is closed"))
        operation = _Operation(run)
        self._operations.append(operation)
        self._kick()
        return operation.done

    def _kick(self) -> None:
        if self._busy or self._pace_call is not None:
            return
        write_rows = self._dirty and self._retry_call is None and not self._close_failed
        if not write_rows and not self._operations:
            if self._closed is not None and not self._closed.called:
                self._finish_close()
            return
        now = self.clock.seconds()
        early = self._last_start + self.commit_interval - now
        if early > 0 and self._closed is None:
            # What comes meanwhile joins this transaction.
            self._pace_call = self.clock.callLater(early, self._paced)
            return
        self._last_start = now
        rows, self._dirty = (self._dirty, {}) if write_rows else ({}, self._dirty)
        waiting = self._save_waiters
        waiters = {task_id: waiting.pop(task_id) for task_id in rows if task_id in waiting}
        operations, self._operations = self._operations, []
        self._busy = True
        batch = self.pool.runInteraction(_write_batch, list(rows.values()), operations)
        batch.addCallbacks(
            self._batch_written, self._batch_failed,
            callbackArgs=(bool(rows), waiters, operations), errbackArgs=(rows, waiters, operations),
        )
        batch.addErrback(lambda failure: log.failure("Task store writer broke", failure))

    def _batch_written(self, results: list[Any], wrote_rows: bool,
                       waiters: dict[int, list[defer.Deferred[None]]],
                       operations: list[_Operation]) -> None:
        self._busy = False
        if wrote_rows and self._retry_delay:
            log.info("Task database writable again; pending task changes saved")
            self._retry_delay = 0.0
        for waiting in waiters.values():
            for saved in waiting:
                saved.callback(None)
        for operation, outcome in zip(operations, results):
            if isinstance(outcome, Exception):
                operation.done.errback(outcome)
            else:
                operation.done.callback(outcome)
        self._kick()

    def _batch_failed(self, failure: Failure, rows: dict[int, dict[str, Any]],
                      waiters: dict[int, list[defer.Deferred[None]]],
                      operations: list[_Operation]) -> defer.Deferred[None]:
        # The transaction rolled back.  Keep the rows (unless newer ones came
        # meanwhile), then give each operation a transaction of its own so a
        # query still runs while the disk is full.
        for task_id, record in rows.items():
            self._dirty.setdefault(task_id, record)
            if task_id in waiters:
                self._save_waiters[task_id] = waiters[task_id] + self._save_waiters.get(task_id, [])
        if rows:
            self._schedule_retry(failure)
        return self._run_alone(operations)

    @defer.inlineCallbacks
    def _run_alone(self, operations: list[_Operation]) -> Any:
        for operation in operations:
            try:
                (outcome,) = yield self.pool.runInteraction(_write_batch, [], [operation])
            except Exception as e:
                outcome = _store_error(e)
            if isinstance(outcome, Exception):
                operation.done.errback(outcome)
            else:
                operation.done.callback(outcome)
        self._busy = False
        self._kick()

    def _schedule_retry(self, failure: Failure) -> None:
        self._retry_delay = min(RETRY_MAX, self._retry_delay * 2 or RETRY_FIRST)
        log.error(
            "Cannot write the task database: {problem}; {count} task changes kept in"
            " memory, trying again in {delay:g} s",
            problem=failure.getErrorMessage(), count=len(self._dirty), delay=self._retry_delay,
        )
        if self._closed is not None:
            # Closing tries once: trying again at once, over and over, would
            # spin (and log) until the disk has room, and never close.
            self._close_failed = True
            return
        self._retry_call = self.clock.callLater(self._retry_delay, self._retry)

    def _paced(self) -> None:
        self._pace_call = None
        self._kick()

    def _retry(self) -> None:
        self._retry_call = None
        self._kick()

    def _finish_close(self) -> None:
        if self._dirty:
            log.error("Closing the task database with {count} task changes unsaved",
                      count=len(self._dirty))
        self.pool.close()
        assert self._closed is not None
        self._closed.callback(None)


def _store_error(error: Exception) -> StoreError:
    """A failed transaction, in words for the user."""
    if DISK_FULL in str(error):
        return StoreError(f"the disk holding the task database is full ({DISK_FULL});"
                          " the tasks already stored are kept")
    return StoreError(f"task database: {error}")


def _write_batch(txn: Any, rows: list[dict[str, Any]], operations: list[_Operation]) -> list[Any]:
    """
    One transaction: every dirty row, then every operation.  An operation's
    own refusal (L{KeyConflict}) is its result, not the transaction's end.
    """
    if rows:
        txn.executemany(_UPDATE, [_changing_values(record) for record in rows])
    results: list[Any] = []
    for operation in operations:
        try:
            results.append(operation.run(txn))
        except KeyConflict as conflict:
            results.append(conflict)
    return results


def _insert(txn: Any, specs: list[TaskSpec], now: float,
            submitted_by: str | None = None) -> list[tuple[dict[str, Any], bool]]:
    known = _by_key(txn, [spec.key for spec in specs if spec.key is not None])
    existing: dict[int, dict[str, Any]] = {}
    for index, spec in enumerate(specs):
        if spec.key is None:
            continue
        record = known.get(spec.key)
        if record is not None:
            if record["name"] != spec.name or msgspec.json.decode(record["args"]) != spec.args:
                raise KeyConflict(index, spec.key, record["id"])
            existing[index] = record
    new = [spec for index, spec in enumerate(specs) if index not in existing]
    requirements = [spec.requirements.as_json() for spec in new]
    txn.executemany(
        "INSERT INTO tasks (key, name, args, requirements, timeout, retries, state,"
        " attempts, submitted_at, submitted_by) VALUES (?, ?, ?, ?, ?, ?, 'queued', 0, ?, ?)",
        [(spec.key, spec.name, spec.args_json, _json_text(required),
          spec.timeout, spec.retries, now, submitted_by) for spec, required in zip(new, requirements)],
    )
    # One transaction on the only connection: AUTOINCREMENT gave the new
    # rows the ids up to the last one, one after the other.
    txn.execute("SELECT last_insert_rowid()")
    (last_id,) = txn.fetchone()
    made = iter(zip(range(last_id - len(new) + 1, last_id + 1), requirements))
    stored = []
    for index, spec in enumerate(specs):
        if index in existing:
            stored.append((existing[index], True))
            continue
        task_id, required = next(made)
        # The row as it was written, without reading it back.
        stored.append(({
            "id": task_id, "key": spec.key, "name": spec.name,
            "args": held_arguments(spec.args_json),
            "requirements": required, "timeout": spec.timeout, "retries": spec.retries,
            "state": "queued", "slave": None, "slave_hostname": None, "attempts": 0,
            "submitted_at": now, "started_at": None, "finished_at": None, "result": None,
            "error": None, "submitted_by": submitted_by, "unstarted": 0,
        }, False))
    return stored


def _by_key(txn: Any, keys: list[str]) -> dict[str, dict[str, Any]]:
    """The stored tasks with these idempotency keys, by key."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(keys), _IDS_PER_QUERY):
        chunk = keys[start:start + _IDS_PER_QUERY]
        txn.execute(f"{_SELECT} WHERE key IN ({', '.join('?' * len(chunk))})", chunk)
        for row in txn.fetchall():
            record = row_to_record(row)
            found[record["key"]] = record
    return found


#: Ids (or keys) per query: SQLite caps the parameters of one statement.
_IDS_PER_QUERY = 500


def _count_by_state(txn: Any) -> dict[str, int]:
    txn.execute("SELECT state, COUNT(*) FROM tasks GROUP BY state")
    counts = dict.fromkeys(STATES, 0)
    counts.update(txn.fetchall())
    return counts


def _select(txn: Any, ids: list[int] | None, states: Iterable[str] | None,
            after: int | None, limit: int | None,
            newest_first: bool = False, max_bytes: int | None = None) -> list[dict[str, Any]]:
    return _select_sized(txn, ids, states, after, limit, newest_first, max_bytes)[0]


def _select_sized(txn: Any, ids: list[int] | None, states: Iterable[str] | None,
                  after: int | None, limit: int | None, newest_first: bool,
                  max_bytes: int | None) -> tuple[list[dict[str, Any]], int]:
    """The records L{_select} gives, and (with C{max_bytes}) about the bytes they take."""
    if ids is not None and len(ids) > _IDS_PER_QUERY:
        found: list[dict[str, Any]] = []
        used = 0
        ordered = sorted(ids, reverse=newest_first)
        for start in range(0, len(ordered), _IDS_PER_QUERY):
            room = None if max_bytes is None else max_bytes - used
            part, size = _select_sized(txn, ordered[start:start + _IDS_PER_QUERY], states, after,
                                       None, newest_first, room)
            found += part
            used += size
            if max_bytes is not None and used > max_bytes:
                break
        found.sort(key=lambda record: record["id"], reverse=newest_first)
        return (found[:limit] if limit is not None else found), used
    clauses: list[str] = []
    params: list[Any] = []
    if ids is not None:
        if not ids:
            return [], 0
        clauses.append(f"id IN ({', '.join('?' * len(ids))})")
        params.extend(ids)
    if states is not None:
        states = list(states)
        clauses.append(f"state IN ({', '.join('?' * len(states))})")
        params.extend(states)
    if after is not None:
        # Past the previous page, in the list's order.
        clauses.append("id < ?" if newest_first else "id > ?")
        params.append(after)
    sql = _SELECT
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    txn.execute(sql, params)
    if max_bytes is None:
        return [row_to_record(row) for row in txn.fetchall()], 0
    records = []
    used = 0
    while used <= max_bytes:
        rows = txn.fetchmany(16)
        if not rows:
            break
        for row in rows:
            records.append(row_to_record(row))
            used += _row_size(row)
            if used > max_bytes:
                break
    return records, used


def _row_size(row: Iterable[Any]) -> int:
    """About the bytes a row takes on the wire: its texts (JSON arguments, results, errors)."""
    return 64 + sum(len(value) for value in row if isinstance(value, (str, bytes)))

