"""
What a server does with peers that are not what they should be, and what
it tells its operator: plain HTTP on the TLS port, garbage, failed and
stalled handshakes, idle connections, counters and log lines.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from zope.interface import implementer

from membio_transport import (
    HARDENED,
    MemoryBIOTLSFactory,
    TLSHandshakeError,
    TLSStats,
    tls_failure_reason,
)
from membio_transport.tls._sniff import Preamble, answer_plain_http, classify

from ._pki import make_pki
from .test_parity import App, client_options, connect, server_options

PKI = make_pki("ecdsa")


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        text = formatEvent(event)
        if text:
            lines.append(text)

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def server_on_string_transport(**kw: Any) -> tuple[Any, App, StringTransport, Clock]:
    """A server with the hardened policy (C{kw} overrides it), as our entry points build it."""
    clock = Clock()
    app = App()
    factory = MemoryBIOTLSFactory(
        server_options(PKI),
        False,
        protocol.Factory.forProtocol(lambda: app),
        clock,
        **{**HARDENED.keywords(), **kw},
    )
    tls = factory.buildProtocol(None)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8443),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 51234),
    )
    tls.makeConnection(transport)
    return tls, app, transport, clock


# -- plain HTTP and garbage on the TLS port ------------------------------------------


def test_plain_http_gets_a_400_naming_the_https_url_then_a_close(log_lines: list[str]) -> None:
    tls, app, transport, _ = server_on_string_transport()
    tls.dataReceived(b"GET /docs?page=2 HTTP/1.1\r\nHost: localhost:8443\r\nAccept: */*\r\n\r\n")
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"this port speaks HTTPS" in response
    assert b"https://localhost:8443/docs?page=2" in response
    assert transport.disconnecting
    tls.connectionLost(None)
    assert app.lost is not None and app.lost.check(TLSHandshakeError)
    assert tls.factory.stats.failed["plain HTTP on the TLS port"] == 1
    assert any(
        "TLS handshake failed from 127.0.0.1:51234: plain HTTP on the TLS port" in line
        for line in log_lines
    ), log_lines


def test_plain_http_can_be_redirected_instead() -> None:
    tls, _app, transport, _ = server_on_string_transport(plain_http="redirect")
    tls.dataReceived(b"HEAD /x HTTP/1.0\r\nHost: example.test:8443\r\n\r\n")
    response = transport.value()
    assert response.startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    assert b"Location: https://example.test:8443/x\r\n" in response


@pytest.mark.parametrize("name", ["redirect", "close"])
def test_a_policy_read_at_run_time_is_obeyed_like_the_literal(name: str) -> None:
    """
    From a command line or an endpoint string the policy is a string made
    at run time, equal to the literal in our code but not the same object.
    """
    policy = name.encode().decode()
    assert policy == name and policy is not name
    tls, _app, transport, _ = server_on_string_transport(plain_http=policy)
    tls.dataReceived(b"GET /x HTTP/1.1\r\nHost: example.test\r\n\r\n")
    assert transport.disconnecting
    if name == "redirect":
        assert transport.value().startswith(b"HTTP/1.1 301 Moved Permanently\r\n")
    else:
        assert transport.value() == b""


def test_an_http_method_split_across_reads_is_still_recognised() -> None:
    tls, _app, transport, _ = server_on_string_transport()
    tls.dataReceived(b"PO")
    assert transport.value() == b""
    tls.dataReceived(b"ST /form HTTP/1.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 400")
    # No Host header: our own address stands in.
    assert b"https://127.0.0.1:8443/form" in transport.value()


def test_a_hostile_host_header_is_not_echoed() -> None:
    tls, _app, transport, _ = server_on_string_transport(plain_http="redirect")
    tls.dataReceived(b"GET / HTTP/1.1\r\nHost: evil.test\r\nSet-Cookie: x\r\n\r\n")
    assert b"Location: https://evil.test:8443/\r\n" in transport.value()
    tls2, _app2, transport2, _ = server_on_string_transport(plain_http="redirect")
    tls2.dataReceived(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert b"a b" not in transport2.value()


def test_garbage_that_is_neither_tls_nor_http_is_closed_at_once(log_lines: list[str]) -> None:
    tls, app, transport, _ = server_on_string_transport()
    tls.dataReceived(b"SSH-2.0-OpenSSH_9.2\r\n")
    assert transport.value() == b""
    assert transport.disconnecting
    tls.connectionLost(None)
    assert app.lost is not None and app.lost.check(TLSHandshakeError)
    assert any("from 127.0.0.1:51234: not TLS" in line for line in log_lines)


def test_a_malformed_tls_record_gets_an_alert_before_the_close() -> None:
    tls, _app, transport, _ = server_on_string_transport()
    tls.dataReceived(b"\x16\x03\x01\x00\x04\xff\xff\xff\xff")
    assert transport.value()[:1] == b"\x15"
    assert transport.disconnecting


@pytest.mark.parametrize(
    ("first", "alert"),
    [(19, False), (20, True), (21, True), (23, True), (24, True), (25, False)],
)
def test_every_tls_content_type_goes_to_openssl_and_nothing_next_to_them(
    first: int, alert: bool
) -> None:
    """
    A record of any TLS content type, change_cipher_spec (20) to heartbeat
    (24), gets OpenSSL's verdict (an alert); a byte just outside that range
    is not TLS: closed at once, without a word.
    """
    tls, app, transport, _ = server_on_string_transport()
    tls.dataReceived(bytes([first, 3, 3, 0, 2, 1, 0]))
    assert transport.disconnecting
    assert transport.value()[:1] == (b"\x15" if alert else b"")
    tls.connectionLost(None)
    assert app.lost is not None
    assert (tls_failure_reason(app.lost) == "not TLS") is not alert


def test_with_sniffing_off_every_byte_goes_to_openssl() -> None:
    tls, app, transport, _ = server_on_string_transport(plain_http=None)
    tls.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    # OpenSSL's own verdict, as with Twisted's layer: no answer, a close.
    assert transport.value() == b""
    assert transport.disconnecting
    tls.connectionLost(None)
    assert app.lost is not None and "http request" in str(app.lost.value)


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        (b"\x16", Preamble.TLS),
        (b"\x80\x2e\x01", Preamble.TLS),
        # The edges: record types 20 to 24; SSLv2's high bit, whatever the length.
        (b"\x13", Preamble.GARBAGE),
        (b"\x14", Preamble.TLS),
        (b"\x18", Preamble.TLS),
        (b"\x19", Preamble.GARBAGE),
        (b"\x7f", Preamble.GARBAGE),
        (b"\xff\xff\x01", Preamble.TLS),
        (b"G", Preamble.UNDECIDED),
        (b"GET ", Preamble.HTTP),
        (b"OPTIONS * HTTP/1.1", Preamble.HTTP),
        (b"PRI * HTTP/2.0", Preamble.HTTP),
        (b"GETX", Preamble.GARBAGE),
        (b"\x00", Preamble.GARBAGE),
        (b"NICK alice", Preamble.GARBAGE),
    ],
)
def test_first_bytes_are_classified(prefix: bytes, kind: Preamble) -> None:
    assert classify(prefix) is kind


def test_the_answer_omits_the_default_https_port() -> None:
    response, url = answer_plain_http(b"GET / HTTP/1.1\r\n\r\n", "explain", "::1", 443)
    assert url == "https://[::1]/"
    assert b"Content-Length: " in response


# -- handshakes: timeouts, failures, logs and counters -------------------------------------


def test_a_peer_that_sends_nothing_is_dropped_at_the_handshake_timeout_quietly(
    log_lines: list[str],
) -> None:
    tls, app, transport, clock = server_on_string_transport(handshake_timeout=3.0)
    clock.advance(2.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting or getattr(transport, "aborting", False)
    tls.connectionLost(None)
    assert app.lost is not None and "handshake timeout" in str(app.lost.value)
    assert tls.factory.stats.failed["handshake timeout"] == 1
    assert any("handshake timeout (3s)" in line for line in log_lines)


def test_a_trickled_client_hello_does_not_extend_the_handshake_timeout() -> None:
    tls, _app, transport, clock = server_on_string_transport(handshake_timeout=5.0)
    hello = _client_hello()
    for i in range(10):
        tls.dataReceived(hello[i : i + 1])
        clock.advance(1)
    assert transport.disconnecting or getattr(transport, "aborting", False)


def _stalled_servers(count: int, clock: Clock, every: float, **kw: Any) -> list[Any]:
    """C{count} server connections of one hardened factory, one every C{every} seconds."""
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), clock,
        **{**HARDENED.keywords(), **kw},
    )
    servers = []
    for _ in range(count):
        tls = factory.buildProtocol(None)
        tls.makeConnection(StringTransport())
        servers.append(tls)
        clock.advance(every)
    return servers


def _aborted(tls: Any) -> bool:
    return bool(tls.transport.disconnecting or getattr(tls.transport, "aborting", False))


def test_many_handshake_timeouts_share_one_call_and_each_fires_at_its_own_time() -> None:
    clock = Clock()
    servers = _stalled_servers(5, clock, 0.5, handshake_timeout=3.0)  # started at 0, 0.5 ... 2.0
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.4)  # t = 2.9: none due yet
    assert [_aborted(tls) for tls in servers] == [False] * 5
    clock.advance(0.1)  # t = 3.0: the first one exactly
    assert [_aborted(tls) for tls in servers] == [True, False, False, False, False]
    clock.advance(0.99)  # t = 3.99
    assert [_aborted(tls) for tls in servers] == [True, True, False, False, False]
    clock.advance(1.01)  # t = 5.0
    assert all(_aborted(tls) for tls in servers)
    assert clock.getDelayedCalls() == []


def test_completed_handshakes_leave_no_call_and_free_their_connection() -> None:
    clock = Clock()
    pairs = [connect("membio", PKI, **HARDENED.keywords()) for _ in range(3)]
    for pair in pairs:
        assert pair.server_tls._handshake_timer is None
    stalled = _stalled_servers(2, clock, 1.0, handshake_timeout=10.0)
    stalled[0].connectionLost(None)
    assert len(clock.getDelayedCalls()) == 1  # the second one still waits
    stalled[1].connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_a_handshake_times_out_at_its_own_deadline_whatever_was_cancelled_around_it() -> None:
    clock = Clock()
    first, middle, last = _stalled_servers(3, clock, 2.0, handshake_timeout=10.0)  # due 10, 12, 14
    first.connectionLost(None)
    last.connectionLost(None)
    clock.advance(4.0)  # t = 10: the first deadline, cancelled
    assert not _aborted(middle)
    clock.advance(1.99)
    assert not _aborted(middle)
    clock.advance(0.01)  # t = 12
    assert _aborted(middle)
    assert clock.getDelayedCalls() == []


def test_a_timed_out_handshake_and_a_lost_one_leave_no_call_behind() -> None:
    clock = Clock()
    slow, other = _stalled_servers(2, clock, 1.0, handshake_timeout=2.0)  # due 2, 3
    assert _aborted(slow) and not _aborted(other)
    other.connectionLost(None)
    assert clock.getDelayedCalls() == []


def test_a_timed_out_handshake_and_a_lost_one_leave_the_others_deadline_alone() -> None:
    clock = Clock()
    servers = _stalled_servers(3, clock, 1.0, handshake_timeout=2.5)  # due 2.5, 3.5, 4.5
    assert [_aborted(tls) for tls in servers] == [True, False, False]  # t = 3
    servers[1].connectionLost(None)
    clock.advance(1.49)
    assert not _aborted(servers[2])
    clock.advance(0.01)  # t = 4.5
    assert _aborted(servers[2])
    assert clock.getDelayedCalls() == []


def test_a_shorter_timeout_set_later_still_fires_first() -> None:
    clock = Clock()
    factory = MemoryBIOTLSFactory(
        server_options(PKI), False, protocol.Factory.forProtocol(App), clock,
        **{**HARDENED.keywords(), "handshake_timeout": 10.0},
    )
    slow = factory.buildProtocol(None)
    slow.makeConnection(StringTransport())
    factory.handshake_timeout = 1.0
    fast = factory.buildProtocol(None)
    fast.makeConnection(StringTransport())
    clock.advance(1.0)
    assert (_aborted(fast), _aborted(slow)) == (True, False)
    clock.advance(9.0)
    assert _aborted(slow)


def _client_hello() -> bytes:
    conn = SSL.Connection(PKI.client_context(), None)
    conn.set_connect_state()
    with contextlib.suppress(SSL.WantReadError):
        conn.do_handshake()
    return conn.bio_read(65536)


def test_a_failed_handshake_is_one_log_line_with_the_peer_and_the_reason(
    log_lines: list[str],
) -> None:
    untrusting = client_options(make_pki("rsa"))
    pair = connect("membio", PKI, client_creator=untrusting, **HARDENED.keywords())
    assert pair.client.lost is not None
    failures = [line for line in log_lines if "TLS handshake failed from" in line]
    assert len(failures) == 2, failures
    assert any("certificate verify failed" in line for line in failures)
    assert any("unknown ca" in line.lower() for line in failures)
    assert all("Traceback" not in line for line in log_lines)
    assert pair.server_tls.factory.stats.handshakes == 0
    assert sum(pair.server_tls.factory.stats.failed.values()) == 1


def test_the_bare_factory_logs_failed_handshakes_no_more_than_twisted_does(
    log_lines: list[str],
) -> None:
    untrusting = client_options(make_pki("rsa"))
    pair = connect("membio", PKI, client_creator=untrusting)
    assert pair.client.lost is not None and pair.server.lost is not None
    assert log_lines == []
    assert sum(pair.server_tls.factory.stats.failed.values()) == 1, "still counted"


def test_counters_track_connections_handshakes_and_bytes() -> None:
    stats = TLSStats()
    pair = connect("membio", PKI, stats=stats)
    # Both ends share the counters here: two connections, two handshakes.
    assert stats.active == 2
    assert stats.handshakes == 2
    pair.client.transport.write(b"x" * 1000)  # type: ignore[union-attr]
    pair.flush()
    assert stats.bytes_sent >= 1000 and stats.bytes_received == stats.bytes_sent
    pair.client.transport.loseConnection()  # type: ignore[union-attr]
    pair.flush()
    assert stats.active == 0
    assert stats.snapshot()["handshakes"] == 2


@implementer(IOpenSSLClientConnectionCreator)
class ResumingClient:
    """A client creator that offers the session of the previous connection."""

    def __init__(self) -> None:
        self.context = PKI.client_context(SSL.TLS1_3_VERSION)
        self.context.set_session_cache_mode(SSL.SESS_CACHE_CLIENT)
        self.session: Any = None
        self.last: SSL.Connection | None = None

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        if self.last is not None:
            self.session = self.last.get_session()
        conn = SSL.Connection(self.context, None)
        if self.session is not None:
            conn.set_session(self.session)
        self.last = conn
        return conn


def test_resumed_handshakes_are_counted() -> None:
    import tempfile

    from membio_transport.tls import ServerTLSOptions, server_context

    with tempfile.NamedTemporaryFile() as chain, tempfile.NamedTemporaryFile() as key:
        chain.write(PKI.chain_pem)
        chain.flush()
        key.write(PKI.key_pem)
        key.flush()
        server = ServerTLSOptions(server_context(chain.name, key.name))
    client = ResumingClient()
    stats = TLSStats()
    for _ in range(3):
        pair = connect("membio", PKI, server_creator=server, client_creator=client, stats=stats)
        pair.server.transport.write(b"hello")  # type: ignore[union-attr]
        pair.flush()
        pair.client.transport.loseConnection()  # type: ignore[union-attr]
        pair.flush()
    # Server and client both count: 3 handshakes each, the last 2 resumed.
    assert stats.handshakes == 6
    assert stats.resumed == 4


# -- idle connections ----------------------------------------------------------------------


def test_an_idle_connection_is_closed_with_close_notify_after_the_idle_timeout(
    log_lines: list[str],
) -> None:
    pair = connect("membio", PKI, idle_timeout=30.0)
    pair.clock.advance(20)
    pair.client.transport.write(b"still here")  # type: ignore[union-attr]
    pair.flush()
    pair.clock.advance(20)
    pair.flush()
    assert pair.server.lost is None, "activity 20 s ago: not idle yet"
    pair.clock.advance(11)
    pair.flush()
    assert pair.server.lost is not None and pair.server.lost.check(ConnectionDone)
    assert pair.client.lost is not None and pair.client.lost.check(ConnectionDone)
    assert any("idle for" in line for line in log_lines)


def test_idle_timeout_is_off_by_default() -> None:
    pair = connect("membio", PKI)
    pair.clock.advance(24 * 3600)
    pair.flush()
    assert pair.server.lost is None


def test_an_unknown_plain_http_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        MemoryBIOTLSFactory(server_options(PKI), False, protocol.Factory(), Clock(),
                            plain_http="shout")  # type: ignore[arg-type]



@pytest.mark.parametrize(
    ("host", "url"),
    [
        (b"localhost", "https://localhost:8443/"),
        (b"localhost:8443", "https://localhost:8443/"),
        (b"example.test:9999", "https://example.test:9999/"),
        (b"[::1]", "https://[::1]:8443/"),
        (b"[::1]:8443", "https://[::1]:8443/"),
    ],
)
def test_the_https_url_keeps_the_dialled_port_or_names_ours(host: bytes, url: str) -> None:
    _response, got = answer_plain_http(
        b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", "explain", "127.0.0.1", 8443
    )
    assert got == url


def test_the_host_header_is_found_among_the_others() -> None:
    """Whatever headers come before it, and however its name is cased."""
    _response, url = answer_plain_http(
        b"GET /p HTTP/1.1\r\nAccept: */*\r\nUser-Agent: x\r\nConnection: keep-alive\r\n"
        b"hOST: example.test:8080\r\nX-Other: y\r\n\r\n",
        "explain", "127.0.0.1", 8443,
    )
    assert url == "https://example.test:8080/p"


def test_only_the_first_host_header_counts_and_never_one_in_the_body() -> None:
    _response, url = answer_plain_http(
        b"GET / HTTP/1.1\r\nHost: first.test\r\nHost: second.test\r\n\r\n",
        "explain", "127.0.0.1", 8443,
    )
    assert url == "https://first.test:8443/"
    _response, url = answer_plain_http(
        b"GET / HTTP/1.1\r\nHost: not a name\r\nHost: second.test\r\n\r\n",
        "explain", "127.0.0.1", 8443,
    )
    assert url == "https://127.0.0.1:8443/", "an unusable first Host means our own address"
    _response, url = answer_plain_http(
        b"POST /f HTTP/1.1\r\nContent-Length: 17\r\n\r\nHost: evil.test\r\n\r\n",
        "explain", "127.0.0.1", 8443,
    )
    assert url == "https://127.0.0.1:8443/f"


@pytest.mark.parametrize(
    ("request_line", "path"),
    [
        (b"GET /p?q=1 HTTP/1.1", "/p?q=1"),
        (b"GET /p", "/p"),  # HTTP/0.9: no version
        (b"GET http://evil.test/x HTTP/1.1", "/"),  # absolute form: not echoed
        (b"GET /a\x7fb HTTP/1.1", "/"),
        (b"OPTIONS * HTTP/1.1", "/"),
    ],
)
def test_the_request_path_is_kept_only_when_it_is_a_plain_absolute_path(
    request_line: bytes, path: str
) -> None:
    _response, url = answer_plain_http(
        request_line + b"\r\nHost: example.test\r\n\r\n", "explain", "127.0.0.1", 8443
    )
    assert url == f"https://example.test:8443{path}"


@pytest.mark.parametrize("port", [442, 443, 444])
@pytest.mark.parametrize("host", [None, b"example.test"])
def test_the_https_url_names_every_port_but_443(host: bytes | None, port: int) -> None:
    request = b"GET / HTTP/1.1\r\n" + (b"Host: " + host + b"\r\n" if host else b"") + b"\r\n"
    _response, url = answer_plain_http(request, "explain", "127.0.0.1", port)
    name = host.decode() if host else "127.0.0.1"
    assert url == (f"https://{name}/" if port == 443 else f"https://{name}:{port}/")
