"""Call-by-call trace of the server side of one keep-alive request and one full handshake.

    python benchmarks/profiles/trace_calls.py [--stack ours|twisted|plain|asyncio] [--tree]
    python benchmarks/profiles/trace_calls.py --stack ours --cprofile 2000   # costs per call

Written for issue #14: which Python frames and C calls a TLS layer makes per request and per
connection, ours against Twisted's layer and asyncio's sslproto, with everything else (reactor,
TCP transport, twisted.web) the same.  The server runs in this process's main thread exactly as
``twistd web --listen membio:`` / ``ssl:`` / ``tcp:`` builds it (``serverFromString`` and a
``Site`` over ``File``) on the default reactor, or as benchmarks/asyncio_http.py on asyncio;
a client thread (Python's ``ssl``, TLS_AES_256_GCM_SHA384, X25519) makes the requests over
loopback.  ``sys.setprofile`` (set in the main thread only, so the client is not traced) records
every Python call and every C call while a window is open:

* ``request``: one ``GET /small.txt`` on a keep-alive connection already warmed by 20 requests,
  from the client's send until 50 ms after the response arrived (time for any scheduled flush);
* ``connection``: a new connection: TCP connect, full TLS 1.3 handshake (no ticket offered), one
  GET with ``Connection: close``, read to the end, close; until 100 ms after.

Printed per window: calls by layer (ours, Twisted's TLS, pyOpenSSL, OpenSSL through cffi, the
reactor and TCP transport, twisted.web, the logger...); every call made by the TLS layer, in
order, with its callees from the TLS library (``--tree`` shows the whole tree instead of the
count per function).  ``--cprofile N`` runs N keep-alive requests (and N/10 connections) under
cProfile and prints the TLS layer's functions with their own time per request: the relative
costs, since cProfile's overhead is per call.  Instruction counts of the same paths, without a
tracer's distortion: benchmarks/callgrind.py.
"""

from __future__ import annotations

import argparse
import collections
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HOST = "127.0.0.1"
SERVER_NAME = "localhost"
CIPHERSUITE = "TLS_AES_256_GCM_SHA384"
WARM = 20

#: Where a frame belongs, by file path fragment; first match wins.
LAYERS: tuple[tuple[str, str], ...] = (
    ("membio_transport/", "ours"),
    ("twisted/protocols/tls.py", "Twisted TLS"),
    ("twisted/internet/_newtls.py", "reactor + TCP"),  # tcp.Connection's mixin
    ("twisted/internet/_sslverify.py", "Twisted TLS"),
    ("twisted/protocols/policies.py", "Twisted TLS"),
    ("asyncio/sslproto.py", "asyncio sslproto"),
    ("/ssl.py", "ssl module"),
    ("OpenSSL/", "pyOpenSSL"),
    ("cffi", "pyOpenSSL"),
    ("twisted/web/", "twisted.web"),
    ("twisted/logger/", "logger"),
    ("twisted/python/log.py", "logger"),
    ("twisted/internet/", "reactor + TCP"),
    ("twisted/python/", "twisted.python"),
    ("zope/interface", "zope.interface"),
    ("asyncio/", "asyncio loop"),
    ("asyncio_http.py", "asyncio_http app"),
    ("selectors.py", "asyncio loop"),
)
TLS_LAYERS = {"ours", "Twisted TLS", "asyncio sslproto", "ssl module", "pyOpenSSL"}


def layer_of(filename: str, qualname: str = "") -> str:
    if qualname.startswith("TimeoutMixin") and filename.endswith("policies.py"):
        return "twisted.web"  # HTTPChannel's request timeout, not the TLS wrapper
    for fragment, name in LAYERS:
        if fragment in filename:
            return name
    return "other (stdlib...)"


def c_name(func: Any) -> str:
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    owner = getattr(func, "__self__", None)
    if (
        owner is not None
        and not isinstance(owner, type)
        and type(owner).__name__
        not in (
            "module",
            "Lib",
            "FFILibrary",
        )
    ):
        name = f"{type(owner).__name__}.{getattr(func, '__name__', name)}"
    return f"{name}()"


@dataclass
class Event:
    depth: int
    c: bool
    layer: str
    name: str
    #: For a C call: the layer of the Python frame that made it.
    caller_layer: str = ""


@dataclass
class Recorder:
    """A sys.setprofile function that records while `on` is set (by the client thread)."""

    on: bool = False
    depth: int = 0
    events: list[Event] = field(default_factory=list)

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call" or event == "c_call":
            self.depth += 1
            if not self.on:
                return
            code = frame.f_code
            here = layer_of(code.co_filename, code.co_qualname)
            if event == "call":
                where = f"{Path(code.co_filename).name}:{code.co_firstlineno}"
                self.events.append(Event(self.depth, False, here, f"{code.co_qualname} ({where})"))
            else:
                self.events.append(Event(self.depth, True, here, c_name(arg), here))
        elif event in ("return", "c_return", "c_exception"):
            self.depth -= 1


# ------------------------------------------------------------------ client


def client_context(cafile: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_3
    return context


REQUEST = f"GET /small.txt HTTP/1.1\r\nHost: {SERVER_NAME}\r\n\r\n".encode()
CLOSE_REQUEST = (
    f"GET /small.txt HTTP/1.1\r\nHost: {SERVER_NAME}\r\nConnection: close\r\n\r\n".encode()
)


def _read_response(sock: socket.socket, buffer: bytearray) -> None:
    while True:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buffer[:end]).lower()
            start = head.find(b"content-length:")
            length = int(head[start + 15 :].split(b"\r\n", 1)[0])
            if len(buffer) >= end + 4 + length:
                del buffer[: end + 4 + length]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed")
        buffer += chunk


def _connect(port: int, context: ssl.SSLContext | None) -> socket.socket:
    raw = socket.create_connection((HOST, port), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return context.wrap_socket(raw, server_hostname=SERVER_NAME) if context else raw


def client(
    port: int,
    context: ssl.SSLContext | None,
    recorder: Recorder | None,
    windows: dict[str, list[Event]],
    profile: tuple[Callable[[], None], Callable[[], None], int] | None,
) -> None:
    """Warm up, then record the two windows (or run the cProfile workload)."""
    sock = _connect(port, context)
    buffer = bytearray()
    for _ in range(WARM):
        sock.sendall(REQUEST)
        _read_response(sock, buffer)
    for _ in range(5):  # warm connections too
        with _connect(port, context) as other:
            other.sendall(CLOSE_REQUEST)
            while other.recv(65536):
                pass
    if profile is not None:
        start, stop, n = profile
        start()
        for _ in range(n):
            sock.sendall(REQUEST)
            _read_response(sock, buffer)
        for _ in range(n // 10):
            with _connect(port, context) as other:
                other.sendall(CLOSE_REQUEST)
                while other.recv(65536):
                    pass
        time.sleep(0.1)
        stop()
        sock.close()
        return
    assert recorder is not None
    time.sleep(0.2)
    recorder.on = True
    sock.sendall(REQUEST)
    _read_response(sock, buffer)
    time.sleep(0.05)
    recorder.on = False
    windows["request"] = recorder.events
    recorder.events = []
    time.sleep(0.2)
    recorder.on = True
    with _connect(port, context) as other:
        other.sendall(CLOSE_REQUEST)
        while other.recv(65536):
            pass
    time.sleep(0.1)
    recorder.on = False
    windows["connection"] = recorder.events
    recorder.events = []
    sock.close()


# ------------------------------------------------------------------ servers


def files() -> tuple[str, str, str]:
    from membio_transport.certs import ensure_certificate

    directory = Path(tempfile.mkdtemp(prefix="membio-trace-"))
    made = ensure_certificate(directory / "state", [SERVER_NAME, HOST], mode="self-signed")
    www = directory / "www"
    www.mkdir()
    (www / "small.txt").write_bytes(b"hello, world!\n")
    return str(made.cert_path), str(made.key_path), str(www)


def run_twisted(stack: str, cert: str, key: str, www: str, body: Callable[[int], None]) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.web.server import Site
    from twisted.web.static import File

    description = {
        "ours": f"membio:0:interface={HOST}:certKey={cert}:privateKey={key}",
        "twisted": f"ssl:0:interface={HOST}:privateKey={key}:certKey={cert}",
        "plain": f"tcp:0:interface={HOST}",
    }[stack]
    site = Site(File(www))
    ports: list[Any] = []
    serverFromString(reactor, description).listen(site).addCallback(ports.append)

    def in_thread() -> None:
        try:
            body(ports[0].getHost().port)
        finally:
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    reactor.callWhenRunning(lambda: threading.Thread(target=in_thread).start())  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


def run_asyncio(cert: str, key: str, www: str, body: Callable[[int], None]) -> None:
    import asyncio

    import benchmarks.asyncio_http as ah

    async def main() -> None:
        loaded = ah.Files(Path(www))
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: ah.HTTPProtocol(loaded), HOST, 0, ssl=ah.server_context(cert, key)
        )
        port = server.sockets[0].getsockname()[1]
        await loop.run_in_executor(None, body, port)
        server.close()

    asyncio.run(main())


# ------------------------------------------------------------------ reports


def summarise(events: list[Event]) -> str:
    py = collections.Counter(e.layer for e in events if not e.c)
    cc = collections.Counter(e.caller_layer for e in events if e.c)
    layers = sorted(set(py) | set(cc), key=lambda k: -(py[k] + cc[k]))
    lines = [f"  {'layer':<20} {'Python calls':>12} {'C calls':>8}"]
    lines += [f"  {k:<20} {py[k]:>12} {cc[k]:>8}" for k in layers]
    lines.append(f"  {'total':<20} {sum(py.values()):>12} {sum(cc.values()):>8}")
    return "\n".join(lines)


def tls_calls(events: list[Event], tree: bool) -> str:
    """The TLS layer's own frames and the C calls they make, in order (consecutive repeats of
    a line folded), indented by depth relative to the outermost TLS frame."""
    out: list[str] = []
    base: int | None = None
    for e in events:
        in_tls = (e.c and e.caller_layer in TLS_LAYERS) or (not e.c and e.layer in TLS_LAYERS)
        if not in_tls and not tree:
            base = None if base is not None and e.depth <= base else base
            continue
        if base is None or e.depth < base:
            base = e.depth
        prefix = "  " * min(e.depth - base, 12)
        tag = "C " if e.c else "py"
        layer = e.caller_layer if e.c else e.layer
        out.append(f"  {tag} {prefix}{e.name}   [{layer}]")
    folded: list[str] = []
    count = 1
    for i, line in enumerate(out):
        if i + 1 < len(out) and out[i + 1] == line:
            count += 1
            continue
        folded.append(line + (f"  x{count}" if count > 1 else ""))
        count = 1
    return "\n".join(folded)


def per_function(events: list[Event]) -> str:
    counts = collections.Counter(
        (e.caller_layer if e.c else e.layer, ("C " if e.c else "py ") + e.name)
        for e in events
        if (e.caller_layer if e.c else e.layer) in TLS_LAYERS
    )
    return "\n".join(f"  {n:>4}  {name}   [{layer}]" for (layer, name), n in counts.most_common())


def cprofile_report(stats: Any, n: int) -> str:
    import pstats

    data = pstats.Stats(stats).stats  # type: ignore[attr-defined]
    rows = []
    total = 0.0
    for (filename, line, name), (_, nc, tt, _, _) in data.items():
        layer = layer_of(filename) if filename != "~" else "C"
        if filename == "~":
            # A C function: attribute it by name to the TLS library when it is one of its calls.
            layer = "C"
        total += tt
        rows.append((tt, nc, layer, f"{name} ({Path(filename).name}:{line})"))
    rows.sort(reverse=True)
    per_request = total / n * 1e6
    out = [f"  own time per keep-alive request under cProfile (us), calls; all: {per_request:.1f}"]
    for tt, nc, layer, name in rows:
        if layer in TLS_LAYERS or (
            layer == "C" and any(k in name for k in ("SSL_", "BIO_", "_ssl", "ERR_"))
        ):
            out.append(f"  {tt / n * 1e6:7.2f}  {nc / n:6.2f}  {name}   [{layer}]")
    return "\n".join(out[:60])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stack", default="ours", choices=("ours", "twisted", "plain", "asyncio"))
    parser.add_argument("--tree", action="store_true", help="every call, not only the TLS layer's")
    parser.add_argument("--cprofile", type=int, metavar="N", help="N requests under cProfile")
    args = parser.parse_args(argv)
    cert, key, www = files()
    context = None if args.stack == "plain" else client_context(cert)
    recorder = Recorder()
    windows: dict[str, list[Event]] = {}
    profile = None
    if args.cprofile:
        import cProfile

        prof = cProfile.Profile()
        started = threading.Event()

        def start() -> None:
            started.clear()
            hook(lambda: (prof.enable(), started.set()))
            started.wait(10)

        def stop() -> None:
            done = threading.Event()
            hook(lambda: (prof.disable(), done.set()))
            done.wait(10)

        profile = (start, stop, args.cprofile)

    def body(port: int) -> None:
        client(port, context, recorder, windows, profile)

    hook: Callable[[Callable[[], object]], None]
    runner: Callable[[], None]
    if args.stack == "asyncio":
        import asyncio

        import benchmarks.asyncio_http as ah

        loops: list[Any] = []

        def hook(call: Callable[[], object]) -> None:
            loops[0].call_soon_threadsafe(call)

        class CapturingFiles(ah.Files):
            """Captures the running loop (for `hook`) when the server loads its files."""

            def __init__(self, root: Path) -> None:
                loops.append(asyncio.get_running_loop())
                super().__init__(root)

        ah.Files = CapturingFiles  # type: ignore[misc]

        def runner() -> None:
            run_asyncio(cert, key, www, body)

    else:
        from twisted.internet import reactor

        def hook(call: Callable[[], object]) -> None:
            reactor.callFromThread(call)  # type: ignore[attr-defined]

        def runner() -> None:
            run_twisted(args.stack, cert, key, www, body)

    if not args.cprofile:
        sys.setprofile(recorder)
    try:
        runner()
    finally:
        sys.setprofile(None)
    if args.cprofile:
        print(
            f"{args.stack}: {args.cprofile} keep-alive requests, {args.cprofile // 10} connections"
        )
        print(cprofile_report(prof, args.cprofile))
        return 0
    for name, events in windows.items():
        what = (
            "keep-alive request" if name == "request" else "new connection (handshake, GET, close)"
        )
        print(f"\n=== {args.stack}: one {what}")
        print(summarise(events))
        shown = "whole tree" if args.tree else "TLS frames and their C calls"
        print(f"\n  TLS-layer calls, in order ({shown}):")
        print(tls_calls(events, args.tree))
        print("\n  TLS-layer calls by function:")
        print(per_function(events))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
