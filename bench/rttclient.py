"""
The client process of rtt: one driver of round trips, for each system measured.

C{python -m bench.rttclient SYSTEM PORT --inflight 1,50 --seconds S
--warmup W --slices K [--token-file F]} connects once to the server of
SYSTEM (C{picluster}: a real master, asked C{ping} with an id through
L{PiClusterProtocol.request} on the Python client's connection, over TLS
with the client token of F; C{plain}: the same, to a master run with
C{--insecure}; C{amp}: L{bench.ampbench}'s C{Echo} through
C{callRemote}; C{bare}: L{bench.bare}'s JSON request/reply; C{echo}: the
floor, L{bench.bare.Echo}) and, for each in-flight count in turn, keeps that
many requests outstanding over the one connection: each reply sends the
next request.  It warms up for W seconds a count and prints C{READY}; then
each SIGUSR1 measures one slice, S seconds a count, and prints its round
trips/s as a JSON line.  After K slices it prints one more JSON line a count,
the latency percentiles (microseconds) over all its slices, and exits.
Every system is driven by the same code; only the call that sends a request
differs.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

#: Latency percentiles reported, as fractions.
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p99": 0.99, "p99.9": 0.999}

Call = Callable[[int], "defer.Deferred[Any]"]


class RoundTrips:
    """
    Keep C{inflight} requests outstanding until C{seconds} have passed.

    @ivar latencies: Seconds from each request's send to its reply.
    """

    def __init__(self, call: Call, inflight: int, seconds: float):
        self.call = call
        self.inflight = inflight
        self.seconds = seconds
        self.latencies: list[float] = []
        self.sent = 0
        self.outstanding = 0
        self.done: defer.Deferred[RoundTrips] = defer.Deferred()

    def run(self) -> defer.Deferred[RoundTrips]:
        self.started = time.perf_counter()
        self.deadline = self.started + self.seconds
        for _ in range(self.inflight):
            self._send()
        return self.done

    def _send(self) -> None:
        self.sent += 1
        self.outstanding += 1
        sent_at = time.perf_counter()
        self.call(self.sent).addCallbacks(self._replied, self._failed, callbackArgs=(sent_at,))

    def _replied(self, _: Any, sent_at: float) -> None:
        now = time.perf_counter()
        self.latencies.append(now - sent_at)
        self.outstanding -= 1
        if now < self.deadline:
            self._send()
        elif not self.outstanding:
            self.ended = now
            self.done.callback(self)

    def _failed(self, failure: Any) -> None:
        if not self.done.called:
            self.done.errback(failure)

    def per_second(self) -> float:
        return len(self.latencies) / (self.ended - self.started)


def endpoint(port: int) -> TCP4ClientEndpoint:
    return TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)


@defer.inlineCallbacks
def connect_picluster(port: int, token_file: str | None = None) -> Any:
    """
    A connection to a real master, made by the Python client as the CLI's
    is: over TLS with the client token's proof, or plain without a token.
    """
    from bench.secure import token_from
    from picluster.address import MasterAddress
    from picluster.client import Client

    token = token_from(token_file)
    client = Client(MasterAddress("127.0.0.1", port), token=token, insecure=token is None,
                    reconnect=False)
    yield client.connect()
    connection = client.connection
    return lambda number: connection.request("ping", number)


@defer.inlineCallbacks
def connect_amp(port: int, token_file: str | None = None) -> Any:
    from twisted.protocols import amp

    from bench.ampbench import Echo

    connection = yield connectProtocol(endpoint(port), amp.AMP())
    return lambda number: connection.callRemote(Echo, payload=number)


@defer.inlineCallbacks
def connect_bare(port: int, token_file: str | None = None) -> Any:
    from bench.bare import BareClient

    connection = yield connectProtocol(endpoint(port), BareClient())
    return lambda number: connection.call("ping", number)


@defer.inlineCallbacks
def connect_echo(port: int, token_file: str | None = None) -> Any:
    from bench.bare import EchoClient

    connection = yield connectProtocol(endpoint(port), EchoClient())
    return lambda number: connection.call("ping", number)


CONNECT = {"picluster": connect_picluster, "plain": connect_picluster, "amp": connect_amp,
           "bare": connect_bare, "echo": connect_echo}


def percentiles(latencies: list[float]) -> dict[str, float]:
    """The L{PERCENTILES} of C{latencies} (seconds), in microseconds."""
    ordered = sorted(latencies)
    return {
        f"{name}_us": ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e6
        for name, fraction in PERCENTILES.items()
    }


class Slices:
    """
    Measure in slices, one per SIGUSR1, so that an orchestrator can take
    turns between systems: whatever else the machine does then falls on all
    of them alike.  Latencies are pooled over the slices for the percentiles.
    """

    def __init__(self, call: Call, options: argparse.Namespace):
        self.call = call
        self.options = options
        self.pooled: dict[int, list[float]] = {inflight: [] for inflight in options.inflight}
        self.slices = 0
        self.busy = False
        self.finished: defer.Deferred[None] = defer.Deferred()

    @defer.inlineCallbacks
    def warm_up(self) -> Any:
        for inflight in self.options.inflight:
            yield RoundTrips(self.call, inflight, self.options.warmup).run()

    @defer.inlineCallbacks
    def one_slice(self) -> Any:
        if self.busy or self.finished.called:
            return
        self.busy = True
        self.slices += 1
        figures = {}
        for inflight in self.options.inflight:
            trips = yield RoundTrips(self.call, inflight, self.options.seconds).run()
            self.pooled[inflight].extend(trips.latencies)
            figures[inflight] = trips.per_second()
        self.busy = False
        print(json.dumps({"slice": self.slices, "per_second": figures}), flush=True)
        if self.slices == self.options.slices:
            for inflight, latencies in self.pooled.items():
                print(json.dumps({"inflight": inflight, "calls": len(latencies),
                                  **percentiles(latencies)}), flush=True)
            self.finished.callback(None)


@defer.inlineCallbacks
def measure(options: argparse.Namespace) -> Any:
    call = yield CONNECT[options.system](options.port, options.token_file)
    slices = Slices(call, options)
    yield slices.warm_up()
    # A signal handler may not touch the reactor: callFromThread only queues
    # the call and wakes the reactor, which is safe from one.
    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(start_slice))

    def start_slice() -> None:
        slices.one_slice().addErrback(slices.finished.errback)

    print("READY", flush=True)
    yield slices.finished


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.rttclient")
    parser.add_argument("system", choices=sorted(CONNECT))
    parser.add_argument("port", type=int)
    parser.add_argument("--inflight", default="1,50",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--seconds", type=float, default=0.5, help="per in-flight count a slice")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--slices", type=int, default=1, help="slices to measure, then exit")
    parser.add_argument("--token-file", default=None,
                        help="picluster: the client token of a secure master (plain without it)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    options = parse_arguments(argv)
    failed: list[Any] = []

    def fail(failure: Any) -> None:
        failed.append(failure)
        print(json.dumps({"error": failure.getErrorMessage()}), flush=True)

    def start() -> None:
        measured = measure(options)
        measured.addErrback(fail)
        measured.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
