"""Instructions per keep-alive request and per connection, in process, repeatable to a few
hundred instructions: for comparing two versions of the TLS layer (issue #14's prototypes).

    python benchmarks/profiles/request_ir.py [--stacks ours,twisted,plain] [--requests N]
    PYTHONPATH=/tmp/proto python benchmarks/profiles/request_ir.py --stacks ours   # a prototype

benchmarks/callgrind.py counts a real server under real clients, which is the honest number but
moves by 1-3% from run to run (how many connections' events share a reactor turn, per-second
timers such as the access log's clock, garbage collections).  Here the server side is built as
``twistd web`` builds it (a ``Site`` over ``File``; ours: `MemoryBIOTLSFactory` with the
``membio:`` endpoint's context; Twisted's: ``TLSMemoryBIOFactory`` with the ``ssl:`` endpoint's
context factory; plain: the ``Site`` alone) over a fake TCP transport, and a bare pyOpenSSL
client in the same process (TLS_AES_256_GCM_SHA384, X25519) makes the requests; the reactor is
turned by hand (``reactor.iterate(0)``) until each response is complete.  Every stack makes the
same calls in the same order on every run.

Each stack runs in a process of its own under ``valgrind --tool=callgrind``, between two marker
calls (``zlib.adler32`` zeroes the counters, ``zlib.crc32`` dumps them), over ``--requests``
keep-alive requests on one connection and ``--connections`` new connections (full TLS 1.3
handshake, one GET with ``Connection: close``, close).  The client's own work (pyOpenSSL, the
same calls for ours and Twisted's) is inside the window: differences between two TLS stacks or
two versions of ours are exact, a TLS stack minus ``plain`` also counts the client's record
work (use benchmarks/callgrind.py for the server alone).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()

REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\n\r\n"
CLOSE_REQUEST = b"GET /small.txt HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def _files() -> tuple[str, str, str]:
    if str(ROOT) not in sys.path:
        sys.path.append(str(ROOT))
    from membio_transport.certs import ensure_certificate

    directory = Path(tempfile.mkdtemp(prefix="membio-ir-"))
    made = ensure_certificate(directory / "state", ["localhost", "127.0.0.1"], mode="self-signed")
    (directory / "www").mkdir()
    (directory / "www" / "small.txt").write_bytes(b"hello, world!\n")
    return str(made.cert_path), str(made.key_path), str(directory / "www")


class Driver:
    """One stack's server protocol factory, a fake transport, a pyOpenSSL client."""

    def __init__(self, stack: str) -> None:
        from OpenSSL import SSL
        from OpenSSL._util import lib
        from twisted.internet import reactor
        from twisted.web.server import Site
        from twisted.web.static import File

        sys.path.insert(0, str(HERE.parent))
        from handshake_serverside import FakeTCP

        self.FakeTCP = FakeTCP
        self.reactor = reactor
        cert, key, www = _files()
        site = Site(File(www))
        self.stack = stack
        self.tls = stack in ("ours", "twisted")
        if stack == "ours":
            from membio_transport.tls import MemoryBIOTLSFactory

            self.factory = MemoryBIOTLSFactory(_ours_creator(cert, key), False, site, reactor)
        elif stack == "twisted":
            from twisted.internet.endpoints import serverFromString
            from twisted.protocols.tls import TLSMemoryBIOFactory

            endpoint = serverFromString(
                reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
            )
            self.factory = TLSMemoryBIOFactory(endpoint._sslContextFactory, False, site)
        else:
            self.factory = site
        self.factory.doStart()
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_tls13_ciphersuites(b"TLS_AES_256_GCM_SHA384")
        assert lib.SSL_CTX_set1_curves_list(ctx._context, b"X25519") == 1
        ctx.set_verify(SSL.VERIFY_NONE)
        self.client_context = ctx
        self.SSL = SSL

    # -- plumbing

    def pump(self, transport: Any) -> None:
        """Turn the reactor until nothing more is scheduled for now."""
        for _ in range(8):
            self.reactor.iterate(0)  # type: ignore[attr-defined]

    def open(self) -> tuple[Any, Any, Any]:
        from twisted.internet.address import IPv4Address

        transport = self.FakeTCP()
        proto = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        transport.protocol = proto
        _pull_on_register(transport)
        proto.makeConnection(transport)
        client = None
        if self.tls:
            SSL = self.SSL
            client = SSL.Connection(self.client_context, None)
            client.set_connect_state()
            client.set_tlsext_host_name(b"localhost")
            with contextlib.suppress(SSL.WantReadError):
                client.do_handshake()
            proto.dataReceived(client.bio_read(65536))
            self.pump(transport)
            client.bio_write(transport.take())
            client.do_handshake()
        return proto, transport, client

    def exchange(self, proto: Any, transport: Any, client: Any, request: bytes) -> bytes:
        SSL = self.SSL
        if client is None:
            proto.dataReceived(request)
        else:
            client.send(request)
            proto.dataReceived(client.bio_read(65536))
        self.pump(transport)
        out = transport.take()
        if client is None:
            return out
        client.bio_write(out)
        plain = b""
        with contextlib.suppress(SSL.WantReadError, SSL.ZeroReturnError):
            while True:
                plain += client.recv(65536)
        return plain

    def close(self, proto: Any, transport: Any) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        transport.protocol = None
        proto.connectionLost(Failure(ConnectionDone()))
        self.pump(transport)

    # -- the measured units

    def request(self, conn: tuple[Any, Any, Any]) -> None:
        body = self.exchange(*conn, REQUEST)
        assert body.endswith(b"hello, world!\n"), body[-80:]

    def batch(self, conns: list[tuple[Any, Any, Any]]) -> None:
        """One request on each connection, all read in one reactor turn (as when 16 wrk
        connections' requests arrive together), the responses written in the next ones."""
        SSL = self.SSL
        for proto, _, client in conns:
            if client is None:
                proto.dataReceived(REQUEST)
            else:
                client.send(REQUEST)
                proto.dataReceived(client.bio_read(65536))
        # twisted.web writes the responses from a Cooperator whose ticks last at most 10 ms:
        # under valgrind, several ticks; turn until every response is out.
        for _ in range(1000):
            if all(transport.out for _, transport, _ in conns):
                break
            self.reactor.iterate(0)  # type: ignore[attr-defined]
        self.pump(conns[0][1])
        for _, transport, client in conns:
            out = transport.take()
            if client is not None:
                client.bio_write(out)
                out = b""
                with contextlib.suppress(SSL.WantReadError):
                    while True:
                        out += client.recv(65536)
            assert out.endswith(b"hello, world!\n"), out[-80:]

    def connection(self) -> None:
        proto, transport, client = self.open()
        body = self.exchange(proto, transport, client, CLOSE_REQUEST)
        assert body.endswith(b"hello, world!\n"), body[-80:]
        self.close(proto, transport)


def _ours_creator(cert: str, key: str) -> Any:
    """What the membio: endpoint serves with: the hardened server context, no ALPN."""
    from membio_transport.tls import ServerTLSOptions, server_context

    return ServerTLSOptions(server_context(cert, key))


def _pull_on_register(transport: Any) -> None:
    """tcp's FileDescriptor asks a pull producer for data as soon as it is registered."""
    original = transport.registerProducer

    def register(producer: Any, streaming: bool) -> None:
        original(producer, streaming)
        if not streaming:
            producer.resumeProducing()

    transport.registerProducer = register


def measure(stack: str, requests: int, connections: int, batch: int = 1) -> None:
    """Run under callgrind: the markers bracket the measured work."""
    import gc

    driver = Driver(stack)
    conn = driver.open()
    for _ in range(30):
        driver.request(conn)
    for _ in range(5):
        driver.connection()
    if batch > 1:
        conns = [driver.open() for _ in range(batch)]
        for each in conns:  # the client's Finished goes with its first request
            driver.request(each)
        for _ in range(5):
            driver.batch(conns)
        gc.collect()
        gc.disable()
        zlib.adler32(b"requests")
        for _ in range(requests // batch):
            driver.batch(conns)
        zlib.crc32(b"requests")
        gc.enable()
        return
    # The cyclic GC off inside the windows: when it runs depends on every allocation before,
    # so one more object anywhere moves a collection in or out of the window.  Reference
    # cycles a version leaves behind are counted separately (``gc.collect()`` after the
    # connections, inside their window).
    gc.collect()
    gc.disable()
    zlib.adler32(b"requests")
    for _ in range(requests):
        driver.request(conn)
    zlib.crc32(b"requests")
    gc.collect()
    zlib.adler32(b"connections")
    for _ in range(connections):
        driver.connection()
    gc.collect()
    zlib.crc32(b"connections")
    gc.enable()


def run_callgrind(
    stack: str, requests: int, connections: int, out: Path, batch: int = 1
) -> list[int]:
    command = [
        "valgrind", "--tool=callgrind", "--zero-before=adler32", "--dump-before=crc32",
        f"--callgrind-out-file={out}/{stack}.%p", sys.executable, str(HERE), "--ir", stack,
        "--requests", str(requests), "--connections", str(connections), "--batch", str(batch),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{stack}: {result.stderr[-2000:]}")
    dumps = sorted(out.glob(f"{stack}.*.*"), key=lambda p: int(p.suffix[1:]))
    totals = []
    for dump in dumps:
        match = re.search(r"^summary:\s+(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
        if match:
            totals.append(int(match.group(1)))
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stacks", default="ours,twisted,plain")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--connections", type=int, default=40)
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="K",
        help="requests on K connections read in one reactor turn (keep-alive only)",
    )
    parser.add_argument("--ir", metavar="STACK", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ir:
        measure(args.ir, args.requests, args.connections, args.batch)
        return 0
    with tempfile.TemporaryDirectory(prefix="membio-ir-cg-") as tmp:
        results = {}
        for stack in args.stacks.split(","):
            results[stack] = run_callgrind(
                stack, args.requests, args.connections, Path(tmp), args.batch
            )
    print(
        f"instructions per unit, in process (callgrind; {args.requests} requests, "
        f"{args.connections} connections, batches of {args.batch}; "
        f"PYTHONPATH={os.environ.get('PYTHONPATH', '')})"
    )
    for stack, totals in results.items():
        units = args.requests // args.batch * args.batch
        per_request = totals[0] / units if totals else float("nan")
        per_conn = totals[1] / args.connections if len(totals) > 1 else float("nan")
        print(
            f"  {stack:<8} keep-alive request {per_request / 1000:8.1f}k   "
            f"connection {per_conn / 1000:9.1f}k"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
