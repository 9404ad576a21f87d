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

Keyword arguments (all optional): where to listen --

``port``
    The TCP port, as an alternative to the positional argument.
``interface``
    The address to bind (default: all IPv4 interfaces, like ``tcp:``); an
    IPv6 address such as ``::`` or ``::1`` listens on IPv6.  A specific
    address is also added to a generated certificate's names.
``endpoint``
    Another server endpoint description to add TLS to, instead of TCP.

-- and every TLS setting of the table in ``_settings`` (the README's
"TLS settings" table), by its endpoint key: ``cert``/``key`` (or Twisted's
``certKey``/``privateKey``; either alone names one file holding both;
comma-separated for more certificates chosen by SNI), ``keyPasswordFile``,
``certDir``, ``hostname`` (comma-separated), ``sniDir``, ``profile``,
``alpn``, ``clientCA``, ``clientCert``, ``requestClientCert=yes``,
``handshakeTimeout``, ``idleTimeout``, ``maxConnections``,
``reloadInterval``, ``backlog``, ``plainHTTP`` and ``metrics`` (an endpoint
description whose colons are escaped, as in ``endpoint=``:
``metrics=tcp\\:9100\\:interface=127.0.0.1``); and a public certificate
from an ACME CA with ``acme`` (short for ``acmeEmail``, the contact
address; Let's Encrypt unless ``acmeDirectory`` names another CA, by name
or by URL with its colons escaped), ``acmeAgreeTOS=yes``,
``acmeChallenges``, ``acmeDirectoryCA`` and ``hostname``::

    twistd words --irc-port \
        'membio:6697:acme=me@example.org:acmeAgreeTOS=yes:hostname=irc.example.org'

The certificates are reloaded when their files change and on SIGHUP, and a
generated one is renewed while the program runs; certificate expiry is
watched and ``metrics=`` serves ``/metrics``: all from the moment the
endpoint listens until it stops listening.

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

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint

from ..certs import CertificateError, normalize_name, os_reason
from ..tls import wrapClientTLS
from ._listeners import names_for_interface
from ._server import TLSServing
from ._settings import (
    DEFAULT_BACKLOG,
    SETTINGS,
    TLSSettings,
    key_of,
    parse_values,
    setting,
)
from ._tlsendpoint import TLSServerEndpoint
from ._values import SettingError

__all__ = ["parse_client", "parse_server"]

#: The keys of a server description that say where to listen; the others
#: are the TLS settings' (`SETTINGS`).
_LISTENER_KEYWORDS: Final = ("port", "interface", "endpoint")
_CLIENT_KEYWORDS: Final = (
    "host", "port", "caFile", "timeout", "bindAddress", "certificate", "privateKey", "alpn",
    "endpoint",
)


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
    settings_keys = {
        key: row.name
        for row in SETTINGS
        if "membio:" in row.entry_points
        for key in (row.key, *row.key_aliases)
    }
    for row in SETTINGS:
        if row.key in kwargs and row.key not in settings_keys:
            raise ValueError(
                f"membio: {row.key}= applies to {' and '.join(row.entry_points)}; a program "
                "serving membio: endpoints chooses that itself"
            )
    _unknown("server", kwargs, [*_LISTENER_KEYWORDS, *settings_keys])
    if len(args) > 1:
        nested = [key for key in ("endpoint", "metrics") if key in kwargs]
        hint = (
            f"; inside {' and '.join(f'{key}=' for key in nested)} write each colon as \\:"
            if nested else ""
        )
        raise ValueError(
            f"membio: expected at most one positional argument (the port), got {list(args)}"
            f"{hint}"
        )
    if args and "port" in kwargs:
        raise ValueError("membio: give the port once, positionally or as port=")
    port_text = (args[0] if args else kwargs.get("port")) or None
    inner_description = kwargs.get("endpoint")
    interface = kwargs.get("interface", "")  # every IPv4 interface, as tcp: does
    try:
        settings = _settings(kwargs, settings_keys)
    except SettingError as error:
        raise ValueError(f"membio: {error}") from None
    wrapped: IStreamServerEndpoint
    if inner_description is not None:
        clashing = [name for name in ("port", "interface", "backlog") if name in kwargs]
        if args or clashing:
            raise ValueError(
                "membio: endpoint= names the whole inner endpoint; put "
                f"{', '.join(clashing) or 'the port'} inside it instead"
            )
        from twisted.internet.endpoints import serverFromString

        wrapped = serverFromString(reactor, inner_description)
    else:
        if port_text is None:
            raise ValueError("membio: a port is required, as in membio:8443")
        from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

        port = _integer("port", port_text, 0, 65535)
        backlog = settings.backlog or DEFAULT_BACKLOG
        if ":" in interface:
            wrapped = TCP6ServerEndpoint(reactor, port, backlog, interface)
        else:
            wrapped = TCP4ServerEndpoint(reactor, port, backlog, interface)
    try:
        serving = TLSServing(
            settings, names=names_for_interface(interface), clock=reactor, log_system="membio"
        )
    except (CertificateError, SettingError) as error:
        raise ValueError(f"membio: {error}") from None
    return serving.wrap(wrapped, clock=reactor, announce=True)


def _settings(kwargs: dict[str, str], settings_keys: dict[str, str]) -> TLSSettings:
    """The TLS settings of a server description, by their endpoint keys."""
    values: dict[str, list[str]] = {}
    typed: dict[str, str] = {}
    for key, text in kwargs.items():
        name = settings_keys.get(key)
        if name is None:
            continue
        if name in typed:
            raise SettingError(f"give {typed[name]}= once ({key}= is the same)")
        typed[name] = key
        values[name] = text.split(",") if setting(name).repeats else [text]
    if "key" in values and "cert" not in values:
        # Twisted's ssl: rule: privateKey= alone names one file holding both.
        values["cert"], values["key"] = values["key"], [""] * len(values["key"])

    def spell(name: str) -> str:
        return f"{typed.get(name, key_of(name))}="

    return parse_values("membio:", values, spell)


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
    try:
        # IDNA 2008, as the certificate's names are (Python's codec is IDNA 2003).
        ascii_host = normalize_name(host)
    except CertificateError as error:
        raise ValueError(f"membio: host={host!r}: {error}") from None
    inner_description = settings.get("endpoint")
    from twisted.internet import endpoints, ssl

    try:
        trust = _trust_root(settings.get("caFile"))
        client_certificate = _client_certificate(
            settings.get("certificate"), settings.get("privateKey")
        )
        alpn = setting("alpn").parse(settings["alpn"], "alpn=") if "alpn" in settings else ()
    except (CertificateError, SettingError) as error:
        raise ValueError(f"membio: {error}") from None
    creator = ssl.optionsForClientTLS(
        ascii_host,
        trustRoot=trust,
        clientCertificate=client_certificate,
        acceptableProtocols=list(alpn) or None,
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
        wrapped = endpoints.HostnameEndpoint(
            reactor,
            ascii_host.encode("ascii"),
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
