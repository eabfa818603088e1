"""
The master's registry of slaves: those connected, and those that left.

One registry per master, owned by its service: the single place that says
which slave holds which uuid.  Connection state itself (addresses, vitals,
round trips) stays on each connection's handler; the registry only indexes
the live ones, and keeps a L{Departure} of each slave that left, for a
while, so that a node that died stays on the dashboard, greyed, rather than
vanishing without a trace.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from picluster import wire
from picluster.master.history import VitalsHistory
from picluster.text import clip
from picluster.wire.messages import ComputerDetails, Vitals

#: How long a slave that left stays listed, by default (seconds).
DEFAULT_FORGET_AFTER = 3600.0

#: Departures kept at most: a flapping or hostile peer that joins and leaves
#: under fresh uuids must not grow the master without bound.
MAX_DEPARTURES = 256

#: The largest facts or vitals (as JSON) kept of a slave that left: a Pi's
#: are well under a kilobyte, and a peer that sent a megabyte of them must
#: not leave it in memory for an hour, 256 times over.
MAX_KEPT_BYTES = 8192


def _kept(details: Any) -> Any:
    if details is None:
        return None
    return details if len(wire.encode(details)) <= MAX_KEPT_BYTES else None


class LiveSlave(Protocol):
    """
    What the registry, and the views of what it holds, read of a live
    slave: the master's handler of its connection,
    L{picluster.master.connection.PeerConnection}.

    Named here rather than imported: the connections use the registry, and
    the registry must not import them back.  The registry changes only the
    C{uuid} (L{SlaveRegistry.claim}); the properties are what the
    connection works out when asked.
    """

    uuid: str
    computer_details: ComputerDetails | None
    vitals: Vitals | None
    vitals_received_at: float | None
    connected_at: float
    history: VitalsHistory

    @property
    def address(self) -> str: ...

    @property
    def hostname(self) -> str | None: ...

    @property
    def last_seen(self) -> float: ...

    @property
    def rtt_ms(self) -> float | None: ...

    @property
    def role(self) -> str | None:
        """C{"slave"} once its hello says so; C{None} before (a plain master lists it from the start)."""


@dataclass
class Departure:
    """
    What the master last knew of a slave that left: the same attributes the
    views read from a live L{LiveSlave}, frozen at the moment it went.
    """

    uuid: str
    address: str
    hostname: str | None
    computer_details: ComputerDetails | None
    vitals: Vitals | None
    vitals_received_at: float | None
    connected_at: float
    last_seen: float
    rtt_ms: float | None
    history: VitalsHistory
    left_at: float
    left_reason: str

    @classmethod
    def of(cls, slave: LiveSlave, left_at: float, reason: str) -> Departure:
        return cls(
            uuid=slave.uuid, address=slave.address, hostname=clip(slave.hostname),
            computer_details=_kept(slave.computer_details), vitals=_kept(slave.vitals),
            vitals_received_at=slave.vitals_received_at, connected_at=slave.connected_at,
            last_seen=slave.last_seen, rtt_ms=slave.rtt_ms, history=slave.history,
            left_at=left_at, left_reason=reason,
        )


class SlaveRegistry:
    """
    Live slave connections by uuid, in the order they joined.
    """

    def __init__(self, forget_after: float = DEFAULT_FORGET_AFTER,
                 max_departures: int = MAX_DEPARTURES) -> None:
        self._by_uuid: dict[str, LiveSlave] = {}
        self.forget_after = forget_after
        self.max_departures = max_departures
        self._departed: OrderedDict[str, Departure] = OrderedDict()

    def add(self, slave: LiveSlave) -> None:
        """Register a new connection under the uuid it was born with."""
        self._by_uuid[slave.uuid] = slave

    def claim(self, slave: LiveSlave, uuid: str) -> LiveSlave | None:
        """
        Move C{slave} to C{uuid}, as a reconnecting slave asks in its hello.

        @return: The other connection that held C{uuid} until now, if any.
            It is no longer registered; the caller closes it, since a stale
            half-open connection must not lock the node out.
        """
        if slave.uuid == uuid:
            return None
        displaced = self._by_uuid.pop(uuid, None)
        if self._by_uuid.get(slave.uuid) is slave:
            del self._by_uuid[slave.uuid]
        slave.uuid = uuid
        self._by_uuid[uuid] = slave
        return displaced

    def remove(self, slave: LiveSlave) -> bool:
        """
        Forget a connection that has gone.

        @return: Whether it was registered; a connection displaced by a newer
            one with the same uuid no longer is, and must not evict it.
        """
        if self._by_uuid.get(slave.uuid) is slave:
            del self._by_uuid[slave.uuid]
            return True
        return False

    def get(self, uuid: str) -> LiveSlave | None:
        return self._by_uuid.get(uuid)

    def __iter__(self) -> Iterator[LiveSlave]:
        return iter(list(self._by_uuid.values()))

    def __len__(self) -> int:
        return len(self._by_uuid)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._by_uuid

    # -- slaves that left --------------------------------------------------

    def departed(self, departure: Departure) -> None:
        """Remember a slave that left, dropping the oldest past the bound."""
        self._departed.pop(departure.uuid, None)
        self._departed[departure.uuid] = departure
        while len(self._departed) > self.max_departures:
            self._departed.popitem(last=False)

    def returned(self, uuid: str) -> Departure | None:
        """A slave is back under C{uuid}: forget its departure, and hand it over."""
        return self._departed.pop(uuid, None)

    def departures(self, now: float) -> list[Departure]:
        """The slaves that left within C{forget_after}, most recent first."""
        horizon = now - self.forget_after
        while self._departed:
            oldest = next(iter(self._departed.values()))
            if oldest.left_at >= horizon:
                break
            self._departed.popitem(last=False)
        return list(reversed(self._departed.values()))

    def departure(self, uuid: str, now: float) -> Departure | None:
        departure = self._departed.get(uuid)
        if departure is None or departure.left_at < now - self.forget_after:
            return None
        return departure
