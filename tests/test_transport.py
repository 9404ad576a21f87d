"""
Rules of our Twisted transport (`MemoryBIOTLSProtocol`) that the parity
suite does not reach: when writes leave, what timers a connection leaves
behind, the idle timer's re-arming, half-close edges, and when a connection
counts as having had a burst.  In memory, on a fake clock.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import protocol
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IPullProducer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from membio_transport import MemoryBIOTLSFactory

from ._pki import make_pki
from .test_parity import App, _BlackHole, connect, server_options

PKI = make_pki("ecdsa")


def _counting(pair: Any, side: str = "client") -> list[bytes]:
    io = pair.client_io if side == "client" else pair.server_io
    sent: list[bytes] = []
    original = io.write

    def write(data: bytes) -> None:
        sent.append(data)
        original(data)

    io.write = write
    return sent


# -- when writes leave ------------------------------------------------------------------


def test_the_drain_threshold_is_exactly_256_kib_of_plaintext() -> None:
    pair = connect("membio", PKI)
    sent = _counting(pair)
    transport: Any = pair.client.transport
    transport.write(os.urandom(131_072))
    transport.write(os.urandom(131_072))  # 262,144 bytes: exactly the threshold
    assert len(sent) == 1, "256 KiB waited for the reactor turn"
    pair.flush()
    sent.clear()
    transport.write(os.urandom(131_071))
    transport.write(os.urandom(131_072))  # 262,143 bytes: one short
    assert sent == [], "drained before 256 KiB had built up"
    pair.flush()
    assert len(pair.server.received) == 4 * 131_072 - 1


def test_many_small_writes_outside_a_callback_also_leave_at_256_kib() -> None:
    """Small writes join batches of 16 KiB; those count towards the threshold too."""
    pair = connect("membio", PKI)
    sent = _counting(pair)
    transport: Any = pair.client.transport
    for _ in range(300):
        transport.write(b"x" * 1000)
    assert len(sent) == 1, "300 KB of small writes waited for the reactor turn"
    pair.flush()
    assert bytes(pair.server.received) == b"x" * 300_000


def test_writes_in_connection_made_wait_for_the_end_of_the_callback() -> None:
    """Inside makeConnection the flush that follows sends them: no reactor call."""
    clock = Clock()
    client = App()
    client.connectionMade = lambda: client.transport.write(b"hello")  # type: ignore[method-assign,union-attr]
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(lambda: client), clock,
        handshake_timeout=None,
    )
    tls = factory.buildProtocol(None)
    tls.makeConnection(StringTransport())
    assert clock.getDelayedCalls() == []


@implementer(IPullProducer)
class _Pull:
    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.rounds = 0

    def resumeProducing(self) -> None:
        self.rounds += 1
        for _ in range(10):
            self.transport.write(b"0123456789")

    def stopProducing(self) -> None:
        pass


def test_a_pull_producers_burst_leaves_in_one_write_with_no_reactor_call() -> None:
    pair = connect("membio", PKI)
    sent = _counting(pair)
    producer = _Pull(pair.client.transport)
    pair.client.transport.registerProducer(producer, False)  # type: ignore[union-attr]
    pair.clock.advance(0)  # whatever registering scheduled has run
    sent.clear()
    rounds, before = producer.rounds, len(pair.clock.getDelayedCalls())
    pair.client_io.producer.resumeProducing()  # the real transport asks for more
    assert producer.rounds == rounds + 1
    assert len(sent) == 1
    assert len(pair.clock.getDelayedCalls()) == before
    pair.client.transport.unregisterProducer()  # type: ignore[union-attr]
    pair.flush()
    assert bytes(pair.server.received).startswith(b"0123456789" * 10)


# -- what a connection leaves behind -----------------------------------------------------


def test_a_connection_lost_during_the_handshake_leaves_no_timer() -> None:
    clock = Clock()
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), clock,
        handshake_timeout=10.0,
    )
    tls = factory.buildProtocol(None)
    tls.makeConnection(StringTransport())
    assert clock.getDelayedCalls(), "the handshake timer"
    tls.connectionLost(Failure(ConnectionLost()))
    assert [call for call in clock.getDelayedCalls() if call.active()] == []


def test_a_connection_lost_while_closing_or_idle_leaves_no_timer() -> None:
    pair = connect("membio", PKI, idle_timeout=60.0, close_timeout=5.0)
    pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
    pair.server.transport.loseConnection()  # type: ignore[union-attr]
    pair.flush()  # close_notify sent; the close timer and the idle timer run
    pair.server_tls.connectionLost(Failure(ConnectionDone()))
    pair.client_tls.connectionLost(Failure(ConnectionDone()))  # its idle timer too
    assert [call for call in pair.clock.getDelayedCalls() if call.active()] == []


# -- the idle timer -----------------------------------------------------------------------


def test_the_idle_timer_closes_exactly_idle_timeout_after_the_last_byte() -> None:
    """Checked at 10 s after activity at 7.5 s: re-armed for the 7.5 s left, not less or more."""
    pair = connect("membio", PKI, idle_timeout=10.0)
    pair.clock.advance(7.5)
    pair.client.transport.write(b"activity")  # type: ignore[union-attr]
    pair.flush()
    pair.clock.advance(2.5)  # the first check: idle for 2.5 s
    pair.flush()
    pair.clock.advance(7.49)
    pair.flush()
    assert pair.server.lost is None and not pair.server_io.disconnecting
    pair.clock.advance(0.01)  # 17.5 s: 10 s after the last byte
    pair.flush()
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)


def test_an_idle_close_tells_the_application_it_is_disconnecting() -> None:
    pair = connect("membio", PKI, idle_timeout=10.0, close_timeout=5.0)
    pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
    pair.clock.advance(10)
    pair.flush()
    transport: Any = pair.server.transport
    assert transport.disconnecting, "the application can see the close coming"
    sent = _counting(pair, "server")
    transport.write(b"too late")
    pair.clock.advance(1)
    pair.flush()
    assert sent == []


# -- half-close edges ---------------------------------------------------------------------


class _HalfCloseRecorder(StringTransport):
    def __init__(self) -> None:
        super().__init__()
        self.write_closed = 0

    def loseWriteConnection(self) -> None:
        self.write_closed += 1


def test_lose_write_connection_after_lose_connection_does_nothing() -> None:
    pair = connect("membio", PKI)
    transport: Any = pair.client.transport
    recorder = _HalfCloseRecorder()
    pair.client_tls.transport = recorder
    transport.loseConnection()
    written = recorder.value()
    transport.loseWriteConnection()
    assert recorder.write_closed == 0
    assert recorder.value() == written


def test_a_tcp_fin_without_close_notify_closes_and_reports_a_lost_connection() -> None:
    pair = connect("membio", PKI)
    pair.server_tls.readConnectionLost()  # the client's FIN, no close_notify before it
    assert pair.server_io.disconnecting
    pair.server_tls.connectionLost(Failure(ConnectionDone()))
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionLost)


def test_a_tcp_fin_after_close_notify_leaves_the_write_side_open() -> None:
    from .test_parity import HalfCloseApp

    server = HalfCloseApp()
    pair = connect("membio", PKI, server_app=server, client_app=HalfCloseApp())
    pair.client.transport.loseWriteConnection()  # type: ignore[union-attr]
    pair.flush()
    assert server.read_lost
    pair.server_tls.readConnectionLost()  # then the TCP FIN
    assert not pair.server_io.disconnecting, "the server may still answer"
    server.transport.write(b"answer")  # type: ignore[union-attr]
    pair.flush()
    assert bytes(pair.client.received) == b"answer"


# -- bursts -------------------------------------------------------------------------------


def test_only_bursts_make_a_connection_worth_sweeping() -> None:
    """Small records in and out leave the reclaimer idle: no sweep is scheduled."""
    pair = connect("membio", PKI, handshake_timeout=None)
    pair.server.on_data = lambda app, data: app.transport.write(data)
    for _ in range(20):
        pair.client.transport.write(b"x" * 1000)  # type: ignore[union-attr]
        pair.flush()
    assert len(pair.client.received) == 20_000
    assert [call for call in pair.clock.getDelayedCalls() if call.active()] == []
    pair.server.transport.write(os.urandom(20_000))  # type: ignore[union-attr]  # out: a burst
    pair.flush()
    assert [call for call in pair.clock.getDelayedCalls() if call.active()]


def test_a_peer_that_leaves_without_a_byte_is_counted_but_not_logged() -> None:
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        clock = Clock()
        factory = MemoryBIOTLSFactory(
            server_options(PKI), False, protocol.Factory.forProtocol(App), clock,
            handshake_timeout=None, plain_http="explain",  # sniffing sees the silence
        )
        quiet = factory.buildProtocol(None)
        quiet.makeConnection(StringTransport())
        quiet.readConnectionLost()
        quiet.connectionLost(Failure(ConnectionDone()))
        assert sum(factory.stats.failed.values()) == 1
        assert not [line for line in lines if "TLS handshake failed" in line], lines
        talker = factory.buildProtocol(None)
        talker.makeConnection(StringTransport())
        talker.dataReceived(b"\x16\x03\x01\x00\x40" + b"\x01" * 10)  # half a ClientHello
        talker.readConnectionLost()
        talker.connectionLost(Failure(ConnectionDone()))
        assert sum(factory.stats.failed.values()) == 2
        assert [line for line in lines if "TLS handshake failed" in line]
    finally:
        globalLogPublisher.removeObserver(observe)


# -- producers ------------------------------------------------------------------------------


def test_lose_connection_with_a_producer_registered_lets_it_finish_first() -> None:
    """Twisted's rule (twisted.web relies on it): close once the producer unregisters."""
    from .test_parity import Recorder

    pair = connect("membio", PKI)
    transport: Any = pair.server.transport
    producer = Recorder()
    transport.registerProducer(producer, True)
    transport.loseConnection()
    transport.write(b"the rest of the response")
    pair.flush()
    assert bytes(pair.client.received) == b"the rest of the response"
    assert pair.client.lost is None, "closed while the producer still had work"
    transport.unregisterProducer()
    assert pair.server_io.producer is None
    pair.flush()
    assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)


def test_a_producer_registered_after_close_notify_is_stopped_at_once() -> None:
    from .test_parity import Recorder

    pair = connect("membio", PKI)
    pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
    transport: Any = pair.server.transport
    transport.loseConnection()
    pair.flush()  # our close_notify went out; the peer has not answered
    producer = Recorder()
    transport.registerProducer(producer, True)
    assert producer.calls == ["stop"]


def test_a_producer_paused_for_held_back_writes_resumes_once_they_go() -> None:
    """
    Writes OpenSSL refuses (a renegotiation under way) wait in the engine;
    past the buffer limit the producer is paused, and reading that lets them
    go resumes it.
    """
    from .test_engine import _ShortWrites
    from .test_parity import Recorder

    pair = connect("membio", PKI, send_buffer_limit=1000)
    engine = pair.client_tls._engine
    short = _ShortWrites(engine._io)
    engine._io = short
    producer = Recorder()
    pair.client.transport.registerProducer(producer, True)  # type: ignore[union-attr]
    short.allow = [0]  # the next write is refused outright
    pair.client.transport.write(b"x" * 20_000)  # type: ignore[union-attr]
    assert producer.calls == ["pause"]
    pair.server.transport.write(b"ping")  # type: ignore[union-attr]  # the client reads
    pair.flush()
    assert producer.calls == ["pause", "resume"]
    assert bytes(pair.server.received) == b"x" * 20_000
    pair.client.transport.unregisterProducer()  # type: ignore[union-attr]


def test_resuming_inside_a_pull_producers_burst_delivers_what_waits() -> None:
    pair = connect("membio", PKI)
    server: Any = pair.server

    def pause_after_first(app: App, data: bytes) -> None:
        if len(app.chunks) == 1:
            app.transport.pauseProducing()  # type: ignore[union-attr]

    server.on_data = pause_after_first
    pair.client.transport.write(b"a" * 20_000)  # type: ignore[union-attr]  # two records
    pair.flush()
    assert len(server.received) == 16384

    @implementer(IPullProducer)
    class Resumer:
        def resumeProducing(self) -> None:
            server.transport.resumeProducing()

        def stopProducing(self) -> None:
            pass

    server.transport.registerProducer(Resumer(), False)
    assert len(server.received) == 20_000, "the waiting record was not delivered"
    server.transport.unregisterProducer()


# -- failures and edges ---------------------------------------------------------------------


def test_an_openssl_error_on_write_ends_the_connection_with_it() -> None:
    from OpenSSL import SSL

    pair = connect("membio", PKI)
    engine = pair.client_tls._engine

    class Broken:
        def __getattr__(self, name: str) -> object:
            return getattr(engine_io, name)

        def write(self, data: object) -> int:
            raise SSL.Error([("SSL routines", "", "bad write retry")])

    engine_io = engine._io
    engine._io = Broken()
    pair.client.transport.write(b"x" * 20_000)  # type: ignore[union-attr]
    pair.flush()
    assert pair.client_io.disconnecting
    pair.client_tls.connectionLost(Failure(ConnectionDone()))
    assert pair.client.lost is not None and pair.client.lost.check(SSL.Error)
    assert "bad write retry" in str(pair.client.lost.value)


def test_lose_write_connection_half_closes_the_transport_after_close_notify() -> None:
    pair = connect("membio", PKI)
    recorder = _HalfCloseRecorder()
    pair.client_tls.transport = recorder
    pair.client.transport.loseWriteConnection()  # type: ignore[union-attr]
    assert recorder.write_closed == 1
    assert recorder.value()[:1] == b"\x17", "close_notify (an encrypted alert) first"


def test_plain_http_over_a_unix_socket_names_the_default_https_port_implicitly() -> None:
    from twisted.internet.address import UNIXAddress

    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), Clock(),
        handshake_timeout=None, plain_http="explain",
    )
    tls = factory.buildProtocol(None)
    transport = StringTransport(hostAddress=UNIXAddress(b"/run/tls.sock"))
    tls.makeConnection(transport)
    tls.dataReceived(b"GET /page HTTP/1.0\r\n\r\n")
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"https://localhost/page" in answer, answer
