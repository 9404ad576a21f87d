"""
STARTTLS: a plaintext conversation upgraded in place, with bytes in flight
on both sides at the switch, and the endpoint wrappers.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.protocols.basic import LineReceiver
from twisted.test import iosim
from zope.interface import implementer

from membio_transport import MemoryBIOTLSProtocol
from membio_transport.tls import startTLS, wrapClientTLS, wrapServerTLS

from ._pki import make_pki

PKI = make_pki("ecdsa")


def server_creator() -> Any:
    chain = PKI.chain_pem.decode().split("-----END CERTIFICATE-----")[0]
    return PrivateCertificate.loadPEM(
        chain + "-----END CERTIFICATE-----\n" + PKI.key_pem.decode()
    ).options()


def client_creator() -> Any:
    return optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(PKI.ca_pem))


@implementer(IHandshakeListener)
class Talker(LineReceiver):
    """
    Speaks lines; on STARTTLS it switches to TLS.  The side that *sends*
    STARTTLS switches right after sending it (pipelining its first TLS
    bytes behind the command); the side that receives it switches with
    whatever it had read past the command.
    """

    delimiter = b"\n"

    def __init__(self, *, tls_client: bool, initiator: bool, clock: Clock) -> None:
        self.tls_client = tls_client
        self.initiator = initiator
        self.clock = clock
        self.lines: list[bytes] = []
        self.handshakes = 0
        self.tls: MemoryBIOTLSProtocol | None = None

    def connectionMade(self) -> None:
        if not self.initiator:
            # Like an SMTP greeting: plaintext the initiator reads first.
            self.sendLine(b"plain hello from responder")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)
        if self.tls is not None:
            return
        if self.initiator and line == b"plain hello from responder":
            self.sendLine(b"plain hello from initiator")
            self.sendLine(b"STARTTLS")
            self._switch(b"")
        elif line == b"STARTTLS":
            self._switch(self.clearLineBuffer())

    def _switch(self, received: bytes) -> None:
        creator = client_creator() if self.tls_client else server_creator()
        self.tls = startTLS(self, creator, self.tls_client, received=received, clock=self.clock)
        # Written before the handshake completes: must arrive encrypted.
        self.sendLine(b"secret from " + (b"initiator" if self.initiator else b"responder"))

    def handshakeCompleted(self) -> None:
        self.handshakes += 1


@pytest.mark.parametrize(
    "initiator_is_tls_client", [True, False], ids=["client-first", "server-first"]
)
def test_starttls_switch_loses_and_misroutes_nothing(initiator_is_tls_client: bool) -> None:
    clock = Clock()
    initiator = Talker(tls_client=initiator_is_tls_client, initiator=True, clock=clock)
    responder = Talker(tls_client=not initiator_is_tls_client, initiator=False, clock=clock)
    responder_io = iosim.makeFakeServer(responder)
    initiator_io = iosim.makeFakeClient(initiator)
    sniffed: list[bytes] = []
    original = initiator_io.write

    def sniff(data: bytes) -> None:
        sniffed.append(data)
        original(data)

    initiator_io.write = sniff
    pump = iosim.connect(responder, responder_io, initiator, initiator_io, greet=True, clock=clock)
    pump.flush()
    assert responder.lines == [b"plain hello from initiator", b"STARTTLS", b"secret from initiator"]
    assert initiator.lines == [b"plain hello from responder", b"secret from responder"]
    assert initiator.handshakes == responder.handshakes == 1
    assert isinstance(initiator.transport, MemoryBIOTLSProtocol)
    wire = b"".join(sniffed)
    assert b"plain hello from initiator\nSTARTTLS\n" in wire
    assert b"secret" not in wire, "data written after the switch went out in plaintext"


def test_starttls_refuses_a_protocol_that_is_not_connected() -> None:
    with pytest.raises(ValueError):
        startTLS(protocol.Protocol(), server_creator(), False)


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collect(protocol.Protocol):
    def __init__(self) -> None:
        self.got = bytearray()
        self.done: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= 1_000_000 and self.done is not None:
            self.done.callback(bytes(self.got))
            self.done = None


@pytest.mark.integration
@pytest_twisted.inlineCallbacks
def test_wrapped_endpoints_carry_tls_over_real_loopback_tcp() -> Any:
    from twisted.internet import defer, reactor

    listening = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    server_ep = wrapServerTLS(server_creator(), listening)
    port = yield server_ep.listen(protocol.Factory.forProtocol(Echo))
    try:
        client_ep = wrapClientTLS(
            client_creator(), TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        )
        proto = yield client_ep.connect(protocol.Factory.forProtocol(Collect))
        assert isinstance(proto, Collect), "connect() fires with the application protocol"
        proto.done = defer.Deferred()
        proto.done.addTimeout(10, reactor)
        payload = bytes(range(256)) * 3907
        proto.transport.write(payload[:1_000_000])
        got = yield proto.done
        assert got == payload[:1_000_000]
        proto.transport.loseConnection()
    finally:
        yield port.stopListening()


@pytest.mark.integration
@pytest.mark.parametrize(
    "initiator_is_tls_client", [True, False], ids=["client-first", "server-first"]
)
@pytest_twisted.inlineCallbacks
def test_starttls_over_real_loopback_tcp(initiator_is_tls_client: bool) -> Any:
    """The same switch through real sockets and the real reactor."""
    from twisted.internet import defer, reactor

    initiator = Talker(tls_client=initiator_is_tls_client, initiator=True, clock=reactor)
    responder = Talker(tls_client=not initiator_is_tls_client, initiator=False, clock=reactor)
    done: defer.Deferred[None] = defer.Deferred()

    def check_done(talker: Talker, line: bytes) -> None:
        if (
            len(initiator.lines) >= 2
            and len(responder.lines) >= 3
            and initiator.handshakes
            and responder.handshakes
            and not done.called
        ):
            done.callback(None)

    for talker in (initiator, responder):
        original = talker.lineReceived

        def line_received(line: bytes, talker: Talker = talker, original: Any = original) -> None:
            original(line)
            check_done(talker, line)

        talker.lineReceived = line_received  # type: ignore[method-assign]

    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, protocol.Factory.forProtocol(lambda: responder), interface="127.0.0.1"
    )
    try:
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port).connect(
            protocol.Factory.forProtocol(lambda: initiator)
        )
        yield done.addTimeout(10, reactor)
        assert responder.lines == [
            b"plain hello from initiator", b"STARTTLS", b"secret from initiator"
        ]
        assert initiator.lines == [b"plain hello from responder", b"secret from responder"]
        assert isinstance(initiator.transport, MemoryBIOTLSProtocol)
        assert isinstance(responder.transport, MemoryBIOTLSProtocol)
        initiator.transport.loseConnection()
    finally:
        yield port.stopListening()
