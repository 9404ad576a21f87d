"""
``twistd membio-tls``, the TLS termination proxy, as a real process in front
of plaintext backends on threads: relaying, the PROXY protocol (v1 and v2,
checked byte by byte and with Twisted's own parser), half-close in both
directions, bounded memory when either side stops reading, and a backend
that is down.  The PROXY header builders are also tested in memory.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.protocols.haproxy._v1parser import V1Parser
from twisted.protocols.haproxy._v2parser import V2Parser

from membio_transport.proxy import proxy_header_v1, proxy_header_v2
from membio_transport.proxy import tap as proxy_tap

from ._deploy_helpers import (
    TLSClient,
    backend,
    echo_handler,
    membio_tls_command,
    read_proxy_header,
    read_until_eof,
    rss_kib,
    set_io_timeout,
)
from ._plugin_helpers import (
    TLS_ON_LOOPBACK,
    Server,
    listening_port,
    running,
    subprocess_env,
    twistd_command,
)


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "home" / "state"))
    monkeypatch.delenv("MEMBIO_KEY_PASSWORD", raising=False)


@contextmanager
def proxy(tmp_path: Path, backend_endpoint: str, *extra: str) -> Iterator[tuple[Server, int, Path]]:
    """membio-tls on a free port relaying to C{backend_endpoint}; yields (server, port, CA)."""
    cert_dir = tmp_path / "certs"
    command = membio_tls_command(
        twistd_command(), "--port", "0", "--backend", backend_endpoint,
        "--cert-dir", str(cert_dir), *extra,
    )
    with running(command, tmp_path, subprocess_env(tmp_path / "home"), "membio-tls") as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        yield server, port, cert_dir / "local-ca.pem"


# ------------------------------------------------------------------ PROXY headers in memory


def test_proxy_header_v1_for_ipv4_ipv6_and_unknown() -> None:
    client, reached = IPv4Address("TCP", "192.0.2.7", 51000), IPv4Address("TCP", "10.0.0.1", 443)
    assert proxy_header_v1(client, reached) == b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n"
    six = proxy_header_v1(IPv6Address("TCP", "2001:db8::7", 5), IPv6Address("TCP", "::1", 443))
    assert six == b"PROXY TCP6 2001:db8::7 ::1 5 443\r\n"
    mapped = proxy_header_v1(
        IPv6Address("TCP", "::ffff:192.0.2.7", 5), IPv4Address("TCP", "10.0.0.1", 443)
    )
    assert mapped == b"PROXY TCP4 192.0.2.7 10.0.0.1 5 443\r\n"
    assert proxy_header_v1(UNIXAddress(b"/run/x"), UNIXAddress(b"/run/x")) == b"PROXY UNKNOWN\r\n"
    info = V1Parser.parse(proxy_header_v1(client, reached).rstrip(b"\r\n"))
    assert (info.source.host, info.source.port) == ("192.0.2.7", 51000)


def test_proxy_header_v2_with_tls_tlvs_parses_with_twisted() -> None:
    client, reached = IPv6Address("TCP", "2001:db8::7", 40000), IPv6Address("TCP", "::1", 8443)
    header = proxy_header_v2(
        client, reached, alpn=b"h2", server_name=b"app.example", tls_version="TLSv1.3",
        cipher="TLS_AES_128_GCM_SHA256",
    )
    info = V2Parser.parse(header)
    # Twisted writes IPv6 addresses out in full; compare them as addresses.
    assert ipaddress.ip_address(info.source.host) == ipaddress.ip_address("2001:db8::7")
    assert ipaddress.ip_address(info.destination.host) == ipaddress.ip_address("::1")
    assert (info.source.port, info.destination.port) == (40000, 8443)
    tlvs = _tlvs(header[16 + 36 :])
    assert tlvs[0x01] == b"h2" and tlvs[0x02] == b"app.example"
    client_flags, verify = struct.unpack("!BI", tlvs[0x20][:5])
    assert client_flags == 0x01 and verify != 0
    sub = _tlvs(tlvs[0x20][5:])
    assert sub == {0x21: b"TLSv1.3", 0x23: b"TLS_AES_128_GCM_SHA256"}
    unknown = proxy_header_v2(UNIXAddress(b"/x"), UNIXAddress(b"/x"))
    assert unknown == b"\r\n\r\n\x00\r\nQUIT\n\x21\x00\x00\x00"


def _tlvs(data: bytes) -> dict[int, bytes]:
    found = {}
    while data:
        kind, length = struct.unpack("!BH", data[:3])
        found[kind] = data[3 : 3 + length]
        data = data[3 + length :]
    return found


# ------------------------------------------------------------------ options


def _error_of(*arguments: str) -> str:
    with pytest.raises(SystemExit) as raised:
        proxy_tap.Options().parseOptions(list(arguments))
    message = str(raised.value.code)
    assert "\n" not in message and message.startswith("twistd membio-tls: error: "), message
    return message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--port", "0"], "--backend is required"),
        (["--port", "0", "--backend", "nonsense:1"], "is not a client endpoint"),
        (["--port", "0", "--backend", "tcp:h:1", "--proxy-protocol", "v3"], "use v1 or v2"),
        (["--backend", "tcp:h:1"], "give --port"),
        (["--port", "0", "--backend", "tcp:h:1", "--workers", "x"], "is not a number"),
        (
            ["--listen", "stdio:", "--backend", "tcp:h:1", "--workers", "2"],
            "--listen stdio:: stdio: cannot be shared between processes (--workers)",
        ),
        (["--port", "0", "--backend", "tcp:h:1", "--listen", "ssl:0"], "membio-tls adds TLS"),
    ],
)
def test_usage_errors_are_one_line(arguments: list[str], expected: str) -> None:
    assert expected in _error_of(*arguments)


# ------------------------------------------------------------------ relaying


@pytest.mark.integration
def test_relays_both_ways_for_concurrent_clients(tmp_path: Path) -> None:
    payload = os.urandom(3 * 1024 * 1024)
    with backend(echo_handler) as echo, proxy(tmp_path, echo.endpoint) as (_, port, ca):
        clients = [TLSClient(port, ca) for _ in range(4)]
        results: dict[int, bytes] = {}

        def exchange(index: int, client: TLSClient) -> None:
            sender = threading.Thread(target=client.send, args=(payload,))
            sender.start()
            results[index] = client.read_exactly(len(payload))
            sender.join(10)

        threads = [
            threading.Thread(target=exchange, args=(i, c), daemon=True)
            for i, c in enumerate(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        try:
            digest = hashlib.sha256(payload).digest()
            assert [hashlib.sha256(results[i]).digest() for i in range(4)] == [digest] * 4
        finally:
            for client in clients:
                client.close()


@pytest.mark.integration
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proxy_protocol_names_the_client(tmp_path: Path, version: str) -> None:
    def check_header(conn: socket.socket, record: dict[str, object]) -> None:
        record["header"] = read_proxy_header(conn)
        echo_handler(conn, record)

    with backend(check_header) as server, proxy(
        tmp_path, server.endpoint, "--proxy-protocol", version
    ) as (_, port, ca):
        # From 127.0.0.2, so that the client's address differs from ours.
        client = TLSClient(port, ca, source="127.0.0.2")
        try:
            source_host, source_port = client.address
            client.send(b"ping")
            assert client.read_exactly(4) == b"ping"
        finally:
            client.close()
        (record,) = server.wait_for(1)
    header = record["header"]
    assert isinstance(header, bytes)
    if version == "v1":
        assert header == f"PROXY TCP4 127.0.0.2 127.0.0.1 {source_port} {port}\r\n".encode()
        return
    info = V2Parser.parse(header)
    assert (info.source.host, info.source.port) == (source_host, source_port)
    assert (info.destination.host, info.destination.port) == ("127.0.0.1", port)
    assert header[12:14] == b"\x21\x11"  # PROXY command, TCP over IPv4
    assert ipaddress.ip_address(header[16:20]) == ipaddress.ip_address("127.0.0.2")
    tlvs = _tlvs(header[16 + 12 :])
    assert tlvs[0x02] == b"localhost"  # the SNI name
    assert _tlvs(tlvs[0x20][5:])[0x21] == b"TLSv1.3"


# ------------------------------------------------------------------ half-close


@pytest.mark.integration
def test_client_close_notify_half_closes_the_backend(tmp_path: Path) -> None:
    """
    The client sends its request and close_notify; the backend reads to EOF,
    answers after that, and closes; the client reads the answer and a
    close_notify.
    """

    def answer_after_eof(conn: socket.socket, record: dict[str, object]) -> None:
        request = read_until_eof(conn)
        record["request"] = request
        conn.sendall(b"got %d bytes after your EOF" % len(request))
        conn.shutdown(socket.SHUT_WR)
        conn.close()

    with backend(answer_after_eof) as server, proxy(tmp_path, server.endpoint) as (_, port, ca):
        client = TLSClient(port, ca)
        try:
            client.send(b"x" * 100_000)
            client.close_notify()
            data, ending = client.read_to_end()
        finally:
            client.close()
        (record,) = server.wait_for(1)
    assert record["request"] == b"x" * 100_000
    assert (data, ending) == (b"got 100000 bytes after your EOF", "close_notify")


@pytest.mark.integration
def test_backend_fin_becomes_close_notify_and_the_client_may_still_send(
    tmp_path: Path,
) -> None:
    def banner_then_listen(conn: socket.socket, record: dict[str, object]) -> None:
        conn.sendall(b"banner, and that is all I say")
        conn.shutdown(socket.SHUT_WR)
        record["heard"] = read_until_eof(conn)
        conn.close()

    with backend(banner_then_listen) as server, proxy(tmp_path, server.endpoint) as (
        membio, port, ca,
    ):
        client = TLSClient(port, ca)
        try:
            data, ending = client.read_to_end()
            assert (data, ending) == (b"banner, and that is all I say", "close_notify")
            client.send(b"still talking after your close_notify")
            client.close_notify()
        finally:
            client.close()
        (record,) = server.wait_for(1)
    assert record["heard"] == b"still talking after your close_notify"
    assert "Traceback" not in membio.stdout + membio.stderr


# ------------------------------------------------------------------ backpressure


@pytest.mark.integration
def test_backend_that_stops_reading_bounds_the_proxy_memory(tmp_path: Path) -> None:
    release = threading.Event()
    warmed_up = threading.Event()

    def slow_reader(conn: socket.socket, record: dict[str, object]) -> None:
        first = conn.recv(7)  # the warm-up: the relay is in place
        warmed_up.set()
        release.wait(30)
        record["bytes"] = len(first) + len(read_until_eof(conn))
        conn.close()

    with backend(slow_reader) as server, proxy(tmp_path, server.endpoint) as (membio, port, ca):
        client = TLSClient(port, ca)
        pid = membio.process.pid
        client.send(b"warm-up")
        assert warmed_up.wait(10), "the warm-up never reached the backend"
        before = rss_kib(pid)
        set_io_timeout(client.raw, 1.0)
        # One TLS record per write, so that a write that times out is the
        # only one whose fate is unknown: OpenSSL keeps it and it is retried.
        sent, chunk = len(b"warm-up"), os.urandom(16384)
        stuck = False
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                sent += client.conn.send(chunk)
            except SSL.WantWriteError:
                stuck = True  # a second with nowhere to put it: all full
                break
        grown = rss_kib(pid) - before
        try:
            assert stuck, f"sent {sent} bytes without ever blocking"
            # Socket buffers (client, proxy in and out, backend) hold it all;
            # without backpressure the proxy would take gigabytes in 4 s.
            assert sent < 64 * 1024 * 1024, sent
            assert grown < 16 * 1024, f"proxy RSS grew by {grown} KiB while {sent} bytes queued"
            # Once the backend reads again, everything arrives.
            release.set()
            set_io_timeout(client.raw, 10.0)
            sent += client.conn.send(chunk)  # the retry OpenSSL requires
            client.close_notify()
            (record,) = server.wait_for(1, timeout=30)
        finally:
            client.close()
    assert record["bytes"] == sent


@pytest.mark.integration
def test_client_that_stops_reading_bounds_the_proxy_memory(tmp_path: Path) -> None:
    written = [0]
    stop = threading.Event()

    def firehose(conn: socket.socket, record: dict[str, object]) -> None:
        set_io_timeout(conn, 1.0)
        chunk = os.urandom(65536)
        while not stop.is_set():
            try:
                conn.sendall(chunk)
            except OSError:
                continue  # blocked: the proxy stopped reading from us
            written[0] += len(chunk)
        conn.close()

    with backend(firehose) as server, proxy(tmp_path, server.endpoint) as (membio, port, ca):
        client = TLSClient(port, ca)
        pid = membio.process.pid
        try:
            client.send(b"go")
            # Backpressure is in place once the backend can write no more.
            assert _stalls(lambda: written[0], for_seconds=1.0, timeout=20), written[0]
            before = rss_kib(pid)
            first = written[0]
            time.sleep(2)  # a window to measure growth in, not a wait for anything
            grown = rss_kib(pid) - before
            assert written[0] - first < 1024 * 1024, "the backend was still being read"
            assert written[0] < 64 * 1024 * 1024, written[0]
            assert grown < 16 * 1024, f"proxy RSS grew by {grown} KiB"
            # Reading again resumes the flow.
            received = len(client.conn.recv(65536))
            for _ in range(200):
                received += len(client.conn.recv(65536))
            assert received > 0
        finally:
            stop.set()
            client.close()
        server.wait_for(1)


def _stalls(value: Callable[[], int], *, for_seconds: float, timeout: float) -> bool:
    """Wait until C{value()} stops changing for C{for_seconds}."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= for_seconds:
            return True
    return False


# ------------------------------------------------------------------ backend down


@pytest.mark.integration
def test_backend_down_gives_the_client_a_clean_close_and_a_log_line(tmp_path: Path) -> None:
    # Bound but not listening: connections to it are refused, and no other
    # process can take the port while the test runs.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    with closed, proxy(tmp_path, f"tcp:127.0.0.1:{dead}") as (membio, port, ca):
        client = TLSClient(port, ca)
        client_port = client.address[1]
        try:
            client.send(b"anyone there?")
            data, ending = client.read_to_end()
        finally:
            client.close()
        line = membio.wait_for_log(rf"backend tcp:127\.0\.0\.1:{dead} unreachable.*")
    assert (data, ending) == (b"", "close_notify")
    assert "refused" in line.group(0)
    assert f"client 127.0.0.1:{client_port}" in line.group(0)


@pytest.mark.integration
def test_backend_reset_mid_stream_closes_the_client_cleanly(tmp_path: Path) -> None:
    delivered = threading.Event()

    def reset_after_hello(conn: socket.socket, record: dict[str, object]) -> None:
        record["heard"] = conn.recv(100)
        conn.sendall(b"about to crash")
        # A RST can discard bytes the proxy has not read yet: crash once the
        # client has them, which is what this test is about.
        delivered.wait(10)
        # SO_LINGER 0: close with a RST, as a crashing backend's kernel does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    with backend(reset_after_hello) as server, proxy(tmp_path, server.endpoint) as (
        membio, port, ca,
    ):
        client = TLSClient(port, ca)
        try:
            client.send(b"hello")
            first = client.read_exactly(len(b"about to crash"))
            delivered.set()
            rest, ending = client.read_to_end()
            data = first + rest
        finally:
            client.close()
        membio.wait_for_log(r"backend tcp:127\.0\.0\.1:\d+ dropped the connection of client")
    assert (data, ending) == (b"about to crash", "close_notify")
    assert "Traceback" not in membio.stdout + membio.stderr


# ------------------------------------------------------------------ the settings table, membio-tls


def test_proxy_header_v2_says_whether_a_client_certificate_was_verified() -> None:
    from membio_transport.proxy import ClientCertificate

    client, reached = IPv4Address("TCP", "192.0.2.7", 5), IPv4Address("TCP", "10.0.0.1", 443)
    for certificate, flags, verify in (
        (ClientCertificate("alice", verified=True), 0x07, 0),
        (ClientCertificate(None, verified=False), 0x07, 1),
    ):
        header = proxy_header_v2(
            client, reached, tls_version="TLSv1.3", cipher="X", client_certificate=certificate
        )
        tlvs = _tlvs(header[16 + 12 :])
        assert struct.unpack("!BI", tlvs[0x20][:5]) == (flags, verify)
        sub = _tlvs(tlvs[0x20][5:])
        assert sub.get(0x22) == (b"alice" if certificate.common_name else None)
        V2Parser.parse(header)  # still a header Twisted reads


def _h2_backend(conn: socket.socket, record: dict[str, object]) -> None:
    """Read the PROXY v2 header, then answer every request over HTTP/2 (prior knowledge)."""
    import h2.config
    import h2.connection
    import h2.events

    header = read_proxy_header(conn)
    record["alpn"] = _tlvs(header[16 + 12 :]).get(0x01)
    h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    h2conn.initiate_connection()
    conn.sendall(h2conn.data_to_send())
    while True:
        data = conn.recv(65536)
        if not data:
            return
        for event in h2conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                body = b"hello over h2\n"
                h2conn.send_headers(
                    event.stream_id,
                    [(":status", "200"), ("content-length", str(len(body)))],
                )
                h2conn.send_data(event.stream_id, body, end_stream=True)
            elif isinstance(event, h2.events.ConnectionTerminated):
                conn.sendall(h2conn.data_to_send())
                return
        conn.sendall(h2conn.data_to_send())


@pytest.mark.integration
def test_alpn_h2_end_to_end_and_in_the_proxy_v2_header(tmp_path: Path) -> None:
    """curl speaks HTTP/2 through membio-tls to an HTTP/2 backend; the header names h2."""
    import shutil
    import subprocess

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    with backend(_h2_backend) as h2_server, proxy(
        tmp_path, h2_server.endpoint, "--alpn", "h2,http/1.1", "--proxy-protocol", "v2"
    ) as (server, port, ca):
        result = subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", "10", "--http2", "--cacert",
             str(ca), "--write-out", "%{http_version}", f"https://localhost:{port}/"],
            capture_output=True, text=True, timeout=20, check=False,
        )
        assert result.returncode == 0, result.stderr + server.describe()
        assert result.stdout == "hello over h2\n2"
        [record] = h2_server.wait_for(1)
        assert record["alpn"] == b"h2"
        assert "ALPN h2, http/1.1" in server.stdout


@pytest.mark.integration
def test_client_certificates_sni_and_limits_on_the_command_line(tmp_path: Path) -> None:
    """The settings table's options reach membio-tls: verified clients, named in the header."""
    from ._abuse_helpers import issue, make_ca

    clients = make_ca("client CA")
    ca_file = tmp_path / "clients.pem"
    ca_file.write_bytes(clients.cert_pem)
    alice = issue(clients, ["alice"], client=True).write(tmp_path, "alice")

    def record_header(conn: socket.socket, record: dict[str, object]) -> None:
        record["header"] = read_proxy_header(conn)
        echo_handler(conn, record)

    with backend(record_header) as recorder, proxy(
        tmp_path, recorder.endpoint, "--proxy-protocol", "v2", "--client-ca", str(ca_file),
        "--max-connections", "10", "--idle-timeout", "30",
    ) as (server, port, ca):
        import ssl

        context = ssl.create_default_context(cafile=str(ca))
        context.load_cert_chain(str(alice[0]), str(alice[1]))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            assert tls.recv(4) == b"ping"
        [record] = recorder.wait_for(1)
        tlvs = _tlvs(bytes(record["header"])[16 + 12 :])  # type: ignore[call-overload]
        assert struct.unpack("!BI", tlvs[0x20][:5]) == (0x07, 0)  # presented, verified
        assert _tlvs(tlvs[0x20][5:])[0x22] == b"alice"
        # Without a certificate, no connection reaches the backend.
        plain = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ssl.SSLError, ConnectionError)), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as raw, plain.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            if not tls.recv(4):
                raise ConnectionError("closed")
        assert "client certificates: required, verified against" in server.stdout
        assert "at most 10 connections" in server.stdout
