"""
Counters a TLS server operator wants: how many connections, how many
handshakes succeeded, resumed or failed and why, how many bytes moved.

One `TLSStats` belongs to a factory by default; pass the same object to
several factories (one per listening port, say) to count them together.
Updating a counter is an integer addition on paths that already do far
more work, so they are always on.

What costs more than an addition (the negotiated version, cipher and group
of each handshake, its duration) is recorded only when someone asks: a
metrics exporter sets `TLSStats.detail` to a `HandshakeDetail`, which the
transport calls once per completed handshake; it stays None otherwise, and
the transport then pays one attribute check per connection.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from OpenSSL import SSL

__all__ = ["HandshakeDetail", "TLSStats"]


class HandshakeDetail(Protocol):
    """Per-handshake recording, for exporters (``membio_transport.observe``)."""

    def now(self) -> float:
        """A monotonic clock reading, taken when a connection starts."""

    def handshake_completed(self, connection: SSL.Connection, started: float) -> None:
        """C{connection} completed its handshake; C{started} is `now` at its start."""


@dataclass
class TLSStats:
    """
    @ivar active: connections currently open.
    @ivar connections: connections made (accepted, for a server) since the start.
    @ivar handshakes: handshakes completed.
    @ivar resumed: of those, how many resumed an earlier session.
    @ivar failed: failed handshakes by reason ("no shared cipher",
        "handshake timeout", "plain HTTP on the TLS port", ...).
    @ivar bytes_received: ciphertext bytes read from the transports.
    @ivar bytes_sent: ciphertext bytes written to the transports.
    @ivar plain_http_answered: plain-HTTP requests answered with the
        https:// URL (also counted in C{failed}).
    @ivar detail: per-handshake recording, or None (the default: no cost).
    """

    active: int = 0
    connections: int = 0
    handshakes: int = 0
    resumed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    bytes_sent: int = 0
    plain_http_answered: int = 0
    detail: HandshakeDetail | None = field(default=None, compare=False, repr=False)

    def snapshot(self) -> dict[str, object]:
        """A plain copy, for logs, metrics exporters and JSON."""
        return {
            "active": self.active,
            "connections": self.connections,
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "failed": dict(self.failed),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
            "plain_http_answered": self.plain_http_answered,
        }
