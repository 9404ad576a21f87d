"""
``--workers N`` and ``--grace`` on the command line, for both apps:
checking them, and binding the sockets the workers share, with the same
one-line start-up errors as a single process.  What each app's workers
serve is the app's business (``https/_workers``, ``proxy/tap``).
"""

from __future__ import annotations

import socket
from typing import Any

from ..serving import Listener, StartupError, exit_with_message, listen_error
from ..tls import format_host_port
from ._pool import MAX_WORKERS, listening_socket

__all__ = ["open_port_socket", "parse_worker_options"]


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


def open_port_socket(command: str, interface: str, port: int) -> list[socket.socket]:
    """The shared socket for --port, or a one-line start-up error."""
    from twisted.internet.error import CannotListenError

    try:
        return [listening_socket(interface, port)]
    except OSError as error:
        listener = Listener(
            format_host_port(interface, port), None, "--port"  # type: ignore[arg-type]  # only named
        )
        message = listen_error(CannotListenError(interface, port, error), listener)
        exit_with_message(command)
        raise StartupError(message) from None
