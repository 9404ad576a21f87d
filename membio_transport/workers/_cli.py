"""
``--workers N`` and ``--grace`` on the command line, for both apps:
checking them, and binding the sockets the workers share, with the same
one-line start-up errors as a single process.  What each app's workers
serve is the app's business (``https/_workers``, ``proxy/tap``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, Final

from ..serving import Listener, StartupError, exit_with_message, listen_error
from ._pool import DEFAULT_GRACE, MAX_WORKERS
from ._shared import SharedListener

__all__ = ["WORKER_OPTIONS", "close_shared", "open_shared_sockets", "parse_worker_options"]

#: ``--workers`` and ``--grace`` as twistd option rows, the same in both apps.
WORKER_OPTIONS: Final[list[list[Any]]] = [
    [
        "workers", None, "0",
        "Serve from N worker processes sharing the listening sockets and one TLS context "
        "(sessions resume on any worker; a crashed worker is restarted); 0 serves from this "
        "process.",
    ],
    [
        "grace", None, f"{DEFAULT_GRACE:g}",
        "With --workers: seconds open connections get to finish on SIGTERM.",
    ],
]


def parse_worker_options(options: Any) -> None:
    """
    Check and convert the ``--workers`` and ``--grace`` options (strings)
    of a twistd Options object, in place.

    @raise twisted.python.usage.UsageError: with a one-line message.
    """
    from twisted.python import usage

    text = str(options["workers"])
    try:
        workers = int(text)
    except ValueError:
        raise usage.UsageError(f"--workers {text!r} is not a number") from None
    if not 0 <= workers <= MAX_WORKERS:
        raise usage.UsageError(
            f"--workers {workers} is out of range (0 serves from this process; at most "
            f"{MAX_WORKERS}; one or two per core is the useful range)"
        )
    text = str(options["grace"])
    try:
        grace = float(text)
    except ValueError:
        raise usage.UsageError(f"--grace {text!r} is not a number of seconds") from None
    if not 0 <= grace <= 3600:
        raise usage.UsageError(f"--grace {grace:g} is out of range (0-3600 seconds)")
    options["workers"], options["grace"] = workers, grace


def open_shared_sockets(command: str, listeners: Sequence[SharedListener]) -> list[socket.socket]:
    """
    Bind every shared listener, in order, in the parent; on the first that
    cannot, undo the others and end start-up with one line saying why.
    """
    from twisted.internet.error import CannotListenError

    sockets: list[socket.socket] = []
    for shared in listeners:
        try:
            sockets.append(shared.bind())
        except OSError as error:
            for sock in sockets:
                sock.close()
            close_shared(listeners)
            listener = Listener(shared.label, None, shared.option)  # type: ignore[arg-type]  # only named
            message = listen_error(CannotListenError(None, shared.port, error), listener)
            exit_with_message(command)
            raise StartupError(message) from None
    return sockets


def close_shared(listeners: Sequence[SharedListener]) -> None:
    """Remove what binding left behind (UNIX socket files), once the sockets are closed."""
    for shared in listeners:
        if shared.cleanup is not None:
            shared.cleanup()
