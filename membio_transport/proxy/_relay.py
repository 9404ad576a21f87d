"""
TLS termination: decrypt on one side, hand the plaintext stream to a backend.

This is what stunnel or hitch do, as a Twisted protocol: `ProxyFactory` is
the application factory under a `MemoryBIOTLSFactory`; every connection it
accepts opens one plaintext connection to the backend endpoint once the TLS
handshake has completed (a failed handshake or a port scanner costs the
backend nothing) and relays bytes both ways.

Three things make a relay correct rather than merely working:

*Backpressure, both directions.*  Each side is registered as the other's
streaming producer: when the backend's socket buffer fills, the TLS side
stops reading from the client (and stops decrypting records it already
has); when the client's buffer fills, the backend is no longer read.  What
one connection can hold in memory is then a socket buffer or two per side,
whatever the peers do.  The producers registered are small relays, not the
transports themselves: a transport that goes away calls ``stopProducing``
on its producer, and the other side must then close cleanly (with
close_notify) instead of being torn down with it.

*Half-close, both directions.*  The client's close_notify means "I send
nothing more" and becomes a TCP shutdown of the backend's write side; the
backend's FIN becomes our close_notify (``loseWriteConnection`` on the TLS
transport), and the other direction keeps flowing until it ends too.

*Who the client is.*  The backend sees connections from us; with the PROXY
protocol (version 1, text, or version 2, binary) the first bytes it reads
name the client's address, and for version 2 also the SNI name, the ALPN
protocol, the TLS version and cipher, and the client certificate's common
name and verification, as HAProxy's ``send-proxy-v2-ssl-cn`` does.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Final, Literal

from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..tls import format_address, verified_peer_certificate

__all__ = [
    "PROXY_PROTOCOL_VERSIONS",
    "ClientCertificate",
    "ProxyFactory",
    "ProxyVersion",
    "proxy_header_v1",
    "proxy_header_v2",
]

_log = Logger(namespace="membio_transport.proxy")

ProxyVersion = Literal["v1", "v2"]
PROXY_PROTOCOL_VERSIONS: Final[tuple[ProxyVersion, ...]] = ("v1", "v2")

#: The 12 bytes every version 2 header starts with (chosen by the PROXY
#: protocol specification so that no other protocol's first bytes match).
_V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
#: Version 2, command PROXY (the connection was relayed for a client).
_V2_PROXY: Final = 0x21
#: Address family and transport: TCP over IPv4, TCP over IPv6, unknown.
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21
_V2_UNSPEC: Final = 0x00
#: TLV types of the specification (section 2.2).
_PP2_TYPE_ALPN: Final = 0x01
_PP2_TYPE_AUTHORITY: Final = 0x02
_PP2_TYPE_SSL: Final = 0x20
_PP2_SUBTYPE_SSL_VERSION: Final = 0x21
_PP2_SUBTYPE_SSL_CN: Final = 0x22
_PP2_SUBTYPE_SSL_CIPHER: Final = 0x23
#: In the SSL TLV's client field: the client connected over TLS, and it
#: presented a certificate on this connection and in its TLS session.
_PP2_CLIENT_SSL: Final = 0x01
_PP2_CLIENT_CERT_CONN: Final = 0x02
_PP2_CLIENT_CERT_SESS: Final = 0x04


# ------------------------------------------------------------------ PROXY headers


def _ip_pair(source: IAddress, destination: IAddress) -> tuple[Any, int, Any, int] | None:
    """Both addresses as ipaddress objects of one family, or None if not TCP/IP."""
    hosts = [getattr(source, "host", None), getattr(destination, "host", None)]
    ports = [getattr(source, "port", None), getattr(destination, "port", None)]
    if not all(isinstance(h, str) for h in hosts) or not all(isinstance(p, int) for p in ports):
        return None
    try:
        src, dst = (ipaddress.ip_address(str(h).split("%", 1)[0]) for h in hosts)
    except ValueError:
        return None
    if src.version != dst.version:
        # An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d.
        mapped = [getattr(a, "ipv4_mapped", None) for a in (src, dst)]
        src, dst = (m or a for m, a in zip(mapped, (src, dst), strict=True))
        if src.version != dst.version:
            return None
    return src, int(ports[0]), dst, int(ports[1])  # type: ignore[arg-type]


def proxy_header_v1(source: IAddress, destination: IAddress) -> bytes:
    """
    The PROXY protocol version 1 line announcing a connection from
    C{source} (the client) to C{destination} (the address it reached).
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        return b"PROXY UNKNOWN\r\n"
    src, sport, dst, dport = pair
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {sport} {dport}\r\n".encode("ascii")


def _tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def proxy_header_v2(
    source: IAddress,
    destination: IAddress,
    *,
    alpn: bytes | None = None,
    server_name: bytes | None = None,
    tls_version: str | None = None,
    cipher: str | None = None,
    client_certificate: ClientCertificate | None = None,
) -> bytes:
    """
    The PROXY protocol version 2 header for a connection from C{source} to
    C{destination}, with TLVs for what the TLS handshake told us: the ALPN
    protocol, the SNI name, the TLS version and cipher, and whether the
    client presented a certificate, its common name and whether it was
    verified (``--client-ca``).
    """
    pair = _ip_pair(source, destination)
    if pair is None:
        family, addresses = _V2_UNSPEC, b""
    else:
        src, sport, dst, dport = pair
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        addresses = src.packed + dst.packed + struct.pack("!HH", sport, dport)
    tlvs = b""
    if alpn:
        tlvs += _tlv(_PP2_TYPE_ALPN, alpn)
    if server_name:
        tlvs += _tlv(_PP2_TYPE_AUTHORITY, server_name)
    if tls_version is not None:
        sub = _tlv(_PP2_SUBTYPE_SSL_VERSION, tls_version.encode("ascii"))
        client, verify = _PP2_CLIENT_SSL, 1  # verify 0: a certificate was verified
        if client_certificate is not None:
            client |= _PP2_CLIENT_CERT_CONN | _PP2_CLIENT_CERT_SESS
            verify = 0 if client_certificate.verified else 1
            if client_certificate.common_name:
                sub += _tlv(_PP2_SUBTYPE_SSL_CN, client_certificate.common_name.encode())
        if cipher:
            sub += _tlv(_PP2_SUBTYPE_SSL_CIPHER, cipher.encode("ascii"))
        tlvs += _tlv(_PP2_TYPE_SSL, struct.pack("!BI", client, verify) + sub)
    body = addresses + tlvs
    return _V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body


@dataclass(frozen=True)
class ClientCertificate:
    """What the PROXY v2 header says about a client's certificate."""

    common_name: str | None
    verified: bool

    @classmethod
    def of(cls, connection: SSL.Connection) -> ClientCertificate | None:
        """The client certificate of C{connection}, if the client presented one."""
        peer = connection.get_peer_certificate(as_cryptography=True)
        if peer is None:
            return None
        names = peer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = names[0].value if names else None
        return cls(
            name if isinstance(name, str) else None,
            verified_peer_certificate(connection) is not None,
        )


# ------------------------------------------------------------------ the relay


@implementer(IPushProducer)
class _Relay:
    """
    Stands for one side's transport as the producer registered with the
    other side: pausing and resuming pass through, stopping does not (the
    side that is going away must not take the other one down uncleanly;
    each side closes the other itself, in ``connectionLost``).
    """

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


@implementer(IHalfCloseableProtocol, IHandshakeListener)
class _ClientSide(Protocol):
    """The decrypted client connection (its transport is the TLS layer)."""

    factory: ProxyFactory
    transport: Any

    def __init__(self) -> None:
        self.backend: _BackendSide | None = None
        self._connecting: Deferred[Any] | None = None
        # Bytes the client sent before the backend connection was ready.
        self._early: list[bytes] = []
        self.client_done = False  # its close_notify came: it sends nothing more
        self.backend_done = False  # the backend's FIN came
        self.refused = False  # the backend could not be reached
        self.gone = False

    # -- client events ---------------------------------------------------------

    def handshakeCompleted(self) -> None:
        self._connecting = self.factory.backend.connect(_BackendFactory(self))
        self._connecting.addCallbacks(self._backend_connected, self._backend_failed)

    def dataReceived(self, data: bytes) -> None:
        backend = self.backend
        if backend is not None and backend.transport is not None:
            backend.transport.write(data)
            return
        if self.refused:
            return  # nowhere to send it: the connection is closing
        # Still connecting: keep this much and read no more until connected.
        self._early.append(data)
        self.transport.pauseProducing()

    def readConnectionLost(self) -> None:
        """The client's close_notify: it will send nothing more."""
        self.client_done = True
        backend = self.backend
        if backend is None:
            return  # passed on once the backend is connected
        if self.backend_done:
            backend.close()
        else:
            backend.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if self._connecting is not None:
            self._connecting.cancel()
        if self.backend is not None:
            self.backend.close()

    # -- backend events --------------------------------------------------------

    def _backend_connected(self, backend: _BackendSide) -> None:
        self._connecting = None
        if self.gone:
            backend.close()
            return
        self.backend = backend
        out = backend.transport
        header = self.factory.header_for(self.transport)
        if header:
            out.write(header)
        if self._early:
            out.write(b"".join(self._early))
            self._early = []
        out.registerProducer(_Relay(self.transport), True)
        self.transport.registerProducer(_Relay(out), True)
        self.transport.resumeProducing()
        if self.client_done:
            out.loseWriteConnection()

    def _backend_failed(self, reason: Failure) -> None:
        self._connecting = None
        if self.gone:
            return
        _log.warn(
            "backend {backend} unreachable for client {client} ({reason}): closing the "
            "client connection",
            backend=self.factory.backend_label,
            client=format_address(self.transport.getPeer()),
            reason=reason.getErrorMessage().rstrip("."),
        )
        self.refused = True
        self._early = []
        # Read again, so that the client's close_notify answering ours is seen.
        self.transport.resumeProducing()
        self.transport.loseConnection()

    def backend_finished_sending(self) -> None:
        """The backend's FIN: pass it on as our close_notify."""
        self.backend_done = True
        if self.gone:
            return
        if self.client_done:
            # Both directions are over: close_notify and close.
            self.close()
        else:
            # Half-close: close_notify, and keep relaying what the client sends.
            self.transport.loseWriteConnection()

    def backend_lost(self, reason: Failure) -> None:
        self.backend = None
        if self.gone:
            return
        if not self.backend_done:
            _log.warn(
                "backend {backend} dropped the connection of client {client}: {reason}",
                backend=self.factory.backend_label,
                client=format_address(self.transport.getPeer()),
                reason=reason.getErrorMessage().rstrip("."),
            )
        self.close()

    def close(self) -> None:
        """Close the client connection cleanly (close_notify), unless already gone."""
        if self.gone:
            return
        self.transport.unregisterProducer()
        self.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _BackendSide(Protocol):
    """The plaintext connection to the backend."""

    transport: Any

    def __init__(self, client: _ClientSide) -> None:
        self.client = client
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.client.transport.write(data)

    def readConnectionLost(self) -> None:
        self.client.backend_finished_sending()
        if self.client.client_done:
            self.close()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        self.client.backend_lost(reason)

    def close(self) -> None:
        if self.closed or self.transport is None:
            return
        self.closed = True
        self.transport.unregisterProducer()
        self.transport.loseConnection()


class _BackendFactory(Factory):
    noisy = False

    def __init__(self, client: _ClientSide) -> None:
        self.client = client

    def buildProtocol(self, addr: IAddress | None) -> _BackendSide:
        return _BackendSide(self.client)


class ProxyFactory(Factory):
    """
    Relay every connection to C{backend}; put it under a
    `MemoryBIOTLSFactory` (server side) to terminate TLS.

    @param backend: where the plaintext goes, e.g.
        ``clientFromString(reactor, "tcp:127.0.0.1:6667")``.
    @param backend_label: how log lines name the backend.
    @param proxy_protocol: send a PROXY protocol header (``"v1"`` or
        ``"v2"``) naming the client before its first byte, or None.
    """

    protocol = _ClientSide  # type: ignore[assignment]
    noisy = False

    def __init__(
        self,
        backend: IStreamClientEndpoint,
        backend_label: str,
        proxy_protocol: ProxyVersion | None = None,
    ) -> None:
        if proxy_protocol not in (None, *PROXY_PROTOCOL_VERSIONS):
            raise ValueError(f"unknown PROXY protocol version {proxy_protocol!r}")
        self.backend = backend
        self.backend_label = backend_label
        self.proxy_protocol = proxy_protocol

    def header_for(self, transport: Any) -> bytes:
        """The PROXY header for the client connection on C{transport}, or b""."""
        if self.proxy_protocol is None:
            return b""
        client, reached = transport.getPeer(), transport.getHost()
        if self.proxy_protocol == "v1":
            return proxy_header_v1(client, reached)
        handle = getattr(transport, "getHandle", None)
        connection = handle() if handle is not None else None
        if connection is None:
            return proxy_header_v2(client, reached)
        return proxy_header_v2(
            client,
            reached,
            alpn=connection.get_alpn_proto_negotiated() or None,
            server_name=connection.get_servername(),
            tls_version=connection.get_protocol_version_name(),
            cipher=connection.get_cipher_name(),
            client_certificate=ClientCertificate.of(connection),
        )
