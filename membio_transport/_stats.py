"""
Counters a TLS server operator wants: how many connections, how many
handshakes succeeded, resumed or failed and why, how many bytes moved.

One `TLSStats` belongs to a factory by default; pass the same object to
several factories (one per listening port, say) to count them together.
Updating a counter is an integer addition on paths that already do far
more work, so they are always on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

__all__ = ["TLSStats"]


@dataclass
class TLSStats:
    """
    @ivar active: connections currently open.
    @ivar handshakes: handshakes completed.
    @ivar resumed: of those, how many resumed an earlier session.
    @ivar failed: failed handshakes by reason ("no shared cipher",
        "handshake timeout", "plain HTTP on the TLS port", ...).
    @ivar bytes_received: ciphertext bytes read from the transports.
    @ivar bytes_sent: ciphertext bytes written to the transports.
    """

    active: int = 0
    handshakes: int = 0
    resumed: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    bytes_received: int = 0
    bytes_sent: int = 0

    def snapshot(self) -> dict[str, object]:
        """A plain copy, for logs, metrics exporters and JSON."""
        return {
            "active": self.active,
            "handshakes": self.handshakes,
            "resumed": self.resumed,
            "failed": dict(self.failed),
            "bytes_received": self.bytes_received,
            "bytes_sent": self.bytes_sent,
        }
