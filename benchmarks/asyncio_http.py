"""A minimal asyncio HTTP/1.1 file server: the asyncio and uvloop rows of benchmarks/stacks.py.

    python benchmarks/asyncio_http.py --port P --root DIR [--cert CERT --key KEY] [--uvloop]

The same server runs with TLS (``--cert``/``--key``: the event loop's own TLS layer, stdlib
``asyncio.sslproto`` or uvloop's Cython copy of it, over Python's ``ssl`` module) and without
(its plain-TCP twin), so that the difference between the two is what that TLS layer costs, as
``twistd web --listen ssl:``/``membio:`` against ``tcp:`` is for Twisted's layer and ours.

Deliberately small, so that its own per-request cost stays below twisted.web's and does not hide
the TLS layer's: one ``asyncio.Protocol`` per connection, every file of ``--root`` read into memory
at start-up, requests parsed with ``bytes.find``, keep-alive unless the request says ``Connection:
close``, large bodies written in 256 KiB slices under the transport's flow control
(``pause_writing``/``resume_writing``).  GET and HEAD only; anything else gets a 405, an unknown
path a 404.  It logs nothing.  It prints ``listening`` once the socket is open and stops on
SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path
from typing import Final

#: Size of each slice of a large body handed to the transport: as large as twisted.web's
#: producer would push before the transport pauses it, so both servers make few writes.
CHUNK: Final = 256 * 1024

_CONTENT_TYPES: Final = {".txt": b"text/plain", ".html": b"text/html"}


def _head(status: bytes, length: int, content_type: bytes, close: bool) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nServer: asyncio-http\r\nContent-Type: " + content_type
        + b"\r\nContent-Length: " + str(length).encode()
        + (b"\r\nConnection: close" if close else b"")
        + b"\r\n\r\n"
    )  # fmt: skip


class Files:
    """Every regular file directly under the root, in memory, with its response head."""

    def __init__(self, root: Path) -> None:
        self.bodies: dict[bytes, bytes] = {}
        self.types: dict[bytes, bytes] = {}
        for path in sorted(root.iterdir()):
            if path.is_file():
                name = b"/" + path.name.encode()
                self.bodies[name] = path.read_bytes()
                self.types[name] = _CONTENT_TYPES.get(path.suffix, b"application/octet-stream")


class HTTPProtocol(asyncio.Protocol):
    __slots__ = ("_body", "_buffer", "_close_after", "_files", "_offset", "_paused", "_transport")

    def __init__(self, files: Files) -> None:
        self._files = files
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        # A large body being written: what is left of it, and whether the transport paused us.
        self._body: memoryview | None = None
        self._offset = 0
        self._paused = False
        self._close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check.
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._body = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        while self._body is None and self._transport is not None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buffer[:end]
            buffer = buffer[end + 4 :]
            self._answer(head)
        self._buffer = buffer
        if len(buffer) > 65536:  # a header that never ends
            self._close()

    def _answer(self, head: bytes) -> None:
        line_end = head.find(b"\r\n")
        request_line = head if line_end < 0 else head[:line_end]
        parts = request_line.split(b" ")
        if len(parts) != 3:
            self._send(_head(b"400 Bad Request", 0, b"text/plain", True), None, True)
            return
        method, target, version = parts
        lowered = head.lower()
        close = version == b"HTTP/1.0" or b"\r\nconnection: close" in lowered
        if method not in (b"GET", b"HEAD"):
            self._send(_head(b"405 Method Not Allowed", 0, b"text/plain", close), None, close)
            return
        body = self._files.bodies.get(target.partition(b"?")[0])
        if body is None:
            self._send(_head(b"404 Not Found", 0, b"text/plain", close), None, close)
            return
        head_out = _head(b"200 OK", len(body), self._files.types[target.partition(b"?")[0]], close)
        self._send(head_out, body if method == b"GET" else None, close)

    def _send(self, head: bytes, body: bytes | None, close: bool) -> None:
        transport = self._transport
        assert transport is not None
        if body is None or len(body) <= CHUNK:
            transport.write(head + body if body else head)
            if close:
                self._close()
            return
        transport.write(head)
        self._body = memoryview(body)
        self._offset = 0
        self._close_after = close
        self._pump()

    def _pump(self) -> None:
        body = self._body
        while body is not None and not self._paused and self._transport is not None:
            piece = body[self._offset : self._offset + CHUNK]
            self._offset += len(piece)
            if self._offset >= len(body):
                self._body = body = None
            self._transport.write(piece)
        if body is None and self._transport is not None:
            if self._close_after:
                self._close()
            elif self._buffer:
                pending, self._buffer = self._buffer, b""
                self.data_received(pending)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """Python's defaults for a server: TLS 1.2+, the ssl module's cipher list, two tickets."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def serve(args: argparse.Namespace) -> None:
    files = Files(Path(args.root))
    context = server_context(args.cert, args.key) if args.cert else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HTTPProtocol(files),
        host=args.interface,
        port=args.port,
        ssl=context,
        backlog=511,
        reuse_address=True,
    )
    stop = loop.create_future()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
    print("listening", flush=True)
    async with server:
        await stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--root", required=True)
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    args = parser.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        parser.error("--cert and --key go together")
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args))
    else:
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
