"""
The timers of one TLS connection: the handshake timeout, the idle timeout
and the close timeout.

`ConnectionTimers` is one of the pieces `MemoryBIOTLSProtocol` is made of
(see `_protocol`); its methods run on the protocol itself.  Each timer is
one ``callLater`` on the factory's clock, started and cancelled here:

* the handshake timeout (a policy, `_policy`) aborts a connection whose
  handshake has not completed in time: a slowloris client cannot hold it.
  Every connection has one and nearly all of them are cancelled within
  milliseconds, so a factory keeps them all under one ``callLater``
  (`HandshakeDeadlines`), set for the earliest deadline;
* the idle timeout closes, with close_notify, an established connection
  that moved no byte for that long; the timer is not moved on every byte:
  it looks at the time of the last one when it fires, and sets itself
  again for what is left;
* the close timeout ends the wait for the peer's close_notify after ours
  (Twisted's layer waits forever, twisted#7926).
"""

from __future__ import annotations

import heapq
import itertools
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ._errors import TLSConnectionError, TLSHandshakeError

if TYPE_CHECKING:
    from ._factory_view import FactoryView

__all__ = ["ConnectionTimers", "HandshakeDeadlines"]

_log = Logger(namespace="membio_transport.tls")


class ConnectionTimers:
    """
    @ivar _handshake_timer: aborts a handshake that takes too long (an
        entry of the factory's `HandshakeDeadlines`).
    @ivar _idle_timer: closes a connection that stays quiet too long.
    @ivar _close_timer: stops waiting for the peer's close_notify.
    @ivar _last_activity: clock time of the last byte in or out, kept
        only while an idle timer runs.
    """

    factory: FactoryView
    connected: int
    disconnecting: int
    _handshake_timer: Deadline | None = None
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
        self._handshake_timer = self.factory.handshake_deadline(self, timeout)

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


class TimesOut(Protocol):
    def _handshake_timed_out(self) -> None: ...


class Deadline:
    """One connection's handshake deadline; cancelled like a DelayedCall."""

    __slots__ = ("connection", "owner", "time")

    def __init__(self, owner: HandshakeDeadlines, time: float, connection: TimesOut) -> None:
        self.owner = owner
        self.time = time
        self.connection: TimesOut | None = connection

    def active(self) -> bool:
        return self.connection is not None

    def cancel(self) -> None:
        if self.connection is not None:
            # The connection is let go at once: a heap entry must not keep
            # a closed connection (and its SSL object) alive until its time.
            self.connection = None
            self.owner.cancelled()


class HandshakeDeadlines:
    """
    The handshake timeouts of one factory's connections, under one
    ``callLater`` set for the earliest deadline still pending.

    Each connection would otherwise create a DelayedCall, push it on the
    reactor's heap and cancel it a few milliseconds later (and the reactor
    rebuilds its heap as cancelled calls pile up): about 15k instructions
    a connection in all.  Here a connection costs a small entry in a heap;
    a cancelled entry drops its connection at once and leaves the heap when
    its time comes.  Each connection still times out at exactly its own
    deadline, and when no handshake is pending no call is left behind.
    """

    __slots__ = ("_call", "_clock", "_heap", "_live", "_order")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Deadline]] = []
        self._order = itertools.count()
        self._live = 0
        self._call: IDelayedCall | None = None

    def add(self, connection: TimesOut, timeout: float) -> Deadline:
        """C{connection}'s handshake must complete within C{timeout} seconds."""
        deadline = Deadline(self, self._clock.seconds() + timeout, connection)
        heap = self._heap
        heapq.heappush(heap, (deadline.time, next(self._order), deadline))
        self._live += 1
        if self._call is None:
            self._call = self._clock.callLater(timeout, self._expire)
        elif heap[0][2] is deadline:
            # Earlier than every other (a shorter timeout than before).
            self._call.reset(timeout)
        return deadline

    def cancelled(self) -> None:
        self._live -= 1
        if not self._live:
            self._heap.clear()
            if self._call is not None:
                self._call.cancel()
                self._call = None

    def _expire(self) -> None:
        self._call = None
        heap = self._heap
        now = self._clock.seconds()
        due = []
        while heap and (heap[0][0] <= now or heap[0][2].connection is None):
            deadline = heapq.heappop(heap)[2]
            if deadline.connection is not None:
                due.append(deadline.connection)
                deadline.connection = None
                self._live -= 1
        if heap:
            self._call = self._clock.callLater(max(heap[0][0] - now, 0), self._expire)
        for connection in due:
            connection._handshake_timed_out()
