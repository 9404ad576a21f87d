"""
Start-up errors as one line on standard error and exit status 1, not a
traceback: `StartupError`, the message saying why a listener cannot listen
(port in use, privileged port, foreign address) and what to do, and the
hooks that make twistd print it and exit with status 1.  Used by
``membio-https``, ``membio-tls`` and the ``--workers`` parent alike.
"""

from __future__ import annotations

import errno
import os
import sys
from types import TracebackType

from twisted.internet.error import CannotListenError

from ._listeners import DEFAULT_PORT, Listener


class StartupError(Exception):
    """The server cannot start; the message is one line saying why and what to do."""


def listen_error(error: BaseException | None, listener: Listener) -> str:
    """One line saying why C{listener} cannot listen, and what to do about it."""
    where = f"cannot listen on {listener.label}"
    cause = getattr(error, "socketError", None) if isinstance(error, CannotListenError) else error
    code = getattr(cause, "errno", None)
    if code == errno.EADDRINUSE:
        return (
            f"{where}: the address is already in use (another server, or another "
            f"membio-https, is listening there); stop it or choose another {listener.port_option}"
        )
    if code in (errno.EACCES, errno.EPERM):
        port = getattr(error, "port", None)
        if isinstance(port, int) and 0 < port < _unprivileged_port_start():
            return (
                f"{where}: permission denied, ports below {_unprivileged_port_start()} need "
                f"privileges; use a port of 1024 or more (e.g. {listener.port_option} "
                f"{DEFAULT_PORT}), or allow it with 'sudo sysctl -w "
                f"net.ipv4.ip_unprivileged_port_start={port}' or the CAP_NET_BIND_SERVICE "
                "capability (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE)"
            )
        return f"{where}: permission denied ({os.strerror(code)})"
    if code == errno.EADDRNOTAVAIL:
        return f"{where}: that address does not belong to this machine; check --interface"
    if isinstance(cause, OSError) and cause.strerror:
        return f"{where}: {cause.strerror}"
    return f"{where}: {error}"


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as stream:
            return int(stream.read().strip())
    except (OSError, ValueError):
        return 1024


def exit_with_message(command: str) -> None:
    """
    Make the StartupError about to escape from twistd print as one line:
    twistd lets exceptions from starting services end the process, and the
    interpreter would print a traceback.
    """
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, traceback: TracebackType | None
    ) -> None:
        if isinstance(value, StartupError):
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"{command}: error: {value}\n")
            stream.flush()
        else:
            previous(kind, value, traceback)

    sys.excepthook = hook


def exit_status_one() -> None:
    """End with status 1 (after twistd's own clean-up): the server never started."""
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(1)
