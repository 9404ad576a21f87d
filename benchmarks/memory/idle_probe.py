"""Where the memory of an idle server-side TLS connection goes (issue #5: at most 16 KiB each).

    python benchmarks/memory/idle_probe.py [--n 2000] [--layer bare|engine|protocol] [options]

One process, no sockets.  Makes ``--n`` server connections with the project's hardened context
(`membio_transport.tls.server_context`, ECDSA P-256, ALPN h2/http/1.1 as ``membio-https``),
completes a TLS 1.3 handshake on each with an in-memory pyOpenSSL client (freed afterwards),
drains what the server sends (the handshake flight and its session tickets), and reports what
the server connections still hold, per connection:

* ``heap``: glibc ``mallinfo2()`` bytes in use (``uordblks + hblkhd``) after minus before.  With
  ``PYTHONMALLOC=malloc`` this counts Python objects too; by default pymalloc keeps small objects
  in its own arenas, so ``heap`` is then mostly OpenSSL.
* ``arena``: growth of glibc's heap footprint (``arena + hblkhd``), which is what RSS follows
  (in-use bytes plus free holes left by handshake temporaries).
* ``rss``: VmRSS growth.
* ``python``: tracemalloc, only with ``--tracemalloc`` (its bookkeeping then inflates the rest).

Knobs to test a candidate saving (each changes one thing; compare against the default run):
``--client-groups`` (what the client offers: X25519, X25519MLKEM768, P-256), ``--tls12``,
``--tickets N`` (``SSL_CTX_set_num_tickets``), ``--no-release-buffers``, ``--swap-bios`` (fresh
empty memory BIOs after the handshake), ``--cache off`` (no server-side session cache),
``--malloc-trim`` (``malloc_trim(0)`` before the last reading), ``--free-buffers``
(``SSL_free_buffers``).  Functions pyOpenSSL's binding lacks are called through the symbol
table of cryptography's statically linked OpenSSL (measurement only: never do that in the
package).  ``--json`` prints one machine-readable line for scripts.

Why it exists: the end-to-end benchmark only sees VmRSS per connection; this probe splits that
number into its parts and measures each reduction in isolation, without the noise of sockets,
the kernel and a second process.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi, lib

from membio_transport.tls import server_context

HOSTNAME = "localhost"


class MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
            "fordblks", "keepcost",
        )
    ]  # fmt: skip


_libc = ctypes.CDLL("libc.so.6")
_libc.mallinfo2.restype = MallInfo2
_libc.malloc_trim.argtypes = [ctypes.c_size_t]


def reading() -> dict[str, int]:
    info = _libc.mallinfo2()
    rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return {
        "heap": info.uordblks + info.hblkhd,
        "arena": info.arena + info.hblkhd,
        "rss": rss,
    }


class Hidden:
    """OpenSSL functions that pyOpenSSL's cffi binding does not export, found through the
    symbol table of cryptography's extension module (OpenSSL is linked into it statically)."""

    def __init__(self) -> None:
        from cryptography.hazmat.bindings import _rust

        path = str(Path(_rust.__file__).resolve())
        base = None
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[5] == path and int(fields[2], 16) == 0:
                base = int(fields[0].split("-")[0], 16)
                break
        if base is None:
            raise RuntimeError(f"{path} is not mapped")
        nm = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
        self._addr: dict[str, int] = {}
        for line in nm.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tT":
                self._addr[parts[2]] = base + int(parts[0], 16)

    def function(self, name: str, restype: Any, *argtypes: Any) -> Any:
        return ctypes.CFUNCTYPE(restype, *argtypes)(self._addr[name])


def address(cdata: Any) -> int:
    return int(ffi.cast("uintptr_t", cdata))


def make_certificate(directory: Path) -> tuple[Path, Path]:
    from membio_transport.certs import ensure_certificate

    made = ensure_certificate(directory / "state", [HOSTNAME, "127.0.0.1"], mode="self-signed")
    return made.cert_path, made.key_path


def client_context(groups: str, tls12: bool) -> SSL.Context:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_NONE)
    if tls12:
        context.set_max_proto_version(SSL.TLS1_2_VERSION)
    else:
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
    if lib.SSL_CTX_set1_curves_list(context._context, groups.encode()) != 1:
        raise SystemExit(f"the client's OpenSSL refuses groups {groups}")
    return context


def pump(source: SSL.Connection, sink: Any) -> int:
    moved = 0
    while True:
        try:
            data = source.bio_read(262144)
        except SSL.WantReadError:
            return moved
        moved += len(data)
        sink(data)


class BareServer:
    """The floor: a bare pyOpenSSL connection, driven the way our engine drives it."""

    def __init__(self, context: SSL.Context) -> None:
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()
        self.done = False

    def receive(self, data: bytes) -> None:
        self.conn.bio_write(data)
        if not self.done:
            try:
                self.conn.do_handshake()
                self.done = True
            except SSL.WantReadError:
                pass

    def outgoing(self) -> bytes:
        out = []
        pump(self.conn, out.append)
        return b"".join(out)

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self.conn.send(view) :]


class EngineServer:
    """Our `TLSEngine` around the connection, as `MemoryBIOTLSProtocol` makes it."""

    def __init__(self, context: SSL.Context) -> None:
        from membio_transport.tls import Event, TLSEngine

        conn = SSL.Connection(context, None)
        conn.set_accept_state()
        self.engine = TLSEngine(conn, server_side=True)
        self.conn = conn
        self._need = Event.NEED_DATA

    @property
    def done(self) -> bool:
        return self.engine.state.value == "open"

    def receive(self, data: bytes) -> None:
        self.engine.receive(data)
        while self.engine.next_event() is not self._need:
            pass

    def outgoing(self) -> bytes:
        return self.engine.data_to_send()

    def send(self, data: bytes) -> None:
        self.engine.send(data)


class _Transport:
    """The least a TCP transport offers the TLS layer and twisted.web (no socket)."""

    disconnecting = False

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.out.extend(data)

    def getPeer(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 40000)

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 8443)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def loseConnection(self) -> None:
        pass

    def abortConnection(self) -> None:
        pass

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class ProtocolServer:
    """`MemoryBIOTLSFactory` wrapping twisted.web's `Site`, as ``membio-https`` builds it, over
    a minimal in-memory transport (a real one adds Twisted's ``tcp.Server`` and a socket)."""

    factory: Any = None

    @classmethod
    def setup(cls, context: SSL.Context) -> None:
        from twisted.internet.task import Clock
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        from membio_transport.tls import MemoryBIOTLSFactory, ServerTLSOptions

        cls.clock = Clock()
        site = Site(Resource(), reactor=cls.clock)
        cls.factory = MemoryBIOTLSFactory(ServerTLSOptions(context), False, site, clock=cls.clock)

    def __init__(self, context: SSL.Context) -> None:
        from twisted.internet.address import IPv4Address

        self.transport = _Transport()
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)
        self.conn = self.protocol._engine.connection

    @property
    def done(self) -> bool:
        return self.protocol._engine.state.value == "open"

    def receive(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def outgoing(self) -> bytes:
        self.clock.advance(0)  # writes made outside a callback leave on the next reactor turn
        out = b"".join(self.transport.out)
        self.transport.out.clear()
        return out

    def send(self, data: bytes) -> None:
        self.protocol.write(data)


LAYERS = {"bare": BareServer, "engine": EngineServer, "protocol": ProtocolServer}


def handshake(server: Any, client_ctx: SSL.Context, args: argparse.Namespace | None = None) -> str:
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(HOSTNAME.encode())
    client_done = False
    for _ in range(10):
        if not client_done:
            try:
                client.do_handshake()
                client_done = True
            except SSL.WantReadError:
                pass
        pump(client, server.receive)
        data = server.outgoing()
        if data:
            client.bio_write(data)
        if client_done and server.done and not data:
            break
    else:
        raise RuntimeError("handshake did not finish")
    # Read the session tickets, as a real client would (they never come back to the server).
    with contextlib.suppress(SSL.WantReadError):
        client.recv(16384)
    if args is not None:
        exchange(server, client, args)
    version = client.get_protocol_version_name()
    group = lib.SSL_get0_group_name(client._ssl) if hasattr(lib, "SSL_get0_group_name") else None
    name = ffi.string(group).decode() if group else "?"
    return f"{version} {client.get_cipher_name()} {name}"


def exchange(server: Any, client: SSL.Connection, args: argparse.Namespace) -> None:
    """A request of ``--request`` bytes, then a response of ``--response`` bytes written in
    ``--chunk`` pieces, each drained at once (as the protocol does outside a callback)."""
    if args.request:
        client.send(b"q" * args.request)
        pump(client, server.receive)
        if args.layer == "bare":
            try:
                while True:
                    server.conn.recv(16384)
            except SSL.WantReadError:
                pass
    left = args.response
    chunk = b"r" * args.chunk
    while left > 0:
        server.send(chunk[: min(left, args.chunk)])
        left -= args.chunk
        data = server.outgoing()
        if not data:
            raise RuntimeError("the server sent nothing (did the application close?)")
        client.bio_write(data)
        try:
            while True:
                client.recv(16384)
        except SSL.WantReadError:
            pass


def run(args: argparse.Namespace) -> dict[str, Any]:
    hidden = Hidden()
    directory = Path(tempfile.mkdtemp(prefix="membio-idle-probe-"))
    cert, key = make_certificate(directory)
    ctx = server_context(cert, key, alpn=[b"h2", b"http/1.1"], keylog=None)
    shutil.rmtree(directory)  # the context holds the certificate and key now
    if args.no_release_buffers:
        ctx.set_mode(0)  # no-op; cleared per connection below (there is no SSL_CTX_clear_mode)
    if args.tickets is not None:
        set_tickets = hidden.function(
            "SSL_CTX_set_num_tickets", ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t
        )
        set_tickets(address(ctx._context), args.tickets)
    if args.cache == "off":
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    if args.stateful_tickets:
        ctx.set_options(SSL.OP_NO_TICKET)
    client_ctx = client_context(args.client_groups, args.tls12)
    layer = LAYERS[args.layer]
    if layer is ProtocolServer:
        ProtocolServer.setup(ctx)
    free_buffers = hidden.function("SSL_free_buffers", ctypes.c_int, ctypes.c_void_p)

    # Warm up: first-use allocations (error strings, provider caches, method tables) are not
    # per-connection costs.
    warm = [layer(ctx) for _ in range(50)]
    for s in warm:
        handshake(s, client_ctx)
    del warm, s
    gc.collect()

    if args.tracemalloc:
        tracemalloc.start(1)
    gc.collect()
    before = reading()
    python_before = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
    servers = []
    negotiated: dict[str, int] = {}
    for _ in range(args.n):
        server = layer(ctx)
        if args.no_release_buffers:
            lib.SSL_clear_mode(server.conn._ssl, lib.SSL_MODE_RELEASE_BUFFERS)
        what = handshake(server, client_ctx, args)
        negotiated[what] = negotiated.get(what, 0) + 1
        if args.swap_bios:
            swap_bios(server.conn)
        if args.free_buffers:
            free_buffers(address(server.conn._ssl))
        servers.append(server)
    gc.collect()
    if args.malloc_trim:
        _libc.malloc_trim(0)
    after = reading()
    python_after = tracemalloc.get_traced_memory()[0] if args.tracemalloc else 0
    result: dict[str, Any] = {
        key: (after[key] - before[key]) / args.n / 1024 for key in ("heap", "arena", "rss")
    }
    if args.tracemalloc:
        result["python"] = (python_after - python_before) / args.n / 1024
        snapshot = tracemalloc.take_snapshot()
        result["python_by_line"] = [
            (str(stat.traceback), stat.size / args.n, stat.count / args.n)
            for stat in snapshot.statistics("lineno")[: args.top]
        ]
    result["negotiated"] = negotiated
    if args.hold:
        input("holding the connections; press Enter ")
    if args.exit_now:
        # Leave every connection allocated (heaptrack then lists them as leaks).
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
        import os

        os._exit(0)
    return result


def swap_bios(conn: SSL.Connection) -> None:
    """Give the connection two fresh, empty memory BIOs; SSL_set_bio frees the old ones (and
    whatever buffer capacity they kept).  pyOpenSSL reads its own copies of the pointers."""
    into = lib.BIO_new(lib.BIO_s_mem())
    out = lib.BIO_new(lib.BIO_s_mem())
    lib.SSL_set_bio(conn._ssl, into, out)
    conn._into_ssl = into
    conn._from_ssl = out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--layer", choices=sorted(LAYERS), default="bare")
    parser.add_argument("--client-groups", default="X25519")
    parser.add_argument("--tls12", action="store_true")
    parser.add_argument("--tickets", type=int)
    parser.add_argument("--stateful-tickets", action="store_true")
    parser.add_argument("--cache", choices=("server", "off"), default="server")
    parser.add_argument("--no-release-buffers", action="store_true")
    parser.add_argument("--swap-bios", action="store_true")
    parser.add_argument("--free-buffers", action="store_true")
    parser.add_argument("--malloc-trim", action="store_true")
    parser.add_argument("--request", type=int, default=0, help="bytes the client sends")
    parser.add_argument("--response", type=int, default=0, help="bytes the server sends")
    parser.add_argument("--chunk", type=int, default=65536, help="size of the server's writes")
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--hold", action="store_true")
    parser.add_argument("--exit-now", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{args.layer}, n={args.n}: heap {result['heap']:.2f} KiB/conn, heap footprint "
        f"{result['arena']:.2f}, VmRSS {result['rss']:.2f}"
        + (f", Python (tracemalloc) {result['python']:.2f}" if args.tracemalloc else "")
        + f"; {result['negotiated']}"
    )
    for line, size, count in result.get("python_by_line", []):
        print(f"  {size:8.0f} B {count:6.2f} blocks  {line}")


if __name__ == "__main__":
    main()
