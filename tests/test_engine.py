"""
The sans-I/O engine, without a reactor: engine pairs pumped in memory, and
an engine against the standard library's independent TLS implementation.
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from OpenSSL import SSL

from membio_transport import (
    Event,
    TLSEngine,
    TLSHandshakeError,
    TLSProtocolError,
    TLSState,
    TLSStateError,
    TLSTruncationError,
)
from membio_transport.tls import _engine, _record_io
from membio_transport.tls._record_io import DirectRecordIO, PublicRecordIO, record_io

from ._engines import Side, StdlibPeer, engine_pair, pump, pump_with_stdlib
from ._pki import LONG_CHAIN_DER_BYTES, PKI, KeyType, make_pki

VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Hypothesis tests draw the path themselves: pytest-twisted cannot run
    # one parametrized Hypothesis test twice in a session.
    if "record_io_path" in metafunc.fixturenames and not hasattr(
        metafunc.function, "hypothesis"
    ):
        metafunc.parametrize("record_io_path", ["direct", "public"], indirect=True)


@pytest.fixture(autouse=True)
def record_io_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    Every rule here holds over both ways of reaching OpenSSL: the direct
    binding calls and pyOpenSSL's public methods (the fallback).
    """
    path = str(getattr(request, "param", "direct"))
    if path == "public":
        monkeypatch.setattr(
            _engine, "record_io", lambda conn, direct=True: record_io(conn, direct=False)
        )
    return path


@pytest.fixture(params=["ecdsa", "rsa"])
def pki(request: pytest.FixtureRequest) -> PKI:
    key_type: KeyType = request.param
    return make_pki(key_type)


@pytest.fixture(params=sorted(VERSIONS))
def version(request: pytest.FixtureRequest) -> int:
    return VERSIONS[request.param]


def open_pair(pki: PKI, version: int | None = None, **kw: int) -> tuple[Side, Side]:
    client, server = engine_pair(pki, version, **kw)
    pump(client, server)
    assert client.engine.state is TLSState.OPEN
    assert server.engine.state is TLSState.OPEN
    return client, server


def test_handshake_completes_and_data_flows_both_ways(pki: PKI, version: int) -> None:
    client, server = engine_pair(pki, version)
    pump(client, server)
    assert Event.HANDSHAKE_COMPLETE in client.events
    assert Event.HANDSHAKE_COMPLETE in server.events
    name = {v: k for k, v in VERSIONS.items()}[version]
    assert client.engine.connection.get_protocol_version_name() == name
    client.engine.send(b"ping")
    server.engine.send(b"pong")
    pump(client, server)
    assert bytes(server.received) == b"ping"
    assert bytes(client.received) == b"pong"


def test_data_written_during_the_handshake_is_held_then_delivered_once(pki: PKI) -> None:
    client, server = engine_pair(pki)
    for i in range(100):
        assert client.engine.send(b"%03d," % i)
    assert client.engine.buffered == 400
    pump(client, server)
    assert bytes(server.received) == b"".join(b"%03d," % i for i in range(100))
    assert client.engine.buffered == 0


def test_plaintext_held_back_past_the_limit_signals_backpressure(pki: PKI) -> None:
    client, server = engine_pair(pki, send_buffer_limit=1000)
    assert client.engine.send(b"x" * 999) is True
    assert client.engine.send(b"x") is False
    pump(client, server)
    assert client.engine.buffered == 0
    assert len(server.received) == 1000
    assert client.engine.send(b"more") is True


def test_a_100KiB_certificate_chain_completes_the_handshake() -> None:
    # Twisted's layer reads the outgoing BIO once per event, 32 KiB at a
    # time, and so never finishes a handshake like this one (twisted#5095).
    pki = make_pki("ecdsa", chain_bytes=LONG_CHAIN_DER_BYTES)
    assert len(pki.chain_pem) > 100 * 1024
    client, server = engine_pair(pki, SSL.TLS1_3_VERSION)
    client.drain_events()
    server.engine.receive(client.engine.data_to_send())
    server.drain_events()
    flight = server.engine.data_to_send()
    assert len(flight) > 3 * 32 * 1024
    client.engine.receive(flight)
    client.drain_events()
    assert Event.HANDSHAKE_COMPLETE in client.events


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=65536), min_size=1, max_size=8),
    payload_size=st.integers(min_value=0, max_value=300_000),
    tls13=st.booleans(),
    direct=st.booleans(),
)
def test_any_chunking_of_the_byte_stream_delivers_the_same_bytes(
    sizes: list[int], payload_size: int, tls13: bool, direct: bool
) -> None:
    pki = make_pki("ecdsa")
    version = SSL.TLS1_3_VERSION if tls13 else SSL.TLS1_2_VERSION

    def chunker(data: bytes) -> Iterator[bytes]:
        i = 0
        pos = 0
        while pos < len(data):
            step = sizes[i % len(sizes)]
            yield data[pos : pos + step]
            pos += step
            i += 1

    client, server = engine_pair(pki, version, direct_io=direct)
    payload = os.urandom(payload_size)
    client.engine.send(payload)
    server.engine.send(payload[::-1])
    pump(client, server, chunker, rounds=10_000)
    assert bytes(server.received) == payload
    assert bytes(client.received) == payload[::-1]


@pytest.mark.parametrize("engine_is_server", [True, False], ids=["engine-server", "engine-client"])
def test_engine_interoperates_with_the_stdlib_ssl_implementation(
    pki: PKI, version: int, engine_is_server: bool
) -> None:
    std_version = (
        ssl.TLSVersion.TLSv1_3 if version == SSL.TLS1_3_VERSION else ssl.TLSVersion.TLSv1_2
    )
    if engine_is_server:
        ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        conn = SSL.Connection(pki.server_context(version), None)
        conn.set_accept_state()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        import tempfile

        with tempfile.NamedTemporaryFile() as chain, tempfile.NamedTemporaryFile() as key:
            chain.write(pki.chain_pem)
            chain.flush()
            key.write(pki.key_pem)
            key.flush()
            ctx.load_cert_chain(chain.name, key.name)
        conn = SSL.Connection(pki.client_context(version), None)
        conn.set_connect_state()
        conn.set_tlsext_host_name(b"localhost")
    ctx.minimum_version = ctx.maximum_version = std_version
    side = Side(TLSEngine(conn, server_side=engine_is_server))
    peer = StdlibPeer(ctx, server_side=not engine_is_server)
    if not engine_is_server:
        side.drain_events()
    else:
        peer.step()
        side.engine.receive(peer.outgoing.read())
    pump_with_stdlib(side, peer)
    assert side.engine.state is TLSState.OPEN
    assert peer.handshake_done
    big = os.urandom(200_000)
    side.engine.send(big)
    peer.obj.write(big[::-1])
    pump_with_stdlib(side, peer)
    assert bytes(peer.received) == big
    assert bytes(side.received) == big[::-1]


def test_a_stdlib_client_completes_a_handshake_with_a_100KiB_chain() -> None:
    pki = make_pki("ecdsa", chain_bytes=LONG_CHAIN_DER_BYTES)
    ctx = ssl.create_default_context(cadata=pki.ca_pem.decode())
    conn = SSL.Connection(pki.server_context(), None)
    conn.set_accept_state()
    side = Side(TLSEngine(conn, server_side=True))
    peer = StdlibPeer(ctx, server_side=False)
    peer.step()
    side.engine.receive(peer.outgoing.read())
    pump_with_stdlib(side, peer)
    assert peer.handshake_done
    assert side.engine.state is TLSState.OPEN


# -- the peer misbehaves ---------------------------------------------------------


def test_garbage_instead_of_a_client_hello_fails_the_handshake_with_an_alert(pki: PKI) -> None:
    _client, server = engine_pair(pki)
    server.engine.receive(b"\x16\x03\x01\x00\x05hello, this is not TLS at all" * 3)
    with pytest.raises(TLSHandshakeError) as info:
        server.drain_events()
    assert server.engine.state is TLSState.FAILED
    assert isinstance(info.value, SSL.Error)
    alert = server.engine.data_to_send()
    assert alert[:1] == b"\x15", "a TLS alert record goes out before the close"


def test_plain_http_on_the_tls_port_fails_the_handshake_with_a_reason(pki: PKI) -> None:
    _client, server = engine_pair(pki)
    server.engine.receive(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    with pytest.raises(TLSHandshakeError) as info:
        server.drain_events()
    # OpenSSL recognises the request line and says so; the alert-free
    # failure is what lets the Twisted layer answer in HTTP instead.
    assert info.value.reason == "http request"
    assert server.engine.state is TLSState.FAILED


def test_a_corrupted_record_fails_with_a_protocol_error_and_an_alert(
    pki: PKI, version: int
) -> None:
    client, server = open_pair(pki, version)
    client.engine.send(b"secret" * 100)
    record = bytearray(client.engine.data_to_send())
    record[-5] ^= 0xFF
    server.engine.receive(bytes(record))
    with pytest.raises(TLSProtocolError) as info:
        server.drain_events()
    assert server.engine.state is TLSState.FAILED
    assert server.engine.error is info.value
    assert server.engine.buffered == 0
    alert = server.engine.data_to_send()
    # TLS 1.3 encrypts alerts inside an application_data record.
    assert alert[:1] == (b"\x15" if version == SSL.TLS1_2_VERSION else b"\x17")
    assert server.received == b""


def test_a_truncated_record_then_eof_is_a_truncation_not_a_clean_close(
    pki: PKI, version: int
) -> None:
    client, server = open_pair(pki, version)
    client.engine.send(b"half of this is lost" * 50)
    record = client.engine.data_to_send()
    server.engine.receive(record[: len(record) // 2])
    server.drain_events()
    assert server.received == b""
    server.engine.receive_eof()
    with pytest.raises(TLSTruncationError):
        server.drain_events()
    assert server.engine.state is TLSState.FAILED


def test_eof_without_close_notify_after_data_is_reported_as_truncation(pki: PKI) -> None:
    client, server = open_pair(pki)
    client.engine.send(b"complete record")
    server.engine.receive(client.engine.data_to_send())
    server.engine.receive_eof()
    with pytest.raises(TLSTruncationError):
        server.drain_events()
    assert bytes(server.received) == b"complete record"


def test_eof_during_the_handshake_is_a_truncation(pki: PKI) -> None:
    client, server = engine_pair(pki)
    client.drain_events()
    server.engine.receive(client.engine.data_to_send()[:20])
    server.drain_events()
    server.engine.receive_eof()
    with pytest.raises(TLSTruncationError) as info:
        server.drain_events()
    assert "handshake" in info.value.reason


def test_untrusted_server_certificate_fails_the_client_handshake() -> None:
    trusted, other = make_pki("ecdsa"), make_pki("rsa")
    server_conn = SSL.Connection(other.server_context(), None)
    server_conn.set_accept_state()
    client_conn = SSL.Connection(trusted.client_context(), None)
    client_conn.set_connect_state()
    client = Side(TLSEngine(client_conn, server_side=False))
    server = Side(TLSEngine(server_conn, server_side=True))
    with pytest.raises(TLSHandshakeError) as info:
        pump(client, server)
    assert info.value.reason == (
        "certificate verify failed: unable to get local issuer certificate"
    )
    assert client.engine.data_to_send()[:1] == b"\x15"


# -- orderly shutdown and half-close -----------------------------------------------


def test_close_sends_close_notify_and_the_peer_sees_a_clean_end(pki: PKI, version: int) -> None:
    client, server = open_pair(pki, version)
    server.engine.send(b"last words")
    server.engine.close()
    assert server.engine.state is TLSState.LOCAL_CLOSED
    pump(client, server)
    assert bytes(client.received) == b"last words"
    assert Event.PEER_CLOSED in client.events
    assert client.engine.state is TLSState.PEER_CLOSED
    client.engine.close()
    pump(client, server)
    assert client.engine.state is TLSState.CLOSED
    assert server.engine.state is TLSState.CLOSED
    assert Event.PEER_CLOSED in server.events


def test_after_the_peers_close_notify_we_may_still_send(pki: PKI) -> None:
    client, server = open_pair(pki, SSL.TLS1_3_VERSION)
    client.engine.close()
    pump(client, server)
    assert server.engine.state is TLSState.PEER_CLOSED
    server.engine.send(b"response after half-close")
    pump(client, server)
    assert bytes(client.received) == b"response after half-close"


def test_data_arriving_after_the_session_ended_is_ignored(pki: PKI) -> None:
    client, server = open_pair(pki)
    server.engine.abort()
    assert server.engine.state is TLSState.CLOSED
    client.engine.send(b"too late")
    server.engine.receive(client.engine.data_to_send())
    assert server.engine.next_event() is Event.NEED_DATA
    assert server.received == b""


def test_close_during_the_handshake_abandons_the_session(pki: PKI) -> None:
    client, _server = engine_pair(pki)
    client.engine.send(b"never sent")
    client.engine.close()
    assert client.engine.state is TLSState.CLOSED
    assert client.engine.buffered == 0


# -- the caller misuses the API ------------------------------------------------------


def test_sending_after_close_is_a_state_error_not_an_attribute_error(pki: PKI) -> None:
    client, _server = open_pair(pki)
    client.engine.close()
    with pytest.raises(TLSStateError):
        client.engine.send(b"x")


def test_asking_a_failed_engine_for_events_is_a_state_error(pki: PKI) -> None:
    _client, server = engine_pair(pki)
    server.engine.receive(b"\x00" * 64)
    with pytest.raises(TLSHandshakeError):
        server.drain_events()
    with pytest.raises(TLSStateError):
        server.engine.next_event()
    with pytest.raises(TLSStateError):
        server.engine.send(b"x")


@pytest.mark.parametrize("limit", [0, -1])
def test_buffer_limit_must_be_positive(pki: PKI, limit: int) -> None:
    conn = SSL.Connection(pki.server_context(), None)
    with pytest.raises(ValueError, match="send_buffer_limit must be positive"):
        TLSEngine(conn, server_side=True, send_buffer_limit=limit)


# -- renegotiation ---------------------------------------------------------------------


#: ``SSL_OP_ALLOW_CLIENT_RENEGOTIATION`` (OpenSSL 3.0+, bit 8).  pyOpenSSL's
#: binding does not name it.  OpenSSL 3 and later refuse a client's
#: renegotiation unless a context sets it, so a test that wants to see *our*
#: refusal must first build a context that would allow it.
ALLOW_CLIENT_RENEGOTIATION = getattr(
    SSL._lib, "SSL_OP_ALLOW_CLIENT_RENEGOTIATION", 1 << 8  # type: ignore[attr-defined]
)


def options(connection: SSL.Connection) -> int:
    """A connection's OpenSSL option bits (setting none returns them all)."""
    return connection.set_options(0)


def _bare(pki: PKI, *, server: bool, allow_client_renegotiation: bool = False) -> SSL.Connection:
    if server:
        context = pki.server_context(SSL.TLS1_2_VERSION)
        if allow_client_renegotiation:
            context.set_options(ALLOW_CLIENT_RENEGOTIATION)
        conn = SSL.Connection(context, None)
        conn.set_accept_state()
    else:
        conn = SSL.Connection(pki.client_context(SSL.TLS1_2_VERSION), None)
        conn.set_connect_state()
    return conn


def _shuttle(engine_side: Side, bare: SSL.Connection, received: bytearray) -> None:
    """Pump an engine against a bare pyOpenSSL connection until quiet."""
    for _ in range(100):
        engine_side.drain_events()
        out = engine_side.engine.data_to_send()
        if out:
            bare.bio_write(out)
        with contextlib.suppress(SSL.WantReadError):
            bare.do_handshake()
        while True:
            try:
                received += bare.recv(65536)
            except (SSL.WantReadError, SSL.ZeroReturnError):
                break
        try:
            back = bare.bio_read(1 << 20)
        except SSL.WantReadError:
            back = b""
        if back:
            engine_side.engine.receive(back)
        if not out and not back:
            return
    raise AssertionError("never went quiet")


def _bare_pair(server: SSL.Connection, client: SSL.Connection) -> None:
    """Pump two bare pyOpenSSL connections until quiet (the control case)."""
    for _ in range(100):
        moved = False
        for src, dst in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                src.do_handshake()
            with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
                src.recv(65536)
            try:
                out = src.bio_read(1 << 20)
            except SSL.WantReadError:
                continue
            dst.bio_write(out)
            moved = True
        if not moved:
            return
    raise AssertionError("never went quiet")


def test_a_context_that_allows_client_renegotiation_really_allows_it_without_the_engine() -> None:
    """
    The control for the test below: OpenSSL 3+ refuses client-initiated
    renegotiation by default, so a test of our refusal is only worth
    something if the context it uses would otherwise let it through.
    """
    pki = make_pki("ecdsa")
    server = _bare(pki, server=True, allow_client_renegotiation=True)
    client = _bare(pki, server=False)
    _bare_pair(server, client)
    assert client.renegotiate()
    _bare_pair(server, client)
    assert client.total_renegotiations() == 1
    assert not client.renegotiate_pending(), "the server completed the renegotiation"


def test_client_initiated_renegotiation_is_refused_by_a_server_engine() -> None:
    """
    Refused by the engine itself (``OP_NO_RENEGOTIATION`` on every server
    connection), even over a context that allows it: not by OpenSSL's
    default, which the context above switched off.
    """
    pki = make_pki("ecdsa")
    server = Side(
        TLSEngine(_bare(pki, server=True, allow_client_renegotiation=True), server_side=True)
    )
    assert options(server.engine.connection) & SSL.OP_NO_RENEGOTIATION
    # The bare pyOpenSSL client plays the attacker asking to renegotiate.
    client = _bare(pki, server=False)
    got = bytearray()
    _shuttle(server, client, got)
    assert server.engine.state is TLSState.OPEN
    assert client.renegotiate()
    with pytest.raises(SSL.Error, match="no renegotiation"):
        _shuttle(server, client, got)
    # The server answered with a no_renegotiation alert and carried on.
    assert server.engine.state is TLSState.OPEN
    assert client.renegotiate_pending()


def test_a_client_engine_leaves_renegotiation_to_its_server() -> None:
    """Only server engines refuse: a client must follow a server's HelloRequest."""
    pki = make_pki("ecdsa")
    client = Side(TLSEngine(_bare(pki, server=False), server_side=False))
    assert not options(client.engine.connection) & SSL.OP_NO_RENEGOTIATION


def test_server_initiated_renegotiation_mid_transfer_loses_and_duplicates_nothing() -> None:
    pki = make_pki("ecdsa")
    client = Side(TLSEngine(_bare(pki, server=False), server_side=False))
    server = _bare(pki, server=True)
    got = bytearray()
    _shuttle(client, server, got)
    sent = bytearray()
    for i in range(50):
        chunk = os.urandom(5000)
        sent += chunk
        client.engine.send(chunk)
        if i == 10:
            assert server.renegotiate()
            server.bio_write(client.engine.data_to_send())
            with contextlib.suppress(SSL.WantReadError):
                server.do_handshake()
        _shuttle(client, server, got)
    _shuttle(client, server, got)
    assert server.total_renegotiations() >= 1
    assert bytes(got) == bytes(sent)


def test_one_drain_empties_the_outgoing_bio_after_a_large_burst(pki: PKI) -> None:
    """
    `data_to_send` is the one pump, and it drains to empty: after 600 KB
    sent at once, one call returns every record (more than any single
    BIO read of the public fallback takes), and the BIO is left empty.
    """
    client, server = open_pair(pki)
    payload = os.urandom(600_000)
    client.engine.send(payload)
    out = client.engine.data_to_send()
    assert len(out) > 600_000
    with pytest.raises(SSL.WantReadError):
        client.engine.connection.bio_read(1)
    assert client.engine.data_to_send() == b""
    server.engine.receive(out)
    server.drain_events()
    assert bytes(server.received) == payload


# -- record framing shortcut ---------------------------------------------------------


def test_records_split_anywhere_including_inside_headers_are_all_delivered(pki: PKI) -> None:
    client, server = open_pair(pki)
    messages = [os.urandom(n) for n in (1, 5, 300, 16384, 20000, 7)]
    for message in messages:
        client.engine.send(message)
    stream = client.engine.data_to_send()
    # Cut every record boundary and every header at awkward offsets.
    cuts = sorted({1, 2, 3, 4, 6, 7, 29, 30, 31, 32, 33, 34, 35, len(stream) - 2})
    start = 0
    for cut in [*cuts, len(stream)]:
        server.engine.receive(stream[start:cut])
        server.drain_events()
        start = cut
    assert bytes(server.received) == b"".join(messages)


def test_a_stream_that_does_not_look_like_tls_records_still_reaches_openssl(pki: PKI) -> None:
    _client, server = open_pair(pki)
    server.engine.receive(b"\x80\x01garbage that is not a record header")
    with pytest.raises(TLSProtocolError):
        server.drain_events()


def test_a_write_refused_during_renegotiation_is_retried_unchanged_and_delivered_once() -> None:
    pki = make_pki("ecdsa")
    client = Side(TLSEngine(_bare(pki, server=False), server_side=False))
    server = _bare(pki, server=True)
    got = bytearray()
    _shuttle(client, server, got)
    # The server asks for a renegotiation; the client engine answers with a
    # new ClientHello and is now waiting for the ServerHello.
    assert server.renegotiate()
    with contextlib.suppress(SSL.WantReadError):
        server.do_handshake()
    client.engine.receive(server.bio_read(1 << 20))
    client.drain_events()
    # OpenSSL refuses application data until the renegotiation is done.
    first, second = os.urandom(3000), os.urandom(70000)
    client.engine.send(first)
    client.engine.send(second)
    assert client.engine.buffered == len(first) + len(second), "the write was held, not lost"
    _shuttle(client, server, got)
    assert server.total_renegotiations() == 1
    assert bytes(got) == first + second
    assert client.engine.buffered == 0


def test_the_reason_skips_openssls_generic_summary_line() -> None:
    from membio_transport.tls import describe

    error = SSL.Error(
        [
            ("Provider routines", "", "cipher operation failed"),
            ("SSL routines", "", "decryption failed or bad record mac"),
            ("SSL routines", "", "record layer failure"),
        ]
    )
    assert describe(error) == "decryption failed or bad record mac"


def test_engines_on_this_pyopenssl_take_the_direct_path(pki: PKI) -> None:
    client, server = open_pair(pki)
    # The fixture forces the public path for half the runs; the default must
    # be direct on the pyOpenSSL this project pins, or the speed is gone.
    conn = SSL.Connection(pki.server_context(), None)
    assert isinstance(record_io(conn), DirectRecordIO)
    client.engine.send(b"x" * 70000)
    pump(client, server)
    assert server.received == b"x" * 70000


def test_a_binding_without_the_needed_functions_falls_back_to_the_public_api(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_record_io, "_BINDING_COMPLETE", False)
    conn = SSL.Connection(pki.server_context(), None)
    assert isinstance(record_io(conn), PublicRecordIO)


def test_a_failed_direct_read_raises_what_pyopenssl_would(pki: PKI) -> None:
    """Errors on the direct path go through pyOpenSSL's own translation."""
    outcomes = []
    for direct in (True, False):
        client, server = engine_pair(pki, direct_io=direct)
        pump(client, server)
        client.engine.send(b"secret")
        record = bytearray(client.engine.data_to_send())
        record[-1] ^= 0xFF  # corrupt the authentication tag
        server.engine.receive(bytes(record))
        with pytest.raises(TLSProtocolError) as caught:
            server.drain_events()
        error = caught.value
        outcomes.append((type(error), error.reason, error.args))
    assert outcomes[0] == outcomes[1]


def test_a_failed_write_raises_what_pyopenssl_would_on_both_paths(pki: PKI) -> None:
    """A write on a connection OpenSSL has failed is an error, never "try later"."""
    outcomes = []
    for direct in (True, False):
        _client, server = engine_pair(pki, direct_io=direct)
        connection = server.engine.connection
        connection.bio_write(b"\x16\x03\x01\x00\x05garbage that is no ClientHello")
        with pytest.raises(SSL.Error):
            connection.do_handshake()
        with pytest.raises(SSL.Error) as caught:
            record_io(connection, direct=direct).write(b"too late")
        outcomes.append((type(caught.value), caught.value.args))
    assert outcomes[0] == outcomes[1]


def test_engines_in_several_threads_at_once_deliver_every_byte_intact() -> None:
    """
    The direct path shares one scratch buffer per process for bytes it has
    already copied out (OpenSSL calls run without the GIL): sessions in
    different threads must still see exactly their own data.
    """
    import hashlib
    import threading

    pki = make_pki("ecdsa")
    results: dict[int, bool] = {}

    def run(index: int) -> None:
        client, server = engine_pair(pki)
        pump(client, server)
        payload = os.urandom(300_000 + index * 4096)
        for start in range(0, len(payload), 65536):
            client.engine.send(payload[start : start + 65536])
            pump(client, server)
        results[index] = (
            hashlib.sha256(bytes(server.received)).digest() == hashlib.sha256(payload).digest()
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == dict.fromkeys(range(6), True)


def test_a_write_larger_than_one_ssl_write_goes_in_pieces_and_arrives_whole(
    pki: PKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SSL_write's length is a C int; the limit is lowered so that the test
    # does not need 2 GiB of plaintext.
    monkeypatch.setattr(_record_io, "MAX_WRITE", 10_000)
    client, server = open_pair(pki)
    payload = os.urandom(123_457)
    client.engine.send(payload)
    pump(client, server)
    assert server.received == payload


def test_no_ssl_write_is_longer_than_a_c_int(
    pki: PKI, monkeypatch: pytest.MonkeyPatch, record_io_path: str
) -> None:
    """
    ``MAX_WRITE`` is the largest length ``SSL_write`` takes (INT_MAX), and
    no call is ever longer: writes beyond it go in pieces.
    """
    assert _record_io.MAX_WRITE == 2**31 - 1
    monkeypatch.setattr(_record_io, "MAX_WRITE", 10_000)
    client, server = open_pair(pki)
    lengths: list[int] = []
    if record_io_path == "direct":
        real_write = _record_io._SSL_write

        def recording_write(ssl: object, data: object, size: int) -> int:
            lengths.append(size)
            return int(real_write(ssl, data, size))

        monkeypatch.setattr(_record_io, "_SSL_write", recording_write)
    else:
        connection = client.engine.connection
        real_send = connection.send

        def recording_send(data: bytes | memoryview) -> int:
            lengths.append(len(data))
            return real_send(data)

        connection.send = recording_send  # type: ignore[method-assign]
    payload = os.urandom(45_000)
    client.engine.send(payload)
    client.engine.send(os.urandom(10_000))  # exactly MAX_WRITE: one call
    pump(client, server)
    assert lengths and max(lengths) <= 10_000, lengths
    assert len(lengths) >= 6
    assert bytes(server.received[: len(payload)]) == payload


def test_a_large_write_refused_midway_by_a_renegotiation_is_retried_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write that goes in pieces and meets a renegotiation: nothing lost or doubled."""
    monkeypatch.setattr(_record_io, "MAX_WRITE", 4_000)
    pki = make_pki("ecdsa")
    client = Side(TLSEngine(_bare(pki, server=False), server_side=False))
    server = _bare(pki, server=True)
    got = bytearray()
    _shuttle(client, server, got)
    assert server.renegotiate()
    with contextlib.suppress(SSL.WantReadError):
        server.do_handshake()
    client.engine.receive(server.bio_read(1 << 20))
    client.drain_events()
    payload = os.urandom(50_000)
    client.engine.send(payload)
    assert client.engine.buffered == len(payload), "held whole while renegotiating"
    _shuttle(client, server, got)
    assert bytes(got) == payload
    assert client.engine.buffered == 0


def test_the_public_drain_takes_a_burst_in_as_few_reads_as_it_can(pki: PKI) -> None:
    """
    Through pyOpenSSL's public API the BIO cannot say how much it holds: it is
    read 256 KiB at a time, and a short read ends the drain (no extra read
    just to be told it is empty).
    """
    client, server = engine_pair(pki, direct_io=False)
    pump(client, server)
    connection = client.engine.connection
    real_read = connection.bio_read
    sizes: list[int] = []

    def counting_read(size: int) -> bytes:
        sizes.append(0)  # a read that finds the BIO empty (it raises) counts too
        data = real_read(size)
        sizes[-1] = len(data)
        return data

    connection.bio_read = counting_read  # type: ignore[method-assign]
    for burst, reads in ((200_000, 1), (600_000, 3)):
        sizes.clear()
        client.engine.send(os.urandom(burst))
        out = client.engine.data_to_send()
        assert len(sizes) == reads, sizes
        assert sizes[:-1] == [256 * 1024] * (reads - 1) and sum(sizes) == len(out)
        server.engine.receive(out)
        server.drain_events()


def test_consumed_records_are_not_read_for_again(pki: PKI, version: int) -> None:
    """
    The engine follows the records' framing: once every complete record that
    arrived has been decrypted, it answers NEED_DATA without another
    ``SSL_read`` (which would only say "want read").  However the stream is
    cut, even inside record headers, there is exactly one read per record.
    """
    client, server = open_pair(pki, version)
    messages = [os.urandom(n) for n in (1, 300, 5, 16384, 17000, 7, 2)]
    reads = _reads_of(server)
    expected = b""
    for cut in (1_000_000, 1, 3, 5, 6, 7, 4096, 16389):
        stream = b""
        for message in messages:
            client.engine.send(message)
            stream += client.engine.data_to_send()
        records = _count_records(stream)
        assert records == len(messages) + 1  # 17000 bytes take two records
        before = reads()
        for start in range(0, len(stream), cut):
            server.engine.receive(stream[start : start + cut])
            server.drain_events()
        assert reads() - before == records, f"cut every {cut} bytes"
        expected += b"".join(messages)
        assert bytes(server.received) == expected


def _count_records(stream: bytes) -> int:
    count = pos = 0
    while pos < len(stream):
        pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
        count += 1
    return count


def _reads_of(side: Side) -> Callable[[], int]:
    """Count the decrypting reads the engine makes from now on."""
    engine = side.engine
    io = engine._io
    calls = [0]

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(io, name)

        def read(self) -> bytes | None:
            calls[0] += 1
            return io.read()

    engine._io = Counting()  # type: ignore[assignment]
    return lambda: calls[0]


class _ShortWrites:
    """
    The engine's record I/O, except that the next writes take only as many
    bytes as `allow` says (what OpenSSL does when a renegotiation starts
    in the middle of a partial write): the rest must be offered again.
    """

    def __init__(self, io: object) -> None:
        self._io = io
        self.allow: list[int] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self._io, name)

    def write(self, data: bytes | memoryview) -> int:
        if self.allow:
            taken = self.allow.pop(0)
            return int(self._io.write(memoryview(data)[:taken])) if taken else 0  # type: ignore[attr-defined]
        return int(self._io.write(data))  # type: ignore[attr-defined]


def test_a_partly_taken_write_is_retried_from_where_it_stopped_and_in_order(pki: PKI) -> None:
    client, server = open_pair(pki)
    short = _ShortWrites(client.engine._io)
    client.engine._io = short  # type: ignore[assignment]
    a, b, c = os.urandom(5000), os.urandom(3000), os.urandom(2000)
    short.allow = [1000]
    client.engine.send(a)  # 1000 bytes taken, 4000 wait at the head
    assert client.engine.buffered == 4000
    client.engine.send(b)  # queued behind them
    client.engine.send(c)
    short.allow = [500, 200, 0]
    assert client.engine.next_event() is Event.NEED_DATA  # retries: 500 more taken
    assert client.engine.buffered == 3500 + len(b) + len(c)
    assert client.engine.next_event() is Event.NEED_DATA  # 200 more
    assert client.engine.next_event() is Event.NEED_DATA  # refused outright
    assert client.engine.buffered == 3300 + len(b) + len(c)
    assert client.engine.next_event() is Event.NEED_DATA  # everything goes
    assert client.engine.buffered == 0
    pump(client, server)
    assert bytes(server.received) == a + b + c


@pytest.mark.parametrize("writes", [2, 100])
def test_writes_queued_during_the_handshake_leave_as_one_record(pki: PKI, writes: int) -> None:
    client, server = engine_pair(pki, SSL.TLS1_3_VERSION)
    for _ in range(writes):
        client.engine.send(b"0123456789")
    client.drain_events()
    server.engine.receive(client.engine.data_to_send())
    server.drain_events()
    client.engine.receive(server.engine.data_to_send())
    assert client.engine.next_event() is Event.HANDSHAKE_COMPLETE
    assert client.engine.buffered == 0, "encrypted as the handshake completed"
    client.drain_events()
    assert client.engine.state is TLSState.OPEN
    # The client's last flight: its Finished, then the queued data in one record.
    flight = client.engine.data_to_send()
    types = _record_types(flight)
    assert types.count(23) == 2, types
    server.engine.receive(flight)
    server.drain_events()
    assert bytes(server.received) == b"0123456789" * writes


def _record_types(stream: bytes) -> list[int]:
    types, pos = [], 0
    while pos < len(stream):
        types.append(stream[pos])
        pos += 5 + int.from_bytes(stream[pos + 3 : pos + 5], "big")
    return types


def test_a_verify_callback_that_rejects_gives_openssls_words_for_it(pki: PKI) -> None:
    server_conn = SSL.Connection(pki.server_context(), None)
    server_conn.set_accept_state()
    context = pki.client_context()
    context.set_verify(SSL.VERIFY_PEER, lambda *args: False)
    client_conn = SSL.Connection(context, None)
    client_conn.set_connect_state()
    client = Side(TLSEngine(client_conn, server_side=False))
    server = Side(TLSEngine(server_conn, server_side=True))
    with pytest.raises(TLSHandshakeError) as info:
        pump(client, server)
    assert info.value.reason == (
        "certificate verify failed: unspecified certificate verification error"
    )


def test_abort_after_our_close_notify_abandons_the_session(pki: PKI) -> None:
    client, _server = open_pair(pki)
    client.engine.close()
    assert client.engine.state is TLSState.LOCAL_CLOSED
    client.engine.abort()
    assert client.engine.state is TLSState.CLOSED
    client.engine.receive(b"anything")  # nothing more is read
    assert client.engine.next_event() is Event.NEED_DATA


@pytest.mark.parametrize("major", [2, 5])
def test_a_record_header_with_a_wrong_version_still_reaches_openssl(pki: PKI, major: int) -> None:
    """
    A valid content type with a version that is no TLS version, and a huge
    length: not something to wait for, but OpenSSL's to refuse at once.
    """
    _client, server = open_pair(pki)
    server.engine.receive(bytes([0x17, major, 0xFF, 0xFF]) + b"x" * 10)
    with pytest.raises(TLSProtocolError):
        server.drain_events()


def test_an_openssl_error_on_write_fails_the_engine(pki: PKI) -> None:
    client, _server = open_pair(pki)
    io = client.engine._io

    class Failing:
        def __getattr__(self, name: str) -> object:
            return getattr(io, name)

        def write(self, data: object) -> int:
            raise SSL.Error([("SSL routines", "", "bad write retry")])

    client.engine._io = Failing()  # type: ignore[assignment]
    with pytest.raises(TLSProtocolError, match="bad write retry"):
        client.engine.send(b"data")
    assert client.engine.state is TLSState.FAILED
    assert client.engine.buffered == 0


def test_an_openssl_error_on_close_notify_fails_the_engine(pki: PKI) -> None:
    client, _server = open_pair(pki)

    def failing_shutdown() -> bool:
        raise SSL.Error([("SSL routines", "", "shutdown while in init")])

    client.engine.connection.shutdown = failing_shutdown  # type: ignore[method-assign]
    with pytest.raises(TLSProtocolError, match="shutdown while in init"):
        client.engine.close()
    assert client.engine.state is TLSState.FAILED


def test_the_handshake_s_buffers_are_released_once_and_retried_until_they_are(
    pki: PKI, record_io_path: str
) -> None:
    """
    After the handshake the engine gives back the BIOs' memory on a drain;
    if that cannot happen yet (the peer's next record is still arriving) it
    tries again on the next drains, and once done it stops trying.
    """
    client, server = engine_pair(pki)
    io = client.engine._io
    attempts: list[bool] = []
    refuse = [True]

    class Counting:
        def __getattr__(self, name: str) -> object:
            return getattr(io, name)

        def release_buffers(self) -> bool:
            done = False if refuse[0] else io.release_buffers()
            refuse[0] = False
            attempts.append(done)
            return done

    client.engine._io = Counting()  # type: ignore[assignment]
    pump(client, server)
    assert client.engine.state is TLSState.OPEN
    for _ in range(3):
        client.engine.send(b"more")
        client.engine.data_to_send()
    # The public API cannot replace BIOs: the engine does not even try.
    assert attempts == ([False, True] if record_io_path == "direct" else []), attempts


def test_the_smallest_buffer_limit_is_one_byte(pki: PKI) -> None:
    conn = SSL.Connection(pki.server_context(), None)
    engine = TLSEngine(conn, server_side=True, send_buffer_limit=1)
    assert engine.send(b"x") is False


def test_abort_during_the_handshake_abandons_it(pki: PKI) -> None:
    client, _server = engine_pair(pki)
    client.engine.send(b"waiting for the handshake")
    client.engine.abort()
    assert client.engine.state is TLSState.CLOSED
    assert client.engine.buffered == 0


def _incoming_bytes(side: Side) -> int:
    connection = side.engine.connection
    return int(_record_io._BIO_get_mem_data(connection._into_ssl, _record_io._NULL))  # type: ignore[attr-defined]


@pytest.mark.parametrize("end", ["peer-closed", "closed", "failed"])
def test_bytes_after_the_end_of_the_session_are_not_kept(pki: PKI, end: str) -> None:
    """A peer cannot grow our buffers by talking past the end of the session."""
    client, server = open_pair(pki)
    if end == "peer-closed":
        client.engine.close()
        pump(client, server)
        assert server.engine.state is TLSState.PEER_CLOSED
    elif end == "closed":
        server.engine.abort()
    else:
        server.engine.receive(b"\x17\x03\x03\x00\x05" + b"\x00" * 5)
        with pytest.raises(TLSProtocolError):
            server.drain_events()
    server.engine.receive(b"\x17\x03\x03\x40\x00" + b"x" * 100_000)
    server.engine.receive(b"")
    assert _incoming_bytes(server) == 0
