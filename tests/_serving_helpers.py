"""
Helpers for the tests of the serving layer's certificate lifecycle: a
stand-in for the process-wide SIGHUP dispatcher, so that in-process tests
install no signal handler unless they mean to.
"""

from __future__ import annotations

from collections.abc import Callable


class NoSignals:
    """A SIGHUP dispatcher that installs nothing; `fire` calls the subscribers."""

    def __init__(self) -> None:
        self.subscribers: list[Callable[[], object]] = []

    def subscribe(self, subscriber: Callable[[], object]) -> Callable[[], None]:
        self.subscribers.append(subscriber)

        def unsubscribe() -> None:
            if subscriber in self.subscribers:
                self.subscribers.remove(subscriber)

        return unsubscribe

    def fire(self) -> None:
        for subscriber in list(self.subscribers):
            subscriber()
