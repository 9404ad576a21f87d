"""
A cap on simultaneous connections, below TLS.

Past a few thousand connections a single-threaded server spends its time
on handshakes and memory rather than on the clients it already has.
`ConnectionLimit` counts the connections of every endpoint it wraps
(`LimitedEndpoint`) and closes new ones at once while the count is at the
cap, before any TLS work is done for them: the client sees the
connection closed (or reset, if its ClientHello was already waiting) and
can retry later.  A flood must not also flood the log: refusals are
summed per burst, and each burst gets one line when it ends.
"""

from __future__ import annotations

from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from ..tls import TLSStats

__all__ = ["ConnectionLimit", "LimitedEndpoint"]

_log = Logger(namespace="membio_transport.limits")

#: Refusals less than this many seconds apart belong to one burst.
BURST_GAP: Final = 1.0
#: A burst that goes on this long is reported anyway, and a new one begins:
#: a sustained flood is visible in the log every minute, not only when it ends.
BURST_REPORT_EVERY: Final = 60.0


class _Refused(Protocol):
    """Closes its connection as soon as it is made."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(IProtocolFactory, ILoggingContext)
class _LimitedFactory:
    """
    Hands connections to the TLS factory while the limit allows, else to
    `_Refused`.  The count is the TLS factories' own (``TLSStats.active``,
    shared by every listener), so accepted connections pay nothing extra.
    """

    def __init__(self, limit: ConnectionLimit, wrapped: IProtocolFactory) -> None:
        self.limit = limit
        self.wrapped = wrapped

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        if not self.limit.admit():
            return _Refused()
        return self.wrapped.buildProtocol(addr)

    def doStart(self) -> None:
        self.wrapped.doStart()

    def doStop(self) -> None:
        self.wrapped.doStop()

    def logPrefix(self) -> str:
        if ILoggingContext.providedBy(self.wrapped):
            prefix: str = self.wrapped.logPrefix()
            return prefix
        return type(self.wrapped).__name__


class ConnectionLimit:
    """
    At most C{maximum} connections at once across every endpoint wrapped
    with it; the others are closed as soon as they are accepted.

    Give C{factory_options} to every TLS factory under the limit: their
    shared counters are what it reads.

    @ivar stats: the counters of every TLS connection under the limit.
    @ivar refused: connections refused since the start.
    """

    def __init__(self, maximum: int, *, clock: Any = None, log_system: str = "membio") -> None:
        if maximum < 1:
            raise ValueError(f"the connection limit must be at least 1, not {maximum}")
        self.maximum = maximum
        self.stats = TLSStats()
        self.refused = 0
        self._clock = clock
        self._log_system = log_system
        self._burst_refused = 0
        self._burst_start = 0.0
        self._last_refusal = 0.0
        self._burst_timer: IDelayedCall | None = None

    @property
    def clock(self) -> Any:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        return self._clock

    def wrap(self, endpoint: IStreamServerEndpoint) -> LimitedEndpoint:
        return LimitedEndpoint(endpoint, self)

    @property
    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for the TLS factories under this limit."""
        return {"stats": self.stats}

    def admit(self) -> bool:
        """Whether a new connection may stay; counts it when it may not."""
        if self.stats.active < self.maximum:
            return True
        self.refused += 1
        now = self.clock.seconds()
        if self._burst_timer is None:
            self._burst_refused = 0
            self._burst_start = now
            self._burst_timer = self.clock.callLater(BURST_GAP, self._check_burst)
        self._burst_refused += 1
        self._last_refusal = now
        return False

    def _check_burst(self) -> None:
        self._burst_timer = None
        now = self.clock.seconds()
        quiet_since = now - self._last_refusal
        if quiet_since < BURST_GAP and now - self._burst_start < BURST_REPORT_EVERY:
            self._burst_timer = self.clock.callLater(BURST_GAP - quiet_since, self._check_burst)
            return
        if self._burst_refused:
            _log.warn(
                "refused {count} connection(s) over --max-connections {maximum} in {seconds:.1f}s "
                "({refused} since start)",
                count=self._burst_refused, maximum=self.maximum,
                seconds=max(self._last_refusal - self._burst_start, 0.0),
                refused=self.refused, log_system=self._log_system,
                event_name="connection_refused_limit",
            )
        if quiet_since < BURST_GAP:
            # Still refusing: the next report covers from here on.
            self._burst_refused = 0
            self._burst_start = now
            self._burst_timer = self.clock.callLater(BURST_GAP, self._check_burst)

    def stop(self) -> None:
        """Cancel the pending burst report (the server is stopping)."""
        if self._burst_timer is not None and self._burst_timer.active():
            self._burst_timer.cancel()
        self._burst_timer = None


@implementer(IStreamServerEndpoint)
class LimitedEndpoint:
    """Listen on C{wrapped}, with C{limit} deciding which connections are kept."""

    def __init__(self, wrapped: IStreamServerEndpoint, limit: ConnectionLimit) -> None:
        self.wrapped = wrapped
        self.limit = limit

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.wrapped.listen(_LimitedFactory(self.limit, protocolFactory))
