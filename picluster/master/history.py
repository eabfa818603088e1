"""
A bounded ring of a node's recent vitals, for the dashboard's charts.

The master keeps one per slave for as long as it remembers the slave, so
its size is paid per node, 20,000 times on a large master: the samples live
in one flat C{array} of float32, four to a sample (the time, as an offset
from the ring's own base, then the three readings), sized once for the
whole ring when the first sample comes: 16 bytes a sample and one object,
where four growing arrays took 26 bytes and four objects (and a deque of
tuples of floats, tens of bytes a reading).  Recording one costs four
stores and no allocation.
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from picluster.wire.messages import Vitals

#: Samples kept per node: 20 minutes at the slave's default 10 s vitals.
DEFAULT_SAMPLES = 120

#: The readings charted, as named in the API and in the vitals message.
SERIES = (
    ("cpu_percent", "cpu_percentage"),
    ("temperature", "cpu_temperature"),
    ("ram_free", "ram_free"),
)

_MISSING = math.nan

#: The largest magnitude a float32 holds: a reading past it (a peer may send
#: 1e39, or an integer of 400 digits) is a gap, not an infinity that JSON
#: could not carry.
_FLOAT32_MAX = 3.4e38

_NUMBERS = (int, float)

#: Values stored a sample: the time's offset, then one per series.
_WIDTH = 1 + 3

#: Seconds an offset may reach before the ring moves its base up to the
#: newest sample: a float32 is within 8 ms of any offset this small.
_REBASE_AFTER = 65536.0

# The vitals keys of the series, named for record(), which reads them
# without a loop: it runs for every vitals message of every slave.
_CPU_KEY, _TEMPERATURE_KEY, _RAM_KEY = (key for _, key in SERIES)


def _reading(value: Any) -> float:
    # int and float compare exactly, so a huge int never overflows here.
    if type(value) in _NUMBERS and -_FLOAT32_MAX < value < _FLOAT32_MAX:
        return value
    return _MISSING


def _shown(value: float) -> float | None:
    return None if math.isnan(value) else value


class VitalsHistory:
    """
    The last C{capacity} vitals samples of one node, oldest first.

    Times are the master's clock at arrival (a slave's clock may be wrong);
    a reading the slave did not have is kept as NaN and shown as C{None}.
    """

    def __init__(self, capacity: int = DEFAULT_SAMPLES):
        self.capacity = capacity
        # Sized at the first sample: a node that never sends vitals pays nothing.
        self._samples: array | None = None
        self._count = 0
        self._next = 0
        self._base = 0.0

    def __len__(self) -> int:
        return self._count

    def record(self, when: float, vitals: Vitals) -> None:
        """Add a sample, dropping the oldest once full."""
        samples = self._samples
        if samples is None:
            samples = self._samples = array("f", bytes(4 * _WIDTH * self.capacity))
            self._base = when
        offset = when - self._base
        if not -_REBASE_AFTER < offset < _REBASE_AFTER:
            self._rebase(when)
            offset = 0.0
        at = self._next * _WIDTH
        samples[at] = offset
        samples[at + 1] = _reading(getattr(vitals, _CPU_KEY))
        samples[at + 2] = _reading(getattr(vitals, _TEMPERATURE_KEY))
        samples[at + 3] = _reading(getattr(vitals, _RAM_KEY))
        self._next = (self._next + 1) % self.capacity
        if self._count < self.capacity:
            self._count += 1

    def _rebase(self, when: float) -> None:
        """Make C{when} the base: older samples' offsets go negative (and coarser)."""
        samples = self._samples
        assert samples is not None
        shift = when - self._base
        for at in range(0, len(samples), _WIDTH):
            samples[at] -= shift
        self._base = when

    def _column(self, series: int) -> list[float]:
        """One value of each sample, oldest first."""
        if self._samples is None:
            return []
        column = self._samples[series::_WIDTH].tolist()
        if self._count < self.capacity:
            return column[:self._count]
        at = self._next
        return column[at:] + column[:at]

    def as_dict(self) -> dict[str, list[Any]]:
        """The samples as the API shows them: one list per series, and C{t}."""
        base = self._base
        shown: dict[str, list[Any]] = {"t": [base + offset for offset in self._column(0)]}
        for series, (name, _) in enumerate(SERIES, 1):
            readings = [_shown(value) for value in self._column(series)]
            if name == "ram_free":
                readings = [None if value is None else int(value) for value in readings]
            shown[name] = readings
        return shown
