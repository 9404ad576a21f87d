"""TLS connection load generator for the end-to-end benchmark (benchmarks/endtoend.py).

It runs as its own process (pinned to the load-generator core by the caller) and uses only the
standard library, so that it starts fast and shares nothing with the servers under test.  One
JSON object on standard output is its result.

    loadgen.py handshakes --port P --cafile CERT --duration S [--resume] [--server-pid PID]
    loadgen.py handshakes --port P --plain --duration S [--server-pid PID]
    loadgen.py idle --port P --cafile CERT --connections N [--plain]
    loadgen.py requests --port P --cafile CERT --connections C --count N [--plain]

``handshakes`` keeps ``--concurrency`` connections in flight, each one a TCP connect, a TLS 1.3
handshake, a close_notify and a close, for ``--duration`` seconds.  Unlike wrk it never resumes
a session by itself: every handshake is a full one unless ``--resume`` is given, in which case a
priming connection fetches a page (so that the server's session tickets arrive) and every
measured connection offers that session.  Each connection's ``session_reused`` is counted, so
the caller sees what fraction really resumed.  ``--plain`` makes each connection a TCP connect
and close only (the ceiling: what a server spends per connection without TLS).  With
``--server-pid`` the server's CPU time
(utime + stime from /proc/PID/stat) is read right before the first and right after the last
measured connection.

With ``--request`` each connection also sends one ``GET /small.txt`` (``Connection: close``)
once established and reads the response to its end before closing, as a short-lived API client
does; ``--count N`` stops after N connections instead of after ``--duration`` seconds.

``requests`` opens ``--connections`` keep-alive connections, sends ``--warm`` requests on each,
prints ``{"ready": ...}`` and waits for a line on standard input; it then sends ``--count``
requests in all, one at a time per connection, all connections busy at once, prints its result
line and waits for another line before closing.  A caller measuring the server (callgrind,
benchmarks/stacks.py ``--callgrind``) brackets exactly those ``--count`` requests that way.

``idle`` opens ``--connections`` connections (TLS handshake complete, or plain TCP with
``--plain``), prints its result line, then holds them open, doing nothing, until a line (or EOF)
arrives on standard input; then it closes them all and exits.

The TLS 1.3 cipher suite is whatever the client's OpenSSL offers: the caller forces one with an
``OPENSSL_CONF`` file (Python's ssl module cannot set TLS 1.3 suites), and every handshake's
negotiated suite is reported so that the caller can check it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import os
import resource
import selectors
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
PRIME_REQUEST = (
    f"GET /small.txt HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
)


def server_cpu_seconds(pid: int) -> float:
    """CPU time of a process, in seconds: the scheduler's nanosecond count summed over its
    threads (/proc/PID/task/*/schedstat) where the kernel has it, else utime + stime (fields 14
    and 15 of /proc/PID/stat, whole clock ticks)."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    else:
        return total / 1e9
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"loadgen: need {needed} file descriptors, hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def client_context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


def prime_session(context: ssl.SSLContext, port: int, timeout: float) -> ssl.SSLSession:
    """A full handshake and one request read to the end: the session then holds the server's
    ticket (TLS 1.3 tickets arrive after the handshake, ahead of the response)."""
    with (
        socket.create_connection((HOST, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=SERVER_NAME) as conn,
    ):
        conn.sendall(PRIME_REQUEST)
        while conn.recv(65536):
            pass
        session = conn.session
    if session is None:
        raise SystemExit("loadgen: no session after the priming connection")
    return session


@dataclass
class Tally:
    completed: int = 0
    reused: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    ciphers: collections.Counter[str] = field(default_factory=collections.Counter)
    groups: collections.Counter[str] = field(default_factory=collections.Counter)


class Connection:
    """One client connection driven by the selector: connect, then handshake."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        context: ssl.SSLContext | None,
        port: int,
        session: ssl.SSLSession | None,
        deadline: float,
    ) -> None:
        self.selector = selector
        self.context = context
        self.session = session
        self.deadline = deadline
        self.sock: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.connecting = True
        #: With a request: None until the handshake is done, then the bytes still to send, then
        #: b"" while the response is being read.
        self.request: bytes | None = None
        self.response = 0
        code = self.sock.connect_ex((HOST, port))
        if code not in (0, errno.EINPROGRESS):
            self.sock.close()
            raise OSError(code, os.strerror(code))
        selector.register(self.sock, selectors.EVENT_WRITE, self)

    def step(self, request: bytes | None = None) -> bool:
        """Advance; True once the connection is established (TLS handshake complete) and,
        with `request`, once that request was sent and its response read to the end."""
        if self.request is not None:
            return self._exchange()
        if self.connecting:
            code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, os.strerror(code))
            self.connecting = False
            if self.context is None:
                if request is not None:
                    return self._start_request(request)
                self.selector.unregister(self.sock)
                return True
            self.selector.unregister(self.sock)
            self.sock = self.context.wrap_socket(
                self.sock,
                server_hostname=SERVER_NAME,
                do_handshake_on_connect=False,
                session=self.session,
            )
            self.selector.register(self.sock, selectors.EVENT_READ, self)
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self.selector.modify(self.sock, selectors.EVENT_READ, self)
            return False
        except ssl.SSLWantWriteError:
            self.selector.modify(self.sock, selectors.EVENT_WRITE, self)
            return False
        if request is not None:
            return self._start_request(request)
        self.selector.unregister(self.sock)
        return True

    def _start_request(self, request: bytes) -> bool:
        self.request = request
        self.selector.modify(self.sock, selectors.EVENT_WRITE, self)
        return self._exchange()

    def _exchange(self) -> bool:
        """Send the request, then read until the server closes; True when it did."""
        assert self.request is not None
        try:
            if self.request:
                sent = self.sock.send(self.request)
                self.request = self.request[sent:]
                if self.request:
                    return False
                self.selector.modify(self.sock, selectors.EVENT_READ, self)
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                self.response += len(chunk)
        except (ssl.SSLWantReadError, BlockingIOError):
            return False
        except ssl.SSLWantWriteError:
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            pass
        if not self.response:
            raise OSError(0, "no response before the server closed")
        self.selector.unregister(self.sock)
        return True

    def record(self, tally: Tally) -> None:
        tally.completed += 1
        if isinstance(self.sock, ssl.SSLSocket):
            tally.reused += bool(self.sock.session_reused)
            cipher = self.sock.cipher()
            tally.ciphers[f"{self.sock.version()} {cipher[0] if cipher else None}"] += 1

    def close(self, notify: bool) -> None:
        if self.request is not None:
            # The server closed after its response (and sent its close_notify).
            self.sock.close()
            return
        if notify and isinstance(self.sock, ssl.SSLSocket):
            # Sends close_notify; the server's reply is not waited for.
            with contextlib.suppress(ssl.SSLError, OSError):
                self.sock.unwrap()
        self.sock.close()

    def abandon(self) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(self.sock)
        self.sock.close()


def _drive(
    selector: selectors.BaseSelector,
    tally: Tally,
    start_one: Callable[[], Connection],
    keep_open: list[Connection] | None,
    want: int | None,
    stop_at: float | None,
    concurrency: int,
    request: bytes | None = None,
) -> None:
    """Keep `concurrency` connections in flight until `want` completed or `stop_at` passed,
    then let the ones in flight finish."""
    in_flight: set[Connection] = set()

    def more() -> bool:
        if want is not None:
            return tally.completed + len(in_flight) < want
        assert stop_at is not None
        return time.perf_counter() < stop_at

    while True:
        while len(in_flight) < concurrency and more():
            try:
                in_flight.add(start_one())
            except OSError as exc:
                tally.errors[f"connect: {exc.strerror or exc}"] += 1
                if sum(tally.errors.values()) > 100:
                    raise SystemExit(f"loadgen: too many errors: {dict(tally.errors)}") from exc
        if not in_flight:
            return
        now = time.perf_counter()
        for key, _ in selector.select(timeout=0.5):
            conn: Connection = key.data
            try:
                done = conn.step(request)
            except (OSError, ssl.SSLError) as exc:
                tally.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                conn.abandon()
                in_flight.discard(conn)
                continue
            if done:
                in_flight.discard(conn)
                conn.record(tally)
                if keep_open is not None:
                    keep_open.append(conn)
                else:
                    conn.close(notify=True)
        for conn in [c for c in in_flight if now > c.deadline]:
            tally.errors["timeout"] += 1
            conn.abandon()
            in_flight.discard(conn)
        if sum(tally.errors.values()) > 100:
            raise SystemExit(f"loadgen: too many errors: {dict(tally.errors)}")


def handshakes(args: argparse.Namespace) -> dict[str, object]:
    context = None if args.plain else client_context(args.cafile)
    session = prime_session(context, args.port, args.timeout) if context and args.resume else None
    selector = selectors.DefaultSelector()
    tally = Tally()

    def start_one() -> Connection:
        return Connection(selector, context, args.port, session, time.perf_counter() + args.timeout)

    request = PRIME_REQUEST if args.request else None
    cpu0 = server_cpu_seconds(args.server_pid) if args.server_pid else None
    wall0 = time.perf_counter()
    if args.count:
        _drive(selector, tally, start_one, None, args.count, None, args.concurrency, request)
    else:
        _drive(
            selector, tally, start_one, None, None, wall0 + args.duration, args.concurrency,
            request,
        )  # fmt: skip
    wall = time.perf_counter() - wall0
    cpu = server_cpu_seconds(args.server_pid) - cpu0 if cpu0 is not None else None
    return {
        "completed": tally.completed,
        "reused": tally.reused,
        "wall": wall,
        "server_cpu": cpu,
        "errors": dict(tally.errors),
        "ciphers": dict(tally.ciphers),
        "primed_session_has_ticket": bool(session and session.has_ticket),
    }


class KeepAlive:
    """One keep-alive client connection sending requests one at a time (blocking socket)."""

    def __init__(self, context: ssl.SSLContext | None, port: int, timeout: float) -> None:
        raw = socket.create_connection((HOST, port), timeout=timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock: socket.socket = (
            context.wrap_socket(raw, server_hostname=SERVER_NAME) if context else raw
        )
        self.sock.setblocking(False)
        self.buffer = b""
        self.expect = -1
        self.left = 0

    def send(self) -> None:
        self._send_all(KEEPALIVE_REQUEST)

    def _send_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                selectors.DefaultSelector().select(0.01)

    def receive(self) -> bool:
        """Read what arrived; True once the whole response to the last request is in."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError(0, "the server closed a keep-alive connection")
                self.buffer += chunk
        except (BlockingIOError, ssl.SSLWantReadError):
            pass
        if self.expect < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head = self.buffer[:end].lower()
            if not head.startswith(b"http/1.1 200"):
                raise OSError(0, f"response {head[:40]!r}")
            start = head.find(b"content-length:")
            length = int(head[start + 15 :].split(b"\r\n", 1)[0])
            self.expect = end + 4 + length
        if len(self.buffer) < self.expect:
            return False
        self.buffer = self.buffer[self.expect :]
        self.expect = -1
        return True


KEEPALIVE_REQUEST = f"GET /small.txt HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode()


def _keepalive_round(conns: list[KeepAlive], total: int, timeout: float) -> int:
    """`total` requests spread over `conns`, one outstanding per connection; returns the count."""
    selector = selectors.DefaultSelector()
    quota = [total // len(conns) + (i < total % len(conns)) for i in range(len(conns))]
    busy = 0
    for conn, n in zip(conns, quota, strict=True):
        conn.left = n
        if n:
            selector.register(conn.sock, selectors.EVENT_READ, conn)
            conn.send()
            busy += 1
    done = 0
    deadline = time.monotonic() + timeout
    while busy:
        events = selector.select(timeout=1.0)
        if not events and time.monotonic() > deadline:
            raise SystemExit(f"loadgen: requests timed out ({done} of {total} done)")
        for key, _ in events:
            conn = key.data
            while conn.receive():
                done += 1
                conn.left -= 1
                if conn.left:
                    conn.send()
                else:
                    selector.unregister(conn.sock)
                    busy -= 1
                    break
    selector.close()
    return done


def requests(args: argparse.Namespace) -> dict[str, object]:
    context = None if args.plain else client_context(args.cafile)
    conns = [KeepAlive(context, args.port, args.timeout) for _ in range(args.connections)]
    ciphers = collections.Counter(
        f"{c.sock.version()} {c.sock.cipher()[0]}"
        for c in conns
        if isinstance(c.sock, ssl.SSLSocket) and c.sock.cipher()
    )
    warm = _keepalive_round(conns, args.warm * len(conns), args.timeout * 10)
    print(json.dumps({"ready": warm, "ciphers": dict(ciphers)}), flush=True)
    sys.stdin.readline()
    wall0 = time.perf_counter()
    done = _keepalive_round(conns, args.count, args.timeout * 100)
    wall = time.perf_counter() - wall0
    print(json.dumps({"completed": done, "wall": wall}), flush=True)
    sys.stdin.readline()
    for conn in conns:
        conn.sock.close()
    return {"closed": len(conns)}


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle(args: argparse.Namespace) -> dict[str, object]:
    raise_fd_limit(args.connections + 64)
    context = None if args.plain else client_context(args.cafile)
    selector = selectors.DefaultSelector()
    tally = Tally()
    opened: list[Connection] = []

    def start_one() -> Connection:
        return Connection(selector, context, args.port, None, time.perf_counter() + args.timeout)

    wall0 = time.perf_counter()
    if context is None and args.server_pid:
        # A plain connect completes in the kernel before the server accepts it: opened
        # faster than twistd accepts, Twisted's listen backlog (50) overflows and dropped SYNs
        # cost a second each.  Open them in batches the backlog holds, each once accepted.
        base = _fd_count(args.server_pid)
        while tally.completed < args.connections:
            want = min(args.connections, tally.completed + 32)
            _drive(selector, tally, start_one, opened, want, None, args.concurrency)
            deadline = time.monotonic() + args.timeout
            while _fd_count(args.server_pid) - base < tally.completed:
                if time.monotonic() > deadline:
                    raise SystemExit("loadgen: the server does not accept the connections")
                time.sleep(0.001)
    else:
        _drive(selector, tally, start_one, opened, args.connections, None, args.concurrency)
    result = {
        "completed": tally.completed,
        "wall": time.perf_counter() - wall0,
        "errors": dict(tally.errors),
        "ciphers": dict(tally.ciphers),
    }
    print(json.dumps(result), flush=True)
    sys.stdin.readline()  # hold the connections until the caller has measured
    # Are they all still open?  A closed one would be readable (EOF) by now.
    still_open = 0
    for conn in opened:
        try:
            conn.sock.setblocking(False)
            if isinstance(conn.sock, ssl.SSLSocket):
                conn.sock.recv(1)
            else:
                still_open += conn.sock.recv(1, socket.MSG_PEEK) != b""
                continue
        except (ssl.SSLWantReadError, BlockingIOError):
            still_open += 1
        except (OSError, ssl.SSLError):
            pass
        else:
            # Data after the handshake: TLS 1.3 session tickets count as "still open".
            still_open += 1
    for conn in opened:
        conn.sock.close()
    return {"still_open": still_open}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("handshakes", "idle", "requests"):
        p = sub.add_parser(name)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--cafile")
        p.add_argument("--concurrency", type=int, default=8 if name == "handshakes" else 64)
        p.add_argument("--timeout", type=float, default=10.0, help="per connection, seconds")
        p.add_argument("--plain", action="store_true", help="TCP only, no TLS")
    hs = sub.choices["handshakes"]
    hs.add_argument("--duration", type=float)
    hs.add_argument("--count", type=int, help="stop after this many connections")
    hs.add_argument("--request", action="store_true", help="one GET per connection")
    hs.add_argument("--resume", action="store_true")
    hs.add_argument("--server-pid", type=int)
    rq = sub.choices["requests"]
    rq.add_argument("--connections", type=int, default=16)
    rq.add_argument("--count", type=int, required=True)
    rq.add_argument("--warm", type=int, default=20, help="unmeasured requests per connection")
    idle_parser = sub.choices["idle"]
    idle_parser.add_argument("--connections", type=int, required=True)
    idle_parser.add_argument(
        "--server-pid", type=int, help="with --plain: pace the connections to the server's accepts"
    )
    args = parser.parse_args(argv)
    if not getattr(args, "plain", False) and not args.cafile:
        parser.error("--cafile is required for TLS")
    if args.mode == "handshakes" and not (args.duration or args.count):
        parser.error("handshakes needs --duration or --count")
    modes = {"handshakes": handshakes, "idle": idle, "requests": requests}
    result = modes[args.mode](args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
