"""
SIGHUP, the signal every TLS daemon reloads its certificates on, shared by
whoever needs it in this process.

A process has one handler per signal, and several things may want SIGHUP:
each certificate source of ours (one per ``membio:`` endpoint string, one
per app), and the host program itself (a ``.tac`` that rotates its logs on
HUP, say).  `SignalDispatcher` installs one handler the first time a
subscriber comes and calls every subscriber from it; a handler the host
program had installed before is kept and called after ours, never replaced
or lost, and put back when the last subscriber leaves.  A handler the host
installs after ours replaces it, as it would any other: chaining to ours,
if it wants to, is its business.

Without any handler, SIGHUP terminates a Python process (``twistd words``
installs none): once a source subscribes, a HUP reloads and never kills.

A signal handler runs between two bytecodes of whatever the main thread
was doing, so subscribers must only schedule their work (the sources use
``reactor.callFromThread``).  Python delivers signals to the main thread
only: subscribing from another thread records the subscriber but installs
nothing (a reactor run in a thread gets no SIGHUP of ours).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Final

from twisted.logger import Logger

__all__ = ["SIGHUP", "SignalDispatcher"]

_log = Logger(namespace="membio_transport.reload")

Subscriber = Callable[[], object]


class SignalDispatcher:
    """One process-wide handler for C{number}, calling every subscriber, then the host's."""

    def __init__(self, number: signal.Signals) -> None:
        self.number = number
        self._subscribers: dict[int, Subscriber] = {}
        self._next = 0
        #: The handler that was there before ours, while ours is installed.
        self._previous: Any = None
        self._installed = False
        # One bound method object, so that "is ours still installed?" is an
        # identity test.
        self._handler = self._handle

    @property
    def installed(self) -> bool:
        """Whether our handler is the process's handler for the signal now."""
        return self._installed and signal.getsignal(self.number) is self._handler

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """
        Call C{subscriber} on every signal from now on; returns the call
        that unsubscribes it (harmless to call twice).
        """
        token = self._next
        self._next += 1
        self._subscribers[token] = subscriber
        if not self._installed and threading.current_thread() is threading.main_thread():
            current = signal.getsignal(self.number)
            if current is not self._handler:  # ours may have stayed (see _uninstall)
                self._previous = current
                signal.signal(self.number, self._handler)
            self._installed = True

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)
            if not self._subscribers:
                self._uninstall()

        return unsubscribe

    def _uninstall(self) -> None:
        if not self._installed:
            return
        self._installed = False
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works in the main thread only; ours stays, calling nobody
        if signal.getsignal(self.number) is self._handler:
            previous = self._previous
            signal.signal(self.number, signal.SIG_DFL if previous is None else previous)
        # Otherwise the host replaced ours meanwhile: theirs stays.
        self._previous = None

    def _handle(self, number: int, frame: FrameType | None) -> None:
        for subscriber in list(self._subscribers.values()):
            try:
                subscriber()
            except Exception:
                _log.failure("a {signal} subscriber failed", signal=self.number.name)
        previous = self._previous
        if callable(previous):
            previous(number, frame)


#: The dispatcher of this process's SIGHUP.
SIGHUP: Final = SignalDispatcher(signal.SIGHUP)
