"""
Shared fixtures for protocol-level tests: no network, no real time.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim

from picluster.address import MasterAddress
from picluster.master.connection import MasterFactory
from picluster.master.registry import SlaveRegistry
from picluster.slave.session import SlaveFactory
from picluster.wire.protocol import PiClusterFactory, PiClusterProtocol

SLAVE_FACTS = {"hostname": "pi-one", "ram": 1024, "cpu": "Raspberry Pi 4 Model B Rev 1.4"}
MASTER_FACTS = {"hostname": "pi-master", "ram": 4096, "cpu": "Raspberry Pi 5"}
VITALS = {"cpu_percentage": 12.5, "cpu_temperature": 48.2, "ram_free": 512}


def frame(obj: Any) -> bytes:
    """One frame holding C{obj} as JSON."""
    return raw_frame(json.dumps(obj).encode("utf-8"))


def raw_frame(data: bytes) -> bytes:
    """One frame holding exactly C{data}."""
    return struct.pack("!I", len(data)) + data


def parse_frames(data: bytes) -> list[dict[str, Any]]:
    """Every envelope in C{data}, which must hold whole frames only."""
    envelopes = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        assert len(data) >= 4 + length, "partial frame in output"
        envelopes.append(json.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return envelopes


def sent(transport: StringTransport) -> list[dict[str, Any]]:
    """Take what a protocol wrote so far, as envelopes."""
    envelopes = parse_frames(transport.value())
    transport.clear()
    return envelopes


def connect(
    factory: PiClusterFactory, host: str = "10.0.0.2", port: int = 4321
) -> tuple[PiClusterProtocol, StringTransport]:
    """Build a protocol from C{factory} and connect it to a StringTransport."""
    peer = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


class SetTime:
    """A clock (C{time.monotonic}, C{time.time}) that reads what the test sets in C{now}."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSampler:
    """Vitals that never change, counting how often they were asked for."""

    def __init__(self) -> None:
        self.samples = 0

    def sample(self) -> defer.Deferred[dict[str, Any]]:
        self.samples += 1
        return defer.succeed(dict(VITALS))


def master_factory(clock: Clock, **settings: Any) -> MasterFactory:
    return MasterFactory(
        SlaveRegistry(), computer_details=dict(MASTER_FACTS), clock=clock, **settings
    )


def slave_factory(clock: Clock, **settings: Any) -> SlaveFactory:
    factory = SlaveFactory(
        MasterAddress("10.0.0.1", 12345),
        computer_details=dict(SLAVE_FACTS),
        sampler=FakeSampler(),
        clock=clock,
        **settings,
    )
    factory.jitter = 0
    return factory


def connect_pair(
    master: MasterFactory, slave: SlaveFactory, clock: Clock, port: int = 5000
) -> tuple[PiClusterProtocol, PiClusterProtocol, iosim.IOPump]:
    """A slave connected to a master in memory; returns (slave, master, pump)."""
    return iosim.connectedServerAndClient(
        lambda: master.buildProtocol(IPv4Address("TCP", "10.0.0.9", port)),
        lambda: slave.buildProtocol(IPv4Address("TCP", "10.0.0.1", 12345)),
        clock=clock,
    )
