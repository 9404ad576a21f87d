"""
Helpers for the deployment tests (TLS termination proxy, workers, HAProxy,
IRC recipe): plaintext backends on threads, a TLS client that can half-close,
process memory and socket ownership read from /proc.

Everything is bounded in time: sockets carry kernel-level timeouts, threads
are daemons, servers are closed on leaving their ``with`` block.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from OpenSSL import SSL

from ._plugin_helpers import REPO, free_port

#: Seconds any single socket operation in these tests may block.
IO_TIMEOUT = 10.0


def set_io_timeout(sock: socket.socket, seconds: float = IO_TIMEOUT) -> None:
    """
    Bound blocking reads and writes in the kernel (SO_RCVTIMEO/SO_SNDTIMEO),
    keeping the descriptor blocking: pyOpenSSL over a socket with a Python
    timeout would see the non-blocking descriptor and raise WantReadError.
    """
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


# ------------------------------------------------------------------ backends


class Backend:
    """
    A plaintext TCP server on 127.0.0.1 whose connections are handled by
    C{handler(conn, record)} on daemon threads; C{record} is a dict the
    handler may fill for the test to inspect.
    """

    def __init__(self, handler: Callable[[socket.socket, dict[str, object]], None]) -> None:
        self.handler = handler
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.records: list[dict[str, object]] = []
        self.connections: list[socket.socket] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"tcp:127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            set_io_timeout(conn)
            record: dict[str, object] = {"done": threading.Event()}
            self.records.append(record)
            self.connections.append(conn)
            threading.Thread(target=self._run, args=(conn, record), daemon=True).start()

    def _run(self, conn: socket.socket, record: dict[str, object]) -> None:
        try:
            self.handler(conn, record)
        except BaseException as error:
            record["error"] = error
            self.errors.append(error)
        finally:
            done = record["done"]
            assert isinstance(done, threading.Event)
            done.set()

    def wait_for(self, count: int, timeout: float = IO_TIMEOUT) -> list[dict[str, object]]:
        """Wait until C{count} connections were handled to the end."""
        deadline = time.monotonic() + timeout
        while len(self.records) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(self.records)} of {count} backend connections")
            time.sleep(0.02)
        for record in self.records[:count]:
            done = record["done"]
            assert isinstance(done, threading.Event)
            assert done.wait(max(0.1, deadline - time.monotonic())), record
        return self.records[:count]

    def close(self) -> None:
        with suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for conn in self.connections:
            with suppress(OSError):
                conn.close()


@contextmanager
def backend(handler: Callable[[socket.socket, dict[str, object]], None]) -> Iterator[Backend]:
    server = Backend(handler)
    try:
        yield server
    finally:
        server.close()


def read_until_eof(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        data = conn.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def echo_handler(conn: socket.socket, record: dict[str, object]) -> None:
    """Echo until EOF, then half-close (FIN) and count the bytes."""
    total = 0
    while True:
        data = conn.recv(65536)
        if not data:
            break
        total += len(data)
        conn.sendall(data)
    record["bytes"] = total
    conn.shutdown(socket.SHUT_WR)
    conn.close()


def read_proxy_header(conn: socket.socket) -> bytes:
    """Read exactly one PROXY header (v1 line or v2 block) from C{conn}."""
    first = _read_exactly(conn, 12)
    if first.startswith(b"PROXY "):
        rest = b""
        while not rest.endswith(b"\r\n"):
            rest += _read_exactly(conn, 1)
            assert len(rest) < 108, rest
        return first + rest
    assert first == b"\r\n\r\n\x00\r\nQUIT\n", first
    head = _read_exactly(conn, 4)
    (length,) = struct.unpack("!H", head[2:])
    return first + head + _read_exactly(conn, length)


def _read_exactly(conn: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise AssertionError(f"EOF after {data!r}")
        data += chunk
    return data


# ------------------------------------------------------------------ TLS client


class TLSClient:
    """
    A pyOpenSSL client over a blocking socket with kernel timeouts, so that
    the test decides exactly when close_notify goes out and can keep reading
    (or writing) afterwards: what half-close needs.
    """

    def __init__(
        self, port: int, cafile: Path, *, source: str | None = None, host: str = "localhost"
    ) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(str(cafile))
        context.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        raw = socket.create_connection(
            ("127.0.0.1", port), timeout=IO_TIMEOUT,
            source_address=None if source is None else (source, 0),
        )
        raw.settimeout(None)
        set_io_timeout(raw)
        self.raw = raw
        self.conn = SSL.Connection(context, raw)
        self.conn.set_tlsext_host_name(host.encode())
        self.conn.set_connect_state()
        self.conn.do_handshake()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.raw.getsockname()[:2]
        return host, port

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def close_notify(self) -> None:
        """Send close_notify and nothing else: we may still read."""
        self.conn.shutdown()

    def read_to_end(self) -> tuple[bytes, str]:
        """
        Read until the stream ends; returns the data and how it ended:
        "close_notify" (clean) or "eof" (the TCP connection ended without it).
        """
        chunks = []
        while True:
            try:
                chunks.append(self.conn.recv(65536))
            except SSL.ZeroReturnError:
                return b"".join(chunks), "close_notify"
            except SSL.SysCallError as error:
                if error.args[0] in (-1, 0):
                    return b"".join(chunks), "eof"
                raise

    def read_exactly(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            data += self.conn.recv(count - len(data))
        return data

    def close(self) -> None:
        with suppress(OSError):
            self.raw.close()


# ------------------------------------------------------------------ /proc


def rss_kib(pid: int) -> int:
    """Resident memory of C{pid} in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.MULTILINE)
    assert match, text
    return int(match.group(1))


def children(pid: int) -> list[int]:
    """The direct children of C{pid}."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return sorted(found)


def socket_owner(local_port: int, remote_port: int, candidates: list[int]) -> int | None:
    """
    Which of the processes C{candidates} holds the server side of the TCP
    connection between 127.0.0.1:C{local_port} and the client's C{remote_port}
    (found through /proc/net/tcp inodes).
    """
    wanted = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == local_port and int(remote.split(":")[1], 16) == (
            remote_port
        ):
            wanted = f"socket:[{inode}]"
            break
    if wanted is None:
        return None
    for pid in candidates:
        with suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with suppress(OSError):
                    if os.readlink(fd) == wanted:
                        return pid
    return None


def membio_tls_command(twistd: list[str], *arguments: str) -> list[str]:
    return [*twistd, "-n", "--pidfile=", "membio-tls", *arguments]


__all__ = [
    "IO_TIMEOUT",
    "REPO",
    "Backend",
    "TLSClient",
    "backend",
    "children",
    "echo_handler",
    "free_port",
    "membio_tls_command",
    "read_proxy_header",
    "read_until_eof",
    "rss_kib",
    "set_io_timeout",
    "socket_owner",
]
