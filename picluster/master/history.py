"""
A bounded ring of a node's recent vitals, for the dashboard's charts.

The master keeps one per slave for as long as it remembers the slave, so
its size is paid per node: the samples live in flat C{array}s (a few bytes
a reading) rather than in a deque of tuples of floats (tens of bytes a
reading), and recording one costs four stores and no allocation.
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
        self._times = array("d")
        # float32 is ample for a chart, and halves the ring.
        self._values = [array("f") for _ in SERIES]
        self._next = 0

    def __len__(self) -> int:
        return len(self._times)

    def record(self, when: float, vitals: Vitals) -> None:
        """Add a sample, dropping the oldest once full."""
        cpu = _reading(getattr(vitals, _CPU_KEY))
        temperature = _reading(getattr(vitals, _TEMPERATURE_KEY))
        ram = _reading(getattr(vitals, _RAM_KEY))
        times = self._times
        cpus, temperatures, rams = self._values
        if len(times) < self.capacity:
            times.append(when)
            cpus.append(cpu)
            temperatures.append(temperature)
            rams.append(ram)
            return
        at = self._next
        times[at] = when
        cpus[at] = cpu
        temperatures[at] = temperature
        rams[at] = ram
        self._next = (at + 1) % self.capacity

    def _in_order(self, column: array) -> list[float]:
        at = self._next
        return column[at:].tolist() + column[:at].tolist()

    def as_dict(self) -> dict[str, list[Any]]:
        """The samples as the API shows them: one list per series, and C{t}."""
        shown: dict[str, list[Any]] = {"t": self._in_order(self._times)}
        for values, (name, _) in zip(self._values, SERIES):
            readings = [_shown(value) for value in self._in_order(values)]
            if name == "ram_free":
                readings = [None if value is None else int(value) for value in readings]
            shown[name] = readings
        return shown
