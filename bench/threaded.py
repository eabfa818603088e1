"""
The threaded baseline: the tutorial's master, one thread per connection.

C{python -m bench.threaded --port PORT [--keepalive S] [--dead-after S]}

The design picluster replaces (see the tutorial the project started from):
a main thread that accepts, and a thread per slave that blocks in
C{recv} (512 bytes at a time, as the tutorial's), handles each message in
turn, logs as the tutorial's did, and turns any socket error or an empty
read into one L{DisconnectionException}.  It speaks picluster's
frames (a 4-byte length, then a JSON envelope) rather than the tutorial's
C{\\r}-separated JSON, so that the same herd of simulated slaves drives
both servers; everything else is the tutorial's way, written plainly: the
master gives each connection a uuid (a hello may reclaim an earlier one),
keeps each slave's latest computer_details and vitals, answers C{info},
answers pings with pongs, and, as picluster does, pings each slave every
C{--keepalive} seconds from the slave's own thread (a C{recv} timeout) and
drops one silent for C{--dead-after}.

With C{--bare} it is the floor of the design instead: each connection's
thread only reads until the peer closes, holding nothing and answering nothing; what a connection
costs there is the thread itself.

It prints C{READY} once listening, and on SIGTERM a last line
C{FINAL <json>} of its counts.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import struct
import sys
import threading
import time
import uuid as uuid_module
from typing import Any

from picluster import config, sysinfo
from picluster.wire import DEFAULT_MAX_FRAME

log = logging.getLogger("threaded")

_LENGTH = struct.Struct("!I")

#: Bytes read at a time, as the tutorial's master read them.
READ_SIZE = 512

#: The largest frame accepted, as picluster's default.
MAX_FRAME = DEFAULT_MAX_FRAME

#: Seconds between pings unless told otherwise: picluster's default.
DEFAULT_KEEPALIVE = next(s.default for s in config.COMMON_SETTINGS if s.name == "keepalive")


class DisconnectionException(Exception):
    """Any failure of a slave's socket: the tutorial's one exception."""


def encode(envelope: dict[str, Any]) -> bytes:
    data = json.dumps(envelope, separators=(",", ":")).encode()
    return _LENGTH.pack(len(data)) + data


class SlaveHandler:
    """One slave's connection, run by a thread of its own."""

    def __init__(self, master: ThreadedMaster, sock: socket.socket, address: Any):
        self.master = master
        self.sock = sock
        self.address = f"{address[0]}:{address[1]}"
        self.uuid = uuid_module.uuid4().hex
        self.computer_details: dict[str, Any] | None = None
        self.vitals: dict[str, Any] | None = None
        self.buffer = b""
        self.last_received = self.last_ping = time.monotonic()

    def run(self) -> None:
        self.master.register(self)
        log.info("Slave connected from %s as %s", self.address, self.uuid)
        try:
            while True:
                self.handle(self.receive())
        except DisconnectionException as e:
            log.info("Got disconnection exception with message: %s", e)
            log.info("Shutting down slave connection handler")
        finally:
            self.master.unregister(self)
            self.sock.close()

    # -- the socket, behind the tutorial's two functions -------------------

    def send(self, envelope: dict[str, Any]) -> None:
        try:
            self.sock.sendall(encode(envelope))
        except OSError as e:
            raise DisconnectionException(f"Failed to send message: {e}") from None

    def receive(self) -> dict[str, Any]:
        """The next message, pinging the slave whenever a keepalive falls due."""
        while True:
            if len(self.buffer) >= 4:
                (length,) = _LENGTH.unpack_from(self.buffer)
                if length > MAX_FRAME:
                    raise DisconnectionException(f"frame of {length} bytes is too large")
                if len(self.buffer) >= 4 + length:
                    data = self.buffer[4:4 + length]
                    self.buffer = self.buffer[4 + length:]
                    return json.loads(data)
            self.buffer += self._recv()

    def _recv(self) -> bytes:
        master = self.master
        while True:
            now = time.monotonic()
            if now - self.last_ping >= master.keepalive:
                self.last_ping = now
                self.send({"type": "ping", "payload": time.time()})
            wait = min(self.last_ping + master.keepalive,
                       self.last_received + master.dead_after) - now
            self.sock.settimeout(max(wait, 0.001))
            try:
                data = self.sock.recv(READ_SIZE)
            except TimeoutError:
                silent = time.monotonic() - self.last_received
                if silent >= master.dead_after:
                    raise DisconnectionException(f"no sign of life for {silent:.0f} s") from None
                continue
            except OSError as e:
                raise DisconnectionException(
                    f"Failed to receive messages, client has disconnected: {e}") from None
            if not data:
                raise DisconnectionException("Failed to receive messages, client has disconnected")
            self.last_received = time.monotonic()
            return data

    # -- messages ----------------------------------------------------------

    def handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        payload = message.get("payload")
        reply: tuple[str, Any] | None = None
        if kind == "hello":
            earlier = payload.get("uuid") if isinstance(payload, dict) else None
            if isinstance(earlier, str):
                self.master.reclaim(self, earlier)
            reply = ("welcome", {"uuid": self.uuid, "keepalive": self.master.keepalive,
                                 "dead_after": self.master.dead_after})
        elif kind == "computer_details":
            self.computer_details = payload
        elif kind == "vitals":
            self.vitals = payload
        elif kind == "info":
            if payload == "computer_details":
                reply = ("master_info", self.master.computer_details)
            elif payload == "uuid":
                reply = ("uuid", self.uuid)
            elif payload == "slave_details":
                reply = ("slave_details", self.master.slave_details())
            else:
                reply = ("bad_message", "unknown")
        elif kind == "ping":
            reply = ("pong", payload)
        elif kind in ("pong", "message"):
            pass
        else:
            reply = ("bad_message", "unknown")
        msg_id = message.get("id")
        if reply is None and msg_id is not None:
            reply = ("ack", None)
        if reply is not None:
            envelope = {"type": reply[0], "payload": reply[1]}
            if msg_id is not None:
                envelope["reply_to"] = msg_id
            self.send(envelope)


class ThreadedMaster:
    """Accepts slaves, a thread each; the registry is a dict under a lock."""

    def __init__(self, port: int, keepalive: float, dead_after: float, backlog: int):
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.computer_details = sysinfo.computer_details()
        self.listener = socket.create_server(("127.0.0.1", port), backlog=backlog)
        self.lock = threading.Lock()
        self.slaves: dict[str, SlaveHandler] = {}
        self.accepted = 0
        self.most_threads = 0

    def serve_forever(self, bare: bool = False) -> None:
        while True:
            sock, address = self.listener.accept()
            self.accepted += 1
            if bare:
                run: Any = drain
                args: tuple[Any, ...] = (sock,)
            else:
                run, args = SlaveHandler(self, sock, address).run, ()
            threading.Thread(target=run, args=args, daemon=True).start()

    def register(self, slave: SlaveHandler) -> None:
        with self.lock:
            self.slaves[slave.uuid] = slave
            self.most_threads = max(self.most_threads, threading.active_count())

    def unregister(self, slave: SlaveHandler) -> None:
        with self.lock:
            if self.slaves.get(slave.uuid) is slave:
                del self.slaves[slave.uuid]

    def reclaim(self, slave: SlaveHandler, earlier: str) -> None:
        with self.lock:
            if self.slaves.get(slave.uuid) is slave:
                del self.slaves[slave.uuid]
            slave.uuid = earlier
            self.slaves[earlier] = slave

    def slave_details(self) -> list[dict[str, Any]]:
        with self.lock:
            slaves = list(self.slaves.values())
        return [{"uuid": s.uuid, "address": s.address} for s in slaves]

    def counts(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "connected": len(self.slaves),
                "threads": threading.active_count(), "most_threads": self.most_threads}


def drain(sock: socket.socket) -> None:
    """A bare connection's thread: read until the peer closes."""
    with sock:
        try:
            while sock.recv(READ_SIZE):
                pass
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.threaded", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--keepalive", type=float, default=DEFAULT_KEEPALIVE)
    parser.add_argument("--dead-after", type=float, default=None)
    parser.add_argument("--backlog", type=int, default=1024)
    parser.add_argument("--bare", action="store_true",
                        help="threads that only read: the floor of the design")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s [%(threadName)s] %(message)s")
    dead_after = options.dead_after if options.dead_after is not None else 3 * options.keepalive
    master = ThreadedMaster(options.port, options.keepalive, dead_after, options.backlog)

    def finish(number: int, frame: Any) -> None:
        print("FINAL", json.dumps(master.counts()), flush=True)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, finish)
    print("READY", flush=True)
    master.serve_forever(options.bare)


if __name__ == "__main__":
    main()
