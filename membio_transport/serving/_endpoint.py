"""
``membio:`` endpoint strings: TLS from this package for every Twisted program
that takes endpoint descriptions (``twistd web --listen``, ``twistd words
--irc-port``, ``serverFromString``, ``clientFromString`` ...).

The parsers themselves are registered by the drop-in module
``twisted/plugins/membio_transport_plugin.py``, which imports this module
only when a ``membio:`` description is actually parsed.

Server descriptions
===================

``membio:PORT`` listens on TCP ``PORT`` with a certificate generated (once,
then reused) in the default state directory::

    twistd web --listen membio:8443
    twistd web --listen membio:8443:interface=127.0.0.1:certDir=/srv/tls
    twistd web --listen membio:443:certKey=/etc/tls/chain.pem:privateKey=/etc/tls/key.pem

Keyword arguments (all optional):

``port``
    The TCP port, as an alternative to the positional argument.
``interface``
    The address to bind (default: all IPv4 interfaces, like ``tcp:``); an
    IPv6 address such as ``::`` or ``::1`` listens on IPv6.  A specific
    address is also added to a generated certificate's names.
``backlog``
    The listen queue length (default 511, like nginx: a burst of new
    connections waits in the kernel instead of being refused; ``tcp:``
    uses 50).
``certKey``, ``privateKey``
    PEM certificate chain (leaf first) and PEM private key.  Either alone
    names one file holding both, as with Twisted's ``ssl:``.  Without them a
    certificate is generated.
``keyPasswordFile``
    A file whose first line is the password of an encrypted ``privateKey``;
    otherwise the ``MEMBIO_KEY_PASSWORD`` environment variable is used.
``certDir``
    Where generated certificates live (default
    ``$XDG_STATE_HOME/membio-transport`` or
    ``~/.local/state/membio-transport``).
``hostname``
    Extra names for a generated certificate, comma-separated (``localhost``,
    ``127.0.0.1``, ``::1`` and this machine's host name are always in it).
``profile``
    ``intermediate`` (TLS 1.2 and 1.3, the default) or ``modern`` (1.3 only).
``alpn``
    Protocols to offer via ALPN, comma-separated, in preference order
    (default: none).
``endpoint``
    Another server endpoint description to add TLS to, instead of TCP.

Wrapping another endpoint follows Twisted's escaping rules: inside the
``endpoint=`` value every ``:`` is written ``\\:`` (an ``=`` needs no
escape there), and a ``\\`` is written ``\\\\``.  In Python,
``"membio:endpoint=" + quoteStringArgument(inner)`` builds it::

    membio:endpoint=unix\\:/run/app.sock:certDir=/srv/tls
    membio:endpoint=haproxy\\:tcp\\:8443:hostname=app.example.com
    membio:endpoint=tcp6\\:port=8443\\:interface=\\\\\\:\\\\\\:1

On a shell command line, put such descriptions in single quotes.  The
second one is the right order for the PROXY protocol: its header comes
before the TLS handshake (application <- TLS <- PROXY <- TCP).  ``port``,
``interface`` and ``backlog`` cannot be combined with ``endpoint``.

Client descriptions
===================

``membio:host=example.com:port=443`` (or ``membio:example.com:443``)
connects over TCP (IPv4 or IPv6, via ``HostnameEndpoint``) and verifies the
server's certificate for ``host`` against the system's trust store::

    membio:host=localhost:port=8443:caFile=/home/me/.local/state/membio-transport/local-ca.pem

Keyword arguments: ``caFile`` (PEM file of trusted CA certificates, instead
of the system store), ``timeout`` (seconds, default 30), ``bindAddress``,
``certificate`` and ``privateKey`` (a client certificate, PEM; ``privateKey``
defaults to ``certificate``), ``alpn`` (comma-separated) and ``endpoint``
(another client endpoint description to connect through; ``host`` is then
used only for SNI and verification, and ``port`` is not needed).

``connect()`` fires with the application protocol, not the TLS layer, as
with Twisted's ``wrapClientTLS``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from ..certs import (
    CertificateError,
    ServerCertificate,
    check_key_passwords,
    ensure_certificate,
    load_certificate,
    normalize_name,
    os_reason,
    read_key_password,
)
from ..tls import HARDENED, MemoryBIOTLSFactory, ServerTLSOptions, format_address, wrapClientTLS
from ._context import build_server_context

__all__ = [
    "DEFAULT_BACKLOG",
    "TLSServerEndpoint",
    "parse_client",
    "parse_server",
    "resolve_certificate",
]

_log = Logger(namespace="membio")

#: Listen queue length: room for a burst of handshakes (Twisted's 50
#: overflows with 1,000 simultaneous clients, who then wait for SYN
#: retries).  nginx's value; the kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG: Final = 511

#: Addresses that mean "every interface": they name no certificate host.
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})

_SERVER_KEYWORDS: Final = (
    "port", "interface", "backlog", "certKey", "privateKey", "keyPasswordFile", "certDir",
    "hostname", "profile", "alpn", "endpoint",
)
_CLIENT_KEYWORDS: Final = (
    "host", "port", "caFile", "timeout", "bindAddress", "certificate", "privateKey", "alpn",
    "endpoint",
)


# ------------------------------------------------------------------ certificates


def resolve_certificate(
    *,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    password: bytes | None = None,
    cert_dir: str | Path | None = None,
    hostnames: Sequence[str] = (),
) -> ServerCertificate:
    """
    The user's certificate when C{cert_file} or C{key_file} is given (either
    alone names a file holding both), else a generated one in C{cert_dir}.

    @raise CertificateError: with a one-line message saying what is wrong.
    """
    if cert_file is None and key_file is None:
        return ensure_certificate(
            None if cert_dir is None else Path(cert_dir).expanduser(), tuple(hostnames)
        )
    cert_path = Path(cert_file if cert_file is not None else key_file).expanduser()  # type: ignore[arg-type]  # one of them is set
    key_path = Path(key_file if key_file is not None else cert_path).expanduser()
    return load_certificate(cert_path, key_path, password)


def _names_for_interface(interface: str) -> tuple[str, ...]:
    """The names a client uses for C{interface}: a specific address is one."""
    if interface in _WILDCARDS:
        return ()
    try:
        ipaddress.ip_address(interface)
    except ValueError:
        return ()
    return (interface,)


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


# ------------------------------------------------------------------ endpoints


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listen on another server endpoint and add TLS (with
    L{MemoryBIOTLSFactory}) to every connection it accepts, like
    L{wrapServerTLS}, and say which certificate it serves.

    @ivar certificate: what is served, when known; logged on C{listen} if
        C{announce} is true.
    @ivar factory_options: keyword arguments for L{MemoryBIOTLSFactory}
        (C{handshake_timeout=...}), over the hardened policy every listener
        of this project starts from (`_policy.HARDENED`).
    """

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        creator: IOpenSSLServerConnectionCreator,
        *,
        clock: IReactorTime | None = None,
        certificate: ServerCertificate | None = None,
        announce: bool = False,
        factory_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.creator = creator
        self.clock = clock
        self.certificate = certificate
        self.announce = announce
        self.factory_options = dict(factory_options or {})

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        tls = MemoryBIOTLSFactory(
            self.creator,
            False,
            protocolFactory,
            self.clock,
            **{**HARDENED.keywords(), **self.factory_options},
        )
        listening: Deferred[IListeningPort] = self.wrapped.listen(tls)
        if self.announce and self.certificate is not None:
            listening.addCallback(self._announce, self.certificate)
        return listening

    @staticmethod
    def _announce(port: IListeningPort, certificate: ServerCertificate) -> IListeningPort:
        lines = [f"TLS on {format_address(port.getHost())}"]
        lines += (
            certificate.trust_instructions(_url_for(port))
            if certificate.new_trust_anchor
            else [
                *certificate.summary(),
                f"  clients must trust {certificate.trust_path} "
                f"(for example: curl --cacert {certificate.trust_path} ...)",
            ]
        )
        for line in lines:
            _log.info("{line}", line=line, log_system="membio")
        return port


def _url_for(port: IListeningPort) -> str:
    address = port.getHost()
    number = getattr(address, "port", None)
    if not isinstance(number, int):
        return "https://localhost/"
    return f"https://localhost:{number}/"


# ------------------------------------------------------------------ parsers


def _unknown(kind: str, kwargs: dict[str, str], known: Sequence[str]) -> None:
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(
            f"membio: unknown {kind} endpoint option(s) {', '.join(unknown)}; "
            f"known: {', '.join(known)}"
        )


def _integer(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"membio: {name}={value!r} is not a number") from None
    if not low <= number <= high:
        raise ValueError(f"membio: {name}={number} is out of range ({low}-{high})")
    return number


def parse_server(reactor: Any, *args: str, **kwargs: str) -> TLSServerEndpoint:
    """
    The endpoint for a C{membio:} server description (see the module
    docstring).

    @raise ValueError: with a one-line message, for any mistake in the
        description or in the certificate files it names.
    """
    _unknown("server", kwargs, _SERVER_KEYWORDS)
    if len(args) > 1:
        raise ValueError(
            f"membio: expected at most one positional argument (the port), got {list(args)}"
        )
    if args and "port" in kwargs:
        raise ValueError("membio: give the port once, positionally or as port=")
    port_text = (args[0] if args else kwargs.get("port")) or None
    inner_description = kwargs.get("endpoint")
    interface = kwargs.get("interface", "")
    if inner_description is not None:
        clashing = [name for name in ("port", "interface", "backlog") if name in kwargs]
        if args or clashing:
            raise ValueError(
                "membio: endpoint= names the whole inner endpoint; put "
                f"{', '.join(clashing) or 'the port'} inside it instead"
            )
        from twisted.internet.endpoints import serverFromString

        wrapped: IStreamServerEndpoint = serverFromString(reactor, inner_description)
    else:
        if port_text is None:
            raise ValueError("membio: a port is required, as in membio:8443")
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        port = _integer("port", port_text, 0, 65535)
        backlog = _integer("backlog", kwargs.get("backlog", str(DEFAULT_BACKLOG)), 1, 65535)
        if ":" in interface:
            wrapped = TCP6ServerEndpoint(reactor, port, backlog, interface)
        else:
            wrapped = TCP4ServerEndpoint(reactor, port, backlog, interface)
    profile = kwargs.get("profile", "intermediate")
    alpn = [name.encode("ascii") for name in _split_list(kwargs.get("alpn", ""))]
    hostnames = [*_names_for_interface(interface), *_split_list(kwargs.get("hostname", ""))]
    try:
        password = read_key_password(kwargs.get("keyPasswordFile"))
        key_file = kwargs.get("privateKey", kwargs.get("certKey"))
        check_key_passwords([key_file] if key_file else [], password, "keyPasswordFile=")
        certificate = resolve_certificate(
            cert_file=kwargs.get("certKey"),
            key_file=kwargs.get("privateKey"),
            password=password,
            cert_dir=kwargs.get("certDir"),
            hostnames=hostnames,
        )
        context = build_server_context(certificate, password=password, profile=profile, alpn=alpn)
    except CertificateError as error:
        raise ValueError(f"membio: {error}") from None
    return TLSServerEndpoint(
        wrapped, ServerTLSOptions(context), clock=reactor, certificate=certificate, announce=True
    )


def parse_client(reactor: Any, *args: str, **kwargs: str) -> IStreamClientEndpoint:
    """
    The endpoint for a C{membio:} client description (see the module
    docstring).

    @raise ValueError: with a one-line message, for any mistake in the
        description or in the files it names.
    """
    _unknown("client", kwargs, _CLIENT_KEYWORDS)
    positional = dict(zip(("host", "port"), args, strict=False))
    if len(args) > 2:
        raise ValueError(f"membio: expected at most host and port positionally, got {list(args)}")
    for name in positional:
        if name in kwargs:
            raise ValueError(f"membio: {name} given twice")
    settings = {**positional, **kwargs}
    host = settings.get("host")
    if not host:
        raise ValueError("membio: host= is required, as in membio:host=example.com:port=443")
    inner_description = settings.get("endpoint")
    from twisted.internet import endpoints, ssl

    try:
        trust = _trust_root(settings.get("caFile"))
        client_certificate = _client_certificate(
            settings.get("certificate"), settings.get("privateKey")
        )
    except CertificateError as error:
        raise ValueError(f"membio: {error}") from None
    alpn = [name.encode("ascii") for name in _split_list(settings.get("alpn", ""))]
    creator = ssl.optionsForClientTLS(
        host,
        trustRoot=trust,
        clientCertificate=client_certificate,
        acceptableProtocols=alpn or None,
    )
    wrapped: IStreamClientEndpoint
    if inner_description is not None:
        clashing = [name for name in ("port", "timeout", "bindAddress") if name in settings]
        if clashing:
            raise ValueError(
                f"membio: endpoint= names the whole inner endpoint; put {', '.join(clashing)} "
                "inside it instead"
            )
        wrapped = endpoints.clientFromString(reactor, inner_description)
    else:
        if "port" not in settings:
            raise ValueError("membio: port= is required, as in membio:host=example.com:port=443")
        port = _integer("port", settings["port"], 1, 65535)
        timeout = _integer("timeout", settings.get("timeout", "30"), 1, 86400)
        bind = settings.get("bindAddress")
        try:
            # IDNA 2008, as the certificate's names are (Python's codec is IDNA 2003).
            address = normalize_name(host).encode("ascii")
        except CertificateError as error:
            raise ValueError(f"membio: host={host!r}: {error}") from None
        wrapped = endpoints.HostnameEndpoint(
            reactor,
            address,
            port,
            timeout,
            None if bind is None else (bind, 0),
        )
    return wrapClientTLS(creator, wrapped, reactor)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        reason = os_reason(error)
        raise CertificateError(f"cannot read {what} {path}: {reason}") from None


def _trust_root(ca_file: str | None) -> Any:
    from twisted.internet import ssl

    if ca_file is None:
        return ssl.platformTrust()
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    path = Path(ca_file).expanduser()
    data = _read(path, "CA file")
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} holds no PEM CA certificate") from None
    return ssl.trustRootFromCertificates(
        [ssl.Certificate.loadPEM(cert.public_bytes(Encoding.PEM)) for cert in certificates]
    )


def _client_certificate(certificate: str | None, private_key: str | None) -> Any:
    if certificate is None and private_key is None:
        return None
    from twisted.internet import ssl

    cert_path = Path(certificate if certificate is not None else private_key).expanduser()  # type: ignore[arg-type]  # one of them is set
    key_path = Path(private_key).expanduser() if private_key is not None else cert_path
    pem = _read(cert_path, "client certificate")
    if key_path != cert_path:
        pem += b"\n" + _read(key_path, "client key")
    try:
        return ssl.PrivateCertificate.loadPEM(pem)
    except Exception as error:
        raise CertificateError(
            f"cannot use client certificate {cert_path} with key {key_path}: {error}"
        ) from None
