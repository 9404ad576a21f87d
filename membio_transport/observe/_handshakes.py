"""
What each completed handshake negotiated, and how long it took.

`HandshakeDetails` is the `TLSStats.detail` an exporter installs: the
transport calls it once per completed handshake (never per record), and it
only counts, so that a scrape reads it like the other counters.  Label
values are bounded by the server's own configuration: the versions,
ciphers and groups it accepts.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Final

from OpenSSL import SSL

from ..tls import TLSStats

__all__ = ["DURATION_BUCKETS", "HandshakeDetails", "details_of"]

#: Upper bounds (seconds) of the handshake-duration histogram, from
#: connection start to handshake completion, so one network round trip or
#: two included.  Loopback and LAN handshakes take about a millisecond,
#: clients across the Internet tens to hundreds; our timeout is 10 s.
DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

#: The label value when OpenSSL does not name something (a resumed TLS 1.2
#: session has no key exchange, so no group).
NONE: Final = "none"


class HandshakeDetails:
    """
    Counts of (version, cipher, group) and a duration histogram.

    @ivar parameters: completed handshakes by (TLS version, cipher, group).
    @ivar bucket_counts: handshakes per duration bucket (not cumulative;
        one more than C{bounds}, the last for longer ones).
    @ivar duration_sum: seconds, over every handshake counted.
    """

    def __init__(
        self,
        bounds: Sequence[float] = DURATION_BUCKETS,
        now: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.bounds = tuple(bounds)
        self.now = now
        self.parameters: Counter[tuple[str, str, str]] = Counter()
        self.bucket_counts = [0] * (len(self.bounds) + 1)
        self.duration_sum = 0.0

    def handshake_completed(self, connection: SSL.Connection, started: float) -> None:
        elapsed = self.now() - started
        self.parameters[(
            connection.get_protocol_version_name() or NONE,
            connection.get_cipher_name() or NONE,
            connection.get_group_name() or NONE,
        )] += 1
        self.bucket_counts[bisect_left(self.bounds, elapsed)] += 1
        self.duration_sum += elapsed

    @property
    def count(self) -> int:
        """Handshakes recorded."""
        return sum(self.bucket_counts)


def details_of(stats: TLSStats) -> HandshakeDetails:
    """
    The `HandshakeDetails` of C{stats}, installed now if it has none:
    handshakes completed before that are counted, without details.

    @raise TypeError: C{stats.detail} is some other recorder.
    """
    detail = stats.detail
    if detail is None:
        detail = stats.detail = HandshakeDetails()
    if not isinstance(detail, HandshakeDetails):
        raise TypeError(
            f"TLSStats.detail is a {type(detail).__name__}, not HandshakeDetails: "
            "it records per-handshake details for someone else"
        )
    return detail
