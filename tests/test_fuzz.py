"""
Property tests: whatever a peer sends, the master answers sanely and stays up.
"""

from __future__ import annotations

import json
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial import unittest

from picluster import RemoteError, wire
from picluster.slave.session import HandshakeError

from .helpers import connect, master_factory, parse_frames, slave_factory

REPLY_TYPES = {"ack", "bad_message", "welcome", "pong", "master_info", "uuid", "slave_details"}
MESSAGE_TYPES = [
    "hello", "ping", "pong", "message", "computer_details", "vitals", "info",
    "bad_message", "error", "ack", "welcome", "launch", "",
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)

envelopes = st.fixed_dictionaries(
    {"type": st.sampled_from(MESSAGE_TYPES)},
    optional={
        "payload": json_values | st.sampled_from(["uuid", "computer_details", "slave_details"])
        | st.fixed_dictionaries({"uuid": st.none() | st.text(alphabet="0123456789abcdefX", min_size=30, max_size=33),
                                 "version": st.sampled_from([1, 2, "1", None])}),
        "id": st.integers(min_value=-2, max_value=2**40) | st.none() | st.text(max_size=3),
        "reply_to": st.integers(min_value=0, max_value=5),
    },
)

frames = st.one_of(
    envelopes.map(lambda e: json.dumps(e).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
    st.sampled_from([b'{"type": "vitals", "payload": {"t": 1e400}}', b'{"type": "ping", "payload": -1e999}']),
)


def as_frame(data: bytes) -> bytes:
    return struct.pack("!I", len(data)) + data


class HostilePeerTests(unittest.TestCase):
    """
    Random frames, randomly split, never break the master.
    """

    @settings(max_examples=300, deadline=None)
    @given(st.lists(frames, max_size=12), st.lists(st.integers(min_value=1, max_value=40), max_size=12))
    def test_anyFramesAnySplit(self, frame_list: list[bytes], cuts: list[int]) -> None:
        """Replies are well-formed, our handlers never fail, the registry stays consistent."""
        clock = Clock()
        factory = master_factory(clock, keepalive=5)
        protocol, transport = connect(factory)
        data = b"".join(as_frame(f) for f in frame_list)
        position = 0
        for cut in cuts + [len(data)]:
            protocol.dataReceived(data[position : position + cut])
            position += cut
        replies = parse_frames(transport.value())
        for reply in replies:
            self.assertIn(reply["type"], REPLY_TYPES, reply)
            if reply["type"] == "bad_message":
                self.assertIsInstance(reply["payload"]["error"], str)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertIs(factory.registry.get(protocol.handler.uuid), protocol.handler)
        self.assertEqual(len(factory.registry), 1)
        # What the master stored can always be sent on to others.
        wire.encode({"type": "slave_details", "payload": [protocol.handler.describe()]})


class HostileMasterTests(unittest.TestCase):
    """
    Random frames from a master never break a slave.
    """

    @settings(max_examples=200, deadline=None)
    @given(st.lists(frames, max_size=12))
    def test_anyFrames(self, frame_list: list[bytes]) -> None:
        """Only the session's own refusals are logged, and replies are well-formed."""
        clock = Clock()
        factory = slave_factory(clock)
        protocol, transport = connect(factory, host="10.0.0.1", port=12345)
        for data in frame_list:
            protocol.dataReceived(as_frame(data))
        for reply in parse_frames(transport.value()):
            self.assertIn(reply["type"], {"hello", "computer_details", "info", "vitals", "pong", "bad_message", "ack"})
        # A bad answer to hello ends the session, logged; nothing else may fail.
        self.flushLoggedErrors(HandshakeError, RemoteError)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertTrue(factory.uuid is None or len(factory.uuid) == 32)
