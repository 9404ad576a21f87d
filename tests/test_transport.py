"""
Rules of our Twisted transport (`MemoryBIOTLSProtocol`) that the parity
suite does not reach: when writes leave, what timers a connection leaves
behind, the idle timer's re-arming, half-close edges, and when a connection
counts as having had a burst.  In memory, on a fake clock.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
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
            log_handshake_failures=True,
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
    short.allow = [0, 0, 0]  # the next write is refused, and its retries twice
    pair.client.transport.write(b"x" * 1000)  # type: ignore[union-attr]  # exactly the limit
    pair.clock.advance(0)  # the batch is encrypted on the next turn: refused
    assert producer.calls == ["pause"]
    pair.server.transport.write(b"ping")  # type: ignore[union-attr]  # the client reads
    pair.flush()
    assert producer.calls == ["pause"], "resumed while the buffer was still full"
    pair.client.transport.write(b"y" * 500)  # type: ignore[union-attr]  # now over the limit
    pair.clock.advance(0)
    pair.server.transport.write(b"ping")  # type: ignore[union-attr]
    pair.flush()
    assert producer.calls == ["pause"], "resumed while the buffer was over the limit"
    pair.server.transport.write(b"ping")  # type: ignore[union-attr]  # now the writes go
    pair.flush()
    assert producer.calls == ["pause", "resume"]
    assert bytes(pair.server.received) == b"x" * 1000 + b"y" * 500
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


# -- what the application sees ----------------------------------------------------------


def test_bytearrays_and_memoryviews_are_accepted_and_text_is_refused() -> None:
    pair = connect("membio", PKI)
    transport: Any = pair.client.transport
    transport.write(bytearray(b"from a bytearray, "))
    transport.write(memoryview(b"from a memoryview"))
    pair.flush()
    assert bytes(pair.server.received) == b"from a bytearray, from a memoryview"
    with pytest.raises(TypeError, match="Data must be bytes, not str"):
        transport.write("text")


def test_two_small_writes_outside_a_callback_both_leave() -> None:
    pair = connect("membio", PKI)
    pair.client.transport.write(b"one ")  # type: ignore[union-attr]
    pair.client.transport.write(b"two")  # type: ignore[union-attr]
    pair.flush()
    assert bytes(pair.server.received) == b"one two"


def test_a_large_write_inside_a_callback_schedules_no_reactor_call() -> None:
    pair = connect("membio", PKI)
    scheduled: list[int] = []

    def answer(app: App, data: bytes) -> None:
        before = len(pair.clock.getDelayedCalls())
        app.transport.write(os.urandom(40_000))  # type: ignore[union-attr]
        scheduled.append(len(pair.clock.getDelayedCalls()) - before)

    pair.server.on_data = answer
    pair.client.transport.write(b"go")  # type: ignore[union-attr]
    pair.flush()
    assert scheduled == [0]
    assert len(pair.client.received) == 40_000


class _StrictClock(Clock):
    """A fake clock that refuses what the real reactor refuses."""

    def callLater(self, delay: float, *args: Any, **kw: Any) -> Any:
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        return super().callLater(delay, *args, **kw)


def test_flushes_are_scheduled_for_the_next_turn_as_the_reactor_allows() -> None:
    clock = _StrictClock()
    app = App()
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(lambda: app), clock,
        handshake_timeout=None,
    )
    tls = factory.buildProtocol(None)
    tls.makeConnection(StringTransport())
    app.transport.write(b"early")  # type: ignore[union-attr]  # from outside any callback
    assert [call.getTime() for call in clock.getDelayedCalls()] == [0.0]


def test_close_and_abort_tell_the_application_it_is_disconnecting() -> None:
    for close in ("loseConnection", "abortConnection"):
        pair = connect("membio", PKI)
        pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
        transport: Any = pair.server.transport
        getattr(transport, close)()
        assert transport.disconnecting, close


def test_plain_http_with_the_close_policy_gets_no_answer() -> None:
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), Clock(),
        handshake_timeout=None, plain_http="close",
    )
    tls = factory.buildProtocol(None)
    transport = StringTransport()
    tls.makeConnection(transport)
    tls.dataReceived(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
    assert transport.value() == b""
    assert transport.disconnecting and tls.disconnecting


def test_a_corrupted_record_makes_the_transport_disconnecting_at_once() -> None:
    pair = connect("membio", PKI)
    seen: list[bool] = []
    pair.server.connectionLost = lambda reason=None: seen.append(  # type: ignore[method-assign]
        pair.server.transport.disconnecting  # type: ignore[union-attr]
    )
    pair.server_tls.dataReceived(b"\x17\x03\x03\x00\x20" + b"\x00" * 32)  # not decryptable
    assert pair.server_tls.disconnecting
    assert pair.server_io.disconnecting


def test_lose_connection_during_the_handshake_sends_what_waits_then_closes() -> None:
    client = App()

    def made() -> None:
        client.transport.write(b"request")  # type: ignore[union-attr]
        client.transport.loseConnection()  # type: ignore[union-attr]
        client.transport.write(b" and more")  # type: ignore[union-attr]  # dropped, as in Twisted

    client.connectionMade = made  # type: ignore[method-assign]
    pair = connect("membio", PKI, client_app=client)
    assert bytes(pair.server.received) == b"request"
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)
    assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)


def test_lose_connection_during_the_handshake_with_nothing_to_send_closes_at_once() -> None:
    clock = Clock()
    app = App()
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(lambda: app), clock,
        handshake_timeout=None,
    )
    tls = factory.buildProtocol(None)
    transport = StringTransport()
    tls.makeConnection(transport)
    app.transport.loseConnection()  # type: ignore[union-attr]
    assert transport.disconnecting


def test_the_end_of_the_transports_write_side_reaches_a_half_closeable_application() -> None:
    from .test_parity import HalfCloseApp

    class Recording(HalfCloseApp):
        write_lost = False

        def writeConnectionLost(self) -> None:
            self.write_lost = True

    server = Recording()
    pair = connect("membio", PKI, server_app=server)
    pair.server_tls.writeConnectionLost()
    assert server.write_lost
    plain = connect("membio", PKI)
    plain.server_tls.writeConnectionLost()  # an ordinary protocol is not bothered
    assert plain.server.lost is None


@pytest.mark.parametrize("limit", [1000, 20_000])
def test_a_producer_registered_over_a_full_buffer_is_paused_at_once(limit: int) -> None:
    """Over the limit, or exactly at it."""
    from .test_parity import Recorder

    producer = Recorder()
    client = App()
    at_registration: list[str] = []

    def made() -> None:
        client.transport.write(b"x" * 20_000)  # type: ignore[union-attr]  # waits for the handshake
        client.transport.registerProducer(producer, True)  # type: ignore[union-attr]
        at_registration.extend(producer.calls)

    client.connectionMade = made  # type: ignore[method-assign]
    pair = connect("membio", PKI, client_app=client, send_buffer_limit=limit)
    assert at_registration == ["pause"]
    assert producer.calls == ["pause", "resume"]
    assert bytes(pair.server.received) == b"x" * 20_000


def test_unregistering_a_producer_does_not_close_the_connection() -> None:
    from .test_parity import Recorder

    pair = connect("membio", PKI)
    transport: Any = pair.server.transport
    transport.registerProducer(Recorder(), True)
    transport.unregisterProducer()
    pair.flush()
    assert pair.client.lost is None and pair.server.lost is None
    transport.write(b"still open")
    pair.flush()
    assert bytes(pair.client.received) == b"still open"


def test_a_failed_handshake_names_an_unknown_peer_when_the_transport_cannot() -> None:
    from twisted.logger import LogEvent, formatEvent, globalLogPublisher

    class NoPeer(StringTransport):
        def getPeer(self) -> Any:
            raise OSError("not connected")

    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        lines.append(formatEvent(event) or "")

    globalLogPublisher.addObserver(observe)
    try:
        factory = MemoryBIOTLSFactory(
            server_options(PKI), False, protocol.Factory.forProtocol(App), Clock(),
            handshake_timeout=None, plain_http=None,
            log_handshake_failures=True,
        )
        tls = factory.buildProtocol(None)
        tls.makeConnection(NoPeer())
        tls.dataReceived(b"\x16\x03\x01\x00\x05hello, not a ClientHello at all")
    finally:
        globalLogPublisher.removeObserver(observe)
    assert any("TLS handshake failed from unknown peer" in line for line in lines), lines


def test_reentrant_input_is_delivered_after_the_callback_not_inside_it() -> None:
    """A transport that hands us more bytes from inside dataReceived: no nested delivery."""
    pair = connect("membio", PKI)
    captured: list[bytes] = []
    pair.client_io.write = captured.append  # keep the client's records for ourselves
    for text in (b"first", b"second"):
        pair.client.transport.write(text)  # type: ignore[union-attr]
        pair.clock.advance(0)
    first, second = captured
    depth, deepest, order = [0], [0], []

    def nested(app: App, data: bytes) -> None:
        depth[0] += 1
        deepest[0] = max(deepest[0], depth[0])
        order.append(data)
        if data == b"first":
            pair.server_tls.dataReceived(second)  # re-entrantly, as some transports do
        depth[0] -= 1

    pair.server.on_data = nested
    pair.server_tls.dataReceived(first)
    assert order == [b"first", b"second"]
    assert deepest[0] == 1


def test_a_quiet_connection_really_gets_new_bios_after_a_burst() -> None:
    pair = connect("membio", PKI)
    connection = pair.client_tls.getHandle()
    before = connection._into_ssl
    pair.client.transport.write(os.urandom(100_000))  # type: ignore[union-attr]
    pair.flush()
    reclaimer = pair.client_tls.factory.reclaimer
    pair.clock.advance(reclaimer.period)
    pair.clock.advance(reclaimer.period)
    assert reclaimer.released == 1
    assert connection._into_ssl != before, "counted as released, but the BIOs are the old ones"


def _failing_close_notify(tls: Any) -> None:
    from OpenSSL import SSL

    def shutdown() -> bool:
        raise SSL.Error([("SSL routines", "", "shutdown while in init")])

    tls.getHandle().shutdown = shutdown


def test_an_openssl_error_on_close_ends_the_connection_with_it() -> None:
    from OpenSSL import SSL

    for close in ("loseConnection", "loseWriteConnection"):
        pair = connect("membio", PKI)
        _failing_close_notify(pair.server_tls)
        getattr(pair.server.transport, close)()
        assert pair.server_io.disconnecting, close
        pair.server_tls.connectionLost(Failure(ConnectionDone()))
        assert pair.server.lost is not None and pair.server.lost.check(SSL.Error), close
        assert "shutdown while in init" in str(pair.server.lost.value)


def test_a_peer_that_hangs_up_after_our_close_notify_ends_cleanly() -> None:
    """We asked to close; a FIN instead of close_notify truncates nothing we wanted."""
    pair = connect("membio", PKI)
    pair.pump.clientIO.protocol = _BlackHole()  # type: ignore[attr-defined]
    pair.server.transport.loseConnection()  # type: ignore[union-attr]
    pair.flush()
    pair.server_tls.connectionLost(Failure(ConnectionDone()))  # the TCP connection ends
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)


def test_the_transport_is_not_closed_again_while_it_is_being_lost() -> None:
    pair = connect("membio", PKI)
    pair.client.transport.write(b"data")  # type: ignore[union-attr]
    pair.flush()
    closes: list[bool] = []
    pair.server_io.loseConnection = lambda: closes.append(True)
    pair.server_tls.connectionLost(Failure(ConnectionLost()))  # no TLS goodbye
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionLost)
    assert closes == []


# -- one flush per factory and reactor turn (issue #14) ----------------------------------


def _two_connections(clock: Clock) -> tuple[list[Any], list[App]]:
    """Two server connections of one factory over StringTransports, handshake done."""
    from twisted.test import iosim

    from .test_parity import client_options

    server_factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), clock
    )
    client_factory = MemoryBIOTLSFactory(
        client_options(PKI), True, protocol.Factory.forProtocol(App), clock
    )
    pumps, clients = [], []
    for _ in range(2):
        server, client = server_factory.buildProtocol(None), client_factory.buildProtocol(None)
        pump = iosim.connect(
            server, iosim.makeFakeServer(server), client, iosim.makeFakeClient(client),
            greet=False, clock=clock,
        )
        pump.flush()
        pumps.append(pump)
        clients.append(client.wrappedProtocol)
    return pumps, clients


def test_writes_outside_callbacks_on_many_connections_share_one_reactor_call() -> None:
    clock = Clock()
    pumps, clients = _two_connections(clock)
    servers = [pump.server for pump in pumps]
    before = len(clock.getDelayedCalls())
    for n in range(3):
        for server in servers:
            server.write(b"%d," % n)
    assert len(clock.getDelayedCalls()) == before + 1
    for pump in pumps:
        pump.flush()
    assert [bytes(client.received) for client in clients] == [b"0,1,2,"] * 2


def test_a_turns_flush_keeps_each_connections_writes_in_order_and_in_one_write() -> None:
    clock = Clock()
    pumps, clients = _two_connections(clock)
    server = pumps[0].server
    sent = []
    original = server.transport.write
    server.transport.write = lambda data: (sent.append(data), original(data))
    server.write(b"a" * 100)
    server.write(b"b" * 20_000)  # large: encrypted at once, after the batch
    server.write(b"c" * 100)
    assert sent == []
    clock.advance(0)
    assert len(sent) == 1
    pumps[0].flush()
    assert bytes(clients[0].received) == b"a" * 100 + b"b" * 20_000 + b"c" * 100


def test_a_connection_that_fails_its_turns_flush_does_not_hold_back_the_others() -> None:
    clock = Clock()
    pumps, clients = _two_connections(clock)
    first, second = (pump.server for pump in pumps)

    def broken(data: bytes) -> None:
        raise OSError("the transport broke")

    first.transport.write = broken
    first.write(b"lost")
    second.write(b"still sent")
    with pytest.raises(OSError):
        clock.advance(0)  # the reactor would log it, as for any failed call
    clock.advance(0)
    pumps[1].flush()
    assert bytes(clients[1].received) == b"still sent"


def test_a_connection_lost_before_its_turns_flush_leaves_no_call_behind() -> None:
    clock = Clock()
    pumps, _ = _two_connections(clock)
    before = len(clock.getDelayedCalls())
    server = pumps[0].server
    server.write(b"never sent")
    server.connectionLost(Failure(ConnectionDone()))
    assert len(clock.getDelayedCalls()) == before


def test_a_connection_lost_after_a_large_write_leaves_no_call_behind() -> None:
    """A write too large for the batch waits for the turn too; losing it takes it back."""
    clock = Clock()
    pumps, _ = _two_connections(clock)
    before = len(clock.getDelayedCalls())
    server = pumps[0].server
    server.write(b"x" * 20_000)
    assert len(clock.getDelayedCalls()) == before + 1
    server.connectionLost(Failure(ConnectionDone()))
    assert len(clock.getDelayedCalls()) == before


def test_a_connection_lost_before_the_turns_flush_does_not_cancel_the_others() -> None:
    clock = Clock()
    pumps, clients = _two_connections(clock)
    first, second = (pump.server for pump in pumps)
    first.write(b"never sent")
    second.write(b"still sent")
    first.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    pumps[1].flush()
    assert bytes(clients[1].received) == b"still sent"
    assert [call for call in clock.getDelayedCalls() if call.active()] == []


class _Due:
    """A connection as `TurnFlush` sees it: what its flushes do goes in C{log}."""

    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail
        self._flush_due = True
        self.then: list[Any] = []  # what this flush makes other connections do

    def _flush(self) -> None:
        self.log.append(self.name)
        for action in self.then:
            action()
        if self.fail:
            raise OSError(f"{self.name}'s transport broke")


@pytest.mark.parametrize("failing", range(4))
def test_after_a_failed_flush_the_turn_ends_with_the_rest_at_the_next_turn(
    failing: int,
) -> None:
    """Each connection due is flushed once: those after the failing one a turn later."""
    from membio_transport.tls._aggregate import TurnFlush

    clock, log = _StrictClock(), []
    turn = TurnFlush(clock)
    due = [_Due(name, log, fail=index == failing) for index, name in enumerate("abcd")]
    for connection in due:
        turn.add(connection)
    with pytest.raises(OSError):
        clock.advance(0)
    assert log == list("abcd"[: failing + 1])
    log.clear()
    clock.advance(0)
    assert log == list("abcd"[failing + 1 :])
    assert not any(connection._flush_due for connection in due)
    assert clock.getDelayedCalls() == []


def test_connections_that_write_during_a_failing_turn_are_flushed_at_the_next() -> None:
    """Writes made while a turn is flushed (by what a flush set off) are never lost."""
    from membio_transport.tls._aggregate import TurnFlush

    clock, log = _StrictClock(), []
    turn = TurnFlush(clock)
    first, broken, last = _Due("a", log), _Due("b", log, fail=True), _Due("c", log)
    woken = [_Due("x", log), _Due("y", log)]
    first.then = [lambda connection=connection: turn.add(connection) for connection in woken]
    for connection in (first, broken, last):
        turn.add(connection)
    with pytest.raises(OSError):
        clock.advance(0)
    assert log == ["a", "b"]
    log.clear()
    clock.advance(0)
    assert log == ["c", "x", "y"]
    assert clock.getDelayedCalls() == []
