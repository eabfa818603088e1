"""
The one protocol both ends of a picluster connection speak.

L{PiClusterProtocol} keeps the three layers of a connection apart, as AMP
does: framing (Twisted's L{Int32StringReceiver} and L{picluster.wire.envelope}),
request bookkeeping (ids to waiting Deferreds, with timeouts and
cancellation), and dispatch (a message type to a C{msg_<type>} method on the
connection's L{PeerHandler}, its payload decoded into the shape
L{picluster.wire.messages} declares for it).  What a master or a slave does
with a message lives in its handler, never here.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import msgspec
from twisted.internet import defer, interfaces, protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from picluster import immediate
from picluster.logbudget import FailureLog
from picluster.text import clip
from picluster.wire import envelope as wire
from picluster.wire import messages
from picluster.wire.deadlines import Deadlines
from picluster.wire.errors import (
    BadReply,
    DisconnectionException,
    FrameTooLarge,
    RemoteError,
    ServiceError,
    describe_reason,
)
from picluster.wire.framing import FrameReceiver
from picluster.wire.handler import PeerHandler, Reply, format_address
from picluster.wire.requests import Pending, PendingRequests
from picluster.wire.stats import WireStats

#: Seconds a request waits for its reply unless told otherwise.
DEFAULT_REQUEST_TIMEOUT = 30.0

#: Seconds a frame may take to arrive, from its first byte to its last.
DEFAULT_FRAME_DEADLINE = 30.0

#: Requests from one peer being answered at once (their replies deferred):
#: above this, we stop reading the peer until some are answered.
DEFAULT_MAX_IN_FLIGHT = 8

#: Requests from one peer that wait only for what they carry to be stored
#: (L{PeerHandler.stored_answers}: a slave's task results, answered once on
#: disk), waiting at once: above this, we stop reading the peer until some
#: are stored.  A bound of their own: they load no reply, and a slave busy
#: with small tasks has a commit or two of results waiting all the time,
#: which the cap of requests in flight held to eight, and the master's
#: throughput with it.
DEFAULT_MAX_STORING = 32

#: The largest frame a stranger may send before its handshake is done: a
#: hello is a few hundred bytes.
STRANGER_MAX_FRAME = 4096

#: The 4-byte big-endian length before each frame, as Int32StringReceiver writes it.
_LENGTH_PREFIX = struct.Struct("!I").pack

_MAX_PAYLOAD = messages.MAX_PAYLOAD
_decode_message = wire.message_decoder.decode
_encode = wire.encode

#: Bytes of frames held for one write before they are handed over anyway:
#: the transport's own buffer size, past which it pauses a slow reader.
OUTBOX_BYTES = 64 * 1024
_TYPED_REPLIES = wire.TYPED_REPLIES

#: Reply types that make a request's Deferred errback.
_REFUSALS = frozenset({"bad_message", "error"})

#: Why we may stop reading a peer for our own sake, not for anything it did
#: (see L{PiClusterProtocol._check_peer_alive}): its own answers waiting for
#: our disk or our handlers, or (L{DISK_BACKLOG}, which a side's handlers
#: hold and release) what every peer sent waiting for our disk.
_STORING, _IN_FLIGHT = "answers waiting to be stored", "requests in flight"
DISK_BACKLOG = "the disk's backlog"
_OUR_CAUSES = frozenset({_STORING, _IN_FLIGHT, DISK_BACKLOG})


#: Bad messages logged per connection; past this they are only counted, so a
#: peer spamming garbage cannot fill a Pi's SD card with log lines.
LOGGED_BAD_MESSAGES = 10

# Tolerance for float arithmetic when a dead-peer check lands exactly on time.
_EPSILON = 1e-6


@implementer(interfaces.IHandshakeListener, interfaces.IPushProducer)
class PiClusterProtocol(FrameReceiver):
    """
    One picluster connection, master or slave side alike.

    Per-connection state lives here and dies with the connection: the
    requests still waiting for replies, when anything last arrived, the
    latest keepalive round trip.  The factory supplies the settings and the
    L{PeerHandler} that gives the connection its role, and times every
    connection's deadlines.  A master holds thousands of idle connections,
    so the state is in slots, and what an idle one does not use is made
    when first needed.

    What a peer can make this side hold is bounded here, for every role
    (docs: security, "Bounds"): a frame's size (C{max_frame}) and the time
    it takes to arrive (C{frame_deadline}); its requests being answered at
    once (C{max_in_flight}), and those waiting for what they carry to be
    stored (C{max_storing}): above either we stop reading; the bytes queued for
    it while it does not read (C{max_queued}: above it the connection is
    dropped); and, on a factory with a C{handshake_timeout}, a stranger's
    frames (L{STRANGER_MAX_FRAME}) and time to prove itself.

    @ivar requests: The requests sent on this connection that wait for a
        reply (L{PendingRequests}).
    @ivar last_received: When any bytes last arrived, in the clock's seconds.
    @ivar rtt_ms: The latest keepalive round trip in milliseconds, or C{None}.
    @ivar lost: The L{DisconnectionException} once the connection is gone.
    @ivar bad_messages: How many messages from the peer were refused.
    @ivar frames_in: Frames received, counted for the metrics.
    @ivar frames_out: Frames sent.
    """

    log = Logger()

    factory: PiClusterFactory
    handler: PeerHandler
    clock: interfaces.IReactorTime

    __slots__ = (
        "clock", "handler", "peer_address", "last_received", "rtt_ms", "lost", "bad_messages",
        "frames_in", "frames_out", "in_flight", "storing", "admitted_host", "_close_cause", "_producing",
        "_aborted", "_unread", "_frame_since", "_probation", "_outbox", "_outbox_bytes",
        "_write_now", "_after_answers", "_requests", "_keepalive", "_lost_waiters",
    )

    def __init__(self) -> None:
        super().__init__()
        self.peer_address = "unknown"
        self.last_received = 0.0
        self.rtt_ms: float | None = None
        self.lost: DisconnectionException | None = None
        self.bad_messages = 0
        self.frames_in = 0
        self.frames_out = 0
        #: Requests of the peer whose replies are still to come.
        self.in_flight = 0
        #: Those of them that wait for what they carry to be stored.
        self.storing = 0
        #: The host its factory let it in from, where a factory counts them.
        self.admitted_host: str | None = None
        self._close_cause: str | None = None
        self._producing = False
        self._aborted = False
        #: Bytes written to the peer since it last stopped reading, if it has.
        self._unread: int | None = None
        #: When the frame now arriving began, while one is incomplete.
        self._frame_since: float | None = None
        self._probation: Any = None
        #: While a read is handled: the frames it made us send, written at
        #: its end (or sooner, past L{OUTBOX_BYTES}) in one write.
        self._outbox: list[bytes] | None = None
        self._outbox_bytes = 0
        #: While a read is handled: what waits for its messages to be
        #: answered (L{after_answers}).
        self._after_answers: list[Callable[[], Any]] | None = None
        #: Whether a batch of frames may go to the socket at once, not on
        #: the reactor's next turn (L{immediate.writes_directly}).
        self._write_now = False
        # Made when first needed, not with every connection: a master
        # holds thousands of idle slaves, which send it no replies and
        # wait for nothing, and each empty map or list costs every one.
        self._requests: PendingRequests | None = None
        self._keepalive: LoopingCall | None = None
        self._lost_waiters: list[defer.Deferred[DisconnectionException]] | None = None

    @property
    def requests(self) -> PendingRequests:
        """The requests sent on this connection that wait for a reply, made at the first."""
        requests = self._requests
        if requests is None:
            requests = self._requests = PendingRequests(self.factory.clock)
        return requests

    # -- connection life -------------------------------------------------

    def connectionMade(self) -> None:
        factory = self.factory
        self.clock = factory.clock
        self.MAX_LENGTH = factory.max_frame
        if factory.handshake_timeout is not None:
            # A stranger until the handler says otherwise (L{trusted}): small
            # frames, and a deadline that trickling bytes do not extend.
            self.MAX_LENGTH = min(STRANGER_MAX_FRAME, factory.max_frame)
            self._probation = self.clock.callLater(factory.handshake_timeout, self._probation_over)
        factory.stats.opened()
        self.peer_address = format_address(self.transport.getPeer())
        if interfaces.ITCPTransport.providedBy(self.transport):
            self.transport.setTcpKeepAlive(True)
            # Nagle's algorithm holds back a small write while an earlier one
            # is unacknowledged, and the peer delays its ACK: two frames
            # written in a row (a result's ack, then the next task) waited
            # ~40 ms each and capped a cluster near 400 tasks/s (the tasks
            # benchmark).  Our frames are whole messages: send them at once.
            self.transport.setTcpNoDelay(True)
        # Back-pressure: while the peer leaves our replies unread and the
        # transport's buffer is full, the transport pauses us and we stop
        # reading its requests, so a peer that never reads cannot make us
        # buffer without bound.  (Int32StringReceiver is already a pausable
        # push producer.)
        self.transport.registerProducer(self, True)
        self._producing = True
        self._write_now = immediate.writes_directly(self.transport)
        self.last_received = self.clock.seconds()
        factory.dead_peer_checks.set(self, factory.dead_after)
        self.handler = factory.make_handler(self)
        if not factory.tls:
            self.handler.connection_made()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (L{IHandshakeListener}): check the peer as
        the factory asks, then start the connection's work, so that nothing
        is sent, or served, to a peer before that.
        """
        if self.closing:
            return
        try:
            self.factory.check_peer(self)
        except Exception as e:
            self.log.warn("Refusing {peer}: {problem}", problem=str(e), **self.handler.log_fields())
            self.close(str(e), abort=True)
            return
        self.handler.connection_made()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        cause = self._close_cause or describe_reason(reason)
        # connectionMade may have failed before it made the handler.
        handler: PeerHandler | None = getattr(self, "handler", None)
        peer = handler.describe_peer() if handler is not None else f"peer {self.peer_address}"
        self.lost = DisconnectionException(peer, cause, reason)
        self.stop_keepalive()
        self.factory.dead_peer_checks.cancel(self)
        self.factory.frame_deadlines.cancel(self)
        if self._probation is not None and self._probation.active():
            self._probation.cancel()
        self._probation = None
        self._pieces = ()
        self.factory.stats.closed(self)
        if self._requests is not None:
            self._requests.fail_all(self._lost_failure)
        waiters, self._lost_waiters = self._lost_waiters, None
        for waiter in waiters or ():
            waiter.callback(self.lost)
        if handler is not None:
            handler.connection_lost(self._lost_failure())

    def _disconnection(self) -> DisconnectionException:
        """
        A fresh exception for each waiter, all alike: raising one instance
        over and over would pile every traceback onto it.
        """
        assert self.lost is not None
        lost = self.lost
        return DisconnectionException(lost.peer, lost.cause, lost.reason)

    def _lost_failure(self) -> Failure:
        return Failure(self._disconnection())

    def when_lost(self) -> defer.Deferred[DisconnectionException]:
        """A Deferred firing with the L{DisconnectionException} once closed."""
        if self.lost is not None:
            return defer.succeed(self.lost)
        waiter: defer.Deferred[DisconnectionException] = defer.Deferred()
        if self._lost_waiters is None:
            self._lost_waiters = []
        self._lost_waiters.append(waiter)
        return waiter

    def close(self, cause: str, abort: bool = False) -> None:
        """
        Close the connection on purpose, saying why.

        C{abort} drops it without flushing what is queued: right for a peer
        that has stopped reading (a dead or hostile one), whose buffered
        bytes would otherwise hold the connection open.
        """
        if self._close_cause is None:
            self._close_cause = cause
        if abort:
            # Until connectionLost, which comes later, the transport would
            # still buffer what we write: L{send} drops it instead.
            self._aborted = True
            self.transport.abortConnection()
        else:
            # What this read made us send goes first (a refusal that closes).
            self._flush_outbox()
            # We produce nothing more.  Still registered, we would hold the
            # connection open: TLS waits for its producer to go before it
            # sends its close_notify, and TCP for a paused one.
            if self._producing:
                self._producing = False
                self.transport.unregisterProducer()
            self.transport.loseConnection()

    def _warn(self, format: str, **fields: Any) -> None:
        """
        Say why we close the connection, unless its handler keeps it quiet
        (a master's stranger, whose departure is logged within a budget).
        """
        if not self.handler.quiet:
            self.log.warn(format, **fields, **self.handler.log_fields())

    @property
    def closing(self) -> bool:
        return self._close_cause is not None or self.lost is not None

    def trusted(self) -> None:
        """
        The peer has proven who it is: lift a stranger's limits (the small
        frames, the handshake deadline).
        """
        if self._probation is not None:
            if self._probation.active():
                self._probation.cancel()
            self._probation = None
        self.MAX_LENGTH = self.factory.max_frame

    def _probation_over(self) -> None:
        self._probation = None
        if not self.closing:
            timeout = self.factory.handshake_timeout
            self.close(f"no proven hello within {timeout:g} s", abort=True)

    # -- liveness ----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        # Any bytes at all are a sign of life: a large frame trickling in
        # over a slow link must not get its sender declared dead.  (That
        # frame has its own deadline: L{frameIncomplete}.)
        if data:
            self.last_received = self.clock.seconds()
        if self._outbox is not None:
            super().dataReceived(data)
            return
        # The replies to the frames of one read leave in one write: a write
        # costs the transport (and TLS) more than the frame it carries.
        self._outbox = []
        try:
            super().dataReceived(data)
        finally:
            if self._after_answers:
                self._run_after_answers()
            self._flush_outbox()
            self._outbox = None

    def after_answers(self, call: Callable[[], Any]) -> bool:
        """
        Call C{call} once the messages of the read being handled are
        answered, before those answers leave: what it sends leaves in their
        write, after them, rather than a reactor turn or two later.  C{False}
        (and nothing called) when no read is being handled.
        """
        if self._outbox is None:
            return False
        if self._after_answers is None:
            self._after_answers = []
        self._after_answers.append(call)
        return True

    def _run_after_answers(self) -> None:
        waiting = self._after_answers
        assert waiting is not None
        # In order, those a call adds included (iterating sees what is appended).
        for call in waiting:
            try:
                call()
            except Exception:
                self.factory.failures.failure("Error after answering {peer}", Failure(),
                                              **self.handler.log_fields())
        waiting.clear()

    def frameIncomplete(self, new: bool) -> None:
        if new or self._frame_since is None:
            self._frame_since = self.clock.seconds()
        deadlines = self.factory.frame_deadlines
        if self not in deadlines:
            deadlines.set(self, self.factory.frame_deadline)

    def framesComplete(self) -> None:
        # The timer, if any, finds nothing to time and stops itself: frames
        # that span reads come in bursts, and a timer each would cost more.
        self._frame_since = None

    def _check_frame(self) -> None:
        since = self._frame_since
        if since is None or self.closing:
            return
        deadline = self.factory.frame_deadline
        taken = self.clock.seconds() - since
        if taken < deadline - _EPSILON:
            self.factory.frame_deadlines.set(self, deadline - taken)
            return
        self._warn(
            "Closing connection to {peer}: a frame of {size} bytes still incomplete after"
            " {taken:.0f} s", size=self.buffered, taken=taken,
        )
        self.close(f"a frame took over {deadline:g} s to arrive", abort=True)

    def _check_peer_alive(self) -> None:
        dead_after = self.factory.dead_after
        silent_for = self.clock.seconds() - self.last_received
        if silent_for >= dead_after - _EPSILON:
            causes = self._pause_causes
            if causes and causes <= _OUR_CAUSES:
                # We stopped reading it, for our own sake (its answers wait
                # for our disk or our handlers): its pings wait unread in
                # our socket, and its silence is ours.  It is judged once we
                # read again.
                self.factory.dead_peer_checks.set(self, dead_after)
                return
            self._warn("Closing connection to {peer}: nothing received for {silent:.1f} s",
                       silent=silent_for)
            self.close(f"no sign of life for {silent_for:.0f} s", abort=True)
        else:
            self.factory.dead_peer_checks.set(self, dead_after - silent_for)

    def start_keepalive(self, interval: float) -> None:
        """
        Ping the peer every C{interval} seconds, so that it knows we live,
        and we that it does: unless it said something within the interval.

        Anything the peer sends is a sign of life, its ping above all (we
        answer it): a master spares the connections it has heard from
        (L{picluster.master.keepalives.Keepalives}) and we spare ours, so a
        quiet link settles on one exchange an interval, whoever starts it,
        where it had one from each side.  Each side still hears from the
        other within about an interval, far inside C{dead_after}.
        """
        self.stop_keepalive()
        self._keepalive = LoopingCall(self._send_ping)
        self._keepalive.clock = self.clock
        self._keepalive.start(interval, now=False).addErrback(
            lambda failure: self.log.failure("Keepalive stopped", failure)
        )

    def stop_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.running:
            self._keepalive.stop()
        self._keepalive = None

    def _send_ping(self) -> None:
        if self.closing:
            return
        now = self.clock.seconds()
        interval = self._keepalive.interval if self._keepalive is not None else None
        if interval is not None and now - self.last_received < interval:
            return
        self.send("ping", now)

    def record_pong(self, payload: Any) -> None:
        """Note the round trip of one of our pings, echoed back in a pong."""
        if type(payload) in (int, float):
            rtt = self.clock.seconds() - payload
            if 0 <= rtt <= self.factory.dead_after:
                self.rtt_ms = rtt * 1000.0

    # -- back-pressure (IPushProducer: the transport calls these) -----------

    def pauseProducing(self) -> None:
        """The peer is not reading what we send: stop reading it too."""
        if self._unread is None:
            self._unread = 0
        self.hold("peer not reading")

    def resumeProducing(self) -> None:
        """The peer has read what was queued."""
        self._unread = None
        self.release("peer not reading")

    def stopProducing(self) -> None:
        # The connection is going: read nothing more (the transport is
        # already closing, so it is not asked to pause).
        if self._pause_causes is None:
            self._pause_causes = set()
        self._pause_causes.add("stopped")
        self.paused = True

    # -- sending -------------------------------------------------------------

    def send(
        self, message_type: str, payload: Any = None, *, id: int | None = None,
        reply_to: int | None = None,
    ) -> None:
        """
        Send one message.

        @raise DisconnectionException: the connection is already gone.
        @raise FrameTooLarge: the message would exceed C{--max-frame}.
        """
        if self.lost is not None:
            raise self._disconnection()
        self._send(wire.Outgoing(message_type, payload, id, reply_to))

    def _send(self, envelope: wire.Outgoing) -> None:
        if self._aborted:
            return
        frame = _encode(envelope)
        size = len(frame)
        if size > self.MAX_LENGTH:
            raise FrameTooLarge(
                f"{envelope.type} message of {size} bytes exceeds the"
                f" {self.MAX_LENGTH} byte frame limit"
            )
        self.frames_out += 1
        if self._unread is not None:
            # The peer is not reading: what we send now waits in memory (a
            # later reply, a task_update, a ping), up to max_queued.
            self._unread += size
            if self._unread > self.factory.max_queued:
                self._warn("Closing connection to {peer}: it does not read, and {unread} bytes wait for it",
                           unread=self._unread)
                self.close(f"over {self.factory.max_queued} bytes queued, unread", abort=True)
                return
        # sendString, without its second length check: MAX_LENGTH is within
        # what the 4-byte prefix says (wire.LARGEST_FRAME).
        outbox = self._outbox
        if outbox is None:
            self.transport.write(_LENGTH_PREFIX(size) + frame)
            return
        outbox.append(_LENGTH_PREFIX(size))
        outbox.append(frame)
        self._outbox_bytes += size
        if self._outbox_bytes > OUTBOX_BYTES:
            # Handed over now, the transport may pause us (the peer reads
            # too slowly) before we read on: as if each frame were written.
            self._flush_outbox()

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        if outbox:
            data = b"".join(outbox)
            outbox.clear()
            self._outbox_bytes = 0
            if not self._aborted and self.lost is None:
                # A read's answers leave now: one request at a time, a reactor
                # turn each way is much of a round trip.  (What is sent
                # outside a read is left to the transport, which gathers a
                # burst of them into one write on its next turn.)
                if self._write_now:
                    immediate.write(self.transport, data)
                else:
                    self.transport.write(data)

    def request(
        self, message_type: str, payload: Any = None, timeout: float | None = None
    ) -> defer.Deferred[Reply]:
        """
        Send a message with an id and wait for its reply.

        @return: A Deferred firing with the L{Reply}; failing with
            L{RemoteError} when the peer refuses it, L{BadReply} when its reply
            does not have the declared shape, L{RequestTimeout} when no reply
            comes in time, L{DisconnectionException} when the connection goes
            first.  Cancelling it forgets the request.
        """
        if timeout is None:
            timeout = self.factory.request_timeout
        request_id = self.requests.next_id()
        try:
            self.send(message_type, payload, id=request_id)
        except Exception:
            return defer.fail()
        return self.requests.wait(request_id, message_type, timeout)

    @property
    def pending_requests(self) -> dict[int, Pending]:
        """Request id to what waits for its reply (see L{PendingRequests})."""
        return self._requests.waiting if self._requests is not None else {}

    # -- receiving -------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        if self.closing:
            return
        self._warn(
            "Closing connection to {peer}: a frame of {length} bytes exceeds the {limit} byte limit",
            length=length, limit=self.MAX_LENGTH,
        )
        # Not an abort: nothing of ours is queued, so the peer gets a clean
        # close it can read, and loseConnection stops reading at once.
        self.close(f"frame of {length} bytes exceeds the {self.MAX_LENGTH} byte limit")

    def frameReceived(self, frame: bytes) -> None:
        if self._close_cause is not None or self.lost is not None:  # self.closing, inlined
            return
        self.frames_in += 1
        # Nearly every frame is of a declared type with a good payload, read
        # in one pass; the rest (and a frame big enough to hold a payload
        # over its type's limit) are read again the careful way, which
        # refuses them in the words the protocol promises.
        try:
            message = _decode_message(frame)
        except (msgspec.DecodeError, RecursionError):
            message = None
        if message is None or len(frame) > message.max_frame:
            self._careful(frame)
        elif message.reply_to is None:
            message_type = message.message_type
            method = self._method(message_type, message.method_name, message.id)
            if method is not None:
                self._handle(method, message_type, message.payload, message.id)
        else:
            reply_to = message.reply_to
            requests = self._requests
            pending = requests.waiting.get(reply_to) if requests is not None else None
            reply_type = message.message_type
            if (pending[1] if pending is not None else None, reply_type) in _TYPED_REPLIES:
                if pending is not None:
                    requests.settle(reply_to)  # type: ignore[union-attr]
                self._replied(pending, reply_to, reply_type, message.payload)
            else:
                self._careful(frame)

    def _careful(self, frame: bytes) -> None:
        """Read a frame that the one-pass decoding did not take, refusing what is wrong."""
        try:
            envelope = wire.decode(frame)
        except wire.BadMessage as bad:
            self._refuse(bad, bad.reply_to)
            return
        if envelope.reply_to is None:
            self._dispatch(envelope)
        else:
            self._settle(envelope.reply_to, envelope)

    def _settle(self, reply_to: int, reply: wire.Envelope) -> None:
        pending = self._requests.settle(reply_to) if self._requests is not None else None
        reply_type = reply.type
        request_type = pending[1] if pending is not None else None
        if reply_type in _REFUSALS:
            if pending is not None:
                # What a refusal holds is open-ended: kept as plain JSON values.
                payload = _plain_payload(reply.payload)
                pending[0].errback(RemoteError(
                    pending[1], {"type": reply_type, "payload": payload, "reply_to": reply_to}
                ))
            return
        try:
            payload = wire.decode_payload(reply.payload, messages.reply_decoder(request_type, reply_type))
        except msgspec.DecodeError as e:  # a ValidationError, or bytes that are not UTF-8
            problem = str(e)
            self.bad_messages += 1
            if self.bad_messages <= LOGGED_BAD_MESSAGES:
                self.log.info(
                    "Bad {type} reply from {peer}: {problem}",
                    type=clip(reply_type), problem=clip(problem), **self.handler.log_fields(),
                )
            if pending is not None:
                pending[0].errback(BadReply(pending[1], reply_type, problem))
            return
        self._replied(pending, reply_to, reply_type, payload)

    def _replied(self, pending: Pending | None, reply_to: int, reply_type: str, payload: Any) -> None:
        """A reply of the shape declared for it: hand it to the request that waits."""
        if reply_type == "pong":
            self.record_pong(payload)
        if pending is None:
            # A late reply to a request that timed out or was cancelled.
            self.log.debug(
                "Ignoring {type} from {peer}: reply to unknown request {id}",
                type=reply_type, id=reply_to, **self.handler.log_fields(),
            )
            return
        pending[0].callback(Reply(reply_type, payload))

    def _method(self, message_type: str, method_name: str, msg_id: int | None) -> Any:
        """The handler's method for C{message_type}; C{None} once refused (not served, unknown)."""
        serves = self.handler.serves
        if serves is not None and message_type not in serves:
            self._refuse(self.handler.not_served(message_type), msg_id)
            return None
        method = getattr(self.handler, method_name, None)
        if method is None:
            self._refuse(wire.BadMessage(messages.UNKNOWN_TYPE, type=message_type), msg_id)
        return method

    def _dispatch(self, envelope: wire.Envelope) -> None:
        message_type = envelope.type
        msg_id = envelope.id
        method = self._method(message_type, "msg_" + message_type, msg_id)
        if method is None:
            return
        limit = _MAX_PAYLOAD.get(message_type)
        if limit is not None and len(envelope.payload) > limit:
            self._refuse(wire.BadMessage(
                f"{message_type} payload over {limit} bytes", type=message_type, limit=limit,
            ), msg_id)
            return
        try:
            payload = wire.decode_payload(envelope.payload, messages.DECODERS.get(message_type))
        except msgspec.DecodeError as e:  # a ValidationError, or bytes that are not UTF-8
            # Nesting too deep for a payload would have failed the envelope:
            # what is left is a payload of the wrong shape.
            self._refuse(_bad_payload(message_type, e), msg_id)
            return
        self._handle(method, message_type, payload, msg_id)

    def _handle(self, method: Any, message_type: str, payload: Any, msg_id: int | None) -> None:
        """Call the handler's C{method} with a checked payload; answer as it says."""
        try:
            result = method(payload)
            if result is None:
                # Most messages (vitals, pongs) want no answer: skip a call.
                if msg_id is not None:
                    self._answer(result, msg_id)
            elif type(result) is tuple:
                # Before isinstance(result, Deferred): Deferred is an ABC
                # (Awaitable), and an ABC's isinstance costs a reply a tenth.
                self._answer(result, msg_id)
            elif isinstance(result, defer.Deferred):
                # Counted until answered (not until called: a Deferred
                # waiting on another, as a database query, is called).
                stored = message_type in self.handler.stored_answers
                if stored:
                    self.storing += 1
                    if self.storing >= self.factory.max_storing:
                        self.hold(_STORING)
                else:
                    self.in_flight += 1
                    if self.in_flight >= self.factory.max_in_flight:
                        self.hold(_IN_FLIGHT)
                result.addBoth(self._answer_later, message_type, msg_id, stored)
            else:
                self._answer(result, msg_id)
        except wire.BadMessage as bad:
            self._refuse(bad, msg_id)
        except Exception:
            self._fail(Failure(), message_type, msg_id)

    def _answer_later(self, result: Any, message_type: str, msg_id: int | None,
                      stored: bool) -> None:
        """
        Answer with what a handler's Deferred gave (its failure refused or
        reported), then count the request answered.  One callback, not one
        for each step: every task result a master reads comes this way.
        """
        try:
            if isinstance(result, Failure):
                self._answer_failure(result, message_type, msg_id)
            else:
                try:
                    self._answer(result, msg_id)
                except Exception:
                    self._answer_failure(Failure(), message_type, msg_id)
        finally:
            if stored:
                self.storing -= 1
                if self.storing < self.factory.max_storing:
                    self.release(_STORING)
            else:
                self.in_flight -= 1
                if self.in_flight < self.factory.max_in_flight:
                    self.release(_IN_FLIGHT)

    def _answer(self, result: tuple[str, Any] | None, msg_id: int | None) -> None:
        if result is None:
            if msg_id is None:
                return
            result = ("ack", None)
        if self.lost is None:
            self._send(wire.Outgoing(result[0], result[1], None, msg_id))

    def _answer_failure(self, failure: Failure, message_type: str, msg_id: int | None) -> None:
        if failure.check(wire.BadMessage):
            self._refuse(failure.value, msg_id)
        else:
            self._fail(failure, message_type, msg_id)

    def _refuse(self, bad: wire.BadMessage, msg_id: int | None) -> None:
        """Answer a message we cannot accept with C{bad_message}."""
        self.bad_messages += 1
        if self.bad_messages <= LOGGED_BAD_MESSAGES and not self.handler.quiet:
            self.log.info(
                "Bad message from {peer}: {error}", error=clip(bad.error), **self.handler.log_fields()
            )
            if self.bad_messages == LOGGED_BAD_MESSAGES:
                self.log.warn(
                    "{peer} keeps sending bad messages; further ones are answered, not logged",
                    **self.handler.log_fields(),
                )
        if self.lost is None:
            self.send("bad_message", bad.payload(), reply_to=msg_id)
        if bad.close:
            self.close(bad.error)

    def _fail(self, failure: Failure, message_type: str, msg_id: int | None) -> None:
        """Our own handler broke: log it, and tell a waiting peer."""
        if failure.check(ServiceError):
            # Expected and already logged where it arose: say it as it is.
            if msg_id is not None and self.lost is None:
                self.send("error", {"error": failure.getErrorMessage()}, reply_to=msg_id)
            return
        self.factory.failures.failure(
            "Error handling {type} from {peer}", failure,
            type=message_type, **self.handler.log_fields(),
        )
        if msg_id is not None and self.lost is None:
            if failure.check(FrameTooLarge):
                problem = f"reply to {message_type} too large: {failure.getErrorMessage()}"
            else:
                problem = f"internal error handling {message_type}"
            self.send("error", {"error": problem}, reply_to=msg_id)


def _bad_payload(message_type: str, error: msgspec.DecodeError) -> wire.BadMessage:
    """The refusal of a payload that does not have its declared shape."""
    if not isinstance(error, msgspec.ValidationError):
        # The envelope's reader skips the payload's strings: invalid UTF-8 in
        # one is found only now.
        return wire.BadMessage(messages.NOT_JSON, detail=str(error))
    problem, path = wire.field_path(error)
    if problem.startswith("Number out of range"):
        # 1e400: valid JSON, but no float holds it.
        return wire.BadMessage(messages.NOT_JSON, detail=str(error), field=path)
    declared = messages.MESSAGES.get(message_type)
    refusal = declared.refusal(path, problem) if declared is not None else {}
    close = refusal.pop("close", False)
    if path is None:
        return wire.BadMessage(f"bad {message_type} payload: {problem}", close=close, **refusal)
    return wire.BadMessage(
        f"bad {message_type} payload at {path}: {problem}", field=path, close=close, **refusal
    )


def _plain_payload(raw: msgspec.Raw) -> Any:
    try:
        return wire.decode_payload(raw)
    except msgspec.DecodeError:  # 1e400, or a string that is not UTF-8
        return None


_check_peer_alive = operator.methodcaller("_check_peer_alive")
_check_frame = operator.methodcaller("_check_frame")


if TYPE_CHECKING:
    # Twisted 26 types a factory by the protocols it makes; before it, a
    # Factory cannot be subscripted at run time.
    _Factory = protocol.Factory["PiClusterProtocol"]
else:
    _Factory = protocol.Factory


class PiClusterFactory(_Factory):
    """
    The settings every picluster connection shares, and its handler's maker.

    Subclasses say which L{PeerHandler} gives a connection its role; the
    master's and the slave's factories also hold what outlives a connection.

    @ivar keepalive: Seconds between our pings.
    @ivar dead_after: Seconds of silence after which a peer counts as dead.
    @ivar max_frame: The largest frame accepted, in bytes.
    @ivar request_timeout: Seconds a request waits for its reply.
    @ivar frame_deadline: Seconds a frame may take to arrive.
    @ivar max_in_flight: A peer's requests answered at once before we stop
        reading it.
    @ivar max_storing: A peer's requests waiting to be stored (see
        L{PeerHandler.stored_answers}) before we stop reading it.
    @ivar max_queued: Bytes that may wait for a peer that does not read
        before it is dropped (by default, eight frames).
    @ivar handshake_timeout: Seconds a new peer has to prove itself
        (L{PiClusterProtocol.trusted}); C{None} where peers need not.
    @ivar clock: The L{IReactorTime} used for every timer.
    @ivar stats: Counts over every connection this factory made.
    @ivar dead_peer_checks: When each connection's peer must next have been
        heard from (L{Deadlines}: one timer for them all).
    @ivar frame_deadlines: When each connection's frame in progress must be whole.
    """

    protocol = PiClusterProtocol
    log = Logger()
    #: Whether connections run over TLS: their work starts once the
    #: handshake is done and L{check_peer} has passed.
    tls = False
    #: Our own log lines say what matters; Twisted's "Starting factory" on
    #: every reconnection attempt would bury them.
    noisy = False

    def __init__(
        self,
        *,
        keepalive: float = 5.0,
        dead_after: float | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        frame_deadline: float = DEFAULT_FRAME_DEADLINE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_storing: int = DEFAULT_MAX_STORING,
        handshake_timeout: float | None = None,
        max_queued: int | None = None,
        clock: interfaces.IReactorTime | None = None,
    ):
        if clock is None:
            from twisted.internet import reactor

            clock = cast(interfaces.IReactorTime, reactor)
        self.keepalive = keepalive
        self.dead_after = dead_after if dead_after is not None else 3 * keepalive
        # No length prefix says more than LARGEST_FRAME: send() relies on it.
        self.max_frame = min(max_frame, wire.LARGEST_FRAME)
        self.request_timeout = request_timeout
        self.frame_deadline = frame_deadline
        self.max_in_flight = max_in_flight
        self.max_storing = max_storing
        self.max_queued = max_queued if max_queued is not None else 8 * self.max_frame
        self.handshake_timeout = handshake_timeout
        self.clock = clock
        self.stats = WireStats()
        self.dead_peer_checks = Deadlines(clock, _check_peer_alive)
        self.frame_deadlines = Deadlines(clock, _check_frame)
        #: Tracebacks of our own handlers' failures, once per cause.
        self.failures = FailureLog(self.log, clock)

    def make_handler(self, protocol: PiClusterProtocol) -> PeerHandler:
        return PeerHandler(protocol)

    def check_peer(self, protocol: PiClusterProtocol) -> None:
        """
        Judge the peer of a TLS connection once the handshake is done; raise
        to close the connection (the exception's text says why).
        """
