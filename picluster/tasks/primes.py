"""
The C{primes} task: count the primes in a range, the demo workload.

It runs in a child process of its own (so it uses a core of its own and can
be killed), and this module imports only the standard library, so that the
child starts quickly even on a Pi.
"""

from __future__ import annotations

from math import isqrt

from picluster.tasks.errors import BadArguments

#: The widest range C{primes} counts in one run.
PRIMES_MAX_RANGE = 10**8
#: The largest C{stop}: the sieve of the primes up to its square root is
#: what a run costs before it counts anything (at 10**12, about 15 MiB and
#: 0.15 s on a laptop; at 10**16 it would be 365 MiB and 10 s, for a range
#: of one number).
PRIMES_MAX_STOP = 10**12
_PRIMES_SEGMENT = 1 << 18


def primes(start: int, stop: int) -> int:
    """Count the primes p with start <= p < stop (a CPU-bound demo)."""
    for name, value in (("start", start), ("stop", stop)):
        if type(value) is not int:
            raise BadArguments(f"primes: {name} must be an integer, not {value!r}")
    if stop < start:
        raise BadArguments(f"primes: stop ({stop}) is less than start ({start})")
    if stop - start > PRIMES_MAX_RANGE:
        raise BadArguments(f"primes: the range is wider than {PRIMES_MAX_RANGE}")
    if stop > PRIMES_MAX_STOP:
        raise BadArguments(f"primes: stop ({stop}) is larger than {PRIMES_MAX_STOP}")
    return count_primes(start, stop)


def count_primes(start: int, stop: int) -> int:
    """A segmented sieve of Eratosthenes over [start, stop)."""
    low = max(start, 2)
    if stop <= low:
        return 0
    base = _primes_up_to(isqrt(stop - 1))
    count = 0
    for segment_low in range(low, stop, _PRIMES_SEGMENT):
        segment_high = min(segment_low + _PRIMES_SEGMENT, stop)
        size = segment_high - segment_low
        segment = bytearray(b"\x01") * size
        for p in base:
            square = p * p
            if square >= segment_high:
                break
            # Smaller multiples of p were crossed out by smaller primes.
            first = max(square, -(-segment_low // p) * p) - segment_low
            segment[first::p] = bytes(len(range(first, size, p)))
        count += segment.count(1)
    return count


def _primes_up_to(limit: int) -> list[int]:
    if limit < 2:
        return []
    sieve = bytearray(b"\x01") * (limit + 1)
    sieve[0] = sieve[1] = 0
    for p in range(2, isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return [i for i, prime in enumerate(sieve) if prime]
