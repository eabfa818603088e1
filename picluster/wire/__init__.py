"""
The wire: what both sides of a picluster connection share, and no role.

L{envelope} turns frames into envelopes and back; L{messages} declares every
message type, its payload's shape, who sends it and what answers it;
L{protocol} is the one L{PiClusterProtocol} both sides speak, with requests,
keepalives and dispatch to a L{PeerHandler}; L{errors} holds the failures
handed to errbacks; L{stats} counts frames for the metrics.
"""

from picluster.wire.envelope import (
    DEFAULT_MAX_FRAME,
    LARGEST_FRAME,
    BadMessage,
    Envelope,
    decode,
    encode,
    loads,
    strict_json,
    to_builtins,
)
from picluster.wire.messages import PROTOCOL_VERSION

__all__ = [
    "DEFAULT_MAX_FRAME", "LARGEST_FRAME", "PROTOCOL_VERSION", "BadMessage", "Envelope", "decode",
    "encode", "loads", "strict_json", "to_builtins",
]
