"""
``membio-https --workers N``: what the parent and each worker of the HTTPS
server do on top of the generic pool (``membio_transport.workers``).

The parent binds ``--port`` and keeps the TLS context the options built
(and the certificate reloader); each worker serves exactly the site a
single ``membio-https`` process would, from its own fresh reactor, and
closes idle keep-alive connections at once when it is told to stop.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import Site

from ..serving import DEFAULT_PORT, TLSServing
from ..tls import format_host, format_host_port
from ..workers import (
    SharedListener,
    WorkerPool,
    close_shared,
    open_shared_sockets,
)
from ._redirect import RedirectToHTTPS, redirect_host

__all__ = ["close_idle_http", "https_service"]

_log = Logger(namespace="membio_transport.workers")


def close_idle_http(protocol: Any) -> bool:
    """
    For `WorkerPool`'s ``close_idle``: close the HTTP connection under the
    TLS layer C{protocol} if it is between requests (so that nothing is
    lost), and say whether it was.
    """
    channel = getattr(protocol, "wrappedProtocol", protocol)
    # Behind the ACME challenge gate (with ACME on), the application is one wrapper further.
    while isinstance(channel, ProtocolWrapper) and channel.wrappedProtocol is not None:
        channel = channel.wrappedProtocol
    # twisted.web wraps HTTP/1.1 and HTTP/2 channels in a proxy that picks
    # one after ALPN; the chosen channel is its _channel.
    channel = getattr(channel, "_channel", channel)
    requests = getattr(channel, "requests", None)
    streams = getattr(channel, "streams", None)
    if isinstance(requests, list):
        idle = not requests
    elif isinstance(streams, dict):
        idle = not streams
    else:
        return False
    if not idle:
        return False
    # Channels register themselves as their transport's producer, and a
    # transport with a producer waits for it before closing: HTTP/1.1
    # channels unregister in their own loseConnection, others are helped.
    close = getattr(channel, "loseConnection", None)
    if close is not None:
        close()
    else:
        protocol.loseConnection()
        protocol.unregisterProducer()
    return True


def https_service(options: Any, make_site: Callable[[], Site]) -> WorkerPool:
    """
    ``membio-https --workers N``: the parent binds every listener (--port,
    the --listen endpoints that can be shared, --redirect-http) and keeps
    the TLS context the options built, with its certificate lifecycle; each
    worker serves the same site as a single ``membio-https`` process would
    (C{make_site}), on the shared sockets.
    """
    command = options.command_name()
    serving: TLSServing = options["serving"]
    shared: list[SharedListener] = options["shared"]
    redirect = options["redirect_listener"] is not None
    https = shared[:-1] if redirect else shared

    def start_worker(reactor: Any, sockets: Sequence[socket.socket]) -> list[Any]:
        # Built here, in the worker, so that its timers use this reactor.
        # The parent reloads certificates (a reload forks new workers), so
        # the worker's endpoints run no lifecycle of their own.
        site = make_site()
        listening = [
            serving.wrap(listener.endpoint(reactor, sock), clock=reactor, lifecycle=False)
            .listen(site)
            for listener, sock in zip(https, sockets, strict=False)
        ]
        if redirect:
            answer = RedirectToHTTPS(redirect_host(options["interface"]))
            answer.https_port = _https_port(sockets)
            root = serving.http_resource(answer)  # ACME http-01 answers first, if enabled
            listening.append(shared[-1].endpoint(reactor, sockets[-1]).listen(Site(root)))
        return listening

    def announce(sockets: Sequence[socket.socket]) -> None:
        certificate = serving.certificate
        urls: list[str] = []
        lines = []
        for listener, sock in zip(https, sockets, strict=False):
            where = _where(sock, listener)
            lines.append(
                f"HTTPS on {where}, shared by {options['workers']} worker process(es) with "
                "one TLS context (sessions resume on any worker)"
            )
            address = sock.getsockname()
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                urls.append(f"https://{_browse_host(address[0])}:{address[1]}/")
        if redirect:
            lines.append(f"plain HTTP on {_where(sockets[-1], shared[-1])} redirects to HTTPS")
        if serving.own_certificate:
            label = serving.certificate_label
            lines += [f"using {label}: {line.strip()}" for line in certificate.summary()]
        else:
            lines += certificate.trust_instructions(urls[0] if urls else "https://localhost/")
        lines += [f"ready: open {url}" for url in urls] or ["ready (no TCP listener)"]
        for line in lines:
            _log.info("{line}", line=line, log_system="membio-https")

    return WorkerPool(
        lambda: open_shared_sockets(command, shared),
        start_worker,
        options["workers"],
        grace=options["grace"],
        close_idle=close_idle_http,
        announce=announce,
        # The certificate lifecycle runs here, in the parent: a reload makes
        # a new context, and the workers are then replaced by new forks.
        helpers=[serving.service(workers=True)],
        context_of=lambda: serving.creator.context,
        cleanup=lambda: close_shared(shared),
        # With --metrics, each worker reports its counters to the parent.
        fork_link=serving.fork_link,
        system="membio-https",
    )


def _where(sock: socket.socket, listener: SharedListener) -> str:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return format_host_port(host, port)
    return listener.label


def _https_port(sockets: Sequence[socket.socket]) -> int:
    """The first TCP port HTTPS is served on, where redirects point."""
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    return DEFAULT_PORT


def _browse_host(host: str) -> str:
    import ipaddress

    address = ipaddress.ip_address(host.split("%", 1)[0])
    if address.is_loopback or address.is_unspecified:
        return "localhost"
    return format_host(str(address))
