"""
The failures picluster hands to errbacks.

Each one reads as a sentence a person can act on and keeps what caused it,
as Twisted's own C{ResponseFailed} keeps its reasons.
"""

from __future__ import annotations

from twisted.internet import error
from twisted.python.failure import Failure


class DisconnectionException(Exception):
    """
    The connection to a peer is gone, or could not be made.

    Every Deferred still waiting on a connection errbacks with this when the
    connection is lost, and every later send on it fails with it too, so
    callers handle one exception wherever the network can let them down.

    @ivar peer: Who was on the other end, e.g. C{"master 10.0.0.2:12345"}.
    @ivar cause: A short human reason, e.g. C{"connection refused"}.
    @ivar reason: The original L{Failure}, for whoever needs the details.
    """

    def __init__(self, peer: str, cause: str, reason: Failure | None = None):
        super().__init__(f"Lost connection to {peer}: {cause}")
        self.peer = peer
        self.cause = cause
        self.reason = reason


class RemoteError(Exception):
    """
    The peer answered a request with C{bad_message} or C{error}.

    @ivar reply: The whole reply envelope, whose payload says what was wrong.
    """

    def __init__(self, request_type: str, reply: dict):
        payload = reply.get("payload")
        detail = payload.get("error") if isinstance(payload, dict) else payload
        super().__init__(f"{request_type} refused by peer ({reply.get('type')}): {detail}")
        self.reply = reply


class BadReply(Exception):
    """The peer's reply to a request did not have the shape declared for it."""

    def __init__(self, request_type: str, reply_type: str, problem: str):
        super().__init__(f"{reply_type} in reply to {request_type} is malformed: {problem}")
        self.request_type = request_type
        self.reply_type = reply_type
        self.problem = problem


class RequestTimeout(Exception):
    """No reply to a request arrived within its timeout."""

    def __init__(self, request_type: str, timeout: float):
        super().__init__(f"no reply to {request_type} within {timeout:g} s")
        self.request_type = request_type
        self.timeout = timeout


class HandshakeError(Exception):
    """The master's answer to a hello was not a welcome this side can use."""


class ServiceError(Exception):
    """
    A request was well formed but this side cannot serve it now (the task
    database is unwritable, the queue is full).  Its message goes to the peer
    in the C{error} reply as it is, so it must make sense to a user.
    """


class FrameTooLarge(ValueError):
    """An outgoing message would not fit in one frame."""


_CAUSES: list[tuple[type[BaseException], str]] = [
    (error.ConnectionRefusedError, "connection refused"),
    (error.TCPTimedOutError, "connection timed out"),
    (error.TimeoutError, "connection attempt timed out"),
    (error.DNSLookupError, "host name lookup failed"),
    (error.NoRouteError, "no route to host"),
    (error.ConnectionDone, "connection closed by peer"),
    (error.ConnectionLost, "connection lost"),
]


def describe_reason(reason: Failure) -> str:
    """
    Turn a connection-level Failure into a few plain words.

    Twisted's own messages ("Connection was refused by other side: 111:
    Connection refused.") are accurate but noisy in a log line that already
    says who the peer was.
    """
    for exc_type, words in _CAUSES:
        if reason.check(exc_type):
            return words
    return reason.getErrorMessage()
