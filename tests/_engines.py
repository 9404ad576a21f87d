"""
Drive `TLSEngine`s against each other, or against the standard library's
``ssl.SSLObject``, entirely in memory: no sockets, no reactor.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from OpenSSL import SSL

from membio_transport import Event, TLSEngine

from ._pki import PKI

Chunker = Callable[[bytes], Iterator[bytes]]


def whole(data: bytes) -> Iterator[bytes]:
    if data:
        yield data


@dataclass
class Side:
    """One engine plus everything it has told its application."""

    engine: TLSEngine
    received: bytearray = field(default_factory=bytearray)
    events: list[Event] = field(default_factory=list)

    def drain_events(self) -> None:
        while True:
            event = self.engine.next_event()
            if isinstance(event, bytes):
                self.received += event
                continue
            self.events.append(event)
            if event is Event.NEED_DATA or event is Event.PEER_CLOSED:
                return


def engine_pair(
    pki: PKI,
    version: int | None = None,
    *,
    send_buffer_limit: int = 256 * 1024,
    direct_io: bool = True,
) -> tuple[Side, Side]:
    server_conn = SSL.Connection(pki.server_context(version), None)
    server_conn.set_accept_state()
    client_conn = SSL.Connection(pki.client_context(version), None)
    client_conn.set_connect_state()
    client_conn.set_tlsext_host_name(b"localhost")
    return (
        Side(
            TLSEngine(
                client_conn,
                server_side=False,
                send_buffer_limit=send_buffer_limit,
                direct_io=direct_io,
            )
        ),
        Side(
            TLSEngine(
                server_conn,
                server_side=True,
                send_buffer_limit=send_buffer_limit,
                direct_io=direct_io,
            )
        ),
    )


def pump(a: Side, b: Side, chunker: Chunker = whole, rounds: int = 200) -> None:
    """Exchange events and ciphertext until both sides go quiet."""
    for _ in range(rounds):
        moved = False
        for src, dst in ((a, b), (b, a)):
            src.drain_events()
            out = src.engine.data_to_send()
            for piece in chunker(out):
                moved = True
                dst.engine.receive(piece)
                dst.drain_events()
        if not moved:
            return
    raise AssertionError("engines never went quiet")


class StdlibPeer:
    """Python's own TLS (``ssl.SSLObject`` over ``ssl.MemoryBIO``)."""

    def __init__(self, context: ssl.SSLContext, *, server_side: bool) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(
            self.incoming,
            self.outgoing,
            server_side=server_side,
            server_hostname=None if server_side else "localhost",
        )
        self.handshake_done = False
        self.received = bytearray()

    def step(self) -> None:
        if not self.handshake_done:
            try:
                self.obj.do_handshake()
                self.handshake_done = True
            except ssl.SSLWantReadError:
                return
        while True:
            try:
                data = self.obj.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                return
            if not data:
                return
            self.received += data


def pump_with_stdlib(side: Side, peer: StdlibPeer, rounds: int = 200) -> None:
    for _ in range(rounds):
        side.drain_events()
        out = side.engine.data_to_send()
        if out:
            peer.incoming.write(out)
        peer.step()
        back = peer.outgoing.read()
        if back:
            side.engine.receive(back)
        if not out and not back:
            side.drain_events()
            return
    raise AssertionError("never went quiet")


def pyopenssl_handshake(
    server_context: SSL.Context, sni: bytes, offered: list[bytes]
) -> SSL.Connection:
    """
    A whole handshake between two bare pyOpenSSL memory-BIO connections (no
    engine), the client offering C{sni} and the ALPN protocols C{offered};
    returns the client, for inspection.
    """
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    client.set_tlsext_host_name(sni)
    client.set_alpn_protos(offered)
    server = SSL.Connection(server_context, None)
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for one, other in ((client, server), (server, client)):
            try:
                one.do_handshake()
                done[id(one)] = True
            except SSL.WantReadError:
                pass
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(65536))
        if all(done.values()):
            return client
    raise AssertionError("handshake did not complete")
