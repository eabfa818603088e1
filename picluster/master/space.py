"""
The task database's room on disk: how big it is, which finished tasks are
pruned from it, and how the pages they held go back to the file system.

A new database is made with C{auto_vacuum=INCREMENTAL}, so that each prune
can shrink the file by the pages it freed (C{PRAGMA incremental_vacuum});
one made before pruning existed is converted once, at start, by a
C{VACUUM}, when the disk has room for it.  L{picluster.master.store} runs
all of it; L{picluster.master.retention} says when to prune.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from typing import Any

from twisted.logger import Logger

log = Logger()

#: Largest task database (its file and write-ahead log) that still takes
#: new tasks; past it, submissions are refused and results still stored.
DEFAULT_MAX_DB = 1024**3

#: Most bytes the write-ahead log keeps once checkpointed.
WAL_SIZE_LIMIT = 64 * 1024**2

#: SQLite's C{auto_vacuum} mode that gives freed pages back on request.
INCREMENTAL = 2

#: Ids in one DELETE: SQLite caps the parameters of one statement.
_IDS_PER_DELETE = 500


def database_size(path: str) -> int:
    """Bytes of the database at C{path} on disk: its file and its write-ahead log."""
    if path == ":memory:":
        return 0
    size = 0
    for name in (path, path + "-wal"):
        try:
            size += os.path.getsize(name)
        except OSError:
            pass
    return size


def _free_bytes(path: str) -> int:
    return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free


def convert_to_incremental(connection: sqlite3.Connection, path: str) -> None:
    """
    Make a database from before pruning give freed pages back to the file
    system.  That takes one C{VACUUM}: a copy of the whole file, so it is
    done only when the disk has room for two more copies, and a failure
    leaves the database as it was (it still works; its file only does not
    shrink as tasks are pruned).
    """
    (mode,) = connection.execute("PRAGMA auto_vacuum").fetchone()
    if mode == INCREMENTAL:
        return
    size = database_size(path)
    free = _free_bytes(path)
    if free < 2 * size + WAL_SIZE_LIMIT:
        log.warn(
            "The task database {path} ({size} bytes) gives the space of pruned tasks back only once"
            " converted, which needs {needed} bytes free ({free} are); pruned tasks' space is"
            " reused meanwhile, and the conversion is tried at the next start",
            path=path, size=size, needed=2 * size + WAL_SIZE_LIMIT, free=free,
        )
        return
    log.info("Converting the task database {path} ({size} bytes) to give back the space of pruned"
             " tasks: once, and it may take a while", path=path, size=size)
    try:
        connection.execute(f"PRAGMA auto_vacuum = {INCREMENTAL}")
        connection.execute("VACUUM")
    except sqlite3.Error as e:
        log.warn("Could not convert the task database {path}: {problem}; it works as it is, and"
                 " the conversion is tried at the next start", path=path, problem=str(e))


def prune(txn: Any, before: float, keep: int, batch: int) -> dict[str, int]:
    """
    Delete at most C{batch} finished tasks, in the transaction C{txn}:
    those finished before C{before}, then the oldest past the newest
    C{keep}; then free pages go back to the file system.  Returns how many
    were deleted in each state.
    """
    oldest = "SELECT id, state FROM tasks WHERE finished_at IS NOT NULL"
    txn.execute(f"{oldest} AND finished_at < ? ORDER BY finished_at, id LIMIT ?", (before, batch))
    doomed = txn.fetchall()
    if len(doomed) < batch:
        txn.execute("SELECT COUNT(*) FROM tasks WHERE finished_at IS NOT NULL")
        (finished,) = txn.fetchone()
        # The too old are the oldest: the next oldest come right after them.
        excess = min(finished - len(doomed) - keep, batch - len(doomed))
        if excess > 0:
            txn.execute(f"{oldest} ORDER BY finished_at, id LIMIT ? OFFSET ?", (excess, len(doomed)))
            doomed += txn.fetchall()
    counts: dict[str, int] = {}
    for start in range(0, len(doomed), _IDS_PER_DELETE):
        chunk = [task_id for task_id, _ in doomed[start:start + _IDS_PER_DELETE]]
        txn.execute(f"DELETE FROM tasks WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
    for _, state in doomed:
        counts[state] = counts.get(state, 0) + 1
    if doomed:
        _give_back_free_pages(txn)
    return counts


def _give_back_free_pages(txn: Any) -> None:
    """
    Shrink the file by its free pages (in a database made incremental; in
    another, there is nothing to give back and this does nothing).  Each
    step of C{incremental_vacuum} frees one page, and Python's sqlite3 steps
    a statement that returns no rows once: so one statement a page, some
    16 microseconds each.
    """
    txn.execute("PRAGMA auto_vacuum")
    if txn.fetchone() != (INCREMENTAL,):
        return
    txn.execute("PRAGMA freelist_count")
    (free,) = txn.fetchone()
    for _ in range(free):
        txn.execute("PRAGMA incremental_vacuum(1)")
    # The last step left its statement open, which would stop the commit:
    # the next statement on the cursor resets it.
    txn.execute("PRAGMA freelist_count")
    txn.fetchone()
