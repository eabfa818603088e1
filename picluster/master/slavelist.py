"""
The slaves a page at a time, and the cluster in a summary whose size does
not grow with it.

Nobody reads a table of 5,000 rows, and no frame holds one: the wire's
C{info slaves}, C{info status} and C{info slave_details} and the web's
C{/api/slaves} answer one page, in an order (by hostname, or newest
first), with an opaque cursor to ask for the next.  The summary counts the
nodes and names the few that need a person: those throttled, short of
power, hot, silent, cloned or gone.  Both are built only when asked for.

A cursor is the sort key of the last row a page showed, so a page is found
by comparing keys, whatever joined or left meanwhile: a node that joins
behind the cursor is not shown on later pages, and none is shown twice.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeGuard

import msgspec

from picluster.wire.messages import (
    DEFAULT_SLAVES_LIMIT,
    MAX_CURSOR_LENGTH,
    MAX_SEARCH_LENGTH,
    MAX_SLAVES_LIMIT,
    SLAVE_ORDERS,
    SLAVE_STATES,
)

if TYPE_CHECKING:
    from picluster.master.registry import Departure, LiveSlave

    Node = LiveSlave | Departure

#: Rows on a page of slaves with their vitals history (C{/api/slaves?history=1}),
#: each some 20 KiB once its rings are full, at most.
MAX_HISTORY_LIMIT = 100

#: Nodes in trouble a summary names (it counts them all), and the hottest.
MAX_TROUBLE_SHOWN = 20
HOTTEST_SHOWN = 5

#: Degrees Celsius from which a node counts as hot: a Pi 4 throttles at 80
#: (85 with its firmware's soft limit off).
HOT_CELSIUS = 80.0

#: Keepalive intervals without a word after which a connected slave is
#: silent.  A quiet link makes one exchange an interval, started by either
#: side, and while it changes hands a slave may go just under two intervals
#: unheard (L{picluster.master.keepalives.Keepalives}): past two and a half,
#: something is wrong, well before the master gives up on it (its
#: C{dead_after}, three by default).
SILENT_AFTER_KEEPALIVES = 2.5

def silent_after(keepalive: float) -> float:
    """Seconds without a word after which a slave is silent, to a master pinging every C{keepalive}."""
    return SILENT_AFTER_KEEPALIVES * keepalive


#: Why a node is in trouble, worst first: the order a summary lists them in.
TROUBLES = ("left", "silent", "under-voltage", "throttled", "hot", "cloned")

NO_HOSTNAME = "\uffff"

#: Characters of a hostname a list is sorted on (a cursor holds them): DNS
#: labels are at most 63 characters.
KEY_NAME_LENGTH = 64


class BadSlaveQuery(ValueError):
    """A list query that cannot be answered: the text says why, for the asker."""


@dataclass(frozen=True)
class SlaveQuery:
    """
    Which slaves a page shows.

    @ivar after: The C{next} cursor of the previous page, or C{None} for the first.
    @ivar search: Only nodes whose hostname, address or uuid holds this
        text, in any case.
    """

    limit: int = DEFAULT_SLAVES_LIMIT
    after: str | None = None
    order: str = "hostname"
    state: str | None = None
    search: str | None = None
    #: The sort key C{after} holds, decoded once as the query is checked.
    after_key: tuple[int, Any, str] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.limit) is not int or not 1 <= self.limit <= MAX_SLAVES_LIMIT:
            raise BadSlaveQuery(f"limit must be a whole number from 1 to {MAX_SLAVES_LIMIT}")
        if self.order not in SLAVE_ORDERS:
            raise BadSlaveQuery(f"order must be one of {', '.join(SLAVE_ORDERS)}")
        if self.state is not None and self.state not in SLAVE_STATES:
            raise BadSlaveQuery(f"state must be one of {', '.join(SLAVE_STATES)}")
        if self.search is not None and len(self.search) > MAX_SEARCH_LENGTH:
            raise BadSlaveQuery(f"search must be at most {MAX_SEARCH_LENGTH} characters")
        if self.after is not None:
            object.__setattr__(self, "after_key", _decode_cursor(self.after, self.order))


# -- the keys and the cursor ---------------------------------------------------


def has_left(node: Node) -> TypeGuard[Departure]:
    return getattr(node, "left_at", None) is not None


def sort_key(node: Node, order: str) -> tuple[int, Any, str]:
    """Where C{node} stands in a list in C{order}: connected ones first."""
    departure = node if has_left(node) else None
    left = departure is not None
    if order == "newest":
        at = departure.left_at if departure is not None else node.connected_at
        return (int(left), -float(at), node.uuid)
    return (int(left), (node.hostname or NO_HOSTNAME)[:KEY_NAME_LENGTH], node.uuid)


def _encode_cursor(key: tuple[int, Any, str], order: str) -> str:
    text = json.dumps([order, *key], ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode("utf-8")).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str, order: str) -> tuple[int, Any, str]:
    """The key a cursor holds; refused when it is not one this master made for C{order}."""
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise BadSlaveQuery(f"after must be at most {MAX_CURSOR_LENGTH} characters")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError):
        raise BadSlaveQuery("after is not a cursor this master gave") from None
    second = float if order == "newest" else str
    if not (isinstance(decoded, list) and len(decoded) == 4 and decoded[0] == order
            and decoded[1] in (0, 1) and type(decoded[1]) is int
            and isinstance(decoded[2], second) and not isinstance(decoded[2], bool)
            and isinstance(decoded[3], str)):
        raise BadSlaveQuery(f"after is not a cursor of a list in {order} order")
    return (decoded[1], decoded[2], decoded[3])


# -- what is wrong with a node ------------------------------------------------

#: The firmware's flags, besides under-voltage, that say it holds the CPU back now.
CAPPING_FLAGS = ("frequency_capped", "throttled", "soft_temperature_limit")


def troubles(node: Node, now: float, silent_after: float, cloned: bool = False) -> list[str]:
    """What a person should look at on C{node}, worst first (see L{TROUBLES})."""
    found = []
    if has_left(node):
        found.append("left")
    elif now - node.last_seen > silent_after:
        found.append("silent")
    vitals = node.vitals
    throttling = getattr(vitals, "throttling", None)
    if getattr(vitals, "under_voltage", None) is True or getattr(throttling, "under_voltage", None) is True:
        found.append("under-voltage")
    if any(getattr(throttling, flag, None) is True for flag in CAPPING_FLAGS):
        found.append("throttled")
    reading = temperature(node)
    if reading is not None and reading >= HOT_CELSIUS:
        found.append("hot")
    if cloned:
        found.append("cloned")
    return found


def temperature(node: Node) -> float | None:
    reading = getattr(node.vitals, "cpu_temperature", None)
    if isinstance(reading, (int, float)) and not isinstance(reading, bool) and -1e6 < reading < 1e6:
        return float(reading)
    return None


def is_cloned(node: Node) -> bool:
    return not has_left(node) and bool(getattr(node, "cloned", False))


# -- the list ------------------------------------------------------------------


def matching(nodes: Iterable[Node], query: SlaveQuery, now: float,
             silent_after: float) -> Iterator[Node]:
    """The C{nodes} that C{query}'s state and search keep."""
    search = query.search.casefold() if query.search else None
    for node in nodes:
        if query.state == "connected" and has_left(node):
            continue
        if query.state == "left" and not has_left(node):
            continue
        if query.state == "trouble" and not troubles(node, now, silent_after, is_cloned(node)):
            continue
        if search is not None and not any(
            search in (text or "").casefold() for text in (node.hostname, node.address, node.uuid)
        ):
            continue
        yield node


def page(nodes: Iterable[Node], query: SlaveQuery, row: Callable[[Node], dict[str, Any]],
         max_bytes: int | None = None) -> dict[str, Any]:
    """
    One page of C{nodes} (already narrowed by L{matching}):
    C{{"slaves": [rows], "total", "more", "next"}}.

    @param row: What each node is shown as.
    @param max_bytes: Stop before the rows, as JSON, take more than this
        (a page has at least one row): a frame must hold the page.
    """
    after = query.after_key
    total = 0
    candidates: list[tuple[tuple[int, Any, str], Node]] = []
    for node in nodes:
        total += 1
        key = sort_key(node, query.order)
        if after is None or key > after:
            candidates.append((key, node))
    # The page and one more, to know whether there is more: no full sort.
    chosen = heapq.nsmallest(query.limit + 1, candidates, key=lambda pair: pair[0])
    more = len(chosen) > query.limit
    rows: list[dict[str, Any]] = []
    used = 0
    last_key = None
    for key, node in chosen[:query.limit]:
        shown = row(node)
        if max_bytes is not None:
            used += len(msgspec.json.encode(shown)) + 1
            if rows and used > max_bytes:
                more = True
                break
        rows.append(shown)
        last_key = key
    return {
        "slaves": rows,
        "total": total,
        "more": more,
        "next": _encode_cursor(last_key, query.order) if more and last_key is not None else None,
    }
