"""
Memory that a connection's BIOs grew to is given back: after the handshake
at once, after a burst of traffic once the connection has gone quiet.  The
sweeper's rules are checked with stand-in connections and a fake clock; the
engine's release with real sessions; the whole path over an in-memory pair.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.task import Clock

from membio_transport import TLSState
from membio_transport.tls._reclaim import BURST_SIZE, BufferReclaimer
from membio_transport.tls._record_io import record_io

from ._engines import engine_pair, pump
from ._pki import make_pki
from .test_parity import connect


class Conn:
    def __init__(self, releasable: bool = True) -> None:
        self.releasable = releasable
        self.released = 0

    def release_buffers(self) -> bool:
        if self.releasable:
            self.released += 1
        return self.releasable


def test_a_connection_quiet_for_a_whole_period_is_released_once() -> None:
    clock = Clock()
    reclaimer = BufferReclaimer(clock, period=2.0)
    conn = Conn()
    reclaimer.burst(conn)
    clock.advance(2.0)  # first look: the burst was recent
    assert conn.released == 0
    clock.advance(2.0)  # second look: quiet since the first
    assert conn.released == 1
    assert reclaimer.released == 1
    clock.advance(10.0)
    assert conn.released == 1, "released once, then no longer watched"
    assert clock.getDelayedCalls() == [], "the sweeper stops when nothing is left"


def test_a_connection_that_keeps_bursting_is_left_alone() -> None:
    clock = Clock()
    reclaimer = BufferReclaimer(clock, period=2.0)
    busy = Conn()
    for _ in range(10):
        reclaimer.burst(busy)
        clock.advance(1.0)
    assert busy.released == 0
    clock.advance(4.0)
    assert busy.released == 1


def test_a_connection_with_bytes_still_waiting_is_tried_again_later() -> None:
    clock = Clock()
    reclaimer = BufferReclaimer(clock, period=1.0)
    conn = Conn(releasable=False)
    reclaimer.burst(conn)
    clock.advance(3.0)
    assert conn.released == 0
    conn.releasable = True
    clock.advance(1.0)
    assert conn.released == 1


def test_forgetting_the_last_connection_cancels_the_sweep() -> None:
    clock = Clock()
    reclaimer = BufferReclaimer(clock)
    conn = Conn()
    reclaimer.burst(conn)
    reclaimer.forget(conn)
    assert clock.getDelayedCalls() == []


def test_after_the_handshake_the_engines_released_their_bios_and_still_work() -> None:
    pki = make_pki("ecdsa")
    client, server = engine_pair(pki)
    before = [side.engine.connection._into_ssl for side in (client, server)]  # type: ignore[attr-defined]
    pump(client, server)
    after = [side.engine.connection._into_ssl for side in (client, server)]  # type: ignore[attr-defined]
    assert all(b != a for b, a in zip(before, after, strict=True)), "fresh BIOs"
    payload = os.urandom(300_000)
    client.engine.send(payload)
    server.engine.send(payload[::-1])
    pump(client, server)
    assert server.received == payload
    assert client.received == payload[::-1]
    # Released again after that burst, and the session carries on.
    assert client.engine.release_buffers()
    assert server.engine.release_buffers()
    client.engine.send(b"after")
    client.engine.close()
    pump(client, server)
    assert server.received.endswith(b"after")
    assert server.engine.state is TLSState.PEER_CLOSED


def test_half_a_record_in_the_incoming_bio_blocks_the_release() -> None:
    pki = make_pki("ecdsa")
    client, server = engine_pair(pki)
    pump(client, server)
    client.engine.send(b"x" * 1000)
    record = client.engine.data_to_send()
    server.engine.receive(record[:100])
    assert not server.engine.release_buffers()
    server.engine.receive(record[100:])
    server.drain_events()
    assert server.received == b"x" * 1000
    assert server.engine.release_buffers()


def test_a_partial_record_already_inside_openssl_survives_a_release() -> None:
    """
    Without the framing shortcut (a stream it gave up on), a read pulls the
    start of an incomplete record out of the BIO into OpenSSL's record
    layer; the BIO is then empty and may be swapped, and the rest of the
    record, fed into the new BIO, completes it.
    """
    pki = make_pki("ecdsa")
    for split in (3, 5, 100, 999):
        client, server = engine_pair(pki)
        pump(client, server)
        server.engine._framing = False
        client.engine.send(b"x" * 1000)
        record = client.engine.data_to_send()
        server.engine.receive(record[:split])
        server.drain_events()
        assert server.engine.release_buffers()
        server.engine.receive(record[split:])
        server.drain_events()
        assert server.received == b"x" * 1000


def test_nothing_is_released_after_the_end_of_input_or_through_the_public_api() -> None:
    pki = make_pki("ecdsa")
    client, server = engine_pair(pki)
    pump(client, server)
    server.engine.receive_eof()
    assert not server.engine.release_buffers()
    assert not record_io(client.engine.connection, direct=False).release_buffers()


def test_a_quiet_connection_after_a_burst_is_released_and_carries_on() -> None:
    pair = connect("membio")
    payload = os.urandom(4 * BURST_SIZE)
    pair.client.transport.write(payload)  # type: ignore[union-attr]
    pair.flush()
    assert bytes(pair.server.received) == payload
    server_reclaimer = pair.server_tls.factory.reclaimer
    pair.clock.advance(server_reclaimer.period)
    pair.clock.advance(server_reclaimer.period)
    assert server_reclaimer.released == 1
    assert pair.client_tls.factory.reclaimer.released == 1
    pair.client.transport.write(b"still here")  # type: ignore[union-attr]
    pair.flush()
    assert bytes(pair.server.received).endswith(b"still here")
    pair.client.transport.loseConnection()  # type: ignore[union-attr]
    pair.flush()
    pair.clock.advance(10)
    pair.flush()
    assert pair.server.lost is not None
    assert not [c for c in pair.clock.getDelayedCalls() if c.active()]


def test_a_closed_connection_leaves_no_cycle_through_its_openssl_connection() -> None:
    """
    The connection's app data points at our protocol (Twisted's callbacks
    look for it there), and the protocol holds the connection: a cycle that
    only the cyclic GC would free, holding OpenSSL's ~23 KiB meanwhile.
    Twisted's ProtocolWrapper breaks its own cycle with the application at
    connectionLost; ours must be broken too.
    """
    pair = connect("membio")
    handle = pair.server_tls.getHandle()
    assert handle.get_app_data() is pair.server_tls
    pair.client.transport.loseConnection()  # type: ignore[union-attr]
    pair.flush()
    pair.clock.advance(10)
    pair.flush()
    assert pair.server.lost is not None
    assert handle.get_app_data() is None


@pytest.mark.parametrize("failing", ["incoming", "outgoing"])
def test_running_out_of_memory_for_new_bios_keeps_the_old_ones(
    failing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    BIO_new failing (no memory) during a release: nothing is swapped, the
    BIO that was made is freed again, and the session carries on.
    """
    from membio_transport.tls import _record_io

    client, server = engine_pair(make_pki("ecdsa"))
    pump(client, server)
    connection = client.engine.connection
    before = (connection._into_ssl, connection._from_ssl)  # type: ignore[attr-defined]
    real_new, real_free = _record_io._BIO_new, _record_io._BIO_free
    made: list[object] = []
    freed: list[object] = []

    def bio_new(method: object) -> object:
        if len(made) == (0 if failing == "incoming" else 1):
            null = _record_io._ffi.cast("BIO *", 0)  # as C returns it: not the module's NULL
            made.append(null)
            return null
        bio = real_new(method)
        made.append(bio)
        return bio

    def bio_free(bio: object) -> int:
        freed.append(bio)
        return int(real_free(bio))

    monkeypatch.setattr(_record_io, "_BIO_new", bio_new)
    monkeypatch.setattr(_record_io, "_BIO_free", bio_free)
    assert client.engine.release_buffers() is False
    assert (connection._into_ssl, connection._from_ssl) == before  # type: ignore[attr-defined]
    assert freed == [bio for bio in made if bio != _record_io._NULL] and len(freed) == 1
    monkeypatch.undo()
    client.engine.send(b"still fine")
    pump(client, server)
    assert server.received == b"still fine"


def test_the_scratch_buffer_is_never_smaller_than_asked() -> None:
    from membio_transport.tls._record_io import _ffi, _Scratch

    scratch = _Scratch()
    for size in (1, 5, 65536, 65537, 300_000, 10):
        buffer = scratch(size)
        assert buffer != _ffi.NULL
        assert _ffi.sizeof(buffer) >= size


class _StubConnection:
    """Just enough of an SSL.Connection for PublicRecordIO.drain: a BIO of bytes."""

    def __init__(self, pending: bytes) -> None:
        self.pending = pending
        self.reads = 0

    def bio_read(self, size: int) -> bytes:
        from OpenSSL import SSL

        self.reads += 1
        if not self.pending:
            raise SSL.WantReadError()
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


@pytest.mark.parametrize(("size", "reads"), [(0, 1), (100, 1), (256 * 1024, 2), (512 * 1024, 3),
                                             (600_000, 3)])
def test_the_public_drain_reads_until_the_bio_is_empty(size: int, reads: int) -> None:
    """Exact multiples of the read size need one read more, to learn the BIO is empty."""
    from membio_transport.tls._record_io import PublicRecordIO

    data = os.urandom(size)
    stub = _StubConnection(data)
    assert PublicRecordIO(stub).drain() == data  # type: ignore[arg-type]
    assert stub.pending == b"" and stub.reads == reads
