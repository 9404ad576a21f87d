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

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ..certs import (
    KEY_PASSWORD_ENV,
    CertificateError,
    check_key_passwords,
    default_cert_dir,
    read_key_password,
)
from ..serving import (
    TLS_PREFIXES,
    Listener,
    StartupError,
    TLSServerEndpoint,
    build_server_context,
    endpoint_from,
    exit_with_message,
    listen_error,
    parse_interface,
    parse_port,
    resolve_certificate,
    tcp_endpoint,
)
from ..tls import PROFILES, ServerTLSOptions, format_host_port
from ..workers import (
    DEFAULT_GRACE,
    AdoptedSocketEndpoint,
    WorkerPool,
    open_port_socket,
    parse_worker_options,
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
certificate is generated (and reused) as for membio-https.
"""

_EXAMPLES: Final = """\
Examples:
  twistd -n membio-tls --port 6697 --backend tcp:127.0.0.1:6667
  twistd -n membio-tls --port 8443 --backend tcp:127.0.0.1:8080 --proxy-protocol v2 \\
      --cert chain.pem --key key.pem --workers 2
  twistd -n membio-tls --listen 'haproxy:tcp:8443' --backend unix:/run/app.sock
"""


class Options(usage.Options):
    synopsis = "--port PORT --backend ENDPOINT [options]"
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
            "client: v1 (text) or v2 (binary, also carries SNI, ALPN and TLS version).",
        ],
        ["cert", "c", None, "Your PEM certificate chain (leaf first)."],
        ["key", "k", None, "Your PEM private key for --cert."],
        [
            "key-password-file", None, None,
            f"File whose first line is the --key password [default: ${KEY_PASSWORD_ENV}].",
        ],
        [
            "cert-dir", None, None,
            f"Directory for a generated certificate [default: {default_cert_dir()}].",
        ],
        [
            "profile", None, "intermediate",
            "TLS settings: 'intermediate' (TLS 1.2 and 1.3) or 'modern' (TLS 1.3 only).",
        ],
        [
            "workers", None, "0",
            "Accept on the --port socket from N worker processes sharing one TLS context; "
            "0 serves from this process.",
        ],
        [
            "grace", None, f"{DEFAULT_GRACE:g}",
            "With --workers: seconds open connections get to finish on SIGTERM.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.python.usage is untyped
        self["listen"] = []
        self["hostnames"] = []

    def opt_listen(self, description: str) -> None:
        """Also accept TLS on this plain server endpoint (repeatable), e.g. haproxy:tcp:8443."""
        self["listen"].append(description)

    def opt_hostname(self, name: str) -> None:
        """Extra name for a generated certificate (repeatable, or comma-separated)."""
        self["hostnames"].extend(part.strip() for part in name.split(",") if part.strip())

    def command_name(self) -> str:
        parent = getattr(self, "parent", None)
        if parent is not None and ".twist." in f"{type(parent).__module__}.":
            return "twist membio-tls"
        return self.command

    def getUsage(self, width: int | None = None) -> str:
        return f"{super().getUsage(width)}\n{_DESCRIPTION}\n{_EXAMPLES}"

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        try:
            super().parseOptions(options)  # type: ignore[no-untyped-call]  # untyped in Twisted
        except usage.UsageError as error:
            command = self.command_name()
            raise SystemExit(f"{command}: error: {error} (see: {command} --help)") from None
        except CertificateError as error:
            raise SystemExit(f"{self.command_name()}: error: {error}") from None

    def postOptions(self) -> None:
        from twisted.internet import reactor
        from twisted.internet.endpoints import clientFromString

        parse_worker_options(self)
        if self["profile"] not in PROFILES:
            raise usage.UsageError(f"--profile {self['profile']!r} is unknown")
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
        if self["workers"] and (self["listen"] or self["port"] is None):
            raise usage.UsageError(
                "--workers shares the --port socket among processes; --listen is not "
                "supported with it"
            )
        plain = self._plain_listeners(reactor)
        context = self._context()
        self["tls_options"] = ServerTLSOptions(context)
        for listener in plain:
            listener.endpoint = TLSServerEndpoint(
                listener.endpoint, self["tls_options"], clock=reactor
            )
        self["listeners"] = plain

    def _plain_listeners(self, reactor: Any) -> list[Listener]:
        listeners = []
        if self["port"] is not None:
            interface, port = self["interface"], self["port"]
            listeners.append(
                Listener(
                    format_host_port(interface, port),
                    tcp_endpoint(reactor, interface, port),
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
                Listener(description, endpoint_from(reactor, "--listen", description), "--listen")
            )
        return listeners

    def _context(self) -> Any:
        own = self["cert"] is not None or self["key"] is not None
        if self["key-password-file"] is not None and not own:
            raise usage.UsageError("--key-password-file applies to --key, which was not given")
        if own and self["cert"] is None:
            raise usage.UsageError("--key needs --cert (the certificate for that key)")
        password = read_key_password(self["key-password-file"]) if own else None
        if own:
            check_key_passwords(
                [self["key"] or self["cert"]], password, "--key-password-file FILE"
            )
        certificate = resolve_certificate(
            cert_file=self["cert"],
            key_file=self["key"],
            password=password,
            cert_dir=self["cert-dir"],
            hostnames=self["hostnames"],
        )
        self["certificate"] = certificate
        return build_server_context(certificate, password=password, profile=self["profile"])


def _proxy_factory(reactor: Any, options: Options) -> ProxyFactory:
    from twisted.internet.endpoints import clientFromString

    return ProxyFactory(
        clientFromString(reactor, options["backend"]),
        options["backend"],
        options["proxy-protocol"],
    )


def _summary(options: Options) -> list[str]:
    certificate = options["certificate"]
    proxy = options["proxy-protocol"]
    lines = [
        f"forwarding decrypted connections to {options['backend']}"
        + (f" with a PROXY protocol {proxy} header" if proxy else "")
    ]
    if options["cert"]:
        lines += [f"using your certificate: {line.strip()}" for line in certificate.summary()]
    else:
        lines += [
            *certificate.summary(),
            f"  clients must trust {certificate.trust_path} "
            f"(for example: openssl s_client -CAfile {certificate.trust_path} ...)",
        ]
    return lines


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
            host, number = getattr(address, "host", None), getattr(address, "port", None)
            where = (
                format_host_port(host, number)
                if isinstance(host, str) and isinstance(number, int)
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
    interface, port = options["interface"], options["port"]

    def start_worker(reactor: Any, sockets: Sequence[socket.socket]) -> list[Any]:
        factory = _proxy_factory(reactor, options)
        return [
            TLSServerEndpoint(
                AdoptedSocketEndpoint(reactor, sock), options["tls_options"], clock=reactor
            ).listen(factory)
            for sock in sockets
        ]

    def announce(sockets: Sequence[socket.socket]) -> None:
        host, bound = sockets[0].getsockname()[:2]
        lines = [
            f"TLS on {format_host_port(host, bound)}, shared by {options['workers']} worker "
            "process(es) with one TLS context",
            *_summary(options),
        ]
        for line in lines:
            _log.info("{line}", line=line, log_system=_SYSTEM)

    return WorkerPool(
        lambda: open_port_socket(command, interface, port),
        start_worker,
        options["workers"],
        grace=options["grace"],
        announce=announce,
        system=_SYSTEM,
    )


def makeService(options: Options) -> Service:
    """Build the service twistd runs from parsed L{Options}."""
    if options["workers"]:
        return _worker_pool(options)
    return TLSProxyService(options)
