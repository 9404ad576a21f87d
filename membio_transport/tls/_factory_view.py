"""
What a TLS connection sees of the factory that made it.

`MemoryBIOTLSFactory` creates `MemoryBIOTLSProtocol`s, so the factory's
module imports the protocol's.  The protocol (and the mixins it is made
of: `_aggregate`, `_timers`, `_sniff`) only needs to read the factory's
settings and call a few of its methods, which `FactoryView` lists.  Typing
the protocol against this view instead of the factory class keeps the
import graph one-way (factory -> protocol), with nothing but a structural
type in between.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet.interfaces import IReactorTime
from zope.interface.declarations import Declaration

from ._policy import PlainHTTPPolicy
from ._stats import TLSStats

__all__ = ["FactoryView"]


class FactoryView(Protocol):
    """The settings and hooks every connection of a factory shares."""

    isClient: bool
    #: Makes the memory-BIO ``SSL.Connection`` of one protocol.
    connection_for: Callable[[Any], SSL.Connection]
    send_buffer_limit: int
    refuse_renegotiation: bool
    handshake_timeout: float | None
    idle_timeout: float | None
    close_timeout: float
    plain_http: PlainHTTPPolicy | None
    log_handshake_failures: bool
    stats: TLSStats

    @property
    def clock(self) -> IReactorTime:
        """Schedules batching and timeouts."""

    @property
    def schedules_timers(self) -> bool:
        """Whether the close timeout and the memory sweeper may set timers."""

    def burst(self, protocol: Any) -> None:
        """C{protocol} moved a burst: release its buffers once it is quiet."""

    def handshake_deadline(self, protocol: Any, timeout: float) -> Any:
        """Abort C{protocol}'s handshake after C{timeout} seconds; cancel() the result."""

    def flush_next_turn(self, protocol: Any) -> None:
        """C{protocol} wrote outside a callback: flush it at the next reactor turn."""

    def no_flush_next_turn(self, protocol: Any) -> None:
        """C{protocol} is gone before that flush."""

    def forget(self, protocol: Any) -> None:
        """C{protocol} is gone."""

    def registerProtocol(self, protocol: Any) -> None:
        """Twisted's ``WrappingFactory`` bookkeeping of live connections."""

    def unregisterProtocol(self, protocol: Any) -> None:
        """The other half of `registerProtocol`."""

    def provide_transport_interfaces(self, protocol: Any, transport_spec: Declaration) -> None:
        """Make C{protocol} also provide what its transport provides."""
