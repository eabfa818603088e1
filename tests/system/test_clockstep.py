"""
A master whose system clock is stepped, for real: its twistd process runs
under libfaketime (Debian's C{faketime}), whose offset the test changes
while the master runs, the monotonic clock left alone, as NTP leaves it.
"""

from __future__ import annotations

import glob
import os
import signal

from twisted.internet import defer
from twisted.trial import unittest

from tests.processes import Cluster, sleep

#: Where Debian puts the library (one folder an architecture).
LIBFAKETIME = "/usr/lib/*/faketime/libfaketime.so.1"


class SteppedMasterTests(unittest.TestCase):
    """
    A master stepped an hour forward drops no slave; stepped back, it still
    drops a frozen one after dead-after.  Both would fail with timers on the
    wall clock: forward, every deadline comes at once; back, an hour late.
    """

    def setUp(self) -> None:
        found = glob.glob(LIBFAKETIME)
        if not found:
            raise unittest.SkipTest(
                "libfaketime is not installed (Debian package faketime; .ci/run installs it)"
            )
        self.cluster = Cluster(self)
        self.offset_file = os.path.join(self.cluster.cwd, "faketime")
        self.step_to("+0")
        self.env = {
            "LD_PRELOAD": found[0],
            "FAKETIME_TIMESTAMP_FILE": self.offset_file,
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step_to(self, offset: str) -> None:
        """Set the master's wall clock to the real one moved by C{offset} (seconds, signed)."""
        with open(self.offset_file, "w", encoding="utf-8") as out:
            out.write(f"{offset}\n")

    @defer.inlineCallbacks
    def test_stepped(self) -> defer.Generator[defer.Deferred[object], object, None]:
        """An hour forward and back again, while a slave is connected, then frozen."""
        cluster = self.cluster
        master = cluster.master("master", env=self.env)
        slave = cluster.slave("slave")
        [joined] = yield cluster.wait_for_slaves("the slave to join", lambda slaves: len(slaves) == 1)

        self.step_to("+3600")
        yield cluster.wait_for_log(master, "stepped forward by 3,600 s")
        # Past dead-after (three keepalives of 1 s) on the monotonic clock.
        yield sleep(4)
        [still] = yield cluster.wait_for_slaves("the slave's details", lambda slaves: len(slaves) == 1)
        self.assertEqual(still["connected_at"], joined["connected_at"], cluster.report())
        self.assertGreater(still["last_seen"], joined["connected_at"] + 3500, cluster.report())
        self.assertNotIn("nothing received for", master.output(), cluster.report())
        self.assertNotIn("Rejoined master", slave.output(), cluster.report())

        self.step_to("+0")
        yield cluster.wait_for_log(master, "stepped back by 3,600 s")
        slave.signal(signal.SIGSTOP)
        self.addCleanup(slave.signal, signal.SIGCONT)
        yield cluster.wait_for_slaves("the master to drop the frozen slave", lambda slaves: not slaves)
        self.assertIn(f"({joined['uuid']}): nothing received for", master.output(), cluster.report())
