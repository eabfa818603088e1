"""
Framing: a 4-byte big-endian length, then that many bytes.

The bytes on the wire are those of Twisted's L{Int32StringReceiver}, and a
bare Twisted peer still speaks to us; the receiving side is our own, for
two reasons a hostile peer exposes:

  - C{Int32StringReceiver} joins what it holds with every read (C{alldata =
    self._unprocessed + data}), so a megabyte frame arriving a few bytes at
    a time costs a megabyte copied per read.  Here the pieces of a frame in
    progress wait in a list and are joined once, when they are all there.

  - Its pausing has one cause (the transport's write buffer is full).  Ours
    has several (the peer reads too slowly, too many of its requests are
    still being answered), and reading resumes only once none holds.

What the frames mean is the subclass's business (L{frameReceived}), as is
what a frame taking too long or being too large does to the connection.
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet import protocol

#: Reads the 4-byte length prefix at an offset of a buffer.
_length_at = struct.Struct("!I").unpack_from
PREFIX = 4


class FrameReceiver(protocol.Protocol):
    """
    A protocol that receives length-prefixed frames, pausing on demand.

    @ivar MAX_LENGTH: The largest frame accepted; a longer one calls
        L{lengthLimitExceeded} and nothing more is read.
    """

    MAX_LENGTH = 99_999

    #: Twisted types it C{ITransport | None}; while we use it we are
    #: connected, and every transport we run on (TCP, TLS, a test's) is also
    #: the consumer we produce for, and can be aborted.
    transport: Any

    # Slots, not an instance dict: a master holds thousands of idle
    # connections, and a dict of many keys costs each of them hundreds of
    # bytes more (subclasses slot their own state likewise).
    __slots__ = ("paused", "_discarding", "_pieces", "_held", "_needed", "_pause_causes")

    def __init__(self) -> None:
        #: Whether reading is paused, for any of the causes in C{_pause_causes}.
        self.paused = False
        #: Set once a frame was too large: what follows cannot be framed.
        self._discarding = False
        # A frame in progress: its pieces, their total size, and the size
        # that lets the next parse make progress (0: parse at any read).
        # Between frames, as an idle connection nearly always is, the
        # pieces are the shared empty tuple, not an empty list each.
        self._pieces: list[bytes] | tuple[()] = ()
        self._held = 0
        self._needed = 0
        #: Why reading is paused; made at the first pause, for the same reason.
        self._pause_causes: set[str] | None = None

    # -- receiving ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        if self._pieces:
            self._pieces.append(data)
            self._held += len(data)
            if self._held < self._needed or self.paused:
                return
            data = b"".join(self._pieces)
            self._pieces = ()
            began = False
        else:
            began = True
        self._parse(data, began)

    def _parse(self, data: bytes, began: bool) -> None:
        offset = 0
        end = len(data)
        needed = 0
        while not self.paused:
            if end - offset < PREFIX:
                needed = PREFIX
                break
            (length,) = _length_at(data, offset)
            if length > self.MAX_LENGTH:
                self._pieces = ()
                self._held = 0
                self._discarding = True
                self.lengthLimitExceeded(length)
                return
            stop = offset + PREFIX + length
            if stop > end:
                needed = stop - offset
                break
            frame = data[offset + PREFIX:stop]
            offset = stop
            self.frameReceived(frame)
        if offset < end:
            # The rest waits: a frame in progress, or whole frames held
            # while paused (needed is 0 then, so resuming parses at once).
            self._pieces = [data[offset:] if offset else data]
            self._held = end - offset
            self._needed = needed
            if needed and not self.paused:
                self.frameIncomplete(began or offset > 0)
                return
        else:
            self._held = self._needed = 0
        self.framesComplete()

    def frameReceived(self, frame: bytes) -> None:
        """One whole frame (without its length prefix)."""
        raise NotImplementedError()

    def lengthLimitExceeded(self, length: int) -> None:
        """A frame announced more than L{MAX_LENGTH} bytes."""
        self.transport.loseConnection()

    def frameIncomplete(self, new: bool) -> None:
        """
        A read ended inside a frame; C{new} when that frame began in this
        read (the one before it, if any, is complete).
        """

    def framesComplete(self) -> None:
        """A read ended between frames (or reading is paused)."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handled."""
        return self._held

    # -- pausing -------------------------------------------------------------

    def hold(self, cause: str) -> None:
        """Stop reading until L{release} is called with the same C{cause}."""
        if self._pause_causes is None:
            self._pause_causes = set()
        self._pause_causes.add(cause)
        if not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def release(self, cause: str) -> None:
        """One cause of pausing is gone; read again once none is left."""
        causes = self._pause_causes
        if causes is not None:
            causes.discard(cause)
        if self.paused and not causes:
            self.paused = False
            self.transport.resumeProducing()
            if self._pieces:
                data = b"".join(self._pieces)
                self._pieces = ()
                self._parse(data, True)
