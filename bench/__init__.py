"""
picluster's benchmarks: how fast and how big, against the baselines a user
would otherwise pick, each measured in the same run on the same machine.

Run one with C{python -m bench NAME [--quick]}, or all of them with
C{python -m bench all}; C{docs/benchmarks.rst} says what each measures and
holds the figures of a run.  Every figure that carries a goal is a ratio
against a baseline started by the same invocation, with the load generated
by separate processes, because absolute figures on a shared machine drift
from one run to the next.
"""
