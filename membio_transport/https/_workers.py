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
from twisted.web.server import Site

from ..tls import format_host, format_host_port
from ..workers import AdoptedSocketEndpoint, WorkerPool, open_port_socket, parse_worker_options

__all__ = ["check_https_options", "close_idle_http", "https_service"]

_log = Logger(namespace="membio_transport.workers")


def close_idle_http(protocol: Any) -> bool:
    """
    For `WorkerPool`'s ``close_idle``: close the HTTP connection under the
    TLS layer C{protocol} if it is between requests (so that nothing is
    lost), and say whether it was.
    """
    channel = getattr(protocol, "wrappedProtocol", protocol)
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
    ``membio-https --workers N``: the parent binds --port and keeps the TLS
    context the options built; each worker serves the same site as a
    single ``membio-https`` process would (C{make_site}), on the shared
    socket.
    """
    if options["listen"] or options["redirect-http"] is not None:
        # Checked by the options already; kept here for direct callers.
        raise ValueError("--workers serves the --port socket only")
    command = options.command_name()
    interface, port = options["interface"], options["port"]

    def start_worker(reactor: Any, sockets: Sequence[socket.socket]) -> list[Any]:
        # Built here, in the worker, so that its timers use this reactor.
        site = make_site()
        return [
            options._wrap(AdoptedSocketEndpoint(reactor, sock)).listen(site) for sock in sockets
        ]

    def announce(sockets: Sequence[socket.socket]) -> None:
        certificate = options["certificate"]
        host, bound = sockets[0].getsockname()[:2]
        url = f"https://{_browse_host(host)}:{bound}/"
        lines = [
            f"HTTPS on {format_host_port(host, bound)}, shared by {options['workers']} worker "
            f"process(es) with one TLS context (sessions resume on any worker)"
        ]
        if options["cert"]:
            lines += [f"using your certificate: {line.strip()}" for line in certificate.summary()]
        else:
            lines += certificate.trust_instructions(url)
        lines.append(f"ready: open {url}")
        for line in lines:
            _log.info("{line}", line=line, log_system="membio-https")

    hardening_services = getattr(options, "hardening_services", None)
    return WorkerPool(
        lambda: open_port_socket(command, interface, port),
        start_worker,
        options["workers"],
        grace=options["grace"],
        close_idle=close_idle_http,
        announce=announce,
        # The certificate reloader runs here, in the parent: a reload makes
        # a new context, and the workers are then replaced by new forks.
        helpers=hardening_services() if hardening_services is not None else (),
        context_of=lambda: getattr(options["tls_options"], "context", None),
        system="membio-https",
    )


def check_https_options(options: Any) -> None:
    """``membio-https``: parse --workers/--grace and refuse what workers cannot share."""
    from twisted.python import usage

    parse_worker_options(options)
    if options["workers"] and (options["listen"] or options["redirect-http"] is not None):
        raise usage.UsageError(
            "--workers shares the --port socket among processes; --listen and "
            "--redirect-http are not supported with it (run a separate membio-https for them)"
        )


def _browse_host(host: str) -> str:
    import ipaddress

    address = ipaddress.ip_address(host.split("%", 1)[0])
    if address.is_loopback or address.is_unspecified:
        return "localhost"
    return format_host(str(address))
