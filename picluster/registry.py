"""
The master's registry of connected slaves.

One registry per master, owned by its service: the single place that says
which slave holds which uuid.  Connection state itself (addresses, vitals,
round trips) stays on each connection's handler; the registry only indexes
the live ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from picluster.master import SlaveConnection


class SlaveRegistry:
    """
    Live slave connections by uuid, in the order they joined.
    """

    def __init__(self) -> None:
        self._by_uuid: dict[str, SlaveConnection] = {}

    def add(self, slave: SlaveConnection) -> None:
        """Register a new connection under the uuid it was born with."""
        self._by_uuid[slave.uuid] = slave

    def claim(self, slave: SlaveConnection, uuid: str) -> SlaveConnection | None:
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

    def remove(self, slave: SlaveConnection) -> bool:
        """
        Forget a connection that has gone.

        @return: Whether it was registered; a connection displaced by a newer
            one with the same uuid no longer is, and must not evict it.
        """
        if self._by_uuid.get(slave.uuid) is slave:
            del self._by_uuid[slave.uuid]
            return True
        return False

    def get(self, uuid: str) -> SlaveConnection | None:
        return self._by_uuid.get(uuid)

    def __iter__(self) -> Iterator[SlaveConnection]:
        return iter(list(self._by_uuid.values()))

    def __len__(self) -> int:
        return len(self._by_uuid)

    def __contains__(self, uuid: object) -> bool:
        return uuid in self._by_uuid
