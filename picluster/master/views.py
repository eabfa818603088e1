"""
What the master shows of the cluster: the JSON shapes of slaves, the master
itself and tasks, shared by the web API, the dashboard's live events and the
wire's C{info status} (whose pages and summary are
L{picluster.master.slavelist}'s).

Built only when asked for (a page load, an event tick, a scrape), never per
message, so a busy master pays nothing for the views nobody is looking at.
The shapes are documented in docs/monitoring.rst; change them there too.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from picluster._version import __version__
from picluster.master import slavelist
from picluster.text import clip
from picluster.timebase import wall_time

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from picluster.master.connection import MasterFactory
    from picluster.master.registry import Departure, LiveSlave, SlaveRegistry
    from picluster.master.scheduler import Scheduler
    from picluster.trust.cluster import ClusterTrust
    from picluster.wire.messages import Throttling

    Node = LiveSlave | Departure



class MasterState(Protocol):
    """
    What the views read of a running master: its
    L{picluster.master.service.MasterService}, which owns each part.

    Named here rather than imported, so that the views, the web site and the
    metrics, which the service builds, do not import the service back.
    """

    reactor: IReactorTime
    registry: SlaveRegistry
    scheduler: Scheduler
    factory: MasterFactory
    port: str
    started_at: float | None
    slave_port: int | None
    influx: Any
    #: The cluster's CA and secrets; C{None} on a plain master.
    trust: ClusterTrust | None
    #: The slaves as pages and a summary.
    slave_list: SlaveList


#: Tasks in the dashboard's live list.
LIVE_TASKS = 10

#: The largest magnitude of a reading shown: beyond it (an integer of 400
#: digits is valid JSON) a float conversion, in the metrics or a chart, fails.
MAX_NUMBER = 1e300


def _number(value: Any) -> Any:
    if type(value) in (int, float) and -MAX_NUMBER <= value <= MAX_NUMBER:
        return value
    return None


def _text(value: Any) -> str | None:
    return clip(value) if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None


def _throttled(throttling: Throttling | None) -> bool | None:
    """Whether the firmware is holding the node back right now, for any reason."""
    if throttling is None:
        return None
    return any(getattr(throttling, flag) is True
               for flag in ("under_voltage", *slavelist.CAPPING_FLAGS))


def _load_average(loads: list[float] | None) -> list[float] | None:
    if loads is not None and len(loads) == 3:
        shown = [_number(x) for x in loads]
        if None not in shown:
            return shown
    return None


#: What the API shows of a node's machine facts: its name for each, the
#: fact's name on the wire (L{picluster.wire.messages.ComputerDetails}), and
#: how it is read (a peer chose it: texts are clipped, numbers kept in range).
FACTS_SHOWN: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("model", "model", _text), ("os", "os", _text), ("cpu_cores", "cpu_cores", _number),
    ("ram_total", "ram", _number),
)

#: Likewise for the readings (L{picluster.wire.messages.Vitals}).
#: C{throttled} is true when any of the firmware's current flags is.
VITALS_SHOWN: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("uptime", "uptime", _number), ("cpu_percent", "cpu_percentage", _number),
    ("temperature", "cpu_temperature", _number), ("ram_free", "ram_free", _number),
    ("disk_free", "disk_free", _number), ("disk_total", "disk_total", _number),
    ("load_average", "load_average", _load_average), ("under_voltage", "under_voltage", _flag),
    ("throttled", "throttling", _throttled),
)


def _shown(table: tuple[tuple[str, str, Callable[[Any], Any]], ...], sent: Any) -> dict[str, Any]:
    return {name: read(getattr(sent, field, None)) for name, field, read in table}


def slave_summary(node: Node, master: MasterState) -> dict[str, Any]:
    """One node as the API lists it, connected or left (a L{Departure})."""
    departure = node if slavelist.has_left(node) else None
    left = departure is not None
    worker = None if left else master.scheduler.workers.get(node)
    return {
        "uuid": node.uuid,
        "state": "left" if left else "connected",
        "hostname": clip(node.hostname),
        "address": node.address,
        **_shown(FACTS_SHOWN, node.computer_details),
        "connected_at": node.connected_at,
        "last_seen": node.last_seen,
        "left_at": departure.left_at if departure is not None else None,
        "left_reason": departure.left_reason if departure is not None else None,
        "rtt_ms": node.rtt_ms,
        **_shown(VITALS_SHOWN, node.vitals),
        "vitals_at": node.vitals_received_at,
        "slots": worker.slots if worker is not None else None,
        "running_tasks": len(worker.running) if worker is not None else 0,
        # Handed to it beyond its slots (prefetch), to start as they free.
        "ready_tasks": len(worker.ready) if worker is not None else 0,
        # Two machines hold this node's identity (a cloned SD card).
        "cloned": slavelist.is_cloned(node),
    }


def slave_detail(node: Node, master: MasterState) -> dict[str, Any]:
    """One node with everything the master holds of it, history included."""
    shown = slave_summary(node, master)
    shown.update(
        history=node.history.as_dict(),
        vitals=node.vitals,
        computer_details=node.computer_details,
    )
    return shown


def nodes(master: MasterState) -> Iterator[Node]:
    """Every connected slave, then every one that left and is still remembered."""
    for slave in master.registry:
        if slave.role == "slave":
            yield slave
    yield from master.registry.departures(wall_time(master.reactor))


def find_node(master: MasterState, uuid: str) -> Node | None:
    slave = master.registry.get(uuid)
    if slave is not None and slave.role == "slave":
        return slave
    return master.registry.departure(uuid, wall_time(master.reactor))


def master_summary(master: MasterState, facts: bool = True) -> dict[str, Any]:
    """The master itself, its counts, and what crossed its wire."""
    now = wall_time(master.reactor)
    factory = master.factory
    connected = sum(1 for slave in master.registry if slave.role == "slave")
    clients = sum(1 for connection in factory.connections if connection.role == "client")
    shown: dict[str, Any] = {
        "now": now,
        "version": __version__,
        "hostname": _text(factory.computer_details.hostname),
        "started_at": master.started_at,
        "uptime": None if master.started_at is None else now - master.started_at,
        "port": master.port,
        "slave_port": master.slave_port,
        "keepalive": factory.keepalive,
        "dead_after": factory.dead_after,
        "slaves": {"connected": connected, "left": len(master.registry.departures(now))},
        "clients": clients,
        "tasks": master.scheduler.view.state_counts(),
        "wire": factory.stats.totals(c.protocol for c in factory.connections),
    }
    if facts:
        shown["computer_details"] = factory.computer_details
    return shown


def task_brief(record: dict[str, Any]) -> dict[str, Any]:
    """A task without its arguments and result, which may be large."""
    error = record.get("error")
    if isinstance(error, dict):
        error = f"{error.get('type') or 'Error'}: {error.get('message') or ''}".rstrip(": ")
    return {
        "id": record["id"],
        "name": record["name"],
        "state": record["state"],
        "attempts": record["attempts"],
        "slave_hostname": record.get("slave_hostname"),
        "submitted_at": record.get("submitted_at"),
        "started_at": record.get("started_at"),
        "finished_at": record.get("finished_at"),
        "error": error if isinstance(error, str) else None,
        "waiting": record.get("waiting"),
    }


def cluster_event(master: MasterState, latest: list[dict[str, Any]]) -> dict[str, Any]:
    """
    One tick of the dashboard's live events: the master, the summary and the
    latest tasks, the same size for any number of slaves.  The page asks
    C{/api/slaves} for the rows it shows.
    """
    shown = master_summary(master, facts=False)
    return {
        "now": shown["now"],
        "master": shown,
        "summary": master.slave_list.summary(),
        "tasks": {"counts": shown["tasks"], "tasks": [task_brief(r) for r in latest]},
    }


class SlaveList:
    """
    The slaves of a master as pages and a summary, and the C{info status}
    answer made of them.

    @ivar master: What the lists are read from (the master service).
    """

    def __init__(self, master: MasterState):
        self.master = master

    def silent_after(self) -> float:
        """Seconds without a word after which a connected slave is silent."""
        return slavelist.silent_after(self.master.factory.keepalive)

    def page(self, query: slavelist.SlaveQuery, max_bytes: int | None = None,
             history: bool = False) -> dict[str, Any]:
        """A page of slaves as C{/api/slaves} lists them (with C{history}, their vitals' rings)."""
        now = wall_time(self.master.reactor)

        def row(node: Node) -> dict[str, Any]:
            shown = self.summary_row(node)
            if history:
                shown["history"] = node.history.as_dict()
            return shown

        return slavelist.page(slavelist.matching(nodes(self.master), query, now, self.silent_after()),
                              query, row, max_bytes)

    def status(self, query: slavelist.SlaveQuery, max_bytes: int | None = None) -> dict[str, Any]:
        """
        The C{info status} answer: the master, its task counts, the summary
        and a page of slaves (C{max_bytes} is the room for all of it).
        """
        master = master_summary(self.master)
        summary = self.summary()
        room = None
        if max_bytes is not None:
            room = max_bytes - len(msgspec.json.encode([master, summary]))
        listed = self.page(query, max_bytes=room)
        return {"master": master, "tasks": master["tasks"], "summary": summary, **listed}

    def summary_row(self, node: Node) -> dict[str, Any]:
        """A node as C{/api/slaves} lists it, with its troubles."""
        shown = slave_summary(node, self.master)
        shown["troubles"] = slavelist.troubles(node, wall_time(self.master.reactor), self.silent_after(),
                                     shown["cloned"])
        return shown

    def summary(self) -> dict[str, Any]:
        """
        The cluster in numbers and a few names, the same size at 5 nodes or
        20,000: how many are connected, left, and in each trouble; the
        hottest; and the first L{slavelist.MAX_TROUBLE_SHOWN} in trouble, worst first.
        """
        master = self.master
        now = wall_time(master.reactor)
        silent_after = self.silent_after()
        counts = {"connected": 0, "left": 0, "in_trouble": 0}
        by_trouble = dict.fromkeys(slavelist.TROUBLES, 0)
        slots = running = ready = 0
        hottest: list[tuple[float, str, Node]] = []
        in_trouble: list[tuple[tuple[int, int, str, str], Node]] = []
        for node in nodes(master):
            left = slavelist.has_left(node)
            counts["left" if left else "connected"] += 1
            found = slavelist.troubles(node, now, silent_after, slavelist.is_cloned(node))
            for trouble in found:
                by_trouble[trouble] += 1
            if found:
                counts["in_trouble"] += 1
                worst = min(slavelist.TROUBLES.index(trouble) for trouble in found)
                rank = (worst, -len(found), node.hostname or slavelist.NO_HOSTNAME, node.uuid)
                in_trouble.append((rank, node))
            temperature = slavelist.temperature(node)
            if temperature is not None and not left:
                hottest.append((-temperature, node.uuid, node))
            worker = None if left else master.scheduler.workers.get(node)
            if worker is not None:
                slots += worker.slots
                running += len(worker.running)
                ready += len(worker.ready)
        return {
            "now": now,
            "slaves": counts,
            "troubles": by_trouble,
            "slots": slots,
            "running_tasks": running,
            "ready_tasks": ready,
            "silent_after": silent_after,
            "hottest": [
                {"uuid": node.uuid, "hostname": clip(node.hostname), "temperature": -negative}
                for negative, _, node in heapq.nsmallest(
                    slavelist.HOTTEST_SHOWN, hottest, key=lambda entry: entry[:2])
            ],
            "in_trouble": [self.summary_row(node) for _, node in heapq.nsmallest(
                slavelist.MAX_TROUBLE_SHOWN, in_trouble, key=lambda entry: entry[0])],
        }
