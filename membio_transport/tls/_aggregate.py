"""
Write coalescing: how the transport turns the application's writes into
few, large records and few transport writes.

`WriteCoalescing` is one of the pieces `MemoryBIOTLSProtocol` is made of
(see `_protocol`); its methods run on the protocol itself, so splitting
the class over modules adds no call on the per-record path.

* Small writes made while the protocol is already busy (inside
  ``dataReceived``, ``connectionMade``, ``handshakeCompleted``) are batched
  and encrypted together when the callback returns; small writes made from
  elsewhere are batched until the next reactor turn, when one call per
  factory (`TurnFlush`), not one per connection, flushes every connection
  that wrote.
* Large writes are encrypted at once, without copies, and their ciphertext
  leaves at the same moments, or at once when 256 KiB of it has built up.
* `_flush` is the one place that writes ciphertext to the transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ._errors import TLSConnectionError
from ._reclaim import BURST_SIZE
from ._state import CAN_SEND

if TYPE_CHECKING:
    from ._engine import TLSEngine
    from ._factory_view import FactoryView
    from ._producers import ProducerProxy

__all__ = ["DRAIN_THRESHOLD", "TurnFlush", "WriteCoalescing"]

#: Writes at least this large skip the batch: they already fill a record,
#: so joining them with others buys nothing.
_COALESCE_LIMIT: Final = 16384

#: Plaintext encrypted but not yet handed to the transport, beyond which a
#: write outside a callback drains at once instead of at the next reactor
#: turn.  Fewer, larger transport writes are what makes bulk transfers
#: fast (twisted.web serving a file, per server CPU second: 1.2x Twisted's
#: layer when draining every 64 KiB, 1.5x at 256 KiB); the cost is that much
#: memory per busy connection, which `_reclaim` takes back once it is quiet.
DRAIN_THRESHOLD: Final = 256 * 1024


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"Data must be bytes, not {type(data).__name__}")


class WriteCoalescing:
    """
    The outgoing half of `MemoryBIOTLSProtocol`: batching, encryption and
    the one flush.

    @ivar _batch: small plaintext writes waiting to be encrypted together.
    @ivar _batch_size: their total length.
    @ivar _unsent: plaintext encrypted since the outgoing BIO was last
        drained.
    @ivar _flush_due: this connection waits for its factory's flush of
        the next reactor turn (`TurnFlush`).
    """

    factory: FactoryView
    transport: Any
    connected: int
    disconnecting: int
    _engine: TLSEngine
    _producer: ProducerProxy | None
    _busy: bool
    _idle_timer: IDelayedCall | None
    _last_activity: float
    _batch: list[bytes]
    _batch_size: int
    _unsent: int
    _flush_due = False

    if TYPE_CHECKING:

        def _tls_failed(self, error: TLSConnectionError) -> None: ...

    def write(self, data: bytes) -> None:
        if type(data) is not bytes:
            data = _as_bytes(data)
        # Twisted's rule: after loseConnection, writes are dropped unless a
        # producer is still registered (it may finish its work first).
        if not self.connected or (self.disconnecting and self._producer is None):
            return
        if len(data) < _COALESCE_LIMIT:
            self._batch.append(data)
            self._batch_size += len(data)
            if self._batch_size < _COALESCE_LIMIT:
                # Inside a callback the flush that ends it is enough;
                # elsewhere the next reactor turn sends the batch.
                if not self._busy and not self._flush_due:
                    self._flush_due = True
                    self.factory.flush_next_turn(self)
                return
            data = b"".join(self._batch)
            self._batch = []
            self._batch_size = 0
        elif self._batch:
            # Keep the order: what was batched goes first.
            self._encrypt(b"".join(self._batch))
            self._batch = []
            self._batch_size = 0
        self._encrypt(data)
        # The ciphertext waits in the outgoing BIO for the flush that ends
        # the current callback, or for the next reactor turn (the transport
        # would not send it sooner): one transport write for a whole burst.
        if self._unsent >= DRAIN_THRESHOLD:
            self._flush()
        elif not self._busy and not self._flush_due:
            self._flush_due = True
            self.factory.flush_next_turn(self)

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def _encrypt(self, data: bytes) -> None:
        """Hand plaintext to the engine now; its ciphertext waits for `_flush`."""
        engine = self._engine
        if engine.state not in CAN_SEND:
            return
        try:
            below_limit = engine.send(data)
        except TLSConnectionError as e:
            self._tls_failed(e)
            return
        self._unsent += len(data)
        if not below_limit and self._producer is not None:
            self._producer.pause_for_tls()

    def _flush(self) -> None:
        """Encrypt the batch, then hand all ciphertext to the transport."""
        if self._batch:
            batch = self._batch
            self._batch = []
            self._batch_size = 0
            self._encrypt(batch[0] if len(batch) == 1 else b"".join(batch))
        self._unsent = 0
        out = self._engine.data_to_send()
        if out and self.connected:
            if len(out) >= BURST_SIZE:
                self.factory.burst(self)
            self.factory.stats.bytes_sent += len(out)
            if self._idle_timer is not None:
                self._last_activity = self.factory.clock.seconds()
            self.transport.write(out)

    def _drop_batch(self) -> None:
        self._batch = []
        self._batch_size = 0
        if self._flush_due:
            self._flush_due = False
            self.factory.no_flush_next_turn(self)


class Flushable(Protocol):
    _flush_due: bool

    def _flush(self) -> None: ...


class TurnFlush:
    """
    Flushes, at the next reactor turn, every connection of a factory that
    wrote outside a callback: one ``callLater(0)`` per factory and turn
    where there was one per connection (with 16 busy keep-alive
    connections, 24k fewer instructions per request: a DelayedCall is
    created, pushed on the reactor's heap and popped each time).  Each
    connection still sends its own writes in their order, in one
    transport write; connections go in the order they first wrote.
    """

    __slots__ = ("_call", "_clock", "_due")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._due: list[Flushable] = []
        self._call: IDelayedCall | None = None

    def add(self, connection: Flushable) -> None:
        """C{connection} has writes waiting for the next turn."""
        self._due.append(connection)
        if self._call is None:
            self._call = self._clock.callLater(0, self._run)

    def discard(self, connection: Flushable) -> None:
        """C{connection} is gone: nothing to flush for it."""
        due = self._due
        while connection in due:
            due.remove(connection)
        if not due and self._call is not None:
            # Leave no call behind for nothing (trial reports pending calls
            # after a test as a dirty reactor).
            self._call.cancel()
            self._call = None

    def _run(self) -> None:
        self._call = None
        due, self._due = self._due, []
        for index, connection in enumerate(due):
            connection._flush_due = False
            try:
                connection._flush()
            except BaseException:
                # As with one call per connection: the reactor logs this
                # one's error and the others are still flushed.
                rest = due[index + 1 :]
                if rest:
                    self._due[:0] = rest
                    if self._call is None:
                        self._call = self._clock.callLater(0, self._run)
                raise
