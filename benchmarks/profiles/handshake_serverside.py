"""Server-side cost of one full TLS 1.3 handshake connection, per TLS layer, in process.

Written for issue #5 (new connections per server CPU second): where a full handshake's server
CPU goes, ours vs Twisted's layer, and what each candidate saving is worth.

A bare pyOpenSSL client (X25519 key share only, TLS_AES_256_GCM_SHA384, SNI localhost: what
loadgen.py's Python ssl client offers) drives the server protocol built exactly as the e2e
servers build it (twistd membio-https's options, factory and SecureSite; twistd web's ssl:
endpoint context and Site) over a fake TCP transport that declares tcp.Server's interfaces.
Only the server's calls are timed: buildProtocol, makeConnection, dataReceived(ClientHello),
dataReceived(Finished + close_notify), connectionLost.  Variants run interleaved, in rounds.

Modes (PYTHONPATH selects which membio_transport is measured)::

    python benchmarks/profiles/handshake_serverside.py [--conns N] [--rounds R] [--variants a,b]
    python benchmarks/profiles/handshake_serverside.py --profile ours      # cProfile, server side
    valgrind --tool=callgrind --zero-before=adler32 --dump-before=crc32 \
        python benchmarks/profiles/handshake_serverside.py --ir ours --conns 200
        # instructions per connection (client + server) between the two markers: the
        # difference between two variants is theirs alone; immune to a busy machine

``OPENSSL_CONF`` with ``NumTickets = 1`` in its ``system_default`` section makes the bundled
OpenSSL send one TLS 1.3 ticket instead of two (pyOpenSSL has no call for that);
``CLIENT_GROUPS=X25519MLKEM768:X25519`` makes the client offer the hybrid group.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet import reactor, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from zope.interface import classImplements, implementedBy

CERT = ""
KEY = ""
WWW = ""
PEER = IPv4Address("TCP", "127.0.0.1", 50000)
HOST = IPv4Address("TCP", "127.0.0.1", 8443)
GROUPS = os.environ.get("CLIENT_GROUPS", "X25519")


class FakeTCP:
    """What tcp.Server offers a protocol, minus the socket."""

    disconnecting = False
    connected = 1

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.protocol: Any = None
        self.closed = False
        self.producer = None

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def writeSequence(self, seq: Any) -> None:
        self.out.append(b"".join(seq))

    def loseConnection(self) -> None:
        self.disconnecting = True
        self.closed = True

    def abortConnection(self) -> None:
        self.closed = True

    def loseWriteConnection(self) -> None:
        pass

    def getPeer(self) -> IPv4Address:
        return PEER

    def getHost(self) -> IPv4Address:
        return HOST

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

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass

    def getTcpNoDelay(self) -> bool:
        return True

    def setTcpKeepAlive(self, enabled: bool) -> None:
        pass

    def getTcpKeepAlive(self) -> bool:
        return False

    def getHandle(self) -> None:
        return None

    def logPrefix(self) -> str:
        return "FakeTCP"

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


classImplements(FakeTCP, *implementedBy(tcp.Server))


def client_context() -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_3_VERSION)
    ctx.set_tls13_ciphersuites(b"TLS_AES_256_GCM_SHA384")

    assert _lib.SSL_CTX_set1_curves_list(ctx._context, GROUPS.encode()) == 1
    ctx.set_verify(SSL.VERIFY_NONE)
    return ctx


# ------------------------------------------------------------------ servers


def ours_factory(**overrides: Any) -> Any:
    from membio_transport.https import Options, SecureSite
    from membio_transport.tls import MemoryBIOTLSFactory

    options = Options()
    options.parseOptions(
        ["--port", "0", "--cert", CERT, "--key", KEY, "--path", WWW, "--reload-interval", "0"]
    )
    site = SecureSite(options["resource"], hsts_max_age=options["hsts_max_age"])
    kw = options["serving"].factory_options()
    creator = overrides.pop("creator", None) or options["serving"].creator
    kw.update(overrides)
    return MemoryBIOTLSFactory(creator, False, site, reactor, **kw), options


TW_CREATOR: Any = None


def twisted_factory() -> Any:
    from twisted.internet.endpoints import serverFromString
    from twisted.protocols.tls import TLSMemoryBIOFactory
    from twisted.web.server import Site
    from twisted.web.static import File

    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={KEY}:certKey={CERT}"
    )
    global TW_CREATOR
    TW_CREATOR = endpoint._sslContextFactory
    return TLSMemoryBIOFactory(TW_CREATOR, False, Site(File(WWW)))


class Bare:
    """The floor: a pyOpenSSL server Connection on ours' context, no Twisted at all."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def buildProtocol(self, addr: Any) -> Any:
        return BareProtocol(self.context)


class BareProtocol:
    def __init__(self, context: SSL.Context) -> None:
        self.conn = SSL.Connection(context, None)
        self.conn.set_accept_state()

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def _drain(self) -> None:
        with contextlib.suppress(SSL.WantReadError):
            self.transport.write(self.conn.bio_read(65536))

    def dataReceived(self, data: bytes) -> None:
        conn = self.conn
        conn.bio_write(data)
        try:
            conn.do_handshake()
        except SSL.WantReadError:
            self._drain()
            return
        try:
            conn.recv(16384)
        except SSL.ZeroReturnError:
            conn.shutdown()
            self._drain()
            self.transport.loseConnection()
        except SSL.WantReadError:
            self._drain()

    def connectionLost(self, reason: Any) -> None:
        self.transport = None


class BareDirect:
    """The floor without pyOpenSSL's Python wrapper: the same calls straight on the binding."""

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def buildProtocol(self, addr: Any) -> Any:
        return BareDirectProtocol(self.context)


_BUF = _ffi.new("char[]", 65536)
_WANT_READ = _lib.SSL_ERROR_WANT_READ
_ZERO = _lib.SSL_ERROR_ZERO_RETURN


class BareDirectProtocol:
    def __init__(self, context: SSL.Context) -> None:
        ssl = _lib.SSL_new(context._context)
        self.ssl = _ffi.gc(ssl, _lib.SSL_free)
        self.into = _lib.BIO_new(_lib.BIO_s_mem())
        self.out = _lib.BIO_new(_lib.BIO_s_mem())
        _lib.SSL_set_bio(ssl, self.into, self.out)
        _lib.SSL_set_accept_state(ssl)

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport

    def _drain(self) -> None:
        n = _lib.BIO_read(self.out, _BUF, 65536)
        if n > 0:
            self.transport.write(_ffi.buffer(_BUF, n)[:])

    def dataReceived(self, data: bytes) -> None:
        ssl = self.ssl
        _lib.BIO_write(self.into, data, len(data))
        r = _lib.SSL_do_handshake(ssl)
        if r <= 0:
            _lib.ERR_clear_error()
            self._drain()
            return
        r = _lib.SSL_read(ssl, _BUF, 16384)
        if r <= 0 and _lib.SSL_get_error(ssl, r) == _ZERO:
            _lib.SSL_shutdown(ssl)
            self._drain()
            self.transport.loseConnection()
        else:
            _lib.ERR_clear_error()
            self._drain()

    def connectionLost(self, reason: Any) -> None:
        self.transport = None


class TrivialFactory:
    """An application that does nothing (to take HTTPChannel out of the picture)."""

    def buildProtocol(self, addr: Any) -> Any:
        from twisted.internet.protocol import Protocol

        return Protocol()

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass


# ------------------------------------------------------------------ driving


PROF: Any = None


def one_connection(factory: Any, cctx: SSL.Context, clock: Callable[[], int]) -> int:
    """Drive one connection; return the server's ns."""
    client = SSL.Connection(cctx, None)
    client.set_connect_state()
    client.set_tlsext_host_name(b"localhost")
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    hello = client.bio_read(65536)
    transport = FakeTCP()

    if PROF is not None:
        PROF.enable()
    t0 = clock()
    proto = factory.buildProtocol(PEER)
    transport.protocol = proto
    proto.makeConnection(transport)
    proto.dataReceived(hello)
    t1 = clock()
    if PROF is not None:
        PROF.disable()

    client.bio_write(transport.take())
    client.do_handshake()  # sends Finished
    with contextlib.suppress(SSL.WantReadError):
        client.recv(1)
    client.shutdown()
    finished_and_close = client.bio_read(65536)

    if PROF is not None:
        PROF.enable()
    t2 = clock()
    proto.dataReceived(finished_and_close)
    transport.protocol = None  # as tcp.Connection.connectionLost does (del self.protocol)
    proto.connectionLost(Failure(ConnectionDone()))
    t3 = clock()
    if PROF is not None:
        PROF.disable()
    out = transport.take()
    assert out, "server sent nothing after the client's Finished"
    return (t1 - t0) + (t3 - t2)


def build_variants() -> dict[str, Any]:
    v: dict[str, Any] = {}
    v["twisted"] = twisted_factory()
    ours, options = ours_factory()
    v["ours"] = ours
    v["ours-no-hs-timeout"] = ours_factory(handshake_timeout=None)[0]
    v["ours-no-sniff"] = ours_factory(plain_http=None)[0]
    # Same settings, context without the SNI callback (one certificate: nothing to choose).
    from membio_transport.tls import ServerTLSOptions, server_context

    plain_ctx = server_context(CERT, KEY, alpn=[b"h2", b"http/1.1"])
    v["ours-no-sni-cb"] = ours_factory(creator=ServerTLSOptions(plain_ctx))[0]
    noticket_ctx = server_context(CERT, KEY, alpn=[b"h2", b"http/1.1"])
    noticket_ctx.set_options(SSL.OP_NO_TICKET)
    noticket_ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    v["ours-no-sni-cb-no-tickets"] = ours_factory(creator=ServerTLSOptions(noticket_ctx))[0]
    v["ours-lean"] = ours_factory(
        creator=ServerTLSOptions(plain_ctx), handshake_timeout=None, plain_http=None
    )[0]
    v["bare"] = Bare(plain_ctx)
    v["bare-direct"] = BareDirect(plain_ctx)
    stateful_ctx = server_context(CERT, KEY, alpn=[b"h2", b"http/1.1"])
    stateful_ctx.set_options(SSL.OP_NO_TICKET)  # stateful tickets, session cache on
    v["ours-no-sni-cb-stateful-cache"] = ours_factory(creator=ServerTLSOptions(stateful_ctx))[0]
    from twisted.protocols.tls import TLSMemoryBIOFactory

    from membio_transport.tls import MemoryBIOTLSFactory

    v["ours-trivial-app"] = MemoryBIOTLSFactory(
        options["serving"].creator, False, TrivialFactory(), reactor,
        **options["serving"].factory_options()
    )
    v["twisted-trivial-app"] = TLSMemoryBIOFactory(TW_CREATOR, False, TrivialFactory())
    return v


def setup_files() -> None:
    """An ECDSA P-256 certificate (the project's factory, as endtoend.py) and a web root."""
    global CERT, KEY, WWW
    from membio_transport.certs import ensure_certificate

    directory = Path(tempfile.mkdtemp(prefix="membio-hs-"))
    made = ensure_certificate(directory / "state", ["localhost", "127.0.0.1"], mode="self-signed")
    CERT, KEY = str(made.cert_path), str(made.key_path)
    (directory / "www").mkdir()
    (directory / "www" / "small.txt").write_text("hi\n")
    WWW = str(directory / "www")


def main() -> None:
    setup_files()
    parser = argparse.ArgumentParser()
    parser.add_argument("--conns", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variants", default="")
    parser.add_argument("--profile", default="")
    parser.add_argument("--ir", default="", help="one variant, between callgrind markers")
    args = parser.parse_args()
    if args.ir:
        import zlib

        factory = build_variants()[args.ir]
        cctx = client_context()
        for _ in range(30):
            one_connection(factory, cctx, time.perf_counter_ns)
        gc.collect()
        zlib.adler32(b"start")  # callgrind --zero-before=adler32
        for _ in range(args.conns):
            one_connection(factory, cctx, time.perf_counter_ns)
        gc.collect()
        zlib.crc32(b"stop")  # callgrind --dump-before=crc32
        return
    variants = build_variants()
    if args.variants:
        variants = {k: variants[k] for k in args.variants.split(",")}
    cctx = client_context()
    clock = (
        time.thread_time_ns
        if os.environ.get("CLOCK", "thread") == "thread"
        else time.perf_counter_ns
    )
    if args.profile:
        import cProfile
        import pstats

        factory = variants[args.profile]
        for _ in range(50):
            one_connection(factory, cctx, clock)
        global PROF
        PROF = prof = cProfile.Profile()
        for _ in range(args.conns):
            one_connection(factory, cctx, clock)
        PROF = None
        stats = pstats.Stats(prof)
        stats.sort_stats(os.environ.get("SORT", "tottime")).print_stats(
            int(os.environ.get("TOP", "60"))
        )
        return
    results: dict[str, list[float]] = {k: [] for k in variants}
    for factory in variants.values():  # warm up
        for _ in range(30):
            one_connection(factory, cctx, clock)
    for _ in range(args.rounds):
        for name, factory in variants.items():
            gc.collect()
            total = 0
            for _ in range(args.conns):
                total += one_connection(factory, cctx, clock)
            results[name].append(total / args.conns / 1000)
    base = statistics.median(results.get("twisted", [1.0]))
    print(
        f"client groups {GROUPS}; server-side us per connection (median of {args.rounds} rounds "
        f"x {args.conns}), OPENSSL_CONF={os.environ.get('OPENSSL_CONF')}"
    )
    for name, values in results.items():
        med = statistics.median(values)
        print(
            f"  {name:28s} {med:8.1f} us  (min {min(values):7.1f})  twisted/this {base / med:5.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
