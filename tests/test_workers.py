"""
Scaling out on one machine: ``membio-https --workers N`` (and
``membio-tls --workers N``) as real processes.

Sessions resume on whichever worker accepts the reconnection (the TLS
context, and with it the ticket keys, is created before the workers are
forked); a worker killed with SIGKILL is replaced and service goes on;
SIGTERM stops accepting, closes idle connections at once and lets a slow
download finish.  Also: systemd socket activation through the ``systemd:``
endpoint, as the README's deployment section describes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from membio_transport.certs import ServerCertificate, ensure_certificate
from membio_transport.https import tap

from ._deploy_helpers import (
    TLSClient,
    backend,
    children,
    echo_handler,
    membio_tls_command,
    socket_owner,
)
from ._plugin_helpers import (
    REPO,
    TLS_ON_LOOPBACK,
    Server,
    free_port,
    listening_port,
    private_home,  # noqa: F401 (a fixture)
    running,
    subprocess_env,
    twistd_command,
)

WORKER = r"worker (\d+) started \(pid (\d+)\)"


pytestmark = pytest.mark.usefixtures("private_home")


@contextmanager
def https_workers(
    tmp_path: Path, count: int, *extra: str
) -> Iterator[tuple[Server, int, Path]]:
    """``membio-https --workers count``; yields once every worker has started."""
    cert_dir = tmp_path / "certs"
    own = "--cert" in extra
    command = [
        *twistd_command(), "-n", "--pidfile=", "membio-https", "--port", "0",
        *([] if own else ["--cert-dir", str(cert_dir)]), "--workers", str(count), *extra,
    ]
    with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
        port = listening_port(server, r"ready: open https://localhost:(\d+)/")
        wait_for_workers(server, count)
        server.wait_for_port(port)
        yield server, port, cert_dir / "local-ca.pem"


def worker_pids(server: Server) -> dict[int, int]:
    """The newest pid of every worker index, from the log."""
    return {int(index): int(pid) for index, pid in re.findall(WORKER, server.stdout)}


def wait_for_workers(server: Server, count: int, timeout: float = 20.0) -> dict[int, int]:
    deadline = time.monotonic() + timeout
    while True:
        pids = worker_pids(server)
        alive = set(children(server.process.pid))
        if len(pids) == count and set(pids.values()) <= alive:
            return pids
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise AssertionError(f"workers {pids}, children {alive}\n{server.describe()}")
        time.sleep(0.05)


def _context(ca: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


#: Connections opened at once per round when spreading them over workers.
_BATCH = 8
#: Rounds before giving up: a worker that never accepts in this many is a bug.
_ROUNDS = 25


def spread_over(pids: Iterable[int], connect: Callable[[], int | None]) -> Counter[int | None]:
    """
    Run C{connect} (one connection; returns the pid that served it) in
    concurrent batches until every worker of C{pids} served one, or give up
    after `_ROUNDS` batches.  The kernel hands a shared socket's connections
    to whichever worker accepts first: one after the other, the same idle
    worker may win every time; several handshakes at once keep one busy
    while the other accepts.
    """
    wanted = set(pids)
    served: Counter[int | None] = Counter()
    with ThreadPoolExecutor(_BATCH) as pool:
        for _ in range(_ROUNDS):
            for owner in pool.map(lambda _: connect(), range(_BATCH)):
                served[owner] += 1
            if wanted <= set(served):
                break
    return served


def fetch(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None,
    owners: list[int] | None = None, path: str = "/",
) -> tuple[bytes, ssl.SSLSession | None, bool, int | None]:
    """
    GET C{path} on a new connection; returns the body, the session (now with
    its ticket), whether it was resumed, and which of C{owners} served it.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        owner = socket_owner(port, tls.getsockname()[1], owners) if owners else None
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data.partition(b"\r\n\r\n")[2], tls.session, tls.session_reused, owner


# ------------------------------------------------------------------ options


def test_workers_options_are_checked(tmp_path: Path) -> None:
    def error_of(*arguments: str) -> str:
        with pytest.raises(SystemExit) as raised:
            tap.Options().parseOptions(["--cert-dir", str(tmp_path / "c"), *arguments])
        return str(raised.value.code)

    assert "--workers 'two' is not a number" in error_of("--workers", "two")
    assert "out of range" in error_of("--workers", "100000")
    assert "--grace" in error_of("--workers", "2", "--grace", "-1")
    assert (
        "--listen stdio:: stdio: cannot be shared between processes (--workers): only tcp:, "
        "tcp6:, unix:, systemd: and haproxy: around one of them can"
    ) in error_of("--workers", "2", "--listen", "stdio:")
    options = tap.Options()
    options.parseOptions(["--cert-dir", str(tmp_path / "c"), "--workers", "3", "--grace", "2.5"])
    assert (options["workers"], options["grace"]) == (3, 2.5)
    assert type(tap.makeService(options)).__name__ == "WorkerPool"


# ------------------------------------------------------------------ sessions


@pytest.mark.integration
def test_sessions_resume_on_every_worker(tmp_path: Path) -> None:
    with https_workers(tmp_path, 2) as (server, port, ca):
        pids = list(wait_for_workers(server, 2).values())
        context = _context(ca)
        body, session, resumed, first = fetch(port, context, owners=pids)
        assert b"TLS" in body and not resumed and session is not None
        outcomes: list[bool] = []

        def reconnect() -> int | None:
            _, _, resumed, owner = fetch(port, context, session, pids)
            outcomes.append(resumed)
            return owner

        served = spread_over(pids, reconnect)
        served[first] += 1
        assert all(outcomes), f"{outcomes.count(False)} of {len(outcomes)} were not resumed"
        # Both workers accept some, and the other one resumes the session too.
        assert set(served) == set(pids), served


# ------------------------------------------------------------------ supervision


@pytest.mark.integration
def test_a_killed_worker_is_replaced_and_service_continues(tmp_path: Path) -> None:
    with https_workers(tmp_path, 2) as (server, port, ca):
        before = wait_for_workers(server, 2)
        context = _context(ca)
        _, session, _, _ = fetch(port, context)
        os.kill(before[0], signal.SIGKILL)
        # Service goes on while worker 0 is being replaced.
        for _ in range(10):
            body, _, _, _ = fetch(port, context)
            assert b"TLS" in body
        server.wait_for_log(rf"worker 0 \(pid {before[0]}\) was killed by SIGKILL")
        deadline = time.monotonic() + 10
        while worker_pids(server)[0] == before[0]:
            assert time.monotonic() < deadline, server.describe()
            time.sleep(0.05)
        after = wait_for_workers(server, 2)
        assert after[1] == before[1] and after[0] != before[0]
        assert sorted(children(server.process.pid)) == sorted(after.values())
        # The new worker was forked from the same parent: same ticket keys.
        def reconnect() -> int | None:
            _, _, resumed, owner = fetch(port, context, session, list(after.values()))
            assert resumed
            return owner

        resumed_on = spread_over([after[0]], reconnect)
        assert after[0] in resumed_on, resumed_on


# ------------------------------------------------------------------ graceful stop


@pytest.mark.integration
def test_sigterm_lets_a_slow_download_finish_and_closes_idle_connections(
    tmp_path: Path,
) -> None:
    site = tmp_path / "site"
    site.mkdir()
    big = os.urandom(12 * 1024 * 1024)
    (site / "big.bin").write_bytes(big)
    (site / "index.html").write_text("hello\n")
    with https_workers(tmp_path, 2, "--path", str(site), "--grace", "15") as (server, port, ca):
        context = _context(ca)
        # An idle keep-alive connection, between requests.
        idle = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        )
        idle.sendall(b"GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert idle.recv(65536).startswith(b"HTTP/1.1 200")
        # A download read at about 4 MB/s: 3 s in all.
        download = context.wrap_socket(
            socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost"
        )
        download.sendall(b"GET /big.bin HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        received = download.recv(65536)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        idle_closed_after = None
        idle.settimeout(0.01)
        while True:
            time.sleep(0.05)
            # About 200 KB per 50 ms (a read returns one TLS record at most).
            chunk = b"\0"
            budget = 200_000
            while budget > 0 and chunk:
                chunk = download.recv(65536)
                received += chunk
                budget -= len(chunk)
            if not chunk:
                break
            if idle_closed_after is None:
                try:
                    if idle.recv(1) == b"":
                        idle_closed_after = time.monotonic() - started
                except TimeoutError:
                    pass
        took = time.monotonic() - started
        download.close()
        idle.close()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert len(body) == len(big), (len(body), took)
        assert hashlib.sha256(body).digest() == hashlib.sha256(big).digest()
        assert took > 1.5, "the download was not slow: the test proves nothing"
        # At once, not after the 15 s grace period.
        assert idle_closed_after is not None and idle_closed_after < 5.0, idle_closed_after
        # No longer accepting while the download was finishing.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        # twistd ends by re-raising the signal that stopped it.
        assert server.process.wait(15) in (0, -signal.SIGTERM), server.describe()
    assert "grace period over" not in server.stdout
    assert "waiting up to 15s for" in server.stdout


# ------------------------------------------------------------------ reload


@pytest.mark.integration
def test_certificate_reload_replaces_the_workers(tmp_path: Path) -> None:
    """
    SIGHUP reloads the certificate in the parent, which then forks new
    workers with the new context (all of them share its ticket keys) and
    stops the old ones gracefully; the parent itself survives the signal.
    """
    first = ensure_certificate(tmp_path / "first", ())
    second = ensure_certificate(tmp_path / "second", ())
    served = tmp_path / "served"
    served.mkdir(mode=0o700)

    def install(certificate: ServerCertificate) -> None:
        for source, name in ((certificate.cert_path, "cert"), (certificate.key_path, "key")):
            shutil.copy(source, served / f".{name}")
            os.replace(served / f".{name}", served / f"{name}.pem")

    install(first)
    with https_workers(
        tmp_path, 2, "--cert", str(served / "cert.pem"), "--key", str(served / "key.pem"),
        "--reload-interval", "0",
    ) as (server, port, _):
        before = wait_for_workers(server, 2)
        assert b"TLS" in fetch(port, _context(first.trust_path))[0]
        install(second)
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(r"TLS context reloaded: replacing 2 worker\(s\)")
        deadline = time.monotonic() + 20
        while set(worker_pids(server).values()) & set(before.values()) or not all(
            re.search(rf"replaced worker \d \(pid {pid}\) exited", server.stdout)
            for pid in before.values()
        ):
            assert time.monotonic() < deadline, server.describe()
            time.sleep(0.05)
        after = wait_for_workers(server, 2)
        assert sorted(children(server.process.pid)) == sorted(after.values())
        context = _context(second.trust_path)
        _, session, _, _ = fetch(port, context)

        def reconnect() -> int | None:
            _, _, resumed, owner = fetch(port, context, session, list(after.values()))
            assert resumed
            return owner

        served_by = spread_over(after.values(), reconnect)
        assert set(served_by) == set(after.values()), served_by
        assert server.process.poll() is None


# ------------------------------------------------------------------ membio-tls


@pytest.mark.integration
def test_membio_tls_with_workers_relays_from_every_worker(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    with backend(echo_handler) as echo:
        command = membio_tls_command(
            twistd_command(), "--port", "0", "--backend", echo.endpoint,
            "--cert-dir", str(cert_dir), "--workers", "2",
        )
        with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
            port = listening_port(server, TLS_ON_LOOPBACK)
            pids = list(wait_for_workers(server, 2).values())
            server.wait_for_port(port)
            messages = iter(range(10**6))

            def relay_one() -> int | None:
                message = b"message %d" % next(messages)
                client = TLSClient(port, cert_dir / "local-ca.pem")
                try:
                    owner = socket_owner(port, client.address[1], pids)
                    client.send(message)
                    client.close_notify()
                    assert client.read_to_end() == (message, "close_notify")
                finally:
                    client.close()
                return owner

            served = spread_over(pids, relay_one)
            assert set(served) == set(pids), served


# ------------------------------------------------------------------ systemd


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="needs systemd-socket-activate"
)
@pytest.mark.parametrize(
    ("selector", "workers"), [("name=https", "0"), ("index=0", "0"), ("name=https", "2")]
)
def test_systemd_socket_activation(tmp_path: Path, selector: str, workers: str) -> None:
    """
    ``systemd-socket-activate`` stands in for a .socket unit: it listens, then
    starts membio-https with the socket as fd 3 and LISTEN_FDS/LISTEN_FDNAMES;
    with --workers, the parent hands that socket to every worker.
    """
    port, cert_dir = free_port(), tmp_path / "certs"
    # Made now: membio-https starts only when the first client connects.
    ensure_certificate(cert_dir, ())
    activate = shutil.which("systemd-socket-activate")
    assert activate is not None
    # It starts the program with a clean environment, as systemd does: pass
    # on what the test environment needs with -E.
    command = [
        activate, "-l", f"127.0.0.1:{port}", "--fdname=https",
        *[f"-E{name}" for name in ("PYTHONPATH", "HOME", "XDG_STATE_HOME", "PYTHONUNBUFFERED")],
        *twistd_command(), "-n",
        "--pidfile=", "membio-https", "--cert-dir", str(cert_dir),
        "--listen", f"systemd:domain=INET:{selector}", "--workers", workers,
    ]
    with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
        # It starts the program when the first connection arrives; that
        # connection waits in the socket's queue and is served by twistd.
        deadline = time.monotonic() + 10
        while f"127.0.0.1:{port}" not in server.stderr:
            assert time.monotonic() < deadline and server.process.poll() is None, server.describe()
            time.sleep(0.05)
        body, _, _, _ = fetch(port, _context(cert_dir / "local-ca.pem"))
        assert b"TLS" in body
        server.wait_for_log(rf"ready: open https://localhost:{port}/")
        assert server.stop() in (0, -signal.SIGTERM), server.describe()


# ------------------------------------------------------------------ the benchmark


@pytest.mark.integration
def test_worker_benchmark_runs(tmp_path: Path) -> None:
    """benchmarks/workers.py, shortened: it must keep working."""
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "workers.py"), "--workers", "1",
         "--rounds", "1", "--seconds", "0.5", "--processes", "1", "--threads", "2",
         "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, timeout=60, check=False,
        env=subprocess_env(tmp_path / "home"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\s+1\s+\d+\s+\d+", result.stdout, re.MULTILINE), result.stdout
    assert "0 errors" in result.stdout


@pytest.mark.integration
@pytest.mark.parametrize("plugin", ["membio-https", "membio-tls"])
def test_port_in_use_with_workers_ends_with_one_line(tmp_path: Path, plugin: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        extra = ["--backend", "tcp:127.0.0.1:9"] if plugin == "membio-tls" else []
        result = subprocess.run(
            [*twistd_command(), "-n", "--pidfile=", plugin, "--port", str(port), "--workers", "2",
             "--cert-dir", str(tmp_path / "certs"), *extra],
            capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
            env=subprocess_env(tmp_path / "home"),
        )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"twistd {plugin}: error: cannot listen on 127.0.0.1:{port}: the address is already in "
        "use (another server, or another membio-https, is listening there); stop it or choose "
        "another --port"
    ], result.stderr


# ------------------------------------------------------------------ --listen with --workers


def _announced(server: Server, pattern: str) -> list[str]:
    return re.findall(pattern, server.stdout)


@pytest.mark.integration
def test_workers_share_listen_endpoints_and_the_redirect(tmp_path: Path) -> None:
    """
    --listen endpoints that can be shared (here unix: and haproxy:tcp:) and
    --redirect-http are bound once in the parent and served by every worker.
    """
    sock = tmp_path / "https.sock"
    with https_workers(
        tmp_path, 2,
        "--listen", f"unix:{sock}",
        "--listen", "haproxy:tcp:0:interface=127.0.0.1",
        "--redirect-http", "0",
    ) as (server, port, ca):
        pids = list(worker_pids(server).values())
        tcp = [int(p) for p in _announced(server, r"HTTPS on 127\.0\.0\.1:(\d+), shared by 2")]
        assert tcp[0] == port and len(tcp) == 2, server.stdout
        proxied = tcp[1]
        assert f"HTTPS on unix:{sock}, shared by 2 worker process(es)" in server.stdout
        [redirect] = _announced(server, r"plain HTTP on 127\.0\.0\.1:(\d+) redirects to HTTPS")
        # Every listener answers, from the workers (the parent serves nothing itself).
        assert b"TLS" in fetch(port, _context(ca))[0]
        over_unix = subprocess.run(
            ["curl", "--silent", "--show-error", "--max-time", "10", "--cacert", str(ca),
             "--unix-socket", str(sock), "https://localhost/"],
            capture_output=True, text=True, timeout=20, check=False,
        )
        assert over_unix.returncode == 0 and "TLS" in over_unix.stdout, over_unix.stderr
        with socket.create_connection(("127.0.0.1", proxied), timeout=10) as raw:
            raw.sendall(f"PROXY TCP4 203.0.113.7 127.0.0.1 40000 {proxied}\r\n".encode())
            with _context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                answer = b""
                while chunk := tls.recv(65536):
                    answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        moved = subprocess.run(
            ["curl", "--silent", "--max-time", "10", "--write-out", "%{redirect_url}",
             "--output", "/dev/null", f"http://127.0.0.1:{redirect}/here"],
            capture_output=True, text=True, timeout=20, check=False,
        )
        assert moved.stdout == f"https://127.0.0.1:{port}/here"
        served_by = spread_over(pids, lambda: fetch(port, _context(ca), owners=pids)[3])
        assert set(served_by) == set(pids), served_by
        assert server.stop() in (0, -signal.SIGTERM)
    assert not sock.exists(), "the parent removes the socket file it made"


@pytest.mark.integration
def test_membio_tls_workers_share_a_listen_endpoint(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    with backend(echo_handler) as echo:
        command = membio_tls_command(
            twistd_command(), "--listen", "tcp:0:interface=127.0.0.1", "--backend",
            echo.endpoint, "--cert-dir", str(cert_dir), "--workers", "2",
        )
        with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
            port = listening_port(server, r"TLS on 127\.0\.0\.1:(\d+), shared by 2")
            wait_for_workers(server, 2)
            server.wait_for_port(port)
            client = TLSClient(port, cert_dir / "local-ca.pem")
            try:
                client.send(b"shared")
                client.close_notify()
                assert client.read_to_end() == (b"shared", "close_notify")
            finally:
                client.close()
