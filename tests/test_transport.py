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
