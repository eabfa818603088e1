"""
The per-node vitals ring and the registry's memory of slaves that left.
"""

from __future__ import annotations

from twisted.trial import unittest

from picluster.master.history import VitalsHistory
from picluster.master.registry import Departure, SlaveRegistry
from picluster.wire.messages import Vitals


class HistoryTests(unittest.TestCase):
    def test_oldestFirstAcrossTheWrap(self) -> None:
        history = VitalsHistory(capacity=3)
        for n in range(5):
            history.record(100.0 + n, Vitals(**{"cpu_percentage": float(n), "ram_free": 1000 + n}))
        shown = history.as_dict()
        self.assertEqual(len(history), 3)
        self.assertEqual(shown["t"], [102.0, 103.0, 104.0])
        self.assertEqual(shown["cpu_percent"], [2.0, 3.0, 4.0])
        self.assertEqual(shown["ram_free"], [1002, 1003, 1004])

    def test_missingAndBadReadings(self) -> None:
        """Readings a slave lacks, or sends as nonsense, chart as gaps."""
        history = VitalsHistory()
        history.record(1.0, Vitals(**{"cpu_percentage": None, "cpu_temperature": "hot", "ram_free": True}))
        history.record(2.0, Vitals(**{}))
        shown = history.as_dict()
        self.assertEqual(shown["cpu_percent"], [None, None])
        self.assertEqual(shown["temperature"], [None, None])
        self.assertEqual(shown["ram_free"], [None, None])

    def test_everySeriesAcrossTheWrap(self) -> None:
        """Each series keeps its own readings, in the same slots as the times."""
        history = VitalsHistory(capacity=2)
        for n in range(3):
            history.record(float(n), Vitals(**{"cpu_percentage": n + 0.5, "cpu_temperature": 40 + n,
                                      "ram_free": 2**30 * (n + 1)}))
        self.assertEqual(history.as_dict(), {
            "t": [1.0, 2.0], "cpu_percent": [1.5, 2.5], "temperature": [41.0, 42.0],
            "ram_free": [2**31, 3 * 2**30],
        })

    def test_readingsOutOfRange(self) -> None:
        """Readings no float32 holds are gaps, not infinities, huge integers too."""
        history = VitalsHistory()
        history.record(1.0, Vitals(**{"cpu_percentage": 1e39, "cpu_temperature": -(10**400),
                             "ram_free": 10**38}))
        shown = history.as_dict()
        self.assertEqual((shown["cpu_percent"], shown["temperature"]), ([None], [None]))
        self.assertAlmostEqual(shown["ram_free"][0] / 1e38, 1.0, places=5)

    def test_wallClockTimes(self) -> None:
        """Times from a wall clock come back within milliseconds, across a rebase of the ring."""
        history = VitalsHistory(capacity=4)
        start = 1_780_000_000.123
        times = [start, start + 10.5, start + 70_000.25, start + 70_010.75, start + 200_000.0]
        for when in times:
            history.record(when, Vitals(cpu_percentage=1.0))
        shown = history.as_dict()["t"]
        self.assertEqual(len(shown), 4)
        for got, wanted in zip(shown, times[1:]):
            self.assertAlmostEqual(got, wanted, delta=0.01)

    def test_oneArrayForTheRing(self) -> None:
        """A full ring is one array of 16 bytes a sample; a ring never fed holds none."""
        history = VitalsHistory(capacity=120)
        self.assertIsNone(history._samples)
        for n in range(200):
            history.record(float(n), Vitals(cpu_percentage=1.0))
        self.assertEqual(history._samples.itemsize * len(history._samples), 16 * 120)

    def test_empty(self) -> None:
        self.assertEqual(VitalsHistory().as_dict(),
                         {"t": [], "cpu_percent": [], "temperature": [], "ram_free": []})


def departure(uuid: str, left_at: float) -> Departure:
    return Departure(
        uuid=uuid, address="10.0.0.2:1", hostname="pi", computer_details=None, vitals=None,
        vitals_received_at=None, connected_at=0.0, last_seen=0.0, rtt_ms=None,
        history=VitalsHistory(), left_at=left_at, left_reason="connection lost",
    )


class DepartureTests(unittest.TestCase):
    def test_forgottenAfterAWhile(self) -> None:
        registry = SlaveRegistry(forget_after=60)
        registry.departed(departure("a", 10.0))
        registry.departed(departure("b", 20.0))
        self.assertEqual([d.uuid for d in registry.departures(30.0)], ["b", "a"])
        self.assertEqual([d.uuid for d in registry.departures(75.0)], ["b"])
        self.assertIsNone(registry.departure("a", 75.0))
        self.assertIsNotNone(registry.departure("b", 75.0))
        self.assertEqual(registry.departures(81.0), [])

    def test_bounded(self) -> None:
        """A peer that joins and leaves under fresh uuids cannot grow the list."""
        registry = SlaveRegistry(max_departures=3)
        for n in range(10):
            registry.departed(departure(str(n), float(n)))
        self.assertEqual([d.uuid for d in registry.departures(10.0)], ["9", "8", "7"])

    def test_returned(self) -> None:
        registry = SlaveRegistry()
        gone = departure("a", 1.0)
        registry.departed(gone)
        self.assertIs(registry.returned("a"), gone)
        self.assertEqual(registry.departures(2.0), [])
        self.assertIsNone(registry.returned("a"))

    def test_leftAgain(self) -> None:
        """A node that leaves twice is listed once, with its latest departure."""
        registry = SlaveRegistry()
        registry.departed(departure("a", 1.0))
        registry.departed(departure("b", 2.0))
        registry.departed(departure("a", 3.0))
        self.assertEqual([(d.uuid, d.left_at) for d in registry.departures(4.0)],
                         [("a", 3.0), ("b", 2.0)])
