"""
``twistd membio-tls``: a TLS termination proxy (what stunnel or hitch do).

It accepts TLS on ``--port`` (and/or ``--listen`` endpoints), and relays
the decrypted stream of every connection to a plaintext ``--backend``
(any Twisted client endpoint: ``tcp:127.0.0.1:6667``, ``unix:/run/app.sock``),
optionally announcing the client's address with the PROXY protocol
(``--proxy-protocol v1|v2``).  ``--workers N`` shares the ``--port``
socket among N processes, as ``membio-https --workers`` does.

Certificates work as for ``membio-https``: yours with ``--cert``/``--key``,
or one generated (and reused) in the state directory.  Mistakes end the
program with one line and exit status 1.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ..observe import with_log_format
from ..serving import (
    DEFAULT_BACKLOG,
    TLS_PREFIXES,
    Listener,
    StartupError,
    TLSOptions,
    TLSServing,
    endpoint_from,
    exit_with_message,
    listen_error,
    names_for_interface,
    parse_interface,
    parse_port,
    tcp_endpoint,
)
from ..tls import format_address, format_host_port
from ..workers import (
    LISTEN_BACKLOG,
    WORKER_OPTIONS,
    SharedListener,
    SharingRefused,
    WorkerPool,
    close_shared,
    open_shared_sockets,
    parse_worker_options,
    share,
)
from ._relay import PROXY_PROTOCOL_VERSIONS, ProxyFactory

__all__ = ["Options", "TLSProxyService", "makeService"]

_log = Logger(namespace="membio_transport.proxy")

#: What the log lines are tagged with.
_SYSTEM: Final = "membio-tls"

_DESCRIPTION: Final = """\
TLS termination proxy on membio-transport's TLS: accepts TLS on --port or
--listen and relays each decrypted connection to --backend, with
backpressure and half-close in both directions.  Without --cert, a
certificate is generated (and reused, and renewed while running) as for
membio-https; certificates are reloaded on SIGHUP and when their files
change.  --alpn offers any protocol names: the negotiated one is what the
backend sees in a PROXY v2 header.
"""

_EXAMPLES: Final = """\
Examples:
  twistd -n membio-tls --port 6697 --backend tcp:127.0.0.1:6667
  twistd -n membio-tls --port 8443 --backend tcp:127.0.0.1:8080 --proxy-protocol v2 \\
      --alpn h2,http/1.1 --cert chain.pem --key key.pem --workers 2
  twistd -n membio-tls --listen 'haproxy:tcp:8443' --backend unix:/run/app.sock
"""


class Options(TLSOptions):
    synopsis = "--port PORT --backend ENDPOINT [options]"
    entry_point = "membio-tls"
    command: ClassVar[str] = "twistd membio-tls"
    longdesc = ""  # see getUsage

    optParameters: ClassVar[list[list[Any]]] = [
        ["port", "p", None, "TCP port to accept TLS connections on."],
        [
            "interface", "i", "127.0.0.1",
            "IP address for --port: 127.0.0.1 serves this machine only, 0.0.0.0 or :: "
            "the network.",
        ],
        [
            "backend", "b", None,
            "Where the decrypted stream goes: a Twisted client endpoint such as "
            "tcp:127.0.0.1:6667 or unix:/run/app.sock (required).",
        ],
        [
            "proxy-protocol", None, None,
            "Start every backend connection with a PROXY protocol header naming the "
            "client: v1 (text) or v2 (binary, also carries SNI, ALPN, TLS version and "
            "client certificate).",
        ],
        *WORKER_OPTIONS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """Also accept TLS on this plain server endpoint (repeatable), e.g. haproxy:tcp:8443."""
        self["listen"].append(description)

    def getUsage(self, width: int | None = None) -> str:
        return f"{super().getUsage(width)}\n{_DESCRIPTION}\n{_EXAMPLES}"

    def postOptions(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        parse_worker_options(self)
        settings = self.tls_settings()
        version = self["proxy-protocol"]
        if version is not None and version not in PROXY_PROTOCOL_VERSIONS:
            raise usage.UsageError(f"--proxy-protocol {version!r} is unknown; use v1 or v2")
        backend = self["backend"]
        if not backend:
            raise usage.UsageError(
                "--backend is required: where to send the decrypted stream, e.g. "
                "--backend tcp:127.0.0.1:6667"
            )
        try:
            clientFromString(reactor, backend)
        except (ValueError, TypeError, KeyError) as error:
            raise usage.UsageError(
                f"--backend {backend!r} is not a client endpoint ({error}); e.g. "
                "tcp:127.0.0.1:6667 or unix:/run/app.sock"
            ) from None
        self["interface"] = parse_interface(self["interface"])
        if self["port"] is None and not self["listen"]:
            raise usage.UsageError("give --port (or --listen) to accept TLS connections on")
        if self["port"] is not None:
            self["port"] = parse_port("--port", self["port"])
        backlog = settings.backlog or (LISTEN_BACKLOG if self["workers"] else DEFAULT_BACKLOG)
        plain = self._plain_listeners(reactor, backlog)
        try:
            self["shared"] = (
                [share(item.endpoint, item.label, item.port_option) for item in plain]
                if self["workers"] else []
            )
        except SharingRefused as error:
            raise usage.UsageError(str(error)) from None
        serving = TLSServing(
            settings,
            names=() if self["port"] is None else names_for_interface(self["interface"]),
            clock=None,  # the global reactor when needed: a forked worker has its own
            log_system=_SYSTEM,
        )
        self["serving"] = serving
        self["certificate"] = serving.certificate
        for listener in plain:
            listener.endpoint = serving.wrap(listener.endpoint, clock=reactor)
        self["listeners"] = plain

    def _plain_listeners(self, reactor: Any, backlog: int) -> list[Listener]:
        listeners = []
        if self["port"] is not None:
            interface, port = self["interface"], self["port"]
            listeners.append(
                Listener(
                    format_host_port(interface, port),
                    tcp_endpoint(reactor, interface, port, backlog),
                    "--port",
                )
            )
        for description in self["listen"]:
            if description.split(":", 1)[0].lower() in TLS_PREFIXES:
                raise usage.UsageError(
                    f"--listen {description}: give a plain endpoint such as tcp:6697; "
                    "membio-tls adds TLS"
                )
            listeners.append(
                Listener(
                    description,
                    endpoint_from(reactor, "--listen", description, backlog),
                    "--listen",
                )
            )
        return listeners


def _proxy_factory(reactor: Any, options: Options) -> ProxyFactory:
    from twisted.internet.endpoints import clientFromString

    return ProxyFactory(
        clientFromString(reactor, options["backend"]),
        options["backend"],
        options["proxy-protocol"],
    )


def _summary(options: Options) -> list[str]:
    serving: TLSServing = options["serving"]
    certificate = serving.certificate
    proxy = options["proxy-protocol"]
    alpn = ", ".join(name.decode("ascii") for name in serving.settings.alpn) or "none"
    lines = [
        f"forwarding decrypted connections to {options['backend']}"
        + (f" with a PROXY protocol {proxy} header" if proxy else ""),
        f"TLS profile {serving.settings.profile}, ALPN {alpn}",
    ]
    if serving.own_certificate:
        label = serving.certificate_label
        lines += [f"using {label}: {line.strip()}" for line in certificate.summary()]
    else:
        lines += [
            *certificate.summary(),
            f"  clients must trust {certificate.trust_path} "
            f"(for example: openssl s_client -CAfile {certificate.trust_path} ...)",
        ]
    return lines + serving.summary()


class TLSProxyService(Service):
    """Listens on every endpoint (before twistd drops privileges) with one relay factory."""

    name = _SYSTEM

    def __init__(self, options: Options) -> None:
        self.options = options
        self.ports: list[IListeningPort] = []
        self._listened = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self._listen()

    def _listen(self) -> None:
        if self._listened:
            return
        self._listened = True
        from twisted.internet import reactor

        factory = _proxy_factory(reactor, self.options)
        lines: list[str] = []
        for listener in self.options["listeners"]:
            outcome: list[Any] = []
            listener.endpoint.listen(factory).addBoth(outcome.append)
            if not outcome:
                lines.append(f"TLS on {listener.label} (when it is ready)")
                continue
            if isinstance(outcome[0], Failure):
                for port in self.ports:
                    port.stopListening()
                command = self.options.command_name()
                exit_with_message(command)
                raise StartupError(listen_error(outcome[0].value, listener))
            port = outcome[0]
            self.ports.append(port)
            address = port.getHost()
            where = (
                format_address(address)
                if isinstance(getattr(address, "port", None), int)
                else listener.label
            )
            lines.append(f"TLS on {where}")
        lines += _summary(self.options)
        for line in lines:
            _log.info("{line}", line=line, log_system=_SYSTEM)

    def stopService(self) -> Deferred[Any]:
        super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(port.stopListening) for port in ports])


def _worker_pool(options: Options) -> WorkerPool:
    command = options.command_name()
    serving: TLSServing = options["serving"]
    shared: list[SharedListener] = options["shared"]

    def start_worker(reactor: Any, sockets: Sequence[socket.socket]) -> list[Any]:
        # The parent reloads certificates (a reload forks new workers), so
        # the worker's endpoints run no lifecycle of their own.
        factory = _proxy_factory(reactor, options)
        return [
            serving.wrap(listener.endpoint(reactor, sock), clock=reactor, lifecycle=False)
            .listen(factory)
            for listener, sock in zip(shared, sockets, strict=True)
        ]

    def announce(sockets: Sequence[socket.socket]) -> None:
        lines = [
            f"TLS on {_where(sock, listener)}, shared by {options['workers']} worker "
            "process(es) with one TLS context"
            for listener, sock in zip(shared, sockets, strict=True)
        ]
        for line in [*lines, *_summary(options)]:
            _log.info("{line}", line=line, log_system=_SYSTEM)

    return WorkerPool(
        lambda: open_shared_sockets(command, shared),
        start_worker,
        options["workers"],
        grace=options["grace"],
        announce=announce,
        helpers=[serving.service(workers=True)],
        context_of=lambda: serving.creator.context,
        cleanup=lambda: close_shared(shared),
        # With --metrics, each worker reports its counters to the parent.
        fork_link=serving.fork_link,
        system=_SYSTEM,
    )


def _where(sock: socket.socket, listener: SharedListener) -> str:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        host, port = sock.getsockname()[:2]
        return format_host_port(host, port)
    return listener.label


def makeService(options: Options) -> IService:
    """Build the service twistd runs from parsed L{Options}."""
    serving: TLSServing = options["serving"]
    service: Service = _worker_pool(options) if options["workers"] else TLSProxyService(options)
    return with_log_format(service, serving.settings.log_format)
