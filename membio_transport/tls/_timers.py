"""
The timers of one TLS connection: the handshake timeout, the idle timeout
and the close timeout.

`ConnectionTimers` is one of the pieces `MemoryBIOTLSProtocol` is made of
(see `_protocol`); its methods run on the protocol itself.  Each timer is
one ``callLater`` on the factory's clock, started and cancelled here:

* the handshake timeout (a policy, `_policy`) aborts a connection whose
  handshake has not completed in time: a slowloris client cannot hold it;
* the idle timeout closes, with close_notify, an established connection
  that moved no byte for that long; the timer is not moved on every byte:
  it looks at the time of the last one when it fires, and sets itself
  again for what is left;
* the close timeout ends the wait for the peer's close_notify after ours
  (Twisted's layer waits forever, twisted#7926).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from ._errors import TLSConnectionError, TLSHandshakeError

if TYPE_CHECKING:
    from ._factory_view import FactoryView

__all__ = ["ConnectionTimers"]

_log = Logger(namespace="membio_transport.tls")


class ConnectionTimers:
    """
    @ivar _handshake_timer: aborts a handshake that takes too long.
    @ivar _idle_timer: closes a connection that stays quiet too long.
    @ivar _close_timer: stops waiting for the peer's close_notify.
    @ivar _last_activity: clock time of the last byte in or out, kept
        only while an idle timer runs.
    """

    factory: FactoryView
    connected: int
    disconnecting: int
    _handshake_timer: IDelayedCall | None = None
    _idle_timer: IDelayedCall | None = None
    _close_timer: IDelayedCall | None = None
    _last_activity: float

    if TYPE_CHECKING:

        def _handshake_failed(
            self, error: TLSConnectionError, reason: str, *, log: bool = True
        ) -> None: ...
        def _peer_text(self) -> str: ...
        def _flush(self) -> None: ...
        def _begin_close(self) -> None: ...
        def _close_transport(self) -> None: ...
        def abortConnection(self) -> None: ...

    def _start_handshake_timer(self, timeout: float) -> None:
        self._handshake_timer = self.factory.clock.callLater(timeout, self._handshake_timed_out)

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._handshake_failed(
            TLSHandshakeError(reason="handshake timeout"),
            f"handshake timeout ({self.factory.handshake_timeout:g}s)",
        )
        self.abortConnection()

    def _start_idle_timer(self, timeout: float) -> None:
        clock = self.factory.clock
        self._last_activity = clock.seconds()
        self._idle_timer = clock.callLater(timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.factory.idle_timeout
        if timeout is None or not self.connected:
            return
        idle = self.factory.clock.seconds() - self._last_activity
        if idle < timeout:
            self._idle_timer = self.factory.clock.callLater(timeout - idle, self._idle_check)
            return
        _log.info(
            "closing TLS connection from {peer}: idle for {idle:.0f}s",
            peer=self._peer_text(),
            idle=idle,
            event_name="connection_idle_closed",
        )
        # Our decision, not the application's: close even while a producer
        # is registered (twisted.web's channel always has one).
        self.disconnecting = True
        self._flush()
        self._begin_close()

    def _start_close_timer(self) -> None:
        if self._close_timer is None and self.factory.schedules_timers:
            self._close_timer = self.factory.clock.callLater(
                self.factory.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._close_timer = None
        self._close_transport()

    def _cancel_timers(self) -> None:
        """The connection is gone: no timer of it may fire any more."""
        timers: tuple[Any, ...] = (self._close_timer, self._handshake_timer, self._idle_timer)
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()
        self._close_timer = self._idle_timer = self._handshake_timer = None
