"""
Peers that misbehave, against a real ``twistd membio-https`` process: plain
HTTP on the TLS port, slowloris, a peer that never reads, a connection
flood, a thousand half-open handshakes, a reset in the middle of a
transfer, EOF without close_notify, close_notify on a socket left open,
and more connections than ``--max-connections``.

For each: what the misbehaving client sees, that the server still serves a
normal request afterwards, and that its memory (VmRSS) stays bounded.  The
numbers measured on the way (time to drop a slowloris connection, memory
per half-open handshake, latency during a slowloris) are printed (``-s``)
and kept in ``MEASURED`` for the report at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import ssl
import statistics
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ._abuse_helpers import (
    MembioServer,
    client_context,
    client_hello,
    https_get,
    membio_https,
    read_response,
    request,
    vm_rss_kib,
    wait_until,
)

pytestmark = pytest.mark.integration

#: Handshake timeout of the main abuse server: short, so that tests which
#: wait for it stay short.
HANDSHAKE_TIMEOUT = 2.0
#: Memory a misbehaving peer may add to the server, all connections
#: together, beyond what it had (Python's allocator keeps freed arenas).
MEMORY_SLACK_KIB = 32 * 1024
#: Size of the file that a slow or resetting reader downloads.
BIG_FILE = 16 * 1024 * 1024

#: Handshake timeout of the server that holds a thousand half-open
#: handshakes: opening them all takes a good second on a busy machine.
PATIENT_TIMEOUT = 5.0
#: Server memory a half-open handshake may cost (measured: about 56 KiB,
#: mostly OpenSSL's handshake state and record buffers).
HALF_OPEN_KIB = 96

MEASURED: dict[str, str] = {}


def _measure(name: str, value: str) -> None:
    MEASURED[name] = value
    print(f"\nMEASURED {name}: {value}")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<!doctype html><title>ok</title>hello\n")
    (root / "small.txt").write_text("small\n")
    (root / "one-mib.bin").write_bytes(os.urandom(1024 * 1024))
    with open(root / "big.bin", "wb") as stream:
        stream.write(os.urandom(1024 * 1024) * (BIG_FILE // (1024 * 1024)))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, site: Path) -> Iterator[MembioServer]:
    directory = tmp_path_factory.mktemp("abuse")
    with membio_https(
        directory, "--path", str(site), "--handshake-timeout", f"{HANDSHAKE_TIMEOUT:g}"
    ) as running:
        yield running


def _healthy(server: MembioServer, *, timeout: float = 10.0) -> float:
    """A normal request works; returns its latency in seconds."""
    start = time.monotonic()
    response = https_get(server.port, client_context(server.ca), path="/small.txt", timeout=timeout)
    assert response.status == 200 and response.body == b"small\n"
    return time.monotonic() - start


@contextlib.contextmanager
def _bounded_memory(server: MembioServer, slack_kib: int = MEMORY_SLACK_KIB) -> Iterator[None]:
    before = vm_rss_kib(server.pid)
    yield
    after = vm_rss_kib(server.pid)
    assert after - before < slack_kib, f"server RSS grew from {before} to {after} KiB"
    assert server.alive(), server.server.describe()
    assert "Traceback" not in server.log and "Unhandled" not in server.log, server.log[-4000:]


def _closed_by_peer(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes (EOF or reset) C{sock}, or None if it does not."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while True:
            if not sock.recv(65536):
                return time.monotonic() - start
    except (ConnectionResetError, BrokenPipeError):
        return time.monotonic() - start
    except TimeoutError:
        return None


# --------------------------------------------------------------------- plain HTTP


def _plain_http(server: MembioServer, host: str) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /small.txt HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer


def test_plain_http_on_the_tls_port_gets_an_explanation(server: MembioServer) -> None:
    with _bounded_memory(server):
        # What a browser sends for http://localhost:PORT/small.txt
        answer = _plain_http(server, f"localhost:{server.port}")
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        assert b"this port speaks HTTPS" in answer, answer
        assert f"https://localhost:{server.port}/small.txt".encode() in answer, answer
        server.wait_for_log(r"TLS handshake failed from .*: plain HTTP on the TLS port")
        _healthy(server)


def test_plain_http_without_a_port_in_host_still_names_our_port(server: MembioServer) -> None:
    answer = _plain_http(server, "localhost")
    assert f"https://localhost:{server.port}/small.txt".encode() in answer, answer


# --------------------------------------------------------------------- slowloris


class Trickle:
    """C{count} connections each sending a ClientHello one byte per second."""

    def __init__(self, port: int, count: int) -> None:
        self.hello = client_hello()
        self.sockets: list[socket.socket] = []
        self.opened: dict[int, float] = {}
        self.dropped: dict[int, float] = {}
        self._stop = threading.Event()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setblocking(False)
            self.sockets.append(sock)
            self.opened[sock.fileno()] = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for sock in self.sockets:
            selector.register(sock, selectors.EVENT_READ)
        sent = 0
        next_byte = time.monotonic()
        while not self._stop.is_set() and len(self.dropped) < len(self.sockets):
            now = time.monotonic()
            if now >= next_byte and sent < len(self.hello):
                for sock in self.sockets:
                    if sock.fileno() in self.dropped:
                        continue
                    with contextlib.suppress(OSError):
                        sock.send(self.hello[sent : sent + 1])
                sent += 1
                next_byte += 1.0
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.dropped[sock.fileno()] = time.monotonic()
                    selector.unregister(sock)
        selector.close()

    def drop_times(self) -> list[float]:
        return [self.dropped[fd] - self.opened[fd] for fd in self.dropped]

    def wait(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return len(self.dropped) == len(self.sockets)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.sockets:
            sock.close()


def test_slowloris_is_dropped_at_the_handshake_timeout(server: MembioServer) -> None:
    with _bounded_memory(server):
        failures_before = server.log.count("handshake timeout")
        trickle = Trickle(server.port, 200)
        try:
            latencies = []
            for _ in range(5):
                latencies.append(_healthy(server))
                time.sleep(0.2)
            assert trickle.wait(HANDSHAKE_TIMEOUT + 8), (
                f"{len(trickle.dropped)} of 200 trickling connections dropped"
            )
        finally:
            trickle.close()
        times = trickle.drop_times()
        assert min(times) >= HANDSHAKE_TIMEOUT - 0.3, times
        assert max(times) <= HANDSHAKE_TIMEOUT + 3, times
        # Served alongside 200 trickling handshakes: a stalled server would
        # answer only as they are dropped (2 s); a busy 2-core machine may
        # delay one request, not most of them.
        assert statistics.median(latencies) < 0.5, latencies
        assert max(latencies) < HANDSHAKE_TIMEOUT + 1.0, latencies
        _measure(
            "slowloris drop time (200 connections, --handshake-timeout 2)",
            f"median {statistics.median(times):.2f}s, max {max(times):.2f}s",
        )
        _measure(
            "normal request latency during a 200-connection slowloris",
            f"median {statistics.median(latencies) * 1000:.1f}ms, "
            f"max {max(latencies) * 1000:.1f}ms",
        )
        assert wait_until(
            lambda: server.log.count("handshake timeout") >= failures_before + 200, 5
        ), "one log line per dropped connection expected"
        _healthy(server)


# --------------------------------------------------------------------- peer that never reads


def test_peer_that_never_reads(server: MembioServer) -> None:
    with _bounded_memory(server):
        context = client_context(server.ca)
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        # A small receive window: the server's writes back up at once.
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        tls = context.wrap_socket(raw, server_hostname="localhost")
        try:
            # 16 MiB asked for, and pipelined requests for more, never read.
            request(tls, "/big.bin")
            tls.sendall(b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n" * 200)
            # Wait for the server to have written all it will (its memory
            # stops moving once the socket buffers are full), not for a guess.
            assert _steady_rss(server.pid, within_kib=256, for_seconds=0.5, timeout=15)
            assert _healthy(server) < 3.0
            grown = vm_rss_kib(server.pid)
            time.sleep(1.0)  # a window to measure in, not a wait for anything
            # Flow control holds the rest of the file on disk, not in memory.
            assert vm_rss_kib(server.pid) - grown < 4 * 1024
        finally:
            tls.close()
        _healthy(server)


def _steady_rss(pid: int, *, within_kib: int, for_seconds: float, timeout: float) -> bool:
    """Wait until C{pid}'s VmRSS moves less than C{within_kib} over C{for_seconds}."""
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        samples = [(t, r) for t, r in samples if now - t <= for_seconds]
        samples.append((now, vm_rss_kib(pid)))
        if now - samples[0][0] >= for_seconds * 0.9:
            values = [r for _t, r in samples]
            if max(values) - min(values) < within_kib:
                return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------- flood


def test_connection_flood(server: MembioServer) -> None:
    hello = client_hello()
    with _bounded_memory(server):
        start = time.monotonic()
        latencies = []
        for burst in range(5):
            sockets = []
            for _ in range(100):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(hello)
                sockets.append(sock)
            for sock in sockets:
                # Half of them reset, half close normally.
                if burst % 2:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            latencies.append(_healthy(server))
        _measure(
            "connection flood (500 ClientHellos, then close or reset)",
            f"{time.monotonic() - start:.2f}s; normal request latency max "
            f"{max(latencies) * 1000:.0f}ms",
        )
        assert statistics.median(latencies) < 1.0, latencies
        assert max(latencies) < 5.0, latencies


# --------------------------------------------------------------------- half-open handshakes


@pytest.fixture(scope="module")
def patient_server(
    tmp_path_factory: pytest.TempPathFactory, site: Path
) -> Iterator[MembioServer]:
    """A longer handshake timeout: a thousand handshakes must all be half-open at once."""
    with membio_https(
        tmp_path_factory.mktemp("patient"), "--path", str(site),
        "--handshake-timeout", f"{PATIENT_TIMEOUT:g}",
    ) as running:
        yield running


def test_memory_per_idle_connection(patient_server: MembioServer) -> None:
    """Before the half-open test: memory it freed would hide this one's."""
    server = patient_server
    _healthy(server)
    before = vm_rss_kib(server.pid)
    held = []
    try:
        context = client_context(server.ca)
        for _ in range(300):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            request(tls, "/small.txt")
            assert read_response(tls)[0] == 200
            held.append(tls)
        per_connection = (vm_rss_kib(server.pid) - before) / len(held)
        _measure(
            "server memory per idle keep-alive connection (300, after one request)",
            f"{per_connection:.1f} KiB",
        )
        assert per_connection < HALF_OPEN_KIB
    finally:
        for tls in held:
            tls.close()
    _healthy(server)


def test_memory_per_idle_connection_after_a_burst(patient_server: MembioServer) -> None:
    """
    After each connection downloaded 1 MiB, quiet connections give back what
    the burst grew (README: 28 KiB each measured, 291 KiB without the
    release): well under the no-release figure once the sweeper has run.
    """
    server = patient_server
    context = client_context(server.ca)
    warm = context.wrap_socket(
        socket.create_connection(("127.0.0.1", server.port), timeout=10),
        server_hostname="localhost",
    )
    request(warm, "/one-mib.bin")
    assert len(read_response(warm)[2]) == 1024 * 1024
    warm.close()
    assert _steady_rss(server.pid, within_kib=256, for_seconds=1.0, timeout=15)
    before = vm_rss_kib(server.pid)
    held = []
    try:
        for _ in range(200):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            tls = context.wrap_socket(raw, server_hostname="localhost")
            request(tls, "/one-mib.bin")
            assert len(read_response(tls)[2]) == 1024 * 1024
            held.append(tls)
        # The release comes 2-4 s after a connection goes quiet: wait for the
        # memory to settle rather than for a guessed time.
        assert _steady_rss(server.pid, within_kib=256, for_seconds=5.0, timeout=30)
        per_connection = (vm_rss_kib(server.pid) - before) / len(held)
        _measure(
            "server memory per idle connection after a 1 MiB download (200)",
            f"{per_connection:.1f} KiB",
        )
        assert per_connection < 96, per_connection
    finally:
        for tls in held:
            tls.close()
    _healthy(server)


def test_a_thousand_half_open_handshakes(patient_server: MembioServer) -> None:
    server = patient_server
    hello = client_hello()
    _healthy(server)  # warm up: the first connection allocates caches
    before = vm_rss_kib(server.pid)
    sockets = []
    try:
        for _ in range(1000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(hello)
            sockets.append(sock)
        # Each gets the server's flight (ServerHello ... Finished), then waits for ours.
        for sock in sockets:
            assert sock.recv(1)[:1] == b"\x16"
        peak = vm_rss_kib(server.pid)
        per_connection = (peak - before) / 1000
        latency = _healthy(server)
        _measure(
            "server memory per half-open handshake (1,000 at once)",
            f"{per_connection:.1f} KiB (RSS {before} -> {peak} KiB); a normal request "
            f"meanwhile took {latency * 1000:.0f}ms",
        )
        assert per_connection < HALF_OPEN_KIB, per_connection
        # Stuck behind the half-open handshakes, it would wait for their
        # timeout (PATIENT_TIMEOUT, 5 s).
        assert latency < PATIENT_TIMEOUT - 1.0, latency
        # All of them are dropped at the handshake timeout.
        deadline = time.monotonic() + PATIENT_TIMEOUT + 10
        for sock in sockets:
            remaining = max(deadline - time.monotonic(), 0.1)
            assert _closed_by_peer(sock, remaining) is not None
        after = vm_rss_kib(server.pid)
        assert after <= peak + 2048, (before, peak, after)
    finally:
        for sock in sockets:
            sock.close()
    assert server.alive()
    _healthy(server)


# --------------------------------------------------------------------- endings


def test_reset_in_the_middle_of_a_transfer(server: MembioServer) -> None:
    with _bounded_memory(server):
        for _ in range(10):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            tls = client_context(server.ca).wrap_socket(raw, server_hostname="localhost")
            request(tls, "/big.bin")
            received = 0
            while received < 256 * 1024:
                received += len(tls.recv(65536))
            tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            tls.close()  # RST, not FIN: no close_notify either
        _healthy(server)


def test_eof_without_close_notify(server: MembioServer) -> None:
    with _bounded_memory(server):
        # After a complete response ...
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = client_context(server.ca).wrap_socket(raw, server_hostname="localhost")
        request(tls, "/small.txt")
        assert read_response(tls)[0] == 200
        # SSLSocket.shutdown drops TLS first: a TCP FIN with no close_notify.
        tls.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(tls, 5) is not None
        tls.close()
        # ... and in the middle of a request.
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = client_context(server.ca).wrap_socket(raw, server_hostname="localhost")
        tls.sendall(b"GET /small.txt HTTP/1.1\r\nHo")
        tls.shutdown(socket.SHUT_WR)
        assert _closed_by_peer(tls, 5) is not None
        tls.close()
        _healthy(server)


def test_close_notify_with_the_socket_left_open(server: MembioServer) -> None:
    with _bounded_memory(server):
        raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        tls = client_context(server.ca).wrap_socket(raw, server_hostname="localhost")
        request(tls, "/small.txt")
        assert read_response(tls)[0] == 200
        start = time.monotonic()
        plain = tls.unwrap()  # our close_notify, then the server's
        answered = time.monotonic() - start
        closed = _closed_by_peer(plain, 10)  # the socket stays open on our side
        plain.close()
        assert closed is not None, "the server kept the TCP connection open"
        _measure(
            "close_notify with the socket left open",
            f"server's close_notify after {answered * 1000:.1f}ms, TCP closed "
            f"{closed * 1000:.1f}ms later",
        )
        _healthy(server)


# --------------------------------------------------------------------- connection cap


@pytest.fixture(scope="module")
def capped_server(
    tmp_path_factory: pytest.TempPathFactory, site: Path
) -> Iterator[MembioServer]:
    with membio_https(
        tmp_path_factory.mktemp("capped"), "--path", str(site), "--max-connections", "20"
    ) as running:
        yield running


def _open(server: MembioServer) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    tls = client_context(server.ca).wrap_socket(raw, server_hostname="localhost")
    request(tls, "/small.txt")
    assert read_response(tls)[0] == 200
    return tls


def test_max_connections_refuses_politely(capped_server: MembioServer) -> None:
    server = capped_server
    assert "at most 20 connections" in server.log
    held = [_open(server) for _ in range(20)]
    try:
        refused = 0
        extra = []
        start = time.monotonic()
        for _ in range(10):
            try:
                extra.append(_open(server))
            except (ssl.SSLError, OSError):
                refused += 1
        elapsed = time.monotonic() - start
        assert refused == 10, f"{10 - refused} connections beyond the cap were served"
        # Held until the handshake timeout instead, ten would take 20 s.
        assert elapsed < 5.0, f"refusals took {elapsed:.2f}s: not 'at once'"
        line = server.wait_for_log(r"refused (\d+) connection\(s\) over --max-connections 20.*")
        assert line.group(1) == "10", line.group(0)
        for tls in held[:5]:
            tls.close()
        # Room again once some close.
        assert wait_until(lambda: _try_open(server), 5)
    finally:
        for tls in held + extra:
            tls.close()
    assert server.log.count("over --max-connections") == 1, "one line per burst"


def _try_open(server: MembioServer) -> bool:
    try:
        _open(server).close()
    except (ssl.SSLError, OSError):
        return False
    return True


@pytest.fixture(scope="module", autouse=True)
def measurements_summary() -> Iterator[None]:
    """After the module's last test: the numbers measured above, in one place (``-s``)."""
    yield
    for name, value in MEASURED.items():
        print(f"{name}: {value}")


# --------------------------------------------------------------------- idle connections


@pytest.mark.integration
def test_an_idle_connection_is_closed_with_close_notify(
    tmp_path_factory: pytest.TempPathFactory, site: Path
) -> None:
    with membio_https(
        tmp_path_factory.mktemp("idle"), "--path", str(site), "--idle-timeout", "1"
    ) as idle_server:
        assert "idle timeout 1s" in idle_server.log
        raw = socket.create_connection(("127.0.0.1", idle_server.port), timeout=5)
        tls = client_context(idle_server.ca).wrap_socket(
            raw, server_hostname="localhost", suppress_ragged_eofs=False
        )
        with tls:
            request(tls)
            status, _headers, _body = read_response(tls)
            assert status == 200
            start = time.monotonic()
            # A clean TLS end: close_notify, not a bare EOF (which would raise).
            assert tls.recv(1) == b""
            waited = time.monotonic() - start
        assert 0.5 < waited < 5, waited
        idle_server.wait_for_log(r"idle for \d+s")
        _healthy(idle_server)
