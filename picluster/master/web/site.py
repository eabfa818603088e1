"""
The master's web server: the dashboard, its JSON API, live events and
C{/metrics}, as one twisted.web L{Site} built on the master service.

    /                   the dashboard page (static/index.html)
    /static/<file>      its script, style sheet and icon
    /api/slaves[/uuid]  slaves, connected and lately left, a page at a time
    /api/summary        the cluster's counts and its nodes in trouble
    /api/master         the master and its counts
    /api/tasks[/id]     task counts and the latest tasks
    /api/events         Server-Sent Events for the dashboard
    /metrics            Prometheus exposition
    /login              where a browser signs in, beyond loopback (see gate.py)

Nothing here writes: every resource answers GET (and HEAD) only.  The
shapes of the JSON are L{picluster.master.views}'; this module only routes,
validates query arguments and encodes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from prometheus_client import exposition
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, pages, resource, server, static

from picluster import wire
from picluster.master import views
from picluster.master.metrics import collector_registry
from picluster.master.slavelist import MAX_HISTORY_LIMIT, BadSlaveQuery, SlaveQuery
from picluster.master.store import STATES
from picluster.master.web.events import ClusterEvents
from picluster.master.web.gate import WebGate
from picluster.timebase import wall_time
from picluster.wire.errors import ServiceError
from picluster.wire.messages import DEFAULT_SLAVES_LIMIT, MAX_SLAVES_LIMIT

if TYPE_CHECKING:
    from picluster.master.views import MasterState

log = Logger()

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

#: Tasks listed by /api/tasks unless ?limit= says otherwise, and at most.
DEFAULT_TASKS = 20
MAX_TASKS = 200

#: The page loads only what the master serves itself: no CDN, no inline code.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    b" connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


#: A number in a URL: ASCII digits only (str.isdigit takes "²" too), and no
#: more than SQLite's integers hold.
_DIGITS = re.compile(r"[0-9]{1,18}")


class BadQuery(Exception):
    """A query argument the API cannot take: answered 400 with this text."""


class NotFound(Exception):
    """Nothing at this address: answered 404 with this text."""


def _json(request: server.Request, code: int, body: Any) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(
        body, separators=(",", ":"), allow_nan=False, default=wire.to_builtins
    ).encode() + b"\n"


def _argument(request: server.Request, name: str) -> str | None:
    # Twisted types C{args} by its class default, C{None}: a received request's is a dict.
    args = cast("dict[bytes, list[bytes]]", request.args)
    values = args.get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise BadQuery(f"{name} is not valid UTF-8") from None


def _limit(request: server.Request, default: int, most: int) -> int:
    """The C{limit} argument: a whole number from 1 to C{most}, or C{default}."""
    text = _argument(request, "limit")
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= most:
        raise BadQuery(f"limit must be a whole number from 1 to {most}")
    return int(text)


class JSONResource(resource.Resource):
    """
    A leaf answering GET with the JSON that L{answer} returns, or a Deferred
    of it.  L{BadQuery} and L{NotFound} become 400 and 404, a task queue
    that cannot answer 503; anything else is our bug, logged, and a 500.
    """

    isLeaf = True

    def __init__(self, answer: Callable[[server.Request], Any]):
        super().__init__()
        self.answer = answer

    def render_GET(self, request: server.Request) -> Any:
        answered = defer.maybeDeferred(self.answer, request)
        # Encoding may fail too (a number JSON cannot hold): that failure
        # must be answered like any other, or the request would hang.
        answered.addCallback(lambda result: _json(request, 200, result))
        answered.addErrback(lambda failure: self._failed(request, failure))
        body: list[bytes] = []
        answered.addCallback(body.append)
        if body:
            # The usual case: answered at once, no need for NOT_DONE_YET.
            return body[0]
        finished = request.notifyFinish()
        # A browser gone before the answer is not an error of ours.
        finished.addErrback(lambda _: None)
        answered.addCallback(lambda _: self._finish(body[0], request, finished))
        answered.addErrback(lambda failure: log.failure("Error answering", failure))
        return server.NOT_DONE_YET

    @staticmethod
    def _finish(body: bytes, request: server.Request, finished: defer.Deferred[None]) -> None:
        if finished.called:
            return  # The browser went away while we looked.
        request.write(body)
        request.finish()

    def _failed(self, request: server.Request, failure: Failure) -> bytes:
        if failure.check(BadQuery):
            return _json(request, 400, {"error": str(failure.value)})
        if failure.check(NotFound):
            return _json(request, 404, {"error": str(failure.value)})
        if failure.check(ServiceError):
            return _json(request, 503, {"error": failure.getErrorMessage()})
        log.failure("Error answering {path}", failure, path=request.path.decode("latin-1"))
        return _json(request, 500, {"error": "internal error"})


class _Collection(resource.Resource):
    """A JSON collection whose children are found by one path segment."""

    def __init__(self, listing: Callable[[server.Request], Any], item: Callable[[str], Any]):
        super().__init__()
        self.listing = JSONResource(listing)
        self.item = item

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"":
            return self.listing
        if request.postpath:
            return _NotFoundJSON()
        segment = path.decode("utf-8", "replace")
        return JSONResource(lambda _: self.item(segment))

    def render_GET(self, request: server.Request) -> Any:
        return self.listing.render_GET(request)


class _NotFoundJSON(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return _json(request, 404, {"error": f"not found: {request.path.decode('latin-1')}"})


def _not_found_page() -> resource.IResource:
    return pages.notFound("Not found", "Nothing here: the dashboard is at /.")


class _StaticFiles(static.File):
    """The page's assets, without directory listings or index pages."""

    indexNames: list[str] = []
    # File's type for it is that of its default, the deprecated NoResource;
    # it only returns and renders it, as any resource.
    childNotFound = _not_found_page()  # type: ignore[assignment]

    def directoryListing(self) -> resource.IResource:
        return _not_found_page()


class _Page(static.File):
    """The dashboard page, with headers that keep it to what we serve."""

    def render_GET(self, request: server.Request) -> Any:
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return super().render_GET(request)


class MetricsPage(resource.Resource):
    """
    C{/metrics}, rendered in the reactor thread: prometheus_client's own
    twisted resource runs collectors in a thread pool, which would read the
    registry while the reactor changes it.
    """

    isLeaf = True

    def __init__(self, master: MasterState):
        super().__init__()
        self.registry = collector_registry(master)

    def render_GET(self, request: server.Request) -> bytes:
        accept = (request.getHeader(b"accept") or b"").decode("latin-1")
        encoder, content_type = exposition.choose_encoder(accept)
        request.setHeader(b"content-type", content_type.encode())
        return encoder(self.registry)


class Root(resource.Resource):
    """Routes the top level; anything unknown is a 404 (JSON under /api)."""

    def __init__(self, children: dict[bytes, resource.Resource]):
        super().__init__()
        for name, child in children.items():
            self.putChild(name, child)

    def getChild(self, path: bytes, request: server.Request) -> resource.IResource:
        return _not_found_page()


class Api(resource.Resource):
    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        return _NotFoundJSON()

    def render(self, request: server.Request) -> bytes:
        return _NotFoundJSON().render(request)


class DashboardSite(server.Site):
    """
    The whole web side of one master.

    @ivar events: The live event stream, closed when the master stops.
    """

    def __init__(self, master: MasterState, *, public: bool = False):
        self.master = master
        #: Who may see it: see L{picluster.master.web.gate}.
        self.gate = WebGate(master.trust, public=public)
        self.events = ClusterEvents(master)
        api = Api()
        api.putChild(b"slaves", _Collection(self._slaves, self._slave))
        api.putChild(b"tasks", _Collection(self._tasks, self._task))
        api.putChild(b"master", JSONResource(lambda _: views.master_summary(master)))
        api.putChild(b"summary", JSONResource(lambda _: master.slave_list.summary()))
        api.putChild(b"events", self.events)
        root = Root({
            b"": _Page(os.path.join(STATIC_DIR, "index.html")),
            b"static": _StaticFiles(STATIC_DIR),
            b"api": api,
            b"metrics": MetricsPage(master),
        })
        super().__init__(root)

    def getResourceFor(self, request: server.Request) -> resource.IResource:
        request.setHeader(b"x-content-type-options", b"nosniff")
        refusal = self.gate.refuse(request)
        if refusal is not None:
            return refusal
        return super().getResourceFor(request)

    def startFactory(self) -> None:
        """The site listens: the live events' loop runs until it stops."""
        super().startFactory()
        self.events.start()

    def stopFactory(self) -> None:
        self.events.stop()
        super().stopFactory()

    def log(self, request: http.Request) -> None:
        """
        No access log: a dashboard and a Prometheus scraping every few
        seconds would write a line each time, on a Pi's SD card.
        """

    # -- answers -------------------------------------------------------------

    def _slaves(self, request: server.Request) -> dict[str, Any]:
        history = _argument(request, "history") in ("1", "true", "yes")
        limit = _limit(request, DEFAULT_SLAVES_LIMIT, MAX_SLAVES_LIMIT)
        if history and limit > MAX_HISTORY_LIMIT:
            # Each slave's history is some 20 KiB once its rings are full.
            raise BadQuery(f"limit must be at most {MAX_HISTORY_LIMIT} with history")
        try:
            query = SlaveQuery(limit, _argument(request, "after"), _argument(request, "order") or "hostname",
                               _argument(request, "state"), _argument(request, "search"))
        except BadSlaveQuery as refusal:
            raise BadQuery(str(refusal)) from None
        page = self.master.slave_list.page(query, history=history)
        return {"now": wall_time(self.master.reactor), **page}

    def _slave(self, uuid: str) -> dict[str, Any]:
        node = views.find_node(self.master, uuid.lower())
        if node is None:
            raise NotFound(f"no slave with uuid {uuid}")
        return views.slave_detail(node, self.master)

    def _tasks(self, request: server.Request) -> defer.Deferred[dict[str, Any]]:
        limit = _limit(request, DEFAULT_TASKS, MAX_TASKS)
        state = _argument(request, "state")
        if state is not None and state not in STATES:
            raise BadQuery(f"state must be one of {', '.join(STATES)}")
        scheduler = self.master.scheduler
        found = scheduler.when_ready().addCallback(lambda _: scheduler.view.latest(limit, state))
        return found.addCallback(lambda records: {
            "now": wall_time(self.master.reactor),
            "counts": scheduler.view.state_counts(),
            "tasks": [views.task_brief(record) for record in records],
        })

    def _task(self, segment: str) -> defer.Deferred[dict[str, Any]]:
        if not _DIGITS.fullmatch(segment):
            raise NotFound(f"no task with id {segment}")
        task_id = int(segment)
        scheduler = self.master.scheduler
        found = scheduler.when_ready().addCallback(lambda _: scheduler.view.task(task_id))

        def shown(record: dict[str, Any] | None) -> dict[str, Any]:
            if record is None:
                raise NotFound(f"no task with id {task_id}")
            return record

        return found.addCallback(shown)
