"""
The short texts that every slave of a cluster sends alike, held once.

A master may hold thousands of idle slaves, and the facts each sends about
its computer repeat the same few texts (the keys of its facts, its model, OS
and CPU); L{SharedTexts} keeps one copy of each for all the connections.
"""

from __future__ import annotations

from typing import Any

from picluster.wire.messages import ComputerDetails

#: Texts up to this long in a slave's computer_details are shared with the
#: other slaves'; longer ones are kept as sent.
SHARED_TEXT = 256

#: The most distinct texts a master shares: a peer choosing its texts can
#: fill the table, never grow it (and a full table only shares less).
MAX_SHARED_TEXTS = 8192


class SharedTexts:
    """
    One copy of each short text that slaves' facts repeat.

    Each slave's facts arrive as fresh JSON, so without this every node
    holds its own copy of the texts the whole cluster shares (model, OS,
    CPU, versions).  Facts arrive once a connection, so the lookups cost
    nothing that matters; vitals, which come every few seconds, are kept as
    sent.  Not C{sys.intern}: on some Pythons an interned string lives
    forever, and peers choose these.
    """

    def __init__(self, limit: int = MAX_SHARED_TEXTS):
        self.limit = limit
        self._texts: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._texts)

    def share(self, value: Any) -> Any:
        """The shared copy of C{value} if it is a short text; else C{value}."""
        if type(value) is not str or len(value) > SHARED_TEXT:
            return value
        shared = self._texts.get(value)
        if shared is not None:
            return shared
        if len(self._texts) < self.limit:
            self._texts[value] = value
        return value

    def details(self, details: ComputerDetails) -> ComputerDetails:
        """C{details} with its short texts shared."""
        share = self.share
        for name in details.__struct_fields__:
            value = getattr(details, name)
            if type(value) is str:
                setattr(details, name, share(value))
        return details
