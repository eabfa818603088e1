"""
Counts of what crossed a factory's connections, for the metrics and the API.

Per-frame counting happens on each protocol (one integer attribute added to,
the cheapest thing Python does); the factory's L{WireStats} holds the
totals of connections already closed, so a total is the closed connections'
sum plus a walk over the live ones, paid only when someone looks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class WireStats:
    """
    Totals over every connection a factory made since it started.

    @ivar connections: Connections made.
    @ivar disconnections: Connections lost.
    @ivar reconnections: Peers that came back under a uuid they had before.
    """

    def __init__(self) -> None:
        self.connections = 0
        self.disconnections = 0
        self.reconnections = 0
        self._closed = {"frames_in": 0, "frames_out": 0, "bad_messages": 0}

    def opened(self) -> None:
        self.connections += 1

    def closed(self, protocol: Any) -> None:
        """Fold a lost connection's own counts into the totals."""
        self.disconnections += 1
        closed = self._closed
        closed["frames_in"] += protocol.frames_in
        closed["frames_out"] += protocol.frames_out
        closed["bad_messages"] += protocol.bad_messages

    def totals(self, live: Iterable[Any]) -> dict[str, int]:
        """Every count, with the frames of the C{live} protocols added."""
        totals = dict(self._closed)
        for protocol in live:
            totals["frames_in"] += protocol.frames_in
            totals["frames_out"] += protocol.frames_out
            totals["bad_messages"] += protocol.bad_messages
        totals.update(
            connections=self.connections,
            disconnections=self.disconnections,
            reconnections=self.reconnections,
        )
        return totals
