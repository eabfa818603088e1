"""
The dashboard's live channel: Server-Sent Events of the cluster's summary.

Every few seconds, while anyone is watching, one L{views.cluster_event} is
built and encoded once, and written to every browser that keeps up.  A
browser that does not read (a phone gone to sleep, a stalled network)
pauses its own stream through twisted.web's producer pause: it is skipped,
not buffered for, and after L{STALL_LIMIT} skipped events it is cut off, so
that no browser can make the master hold memory for it or wait on it.
Each event is a full picture, so a skipped one costs the browser nothing
but freshness.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, ITCPTransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web import resource, server
from zope.interface import implementer

from picluster import wire
from picluster.master import views

if TYPE_CHECKING:
    from picluster.master.views import MasterState

log = Logger()

#: Seconds between two events.
INTERVAL = 2.0

#: Events a paused browser may miss before it is cut off.
STALL_LIMIT = 15

#: The browser's wait before it reconnects, in milliseconds.
RETRY_MS = 3000

#: Streams open at once, at most: each costs a connection and a write per
#: tick, and a page left open in many tabs (or a hostile client) must not
#: make the master pay without bound.
MAX_SUBSCRIBERS = 64


@implementer(IPushProducer)
class _Subscriber:
    """One browser's event stream, paused while its connection is full."""

    def __init__(self, request: server.Request):
        self.request = request
        self.paused = False
        self.skipped = 0

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True


class ClusterEvents(resource.Resource):
    """
    C{/api/events}: the stream, and the loop that feeds every subscriber.

    The loop runs for as long as the site listens (L{start}, L{stop}) and
    does nothing while nobody watches: starting and stopping it with the
    subscribers would race with a tick still waiting for the task queue.
    """

    isLeaf = True

    def __init__(self, master: MasterState, interval: float = INTERVAL):
        super().__init__()
        self.master = master
        self.subscribers: set[_Subscriber] = set()
        self._loop = LoopingCall(self._tick)
        self._loop.clock = master.reactor
        self.interval = interval

    def start(self) -> None:
        if not self._loop.running:
            self._loop.start(self.interval, now=False).addErrback(
                lambda failure: log.failure("The dashboard's event loop failed", failure)
            )

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def render_GET(self, request: server.Request) -> Any:
        if len(self.subscribers) >= MAX_SUBSCRIBERS:
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            request.setHeader(b"retry-after", b"30")
            return b'{"error":"too many live dashboards open; try again later"}\n'
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        # Tell a reverse proxy in front of us not to buffer the stream.
        request.setHeader(b"x-accel-buffering", b"no")
        subscriber = _Subscriber(request)
        request.registerProducer(subscriber, True)
        self.subscribers.add(subscriber)
        request.notifyFinish().addBoth(self._gone, subscriber)
        request.write(f"retry: {RETRY_MS}\n\n".encode())
        # The newcomer's first picture comes now, not at the next tick.
        self._send_now([subscriber])
        return server.NOT_DONE_YET

    def _gone(self, _: Any, subscriber: _Subscriber) -> None:
        self.subscribers.discard(subscriber)

    def _tick(self) -> defer.Deferred[None] | None:
        if not self.subscribers:
            return None
        return self._send_now(list(self.subscribers))

    def _send_now(self, subscribers: list[_Subscriber]) -> defer.Deferred[None]:
        latest = defer.maybeDeferred(self.master.scheduler.view.latest, views.LIVE_TASKS)
        # A task queue that cannot answer must not stop the slaves' picture.
        latest.addErrback(lambda _: [])
        return (
            latest.addCallback(self._event)
            .addCallback(self._write, subscribers)
            .addErrback(lambda failure: log.failure("Building a dashboard event failed", failure))
        )

    def _event(self, tasks: list[dict[str, Any]]) -> bytes:
        event = views.cluster_event(self.master, tasks)
        data = json.dumps(event, separators=(",", ":"), allow_nan=False, default=wire.to_builtins)
        return b"event: cluster\ndata: " + data.encode() + b"\n\n"

    def _write(self, frame: bytes, subscribers: list[_Subscriber]) -> None:
        for subscriber in subscribers:
            if subscriber not in self.subscribers:
                continue
            if subscriber.paused:
                subscriber.skipped += 1
                if subscriber.skipped >= STALL_LIMIT:
                    self._cut_off(subscriber)
                continue
            subscriber.skipped = 0
            subscriber.request.write(frame)

    def _cut_off(self, subscriber: _Subscriber) -> None:
        log.info("Dropping a dashboard that stopped reading ({peer})",
                 peer=subscriber.request.getClientAddress())
        self.subscribers.discard(subscriber)
        # Typed as any transport; an HTTP request's is a TCP (or TLS) connection's.
        cast(ITCPTransport, subscriber.request.transport).abortConnection()

    def close(self) -> None:
        """End every stream and the loop: the master is stopping."""
        for subscriber in list(self.subscribers):
            self.subscribers.discard(subscriber)
            subscriber.request.unregisterProducer()
            subscriber.request.finish()
        self.stop()
