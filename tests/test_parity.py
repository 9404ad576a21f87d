"""
Parity: the same behavioural tests against Twisted's ``TLSMemoryBIOFactory``
and ours, over in-memory transports (``twisted.test.iosim``) with a fake
clock.  Where ours deliberately differs (Twisted's known defects), the test
says so and checks each side's actual behaviour.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import protocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    ISSLTransport,
)
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    PrivateCertificate,
    optionsForClientTLS,
)
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import FileSender
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from membio_transport import MemoryBIOTLSFactory
from membio_transport.tls import DEFAULT_CLOSE_TIMEOUT

from ._pki import LONG_CHAIN_DER_BYTES, PKI, make_pki

FACTORIES = {"twisted": TLSMemoryBIOFactory, "membio": MemoryBIOTLSFactory}


@implementer(IHandshakeListener)
class App(protocol.Protocol):
    """An application protocol that records everything that happens to it."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.chunks: list[bytes] = []
        self.handshakes = 0
        self.lost: Failure | None = None
        self.made = False
        self.on_data: Any = None

    def connectionMade(self) -> None:
        self.made = True

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.chunks.append(data)
        if self.on_data is not None:
            self.on_data(self, data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason or Failure(ConnectionDone())


@implementer(IHalfCloseableProtocol)
class HalfCloseApp(App):
    def __init__(self) -> None:
        super().__init__()
        self.read_lost = False

    def readConnectionLost(self) -> None:
        self.read_lost = True

    def writeConnectionLost(self) -> None:
        pass


def server_options(pki: PKI) -> CertificateOptions:
    cert = PrivateCertificate.loadPEM(pki.chain_pem.split(b"-----END CERTIFICATE-----")[0].decode()
                                      + "-----END CERTIFICATE-----\n" + pki.key_pem.decode())
    return cert.options()


def client_options(pki: PKI, hostname: str = "localhost") -> Any:
    return optionsForClientTLS(hostname, trustRoot=Certificate.loadPEM(pki.ca_pem))


@dataclass
class Pair:
    server: App
    client: App
    server_tls: Any
    client_tls: Any
    pump: iosim.IOPump
    clock: Clock
    server_io: Any = field(default=None)
    client_io: Any = field(default=None)

    def flush(self) -> None:
        self.pump.flush()


def connect(
    flavour: str,
    pki: PKI | None = None,
    *,
    server_app: App | None = None,
    client_app: App | None = None,
    client_creator: Any = None,
    server_creator: Any = None,
    **factory_kw: Any,
) -> Pair:
    pki = pki or make_pki("ecdsa")
    cls = FACTORIES[flavour]
    clock = Clock()
    server_app = server_app or App()
    client_app = client_app or App()
    kw = factory_kw if flavour == "membio" else {}
    sf = cls(server_creator or server_options(pki), False,
             protocol.Factory.forProtocol(lambda: server_app), clock, **kw)
    cf = cls(client_creator or client_options(pki), True,
             protocol.Factory.forProtocol(lambda: client_app), clock, **kw)
    sp = sf.buildProtocol(None)
    cp = cf.buildProtocol(None)
    server_io = iosim.makeFakeServer(sp)
    client_io = iosim.makeFakeClient(cp)
    pump = iosim.connect(sp, server_io, cp, client_io, greet=False, clock=clock)
    pair = Pair(server_app, client_app, sp, cp, pump, clock, server_io, client_io)
    pair.flush()
    return pair


def echo(app: App, data: bytes) -> None:
    assert app.transport is not None
    app.transport.write(data)


# -- the ordinary life of a connection ----------------------------------------------


class _BlackHole(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        pass


class _ClosesAtOnce(App):
    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        self.transport.loseConnection()


@implementer(IPushProducer)
class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")


class ParityTests:
    """Behaviour both factories must share; subclasses pick the factory."""

    flavour: str

    def test_handshake_is_announced_once_to_both_sides(self) -> None:
        pair = connect(self.flavour)
        assert pair.server.handshakes == 1
        assert pair.client.handshakes == 1
        assert pair.server.made and pair.client.made

    def test_data_round_trips_intact(self) -> None:
        pair = connect(self.flavour)
        pair.server.on_data = echo
        payload = os.urandom(1_000_000)
        assert pair.client.transport is not None
        pair.client.transport.write(payload)
        pair.flush()
        assert bytes(pair.client.received) == payload

    def test_writes_before_the_handshake_are_delivered(self) -> None:
        client = App()
        client.connectionMade = lambda: client.transport.write(b"early")  # type: ignore[method-assign,union-attr]
        pair = connect(self.flavour, client_app=client)
        assert bytes(pair.server.received) == b"early"

    def test_write_sequence_is_accepted(self) -> None:
        pair = connect(self.flavour)
        assert pair.client.transport is not None
        pair.client.transport.writeSequence([b"a", b"b", b"c"])
        pair.flush()
        assert bytes(pair.server.received) == b"abc"

    def test_transport_provides_the_ssl_interfaces_and_peer_certificate(self) -> None:
        pair = connect(self.flavour)
        assert ISSLTransport.providedBy(pair.client.transport)
        cert = pair.client.transport.getPeerCertificate()  # type: ignore[union-attr]
        assert cert.to_cryptography().subject.rfc4514_string() == "CN=localhost"
        handle = pair.client.transport.getHandle()  # type: ignore[union-attr]
        assert isinstance(handle, SSL.Connection)
        assert handle.get_app_data() is pair.client_tls

    def test_alpn_negotiated_protocol_is_visible(self) -> None:
        pki = make_pki("ecdsa")
        cert = PrivateCertificate.loadPEM(
            pki.chain_pem.decode().split("-----END CERTIFICATE-----")[0]
            + "-----END CERTIFICATE-----\n" + pki.key_pem.decode()
        )
        server = CertificateOptions(
            privateKey=cert.privateKey.original,
            certificate=cert.original,
            acceptableProtocols=[b"h2", b"http/1.1"],
        )
        client = optionsForClientTLS(
            "localhost",
            trustRoot=Certificate.loadPEM(pki.ca_pem),
            acceptableProtocols=[b"http/1.1"],
        )
        pair = connect(self.flavour, pki, server_creator=server, client_creator=client)
        assert pair.server.transport.negotiatedProtocol == b"http/1.1"  # type: ignore[union-attr]
        assert pair.client.transport.negotiatedProtocol == b"http/1.1"  # type: ignore[union-attr]

    def test_legacy_get_context_factories_are_accepted(self) -> None:
        pki = make_pki("ecdsa")

        class Legacy:
            def getContext(self) -> SSL.Context:
                return pki.server_context()

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pair = connect(self.flavour, pki, server_creator=Legacy())
        if self.flavour == "twisted":
            # Twisted nags about the old interface; we accept it quietly.
            assert any("getContext" in str(w.message) or "IOpenSSL" in str(w.message)
                       for w in caught), [str(w.message) for w in caught]
        assert pair.client.handshakes == 1

    def test_many_small_writes_in_one_callback_become_one_record(self) -> None:
        pair = connect(self.flavour)
        client_io = pair.client_io
        records: list[bytes] = []
        original_write = client_io.write

        def counting_write(data: bytes) -> None:
            records.append(data)
            original_write(data)

        client_io.write = counting_write

        def burst(app: App, data: bytes) -> None:
            for _ in range(100):
                app.transport.write(b"0123456789")  # type: ignore[union-attr]

        pair.client.on_data = burst
        pair.server.transport.write(b"go")  # type: ignore[union-attr]
        pair.flush()
        assert bytes(pair.server.received) == b"0123456789" * 100
        assert len(records) == 1
        # One TLS record: header, then 1000 bytes of payload plus overhead.
        assert records[0][:1] == b"\x17" and len(records[0]) < 1100

    def test_large_writes_from_outside_any_callback_leave_together_on_the_next_turn(
        self,
    ) -> None:
        """
        From a timer, a cooperator or a test, nothing reaches the transport
        until the next reactor turn (the TCP transport would not send it
        sooner).  Ours then hands it over in one transport write; Twisted's
        makes one per 16 KiB.
        """
        pair = connect(self.flavour)
        client_io = pair.client_io
        sent: list[bytes] = []
        original_write = client_io.write

        def counting_write(data: bytes) -> None:
            sent.append(data)
            original_write(data)

        client_io.write = counting_write
        payload = os.urandom(3 * 20_000)
        for start in range(0, len(payload), 20_000):
            pair.client.transport.write(payload[start : start + 20_000])  # type: ignore[union-attr]
        assert sent == []
        pair.clock.advance(0)
        assert len(sent) == (1 if self.flavour == "membio" else 4)
        pair.flush()
        assert bytes(pair.server.received) == payload

    def test_lose_connection_sends_close_notify_and_both_sides_see_a_clean_close(self) -> None:
        pair = connect(self.flavour)
        pair.server.transport.write(b"bye")  # type: ignore[union-attr]
        pair.server.transport.loseConnection()  # type: ignore[union-attr]
        pair.flush()
        assert bytes(pair.client.received) == b"bye"
        assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)
        assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)

    def test_abort_connection_delivers_nothing_more(self) -> None:
        pair = connect(self.flavour)

        def abort_on_first(app: App, data: bytes) -> None:
            app.transport.abortConnection()  # type: ignore[union-attr]

        pair.server.on_data = abort_on_first
        # Seven records arrive in one read; only the first may be delivered.
        pair.client.transport.write(b"x" * 100_000)  # type: ignore[union-attr]
        pair.flush()
        assert len(pair.server.received) == 16384
        assert pair.server.lost is not None

    def test_the_aborting_side_gets_the_transports_own_reason(self) -> None:
        """
        After abortConnection the application learns what the transport
        reports (TCP's ConnectionAborted), not a reason made up above it.
        """
        pair = connect(self.flavour)
        pair.server_io.disconnectReason = ConnectionAborted()  # what TCP says after an abort
        pair.server.transport.abortConnection()  # type: ignore[union-attr]
        pair.flush()
        assert pair.server.lost is not None and type(pair.server.lost.value) is ConnectionAborted

    def test_lose_connection_before_the_handshake_is_connection_lost_on_both_sides(
        self,
    ) -> None:
        """
        Closed before the handshake could complete, the session never had a
        TLS end: the side that closed sees ConnectionLost as well as its
        peer, though its own transport closed cleanly.
        """
        for closing in ("client", "server"):
            apps: dict[str, App] = {closing: _ClosesAtOnce()}
            pair = connect(
                self.flavour, server_app=apps.get("server"), client_app=apps.get("client")
            )
            pair.clock.advance(60)
            pair.flush()
            for side in (pair.client, pair.server):
                assert side.handshakes == 0, closing
                assert side.lost is not None and side.lost.check(ConnectionLost), (
                    closing, side.lost,
                )

    def test_eof_without_close_notify_is_reported_as_connection_lost(self) -> None:
        pair = connect(self.flavour)
        pair.client.transport.write(b"data")  # type: ignore[union-attr]
        pair.flush()
        # The client's TCP connection drops without any TLS goodbye.
        pair.client_io.loseConnection()
        pair.pump.pump()
        pair.flush()
        assert pair.server.lost is not None
        assert pair.server.lost.check(ConnectionLost)

    def test_a_peer_that_never_answers_close_notify_is_dropped_after_a_timeout(self) -> None:
        """
        Deliberate difference (twisted#7926): Twisted's layer waits forever for
        the peer's close_notify; ours closes after ``close_timeout``.
        """
        pair = connect(self.flavour, close_timeout=2.0)
        # The client side stops reading entirely: close_notify never answered.
        pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
        pair.server.transport.loseConnection()  # type: ignore[union-attr]
        pair.flush()
        pair.clock.advance(2.5)
        pair.flush()
        if self.flavour == "membio":
            assert pair.server.lost is not None
        else:
            assert pair.server.lost is None, "Twisted waits forever (twisted#7926)"

    def test_calls_after_connection_lost_are_harmless(self) -> None:
        pair = connect(self.flavour)
        pair.client.transport.loseConnection()  # type: ignore[union-attr]
        pair.flush()
        transport = pair.client.transport
        assert pair.client.lost is not None
        received = bytes(pair.server.received)
        sent: list[bytes] = []
        pair.client_io.write = sent.append  # whatever reaches the real transport now
        aborted: list[bool] = []
        pair.client_io.abortConnection = lambda: aborted.append(True)
        transport.write(b"late")  # type: ignore[union-attr]
        transport.writeSequence([b"later"])  # type: ignore[union-attr]
        transport.loseConnection()  # type: ignore[union-attr]
        if self.flavour == "membio":
            # Twisted's layer raises AttributeError here: its connection is None.
            transport.abortConnection()  # type: ignore[union-attr]
            transport.loseWriteConnection()  # type: ignore[union-attr]
            assert transport.getPeerCertificate() is not None  # type: ignore[union-attr]
            assert transport.negotiatedProtocol is None  # type: ignore[union-attr]
        assert [call for call in pair.clock.getDelayedCalls() if call.active()] == [], (
            "a late call scheduled work"
        )
        pair.clock.advance(10)
        pair.flush()
        assert sent == [], "bytes went out after connectionLost"
        assert aborted == [], "the dead transport was touched"
        assert bytes(pair.server.received) == received

    def test_writes_after_an_abrupt_connection_lost_send_nothing(self) -> None:
        """The transport went away mid-session (no TLS goodbye): late writes go nowhere."""
        pair = connect(self.flavour)
        pair.client.transport.write(b"before")  # type: ignore[union-attr]
        pair.flush()
        pair.server_io.loseConnection()  # the server's TCP connection drops
        pair.pump.pump()
        pair.flush()
        assert pair.server.lost is not None
        sent: list[bytes] = []
        pair.server_io.write = sent.append
        pair.server.transport.write(b"late")  # type: ignore[union-attr]
        pair.server.transport.write(b"x" * 300_000)  # type: ignore[union-attr]
        pair.clock.advance(10)
        pair.flush()
        assert sent == [], "bytes went out after connectionLost"
        assert bytes(pair.client.received) == b""

    def test_untrusted_certificate_fails_with_an_openssl_error(self) -> None:
        untrusting = client_options(make_pki("rsa"))
        pair = connect(self.flavour, make_pki("ecdsa"), client_creator=untrusting)
        assert pair.client.lost is not None
        assert pair.client.lost.check(SSL.Error)
        assert pair.client.handshakes == 0
        assert pair.server.lost is not None
        assert pair.server.lost.check(SSL.Error)

    def test_wrong_hostname_fails_with_a_verification_error(self) -> None:
        pki = make_pki("ecdsa")
        pair = connect(self.flavour, pki, client_creator=client_options(pki, "example.com"))
        assert pair.client.lost is not None
        assert pair.client.lost.check(VerificationError)
        assert pair.client.received == b""

    def test_a_streaming_producer_is_paused_and_resumed_by_the_transport(self) -> None:
        pair = connect(self.flavour)
        producer = Recorder()
        pair.server.transport.registerProducer(producer, True)  # type: ignore[union-attr]
        # The real transport's buffer fills, then drains.
        pair.server_io.producer.pauseProducing()
        pair.server_io.producer.pauseProducing()
        pair.server_io.producer.resumeProducing()
        assert producer.calls == ["pause", "resume"]
        pair.server.transport.unregisterProducer()  # type: ignore[union-attr]

    def test_pausing_stops_delivery_of_records_already_received(self) -> None:
        """
        Deliberate difference: Twisted's layer keeps delivering records that
        arrived in the same read after the application paused it.
        """
        pair = connect(self.flavour)

        def pause_after_first(app: App, data: bytes) -> None:
            if len(app.chunks) == 1:
                app.transport.pauseProducing()  # type: ignore[union-attr]

        pair.server.on_data = pause_after_first
        # Two records that arrive together in one read.
        pair.client.transport.write(b"a" * 20000)  # type: ignore[union-attr]
        pair.flush()
        if self.flavour == "membio":
            assert len(pair.server.received) == 16384
            pair.server.transport.resumeProducing()  # type: ignore[union-attr]
            pair.flush()
        assert len(pair.server.received) == 20000

    def test_half_close_sends_close_notify_and_the_peer_can_still_reply(self) -> None:
        """
        Deliberate difference (twisted#5341): Twisted's ``loseWriteConnection``
        skips close_notify, so the peer cannot tell a half-close from a cut.
        """
        server = HalfCloseApp()
        pair = connect(self.flavour, server_app=server, client_app=HalfCloseApp())
        pair.client.transport.write(b"request")  # type: ignore[union-attr]
        pair.client.transport.loseWriteConnection()  # type: ignore[union-attr]
        pair.flush()
        assert bytes(server.received) == b"request"
        if self.flavour == "membio":
            assert server.read_lost
            server.transport.write(b"response")  # type: ignore[union-attr]
            server.transport.loseConnection()  # type: ignore[union-attr]
            pair.flush()
            assert bytes(pair.client.received) == b"response"
            assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)

    def test_a_stalled_handshake_is_aborted_after_the_handshake_timeout(self) -> None:
        """Deliberate difference: Twisted's layer has no handshake timeout."""
        clock = Clock()
        server = App()
        cls = FACTORIES[self.flavour]
        kw = {"handshake_timeout": 10.0} if self.flavour == "membio" else {}
        sf = cls(server_options(make_pki("ecdsa")), False,
                 protocol.Factory.forProtocol(lambda: server), clock, **kw)
        sp = sf.buildProtocol(None)
        # A client that connects and never speaks TLS.
        silent = _BlackHole()
        pump = iosim.connect(sp, iosim.makeFakeServer(sp), silent, iosim.makeFakeClient(silent),
                             greet=False, clock=clock)
        pump.flush()
        clock.advance(11)
        pump.flush()
        if self.flavour == "membio":
            assert server.lost is not None
            assert "handshake timeout" in str(server.lost.value)
        else:
            assert server.lost is None


    def test_a_peer_that_hangs_up_after_our_close_notify_ends_the_connection_cleanly(
        self,
    ) -> None:
        """
        Deliberate difference: we asked to close and had all we wanted, so a
        peer that hangs up instead of answering close_notify (most HTTP
        clients do) is a clean end for ours, a lost connection for Twisted's.
        """
        pair = connect(self.flavour)
        pair.server.transport.loseConnection()  # type: ignore[union-attr]
        pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
        pair.flush()
        pair.client_io.loseConnection()
        pair.flush()
        assert pair.server.lost is not None
        expected = ConnectionDone if self.flavour == "membio" else ConnectionLost
        assert type(pair.server.lost.value) is expected, pair.server.lost

    def test_a_producer_paused_by_tls_and_the_transport_waits_for_both(self) -> None:
        """
        Deliberate difference: Twisted's layer keeps one pause flag, so the
        transport resuming its producer resumes it even while TLS still holds
        its writes back; ours resumes it once neither holds.
        """
        pki = make_pki("ecdsa")
        clock = Clock()
        producer = Recorder()
        client, server = App(), App()

        def made() -> None:
            client.transport.registerProducer(producer, True)  # type: ignore[union-attr]
            client.transport.write(b"hello")  # type: ignore[union-attr]

        client.connectionMade = made  # type: ignore[method-assign]
        cls = FACTORIES[self.flavour]
        sp = cls(server_options(pki), False, protocol.Factory.forProtocol(lambda: server),
                 clock).buildProtocol(None)
        cp = cls(client_options(pki), True, protocol.Factory.forProtocol(lambda: client),
                 clock).buildProtocol(None)
        client_io = iosim.makeFakeClient(cp)
        pump = iosim.connect(sp, iosim.makeFakeServer(sp), cp, client_io, greet=False,
                             clock=clock)
        clock.advance(0)
        assert producer.calls == ["pause"], "the write waits for the handshake"
        # The real transport's buffer fills and drains meanwhile.
        client_io.producer.pauseProducing()
        client_io.producer.resumeProducing()
        if self.flavour == "membio":
            assert producer.calls == ["pause"], "TLS still holds the write back"
        else:
            assert producer.calls == ["pause", "resume"]
        pump.flush()
        assert producer.calls == ["pause", "resume"]
        assert bytes(server.received) == b"hello"

    def test_a_server_flight_over_32_kib_completes(self) -> None:
        """
        Deliberate difference (twisted#5095): with a ~100 KiB certificate
        chain, Twisted's layer reads 32 KiB of the server's flight and
        never the rest, so the handshake never completes; ours drains the
        outgoing BIO to empty.
        """
        from membio_transport import ServerTLSOptions

        pki = make_pki("ecdsa", chain_bytes=LONG_CHAIN_DER_BYTES)
        # The whole chain (server_options() serves the leaf alone).
        pair = connect(self.flavour, pki, server_creator=ServerTLSOptions(pki.server_context()))
        pair.clock.advance(1)
        pair.flush()
        if self.flavour == "membio":
            assert pair.client.handshakes == pair.server.handshakes == 1
            pair.client.transport.write(b"through a long chain")  # type: ignore[union-attr]
            pair.flush()
            assert bytes(pair.server.received) == b"through a long chain"
        else:
            assert pair.client.handshakes == 0, "Twisted's layer completed (twisted#5095 fixed?)"

    def test_client_initiated_renegotiation(self) -> None:
        """
        Over an ordinary context both layers refuse a client's renegotiation
        on this stack: OpenSSL 3 and later refuse it by default.  Deliberate
        difference: over a context that allows it
        (``SSL_OP_ALLOW_CLIENT_RENEGOTIATION``, or an older OpenSSL), Twisted's
        layer renegotiates; ours refuses (``OP_NO_RENEGOTIATION`` on every
        server connection).
        """
        assert renegotiate_against(self.flavour, allowed_by_context=False) == "refused"
        expected = "renegotiated" if self.flavour == "twisted" else "refused"
        assert renegotiate_against(self.flavour, allowed_by_context=True) == expected


def renegotiate_against(flavour: str, *, allowed_by_context: bool) -> str:
    """
    A bare pyOpenSSL TLS 1.2 client asks a server (Twisted's layer or ours,
    on a string transport) to renegotiate: "refused" or "renegotiated".
    """
    from membio_transport import ServerTLSOptions

    from .test_engine import ALLOW_CLIENT_RENEGOTIATION

    pki = make_pki("ecdsa")
    context = pki.server_context(SSL.TLS1_2_VERSION)
    if allowed_by_context:
        context.set_options(ALLOW_CLIENT_RENEGOTIATION)
    clock = Clock()
    app = App()
    factory = FACTORIES[flavour](
        ServerTLSOptions(context), False, protocol.Factory.forProtocol(lambda: app), clock
    )
    server = factory.buildProtocol(None)
    wire = StringTransport()
    server.makeConnection(wire)
    client = SSL.Connection(pki.client_context(SSL.TLS1_2_VERSION), None)
    client.set_connect_state()

    def exchange() -> None:
        for _ in range(50):
            with contextlib.suppress(SSL.WantReadError):
                client.do_handshake()
            with contextlib.suppress(SSL.WantReadError):
                client.recv(65536)
            try:
                out = client.bio_read(1 << 20)
            except SSL.WantReadError:
                out = b""
            if out:
                server.dataReceived(out)
            clock.advance(0)
            back = wire.value()
            wire.clear()
            if back:
                client.bio_write(back)
            if not out and not back:
                return
        raise AssertionError("never went quiet")

    exchange()
    assert app.handshakes == 1
    assert client.renegotiate()
    try:
        exchange()
    except SSL.Error as error:
        # The server answered with a no_renegotiation alert; the client
        # gives up on the session, the server merely did not renegotiate.
        assert "no renegotiation" in str(error), error
        assert app.lost is None
        return "refused"
    assert not client.renegotiate_pending()
    assert client.total_renegotiations() == 1
    client.send(b"after the new handshake")
    exchange()
    assert bytes(app.received) == b"after the new handshake"
    assert app.lost is None
    return "renegotiated"


class TwistedParityTests(ParityTests, SynchronousTestCase):
    flavour = "twisted"


class MembioParityTests(ParityTests, SynchronousTestCase):
    flavour = "membio"

    def test_small_writes_inside_a_callback_schedule_no_reactor_call(self) -> None:
        """
        Inside ``dataReceived`` the flush that ends the callback sends the
        batch: no reactor call is scheduled for it (Twisted schedules one per
        batch).  Outside any callback, one call per batch, not one per write.
        """
        pair = connect("membio")
        scheduled: list[int] = []

        def burst(app: App, data: bytes) -> None:
            before = len(pair.clock.getDelayedCalls())
            for _ in range(10):
                app.transport.write(b"0123456789")  # type: ignore[union-attr]
            scheduled.append(len(pair.clock.getDelayedCalls()) - before)

        pair.client.on_data = burst
        pair.server.transport.write(b"go")  # type: ignore[union-attr]
        pair.flush()
        assert scheduled == [0]
        assert bytes(pair.server.received) == b"0123456789" * 10
        # From outside a callback: the first small write schedules one call,
        # the next ones join its batch.
        before = len(pair.clock.getDelayedCalls())
        for _ in range(10):
            pair.client.transport.write(b"x")  # type: ignore[union-attr]
        assert len(pair.clock.getDelayedCalls()) - before == 1
        pair.flush()
        assert bytes(pair.server.received).endswith(b"x" * 10)

    def test_ciphertext_leaves_at_once_when_256_kib_has_built_up_outside_a_callback(
        self,
    ) -> None:
        """
        Large writes from outside any callback wait for the next reactor
        turn, until 256 KiB of plaintext is waiting: then it all goes in one
        transport write at once, without waiting for the turn.
        """
        pair = connect("membio")
        sent: list[bytes] = []
        original_write = pair.client_io.write

        def counting_write(data: bytes) -> None:
            sent.append(data)
            original_write(data)

        pair.client_io.write = counting_write
        piece = os.urandom(20_000)
        writes_below = (256 * 1024) // len(piece)  # 13 writes: 260,000 bytes < 256 KiB
        for _ in range(writes_below):
            pair.client.transport.write(piece)  # type: ignore[union-attr]
        assert sent == [], "drained before 256 KiB had built up"
        pair.client.transport.write(piece)  # type: ignore[union-attr]  # 280,000 bytes
        assert len(sent) == 1, "256 KiB waited for the reactor turn"
        assert len(sent[0]) > (writes_below + 1) * len(piece)
        pair.flush()
        assert bytes(pair.server.received) == piece * (writes_below + 1)

    def test_lose_connection_waits_for_the_peers_close_notify(self) -> None:
        """
        After our close_notify the transport stays open until the peer's
        answer arrives (then it closes at once), or until ``close_timeout``
        (5 s from every entry point that sets the policy) if it never does.
        """
        pair = connect("membio", close_timeout=DEFAULT_CLOSE_TIMEOUT)
        pair.server.transport.loseConnection()  # type: ignore[union-attr]
        assert not pair.server_io.disconnecting, "closed before the peer could answer"
        pair.flush()  # the client answers with its own close_notify
        assert pair.server_io.disconnecting
        assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)
        assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)

        silent = connect("membio", close_timeout=DEFAULT_CLOSE_TIMEOUT)
        silent.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
        silent.server.transport.loseConnection()  # type: ignore[union-attr]
        silent.flush()
        silent.clock.advance(DEFAULT_CLOSE_TIMEOUT - 0.1)
        silent.flush()
        assert not silent.server_io.disconnecting, "gave up before close_timeout"
        assert silent.server.lost is None
        silent.clock.advance(0.2)
        silent.flush()
        assert silent.server_io.disconnecting, "waited past close_timeout"
        assert silent.server.lost is not None

    def test_a_pull_producer_streams_a_file(self) -> None:
        # Only ours: Twisted's layer turns pull producers into push ones with a
        # cooperator bound to the global reactor, which a fake clock never runs.
        pair = connect("membio")
        payload = os.urandom(300_000)
        with io.BytesIO(payload) as f:
            done = FileSender().beginFileTransfer(f, pair.server.transport)
            finished: list[object] = []
            done.addBoth(finished.append)
            for _ in range(200):
                pair.flush()
                if finished:
                    break
        assert finished
        assert bytes(pair.client.received) == payload

    def test_tls_backpressure_pauses_the_producer_until_the_handshake_completes(self) -> None:
        """Ours only: Twisted's layer has no limit on what waits for the handshake."""
        producer = Recorder()
        client = App()

        def made() -> None:
            client.transport.registerProducer(producer, True)  # type: ignore[union-attr]
            client.transport.write(b"x" * 1500)  # type: ignore[union-attr]

        client.connectionMade = made  # type: ignore[method-assign]
        pair = connect("membio", client_app=client, send_buffer_limit=1000)
        # connect() pumped the handshake through: paused while waiting, then resumed.
        assert producer.calls == ["pause", "resume"]
        assert bytes(pair.server.received) == b"x" * 1500

    def test_half_close_after_the_peers_half_close_sends_close_notify(self) -> None:
        server = HalfCloseApp()
        client = HalfCloseApp()
        pair = connect("membio", server_app=server, client_app=client)
        pair.client.transport.loseWriteConnection()  # type: ignore[union-attr]
        pair.flush()
        assert server.read_lost
        server.transport.write(b"last")  # type: ignore[union-attr]
        server.transport.loseWriteConnection()  # type: ignore[union-attr]
        pair.flush()
        assert bytes(client.received) == b"last"
        assert client.read_lost, "the client saw close_notify, not a bare end"
        assert client.lost is not None and client.lost.check(ConnectionDone)
        assert server.lost is not None and server.lost.check(ConnectionDone)

    def test_half_close_before_the_handshake_completes_waits_for_it(self) -> None:
        """
        A half-close made while the handshake runs (a client that writes its
        request and half-closes in connectionMade) must not shut TCP under
        the handshake: the request, close_notify and the TCP half-close go
        once it completes, and the peer can still reply.
        """
        server = HalfCloseApp()
        client = HalfCloseApp()

        def made() -> None:
            client.transport.write(b"request")  # type: ignore[union-attr]
            client.transport.loseWriteConnection()  # type: ignore[union-attr]

        client.connectionMade = made  # type: ignore[method-assign]
        pair = connect("membio", server_app=server, client_app=client)
        assert bytes(server.received) == b"request"
        assert server.read_lost, "the server saw close_notify"
        server.transport.write(b"response")  # type: ignore[union-attr]
        server.transport.loseConnection()  # type: ignore[union-attr]
        pair.flush()
        assert bytes(client.received) == b"response"
        assert client.lost is not None and client.lost.check(ConnectionDone)

    def test_pause_and_resume_within_one_callback_keeps_delivering_in_order(self) -> None:
        pair = connect("membio")
        scheduled: list[int] = []

        def toggle(app: App, data: bytes) -> None:
            before = len(pair.clock.getDelayedCalls())
            app.transport.pauseProducing()  # type: ignore[union-attr]
            app.transport.resumeProducing()  # type: ignore[union-attr]
            scheduled.append(len(pair.clock.getDelayedCalls()) - before)

        pair.server.on_data = toggle
        payload = os.urandom(40000)
        pair.client.transport.write(payload)  # type: ignore[union-attr]
        pair.flush()
        assert bytes(pair.server.received) == payload
        assert len(pair.server.chunks) == 3
        # The running delivery loop carried on: nothing was deferred.
        assert scheduled == [0, 0, 0]
