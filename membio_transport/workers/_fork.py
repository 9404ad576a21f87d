"""
Becoming a worker: what a process forked from a running Twisted program
must do before it can serve on its own.

After ``fork()`` the child holds a copy of the parent's reactor, but that
reactor's epoll instance and wake-up pipes are *shared* with the parent: if
the child polled them, each process would steal the other's events.  The
child therefore drops them without touching the parent's registrations
(closing its own descriptors only), installs a fresh reactor of the same
kind as the global one, and builds everything it serves after that.  Its
signal set-up is its own too: the parent's handlers and wake-up descriptor
are forgotten, stop signals stay blocked until the new reactor handles them,
and the child asks the kernel for SIGTERM should the parent die.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from typing import Any, Final

__all__ = ["STOP_SIGNALS", "fresh_reactor", "leave_parent_signals", "stop_once_on_signals"]

#: Signals that stop a worker (gracefully).  The parent blocks them around
#: ``fork()``; `stop_once_on_signals` unblocks them once they are handled.
STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})
#: prctl(2) operation: the signal a process gets when its parent dies.
_PR_SET_PDEATHSIG: Final = 1


def leave_parent_signals(parent_pid: int) -> None:
    """
    In a new worker: forget the parent's signal set-up (its wake-up pipe is
    the parent's), and die with the parent rather than outlive it.
    """
    signal.set_wakeup_fd(-1)
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(number, signal.SIG_DFL)
    # Reloading is the parent's job (it forks new workers): a SIGHUP sent to
    # the whole process group must not end the workers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        # The parent died before prctl: nobody would stop us.
        os._exit(1)


#: Reactors retired in forked workers.  Kept alive on purpose: finalizing
#: them would close descriptor numbers that may belong to something else
#: by then.
_retired: list[Any] = []


def fresh_reactor() -> Any:
    """
    Replace the reactor inherited from the parent with a new one of the same
    kind, installed as the global reactor, and return it.

    The inherited reactor's epoll instance is shared with the parent, so it
    must never be polled here; its descriptors are closed in this process
    only (which does not affect the parent's registrations), and the object
    is kept, never finalized.
    """
    import twisted.internet
    from twisted.internet.main import installReactor

    old: Any = sys.modules.get("twisted.internet.reactor")
    if old is None:
        from twisted.internet.epollreactor import EPollReactor

        kind: Any = EPollReactor
    else:
        kind = type(old)
        _retired.append(old)
        descriptors = set()
        for selectable in [*old.getReaders(), *old.getWriters()]:
            with contextlib.suppress(Exception):
                descriptors.add(selectable.fileno())
        for fd in descriptors:
            with contextlib.suppress(OSError):
                os.close(fd)
        poller = getattr(old, "_poller", None)
        close = getattr(poller, "close", None)
        if close is not None:
            close()
        del sys.modules["twisted.internet.reactor"]
        with contextlib.suppress(AttributeError):
            del twisted.internet.reactor
    reactor = kind()
    installReactor(reactor)
    return reactor


def stop_once_on_signals(reactor: Any) -> None:
    """
    SIGTERM or SIGINT stop the worker; more of them while it drains are
    ignored (Twisted's own handler would log a ReactorNotRunning traceback
    for each: the parent's SIGTERM and a terminal's SIGINT often both come).
    """
    stopping = False

    def stop(number: int, frame: Any) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            reactor.callFromThread(reactor.stop)

    for number in STOP_SIGNALS:
        signal.signal(number, stop)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
