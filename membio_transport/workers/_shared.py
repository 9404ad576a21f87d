"""
The listening sockets ``--workers`` share: which endpoints can be shared,
binding them in the parent, and listening on them in each worker.

A socket can be shared between processes when the parent can bind it once
and every worker can accept from it: a TCP port (``--port``, ``tcp:``,
``tcp6:``), a UNIX socket (``unix:``), a socket systemd passes
(``systemd:``), and the PROXY protocol (``haproxy:``) around one of those,
which each worker reads on its own connections.  Anything else (an endpoint
that connects out, resolves names, or manages a lock file) is refused with
one line saying why, before anything starts.

In the parent, `SharedListener.bind` makes the socket (non-blocking: a
worker that loses the race for a connection must not block in ``accept()``
and miss its SIGTERM); in a worker, `SharedListener.endpoint` is a server
endpoint over that socket, with the same wrapping as the description asked
for.  Reading Twisted's endpoint objects needs a few of their attributes
(``_port``, ``_interface``, ``_backlog``, ``_address``...) and the class
of ``haproxy:``'s wrapper, which have not changed in years;
`tests/test_workers.py` runs each kind for real.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.python.lockfile import FilesystemLock
from zope.interface import implementer

from ._pool import AdoptedSocketEndpoint, listening_socket

__all__ = ["SharedListener", "SharingRefused", "share"]

#: What can be shared, for the refusal message.
_SHAREABLE = "tcp:, tcp6:, unix:, systemd: and haproxy: around one of them"


class SharingRefused(ValueError):
    """This endpoint cannot be shared between processes; the message says why."""


@dataclass
class SharedListener:
    """
    A listener the workers share.

    @ivar label: what messages call it (``127.0.0.1:8443``, ``unix:/run/a.sock``).
    @ivar option: the option that asked for it (``--port``, ``--listen``...).
    @ivar bind: makes the socket, in the parent.
    @ivar wrappers: wrap each worker's factory (the PROXY protocol's reader).
    @ivar cleanup: undo what binding left behind (a UNIX socket's file).
    """

    label: str
    option: str
    bind: Callable[[], socket.socket]
    #: The TCP port asked for, for the privileged-port advice.
    port: int | None = None
    wrappers: list[Callable[[IProtocolFactory], IProtocolFactory]] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None

    def endpoint(self, reactor: Any, sock: socket.socket) -> IStreamServerEndpoint:
        """In a worker: listen on C{sock} (already bound), wrapped as described."""
        endpoint: IStreamServerEndpoint = AdoptedSocketEndpoint(reactor, sock)
        for wrapper in reversed(self.wrappers):
            endpoint = _Wrapping(endpoint, wrapper)
        return endpoint


@implementer(IStreamServerEndpoint)
class _Wrapping:
    """Listen on C{inner} with the application's factory wrapped (``haproxy:``)."""

    def __init__(
        self, inner: IStreamServerEndpoint, wrapper: Callable[[IProtocolFactory], IProtocolFactory]
    ) -> None:
        self.inner = inner
        self.wrapper = wrapper

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self.inner.listen(self.wrapper(protocolFactory))


def share(endpoint: IStreamServerEndpoint, label: str, option: str) -> SharedListener:
    """
    How the workers share C{endpoint} (a parsed server endpoint), with the
    listen queue it was given.

    @raise SharingRefused: it cannot be shared.
    """
    from twisted.internet.endpoints import (
        AdoptedStreamServerEndpoint,
        TCP4ServerEndpoint,
        TCP6ServerEndpoint,
        UNIXServerEndpoint,
        _WrapperServerEndpoint,
    )

    wrappers: list[Callable[[IProtocolFactory], IProtocolFactory]] = []
    while isinstance(endpoint, _WrapperServerEndpoint):
        from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory

        wrapper = endpoint._wrapperFactory
        if wrapper is not HAProxyWrappingFactory:
            break
        wrappers.append(wrapper)
        endpoint = endpoint._wrappedEndpoint
    if isinstance(endpoint, (TCP4ServerEndpoint, TCP6ServerEndpoint)):
        port, queue = endpoint._port, endpoint._backlog
        interface = endpoint._interface or (
            "::" if isinstance(endpoint, TCP6ServerEndpoint) else "0.0.0.0"
        )
        return SharedListener(
            label, option, lambda: listening_socket(interface, port, queue), port, wrappers
        )
    if isinstance(endpoint, UNIXServerEndpoint):
        unix = _UnixSocket(endpoint._address, endpoint._mode, endpoint._backlog, endpoint._wantPID)
        return SharedListener(label, option, unix.bind, None, wrappers, unix.cleanup)
    if isinstance(endpoint, AdoptedStreamServerEndpoint):
        fileno, family = endpoint.fileno, endpoint.addressFamily
        return SharedListener(
            label, option, lambda: _adopted_socket(fileno, family), None, wrappers
        )
    raise SharingRefused(
        f"{option} {label}: {label.split(':', 1)[0]}: cannot be shared between processes "
        f"(--workers): only {_SHAREABLE} can; serve it from a separate process"
    )


class _UnixSocket:
    """
    A UNIX socket bound by the parent the way Twisted's ``unix:`` binds it:
    with ``lockfile`` (Twisted's default), the parent holds ``PATH.lock``
    and removes a socket file a dead process left; the file is removed
    when the parent stops, so that the next start can bind again.
    """

    def __init__(self, path: str, mode: int, backlog: int, lock: bool) -> None:
        self.path, self.mode, self.backlog = path, mode, backlog
        self.lock: FilesystemLock | None = FilesystemLock(f"{path}.lock") if lock else None

    def bind(self) -> socket.socket:
        if self.lock is not None:
            if not self.lock.lock():
                raise OSError(errno.EADDRINUSE, f"{self.path}.lock is held by another process")
            if not self.lock.clean:
                _remove_socket_file(self.path)  # left by a process that died
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            os.chmod(self.path, self.mode)
            sock.listen(self.backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def cleanup(self) -> None:
        _remove_socket_file(self.path)
        if self.lock is not None and self.lock.locked:
            self.lock.unlock()


def _remove_socket_file(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass  # gone already, or not ours to remove


def _adopted_socket(fileno: int, family: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM, fileno=os.dup(fileno))
    # systemd hands sockets over blocking; shared by every worker's accept
    # loop, a blocking one would keep a worker in accept() past its SIGTERM.
    sock.setblocking(False)
    return sock
