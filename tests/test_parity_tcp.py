"""
Parity over real loopback TCP: the same behaviour from Twisted's
``TLSMemoryBIOFactory`` and ours, with the real reactor and real sockets.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest
import pytest_twisted
from OpenSSL import SSL
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from ._pki import make_pki
from .test_parity import FACTORIES, client_options, server_options

pytestmark = pytest.mark.integration

TIMEOUT = 15


class Peer(protocol.Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        # Fires with [reason]: a bare Failure would errback the Deferred.
        self.lost: defer.Deferred[list[Failure]] = defer.Deferred()
        self.want = 0
        self.got_all: defer.Deferred[bytes] = defer.Deferred()
        self.echo = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)
        if self.want and len(self.received) >= self.want and not self.got_all.called:
            self.got_all.callback(bytes(self.received))

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback([reason or Failure(ConnectionDone())])


@implementer(IHalfCloseableProtocol)
class HalfClosePeer(Peer):
    def __init__(self) -> None:
        super().__init__()
        self.read_lost: defer.Deferred[None] = defer.Deferred()

    def readConnectionLost(self) -> None:
        self.read_lost.callback(None)

    def writeConnectionLost(self) -> None:
        pass


@pytest.fixture(params=sorted(FACTORIES))
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _connect(
    flavour: str, server: Peer, client: Peer, client_creator: Any = None
) -> Generator[Any, Any, Any]:
    pki = make_pki("ecdsa")
    cls = FACTORIES[flavour]
    sf = cls(server_options(pki), False, protocol.Factory.forProtocol(lambda: server))
    port = reactor.listenTCP(0, sf, interface="127.0.0.1")  # type: ignore[attr-defined]
    cf = cls(client_creator or client_options(pki), True, protocol.ClientFactory.forProtocol(
        lambda: client))
    reactor.connectTCP("127.0.0.1", port.getHost().port, cf)  # type: ignore[attr-defined]
    return port


def _wait(d: defer.Deferred[Any]) -> defer.Deferred[Any]:
    return d.addTimeout(TIMEOUT, reactor)


@pytest_twisted.inlineCallbacks
def test_a_large_echo_round_trips_intact_over_tcp(flavour: str) -> Any:
    server, client = Peer(), Peer()
    server.echo = True
    port = _connect(flavour, server, client)
    try:
        while client.transport is None:
            yield _sleep(0.01)
        payload = os.urandom(4 * 1024 * 1024)
        client.want = len(payload)
        # Many writes of mixed sizes, as an application would make them.
        view, pos = memoryview(payload), 0
        for size in (1, 100, 16384, 70000, 5000) * 1000:
            if pos >= len(payload):
                break
            client.transport.write(bytes(view[pos : pos + size]))  # type: ignore[union-attr]
            pos += size
        if pos < len(payload):
            client.transport.write(bytes(view[pos:]))  # type: ignore[union-attr]
        got = yield _wait(client.got_all)
        assert got == payload
        assert ITCPTransport.providedBy(client.transport)
        client.transport.loseConnection()  # type: ignore[union-attr]
        (reason,) = yield _wait(server.lost)
        assert reason.check(ConnectionDone)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_server_close_delivers_everything_then_a_clean_close(flavour: str) -> Any:
    server, client = Peer(), Peer()
    payload = os.urandom(1_000_000)

    def greet() -> None:
        server.transport.write(payload)  # type: ignore[union-attr]
        server.transport.loseConnection()  # type: ignore[union-attr]

    server.connectionMade = greet  # type: ignore[method-assign]
    port = _connect(flavour, server, client)
    try:
        (reason,) = yield _wait(client.lost)
        assert bytes(client.received) == payload
        assert reason.check(ConnectionDone)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_an_untrusted_server_fails_both_sides_with_ssl_errors(flavour: str) -> Any:
    server, client = Peer(), Peer()
    port = _connect(flavour, server, client, client_creator=client_options(make_pki("rsa")))
    try:
        (client_reason,) = yield _wait(client.lost)
        (server_reason,) = yield _wait(server.lost)
        assert client_reason.check(SSL.Error)
        assert server_reason.check(SSL.Error)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_a_peer_cut_off_mid_stream_is_connection_lost(flavour: str) -> Any:
    server, client = Peer(), Peer()
    server.want = 5

    port = _connect(flavour, server, client)
    try:
        while client.transport is None:
            yield _sleep(0.01)
        client.transport.write(b"hello")
        yield _wait(server.got_all)
        # The client's TCP connection goes away without a TLS goodbye.
        client.transport.transport.abortConnection()  # type: ignore[attr-defined]
        (reason,) = yield _wait(server.lost)
        assert reason.check(ConnectionLost)
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_half_close_over_tcp_lets_the_server_reply_after_the_clients_close_notify() -> Any:
    """Ours only: Twisted's loseWriteConnection sends no close_notify (twisted#5341)."""
    server, client = HalfClosePeer(), HalfClosePeer()
    port = _connect("membio", server, client)
    try:
        while client.transport is None:
            yield _sleep(0.01)
        client.transport.write(b"request")
        client.transport.loseWriteConnection()  # type: ignore[attr-defined]
        yield _wait(server.read_lost)
        assert bytes(server.received) == b"request"
        client.want = len(b"response")
        server.transport.write(b"response")  # type: ignore[union-attr]
        server.transport.loseConnection()  # type: ignore[union-attr]
        yield _wait(client.got_all)
        (reason,) = yield _wait(client.lost)
        assert reason.check(ConnectionDone)
    finally:
        yield port.stopListening()


def _sleep(seconds: float) -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)  # type: ignore[attr-defined]
    return d
