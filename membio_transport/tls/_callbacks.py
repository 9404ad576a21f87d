"""
Exceptions raised by Python callbacks that OpenSSL runs during a handshake.

OpenSSL calls back into Python while it handshakes: the servername (SNI)
callback, ALPN selection, certificate verification, the info and key-log
callbacks.  None of them can raise through OpenSSL, and pyOpenSSL deals
with their exceptions in three different ways:

* verification and ALPN selection: the exception is kept and raised again
  by the OpenSSL call (``do_handshake``) once the handshake has failed;
* servername: the exception goes to ``sys.excepthook`` (a traceback on
  stderr, never the application's log) and the handshake fails with an
  alert;
* info and key log: cffi hands the exception to ``sys.unraisablehook`` and
  the handshake goes on as if nothing had happened.

The engine wants all three the same way: the exception, with its type and
traceback, so that it can fail the handshake once and the Twisted layer can
log it.  The first way needs nothing; for the other two, `capture` diverts
both hooks *for the current thread only*, while the engine runs a
handshake step.  The diverting hooks are installed once, wrap whatever
hooks were there, and pass everything else (other threads, other times)
through unchanged.
"""

from __future__ import annotations

import sys
import threading
from types import TracebackType
from typing import Any

__all__ = ["Capture"]


class _Sink(threading.local):
    #: Where exceptions go while this thread runs a capture; None otherwise.
    errors: list[BaseException] | None = None


_sink = _Sink()


class _ExceptHook:
    """``sys.excepthook`` that keeps the exceptions of a running capture."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(
        self,
        kind: type[BaseException],
        value: BaseException,
        traceback: TracebackType | None,
    ) -> Any:
        errors = _sink.errors
        if errors is None:
            return self.previous(kind, value, traceback)
        errors.append(value.with_traceback(traceback))
        return None


class _UnraisableHook:
    """``sys.unraisablehook`` that keeps the exceptions of a running capture."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> Any:
        errors = _sink.errors
        value = unraisable.exc_value
        if errors is None or value is None:
            return self.previous(unraisable)
        errors.append(value.with_traceback(unraisable.exc_traceback))
        return None


def _install() -> None:
    # Idempotent, and repeated because a test runner may swap the hooks
    # for its own between two handshakes: ours then wrap the new ones.
    if not isinstance(sys.excepthook, _ExceptHook):
        sys.excepthook = _ExceptHook(sys.excepthook)
    if not isinstance(sys.unraisablehook, _UnraisableHook):
        sys.unraisablehook = _UnraisableHook(sys.unraisablehook)


class Capture:
    """
    Collect, in `errors`, what callbacks raise on this thread inside the
    ``with`` block.  Captures nest: an inner one (a handshake driven from a
    callback of another) keeps its own exceptions.
    """

    __slots__ = ("_outer", "errors")

    def __init__(self) -> None:
        self.errors: list[BaseException] = []
        self._outer: list[BaseException] | None = None

    def __enter__(self) -> Capture:
        _install()
        self._outer = _sink.errors
        _sink.errors = self.errors
        return self

    def __exit__(self, *exc_info: object) -> None:
        _sink.errors = self._outer
