"""
Giving back the memory that bursts of traffic leave behind in a connection.

OpenSSL's memory BIOs never shrink: each keeps the largest buffer it ever
grew to, about 4/3 of the largest burst that passed through it.  An idle
keep-alive connection that has just served a 1 MiB download through
``membio-https`` was measured holding about 330 KiB that way, against 26 KiB
for one that served nothing; a server with thousands of such connections
would hold gigabytes for no reason.

Shrinking after every burst would be wrong too: a busy connection would
regrow its buffers for the next one (measured: a 64 KiB write and drain
goes from 18 to 28 us).  So connections report their bursts here, and one
sweeper per factory, not a timer per connection, looks at them every
`period` seconds: a connection that had no burst since the previous look is
quiet, and its engine swaps its BIOs for empty ones.  glibc keeps freed
blocks for its own reuse; a ``malloc_trim`` after a sweep that freed
something hands whole free pages back to the system.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from typing import Final, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["BURST_SIZE", "BufferReclaimer", "Reclaimable"]

#: Ciphertext in one piece, either way, that makes a connection worth
#: watching: below this the BIOs hold less than the bookkeeping is worth.
BURST_SIZE: Final = 16384

#: Seconds between looks: a connection is released 1-2 periods after its
#: last burst.
DEFAULT_PERIOD: Final = 2.0


class Reclaimable(Protocol):
    def release_buffers(self) -> bool:
        """Free the grown buffers if nothing waits in them; True if done."""


class BufferReclaimer:
    """Releases the buffers of connections that have gone quiet after a burst."""

    def __init__(self, clock: IReactorTime, period: float = DEFAULT_PERIOD) -> None:
        self._clock = clock
        self.period = period
        # Connections with grown buffers, and those among them that had a
        # burst since the last sweep (still busy: left alone).
        self._watched: set[Reclaimable] = set()
        self._recent: set[Reclaimable] = set()
        self._sweep_call: IDelayedCall | None = None
        #: Connections released so far (for tests and statistics).
        self.released = 0

    def burst(self, connection: Reclaimable) -> None:
        """C{connection} just moved a burst: its buffers may have grown."""
        self._recent.add(connection)
        if self._sweep_call is None:
            self._sweep_call = self._clock.callLater(self.period, self._sweep)

    def forget(self, connection: Reclaimable) -> None:
        """C{connection} is gone; its buffers go with it."""
        self._watched.discard(connection)
        self._recent.discard(connection)
        if not self._watched and not self._recent and self._sweep_call is not None:
            # Nothing left to look at: leave no timer behind (trial reports
            # pending calls after a test as a dirty reactor).
            self._sweep_call.cancel()
            self._sweep_call = None

    def _sweep(self) -> None:
        self._sweep_call = None
        recent, self._recent = self._recent, set()
        released = 0
        for connection in self._watched - recent:
            if connection.release_buffers():
                released += 1
                self._watched.discard(connection)
        self._watched |= recent
        self.released += released
        if released and _malloc_trim is not None:
            _malloc_trim(0)
        if self._watched:
            self._sweep_call = self._clock.callLater(self.period, self._sweep)


def _find_malloc_trim() -> Callable[[int], int] | None:
    # glibc only; elsewhere freed memory simply stays with the allocator.
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim: Final = _find_malloc_trim()
