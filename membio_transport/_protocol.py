"""
The Twisted side of the TLS layer: the transport the application sees.

`MemoryBIOTLSProtocol` sits between a real transport (TCP, UNIX, another
TLS layer, a test double) and the application protocol.  It moves bytes
between them and a sans-I/O `TLSEngine`, and turns engine events into the
calls Twisted applications expect.  All TLS logic lives in the engine; this
module only decides *when* to feed it and where its output goes:

* `_process` is the one loop that feeds the engine's events to the
  application; `_flush` is the one place that writes ciphertext out.
* Small writes made while we are already busy (inside ``dataReceived``,
  ``connectionMade``, ``handshakeCompleted``) are batched and encrypted
  together when the callback returns; small writes made from elsewhere are
  batched until the next reactor turn.  Large writes are encrypted at once,
  without copies, and their ciphertext leaves at the same moments, or at
  once when 256 KiB of it has built up.
* Pausing this transport stops delivery at once, including records that
  already arrived: the engine simply is not asked for more events.

Behaviour deliberately differs from Twisted's ``TLSMemoryBIOProtocol`` in
the places where Twisted's is a known defect: the outgoing BIO is always
drained (twisted#5095), ``loseConnection`` waits for the peer's close_notify
only for a bounded time (twisted#7926), ``loseWriteConnection`` sends
close_notify (twisted#5341), pausing stops already-buffered records, and the
transport stays usable (as harmless no-ops) after ``connectionLost``.  What
is policy (a handshake timeout, the plain-HTTP answer, a log line per failed
handshake) follows the factory's keywords, Twisted's way unless asked
(see `_policy`).

What the application's ``connectionLost`` receives is what Twisted's layer
hands it (`_for_application` is the one place that decides): pyOpenSSL's
own ``SSL.Error`` for a failed handshake or a bad record,
``ConnectionLost`` for an end without close_notify, ``ConnectionDone``
for a clean close.  The engine's precise exceptions stay inside; their
words reach the log, and ``tls_failure_reason`` finds them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from OpenSSL import SSL
from OpenSSL._util import lib as _openssl_lib
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
    ITransport,
)
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from ._engine import Event, TLSEngine
from ._errors import (
    TLSCallbackError,
    TLSConnectionError,
    TLSHandshakeError,
    TLSTruncationError,
)
from ._producers import ProducerProxy
from ._reclaim import BURST_SIZE
from ._sniff import Preamble, answer_plain_http, classify
from ._state import TLSState

if TYPE_CHECKING:
    from ._factory import MemoryBIOTLSFactory

__all__ = ["MemoryBIOTLSProtocol"]

_log = Logger()

#: Writes at least this large skip the batch: they already fill a record,
#: so joining them with others buys nothing.
_COALESCE_LIMIT: Final = 16384

#: Plaintext encrypted but not yet handed to the transport, beyond which a
#: write outside a callback drains at once instead of at the next reactor
#: turn.  Fewer, larger transport writes are what makes bulk transfers
#: fast (twisted.web serving a file, per server CPU second: 1.2x Twisted's
#: layer when draining every 64 KiB, 1.5x at 256 KiB); the cost is that much
#: memory per busy connection, which `_reclaim` takes back once it is quiet.
_DRAIN_THRESHOLD: Final = 256 * 1024

_HANDSHAKING = TLSState.HANDSHAKING
_NEED_DATA = Event.NEED_DATA
_HANDSHAKE_COMPLETE = Event.HANDSHAKE_COMPLETE


def _session_reused(connection: SSL.Connection) -> bool:
    # pyOpenSSL has no public call for SSL_session_reused; its binding has
    # the function, reached through the connection's private handle.
    reused = getattr(_openssl_lib, "SSL_session_reused", None)
    handle = getattr(connection, "_ssl", None)
    return bool(reused(handle)) if reused is not None and handle is not None else False


def _as_bytes(data: object) -> bytes:
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"Data must be bytes, not {type(data).__name__}")


@implementer(
    ISSLTransport, INegotiated, ITransport, ISystemHandle, IConsumer, IPushProducer,
    IHalfCloseableProtocol,
)
class MemoryBIOTLSProtocol(ProtocolWrapper):
    """
    A TLS transport over any transport, driving a `TLSEngine`.

    @ivar wrappedProtocol: the application protocol.
    @ivar disconnecting: the application asked to close (Twisted's name).
    """

    factory: MemoryBIOTLSFactory
    #: Any transport: TCP, UNIX, another TLS layer, a test double.  Optional
    #: methods (abortConnection, loseWriteConnection...) are looked up as
    #: Twisted's own layer does, so it is typed loosely on purpose.
    transport: Any
    wrappedProtocol: Any
    _engine: TLSEngine
    _reason: Failure | None = None
    _producer: ProducerProxy | None = None
    _flush_call: IDelayedCall | None = None
    _close_timer: IDelayedCall | None = None
    _handshake_timer: IDelayedCall | None = None
    _idle_timer: IDelayedCall | None = None
    #: Bytes seen before we know whether the peer speaks TLS at all (server
    #: side, see `_sniff`); None once that is settled or never asked.
    _preamble: bytes | None = None
    #: We abandoned the session (abort, or a close before the handshake
    #: completed): however the transport ends, it was not a clean TLS end.
    _abandoned = False
    #: The application half-closed during the handshake (see
    #: `loseWriteConnection`): done once the handshake completes.
    _half_close_pending = False
    #: When the connection started, for ``stats.detail`` (set only with one).
    _started = 0.0

    def __init__(
        self,
        factory: MemoryBIOTLSFactory,
        wrappedProtocol: IProtocol,
        _connectWrapped: bool = True,
    ) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._connect_wrapped = _connectWrapped
        self._batch: list[bytes] = []
        self._batch_size = 0
        # Plaintext encrypted since the outgoing BIO was last drained.
        self._unsent = 0
        # True while we are inside a callback into the application or the
        # engine loop: writes then wait for the flush that surely follows,
        # and a resumeProducing() must not start a nested delivery loop.
        self._busy = False
        # The application paused us (pauseProducing on this transport).
        self._paused = False
        # It resumed us while we were busy, outside the delivery loop.
        self._resume_pending = False
        # Reactor time of the last byte in or out (for the idle timeout).
        self._last_activity = 0.0

    # -- set-up ------------------------------------------------------------

    def makeConnection(self, transport: ITransport) -> None:
        factory = self.factory
        self._engine = TLSEngine(
            factory.connection_for(self),
            server_side=not factory.isClient,
            send_buffer_limit=factory.send_buffer_limit,
            refuse_renegotiation=factory.refuse_renegotiation,
        )
        factory.provide_transport_interfaces(self, providedBy(transport))
        self.transport = transport
        self.connected = 1
        factory.registerProtocol(self)  # type: ignore[no-untyped-call]
        stats = factory.stats
        stats.active += 1
        stats.connections += 1
        if stats.detail is not None:
            self._started = stats.detail.now()
        if not factory.isClient and factory.plain_http is not None:
            self._preamble = b""
        if factory.handshake_timeout is not None:
            self._handshake_timer = factory.clock.callLater(
                factory.handshake_timeout, self._handshake_timed_out
            )
        self._busy = True
        try:
            if self._connect_wrapped:
                self.wrappedProtocol.makeConnection(self)
        finally:
            self._busy = False
        if factory.isClient:
            # The ClientHello goes out now.  A server has nothing to do
            # before the peer's first bytes, except flush what the
            # application wrote (it waits in the engine for the handshake).
            self._process()
        elif self._batch:
            self._flush()

    def release_buffers(self) -> bool:
        """Free the memory bursts grew in the engine (called when quiet)."""
        return bool(self.connected) and self._engine.release_buffers()

    def getHandle(self) -> SSL.Connection:
        """The pyOpenSSL connection (for ``Certificate.peerFromTransport``)."""
        return self._engine.connection

    # -- incoming: the one delivery loop -------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.factory.stats.bytes_received += len(data)
        if len(data) >= BURST_SIZE:
            self.factory.burst(self)
        if self._idle_timer is not None:
            self._last_activity = self.factory.clock.seconds()
        if self._preamble is not None:
            data = self._sniff(self._preamble + data)
            if not data:
                return
        self._engine.receive(data)
        self._process()

    def _sniff(self, prefix: bytes) -> bytes:
        """
        Decide from the first bytes whether the peer speaks TLS; return
        what to feed the engine (nothing while undecided or not TLS).
        """
        kind = classify(prefix)
        if kind is Preamble.UNDECIDED:
            self._preamble = prefix
            return b""
        self._preamble = None
        if kind is Preamble.TLS:
            return prefix
        policy = self.factory.plain_http
        if kind is Preamble.HTTP and policy != "close":
            assert policy is not None
            host = self.transport.getHost()
            response, url = answer_plain_http(
                prefix, policy, str(getattr(host, "host", "localhost")),
                int(getattr(host, "port", 443)),
            )
            self.transport.write(response)
            self.factory.stats.plain_http_answered += 1
            self._handshake_failed(
                TLSHandshakeError(reason="plain HTTP on the TLS port"),
                f"plain HTTP on the TLS port (answered: use {url})",
            )
        else:
            what = "plain HTTP on the TLS port" if kind is Preamble.HTTP else "not TLS"
            self._handshake_failed(TLSHandshakeError(reason=what), what)
        self._engine.abort()
        self._drop_batch()
        self.disconnecting = True
        self._close_transport()
        return b""

    def _process(self) -> None:
        """
        Feed engine events to the application until the engine needs more
        ciphertext or the application pauses us, then flush what is due.
        """
        engine = self._engine
        if self._busy or engine.state is TLSState.FAILED:
            return
        self._busy = True
        self._resume_pending = False
        try:
            while not self._paused or engine.state is _HANDSHAKING:
                event = engine.next_event()
                if type(event) is bytes:
                    self.wrappedProtocol.dataReceived(event)
                elif event is _NEED_DATA:
                    break
                elif event is _HANDSHAKE_COMPLETE:
                    self._handshake_completed()
                else:
                    self._peer_closed()
                    break
        except TLSConnectionError as e:
            self._tls_failed(e)
        finally:
            self._busy = False
        if self._producer is not None:
            # Reading may have let held-back writes go (a renegotiation
            # finished): a producer paused for them may resume.
            self._relieve_backpressure()
        self._flush()

    def _handshake_completed(self) -> None:
        factory = self.factory
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        stats = factory.stats
        stats.handshakes += 1
        if _session_reused(self._engine.connection):
            stats.resumed += 1
        if stats.detail is not None:
            stats.detail.handshake_completed(self._engine.connection, self._started)
        if factory.idle_timeout is not None:
            self._last_activity = factory.clock.seconds()
            self._idle_timer = factory.clock.callLater(factory.idle_timeout, self._idle_check)
        if IHandshakeListener.providedBy(self.wrappedProtocol):
            self.wrappedProtocol.handshakeCompleted()
        if self._half_close_pending:
            self._half_close_pending = False
            self.loseWriteConnection()
        if self.disconnecting and self._producer is None:
            self._begin_close()
        self._relieve_backpressure()

    def _peer_closed(self) -> None:
        """The peer's close_notify arrived."""
        engine = self._engine
        wrapped = self.wrappedProtocol
        half_closeable = not self.disconnecting and IHalfCloseableProtocol.providedBy(wrapped)
        if half_closeable:
            wrapped.readConnectionLost()
        if engine.state is TLSState.CLOSED:
            # Ours had gone out already: the session ended cleanly.
            self._close_transport()
            return
        if half_closeable:
            return
        engine.close()
        self._flush()
        self._close_transport()

    def _tls_failed(self, error: TLSConnectionError) -> None:
        if isinstance(error, TLSCallbackError):
            self._callback_failed(error)
            return
        if error.during_handshake:
            # A peer that connects and leaves without a byte is a port scan
            # or a health check: counted, but not worth a log line each.
            quiet = isinstance(error, TLSTruncationError) and self._preamble == b""
            self._handshake_failed(error, error.reason, log=not quiet)
        elif self._reason is None:
            self._reason = Failure(error)
        self.disconnecting = True
        self._drop_batch()
        self._flush()
        self._close_transport()

    def _callback_failed(self, error: TLSCallbackError) -> None:
        """
        A callback OpenSSL ran for us raised (see `_callbacks`): a bug in
        the application's code, so it is logged whatever the policy, once,
        with its own type and traceback.  The connection then ends as with
        Twisted's layer when an exception escapes the handshake: at once,
        with no alert, and ConnectionLost on both sides.
        """
        self._cancel_handshake_timer()
        original = error.error
        self.factory.stats.failed[f"{type(original).__name__} in a TLS callback"] += 1
        _log.failure(
            "TLS handshake failed from {peer}: {reason}",
            failure=Failure(original, type(original), original.__traceback__),
            peer=self._peer_text(),
            reason=error.reason,
            event_name="tls_handshake_failed",
        )
        if self._reason is None:
            self._reason = Failure(ConnectionLost(error.reason))
        # Drop the alert OpenSSL may have queued: as with Twisted's layer,
        # nothing more leaves after an exception in the handshake.
        self._engine.data_to_send()
        self.abortConnection()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None and self._handshake_timer.active():
            self._handshake_timer.cancel()
        self._handshake_timer = None

    def _handshake_failed(
        self, error: TLSConnectionError, reason: str, *, log: bool = True
    ) -> None:
        """Count, log (one line, if the policy says so) and remember a failed handshake."""
        self._cancel_handshake_timer()
        self.factory.stats.failed[error.reason] += 1
        if log and self.factory.log_handshake_failures:
            _log.info(
                "TLS handshake failed from {peer}: {reason}",
                peer=self._peer_text(),
                reason=reason,
                event_name="tls_handshake_failed",
            )
        if self._reason is None:
            self._reason = Failure(error)

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        self._handshake_failed(
            TLSHandshakeError(reason="handshake timeout"),
            f"handshake timeout ({self.factory.handshake_timeout:g}s)",
        )
        self.abortConnection()

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.factory.idle_timeout
        if timeout is None or not self.connected:
            return
        idle = self.factory.clock.seconds() - self._last_activity
        if idle < timeout:
            self._idle_timer = self.factory.clock.callLater(timeout - idle, self._idle_check)
            return
        _log.info(
            "closing TLS connection from {peer}: idle for {idle:.0f}s",
            peer=self._peer_text(),
            idle=idle,
            event_name="connection_idle_closed",
        )
        # Our decision, not the application's: close even while a producer
        # is registered (twisted.web's channel always has one).
        self.disconnecting = True
        self._flush()
        self._begin_close()

    # -- outgoing ------------------------------------------------------------

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
                if not self._busy and self._flush_call is None:
                    self._schedule_flush()
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
        if self._unsent >= _DRAIN_THRESHOLD:
            self._flush()
        elif not self._busy and self._flush_call is None:
            self._schedule_flush()

    def writeSequence(self, iovec: Any) -> None:
        self.write(b"".join(iovec))

    def _encrypt(self, data: bytes) -> None:
        """Hand plaintext to the engine now; its ciphertext waits for `_flush`."""
        engine = self._engine
        if engine.state not in _SENDABLE:
            return
        try:
            below_limit = engine.send(data)
        except TLSConnectionError as e:
            self._tls_failed(e)
            return
        self._unsent += len(data)
        if not below_limit and self._producer is not None:
            self._producer.pause_for_tls()

    def _schedule_flush(self) -> None:
        self._flush_call = self.factory.clock.callLater(0, self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_call = None
        self._flush()

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
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None

    def _relieve_backpressure(self) -> None:
        engine = self._engine
        if self._producer is not None and engine.buffered < engine.send_buffer_limit:
            self._producer.resume_for_tls()

    # -- closing -------------------------------------------------------------

    def loseConnection(self) -> None:
        """Flush, send close_notify, and close (peer's reply awaited briefly)."""
        if self.disconnecting or not self.connected:
            return
        self.disconnecting = True
        self._flush()
        if self._producer is None:
            self._begin_close()

    def _begin_close(self) -> None:
        engine = self._engine
        if engine.state is _HANDSHAKING:
            if engine.buffered:
                # Data is waiting for the handshake; close once it is out.
                return
            self._abandoned = True
            engine.abort()
            self._close_transport()
            return
        if engine.state not in _CLOSABLE:
            return
        try:
            engine.close()
        except TLSConnectionError as e:
            self._tls_failed(e)
            return
        self._flush()
        if engine.state is TLSState.CLOSED:
            self._close_transport()
        elif self._close_timer is None and self.factory.schedules_timers:
            self._close_timer = self.factory.clock.callLater(
                self.factory.close_timeout, self._close_timed_out
            )

    def _close_timed_out(self) -> None:
        self._close_timer = None
        self._close_transport()

    def _close_transport(self) -> None:
        if self.transport is not None and self.connected:
            self.transport.loseConnection()

    def loseWriteConnection(self) -> None:
        """Half-close: send close_notify, then shut down our side of TCP."""
        if self.disconnecting or not self.connected:
            return
        if self._engine.state is TLSState.PEER_CLOSED:
            # The peer already closed its side: closing ours ends it all.
            self.loseConnection()
            return
        if self._engine.state is TLSState.HANDSHAKING:
            # close_notify can only follow a completed handshake, and a TCP
            # half-close now would stop our own Finished: half-close once
            # the handshake is done (and what was written has gone out).
            self._half_close_pending = True
            return
        self._flush()
        if self._engine.state is TLSState.OPEN:
            try:
                self._engine.close()
            except TLSConnectionError as e:
                self._tls_failed(e)
                return
            self._flush()
        transport_half_close = getattr(self.transport, "loseWriteConnection", None)
        if transport_half_close is not None:
            transport_half_close()

    def abortConnection(self) -> None:
        """Close at once: no close_notify, nothing more delivered."""
        if not self.connected:
            return
        self.disconnecting = True
        self._abandoned = True
        self._engine.abort()
        self._drop_batch()
        self.transport.abortConnection()

    def failVerification(self, reason: Failure) -> None:
        """
        Twisted's certificate-verification callback calls this from inside
        the handshake; the engine is mid-call, so only the transport is
        touched here and the handshake error that follows finishes the job.
        """
        self._reason = reason
        self.disconnecting = True
        self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        """The transport's read side ended (TCP FIN) but it may still write."""
        self._end_of_input()
        if self._engine.state is not TLSState.PEER_CLOSED:
            self._close_transport()

    def writeConnectionLost(self) -> None:
        wrapped = self.wrappedProtocol
        if IHalfCloseableProtocol.providedBy(wrapped):
            wrapped.writeConnectionLost()

    def _end_of_input(self) -> None:
        """Tell the engine no more ciphertext comes, and deliver what is left."""
        engine = self._engine
        state = engine.state
        if state is TLSState.CLOSED or state is TLSState.FAILED:
            return
        engine.receive_eof()
        self._process()
        if (
            self._reason is not None
            and state is TLSState.LOCAL_CLOSED
            and self._reason.check(TLSTruncationError)
        ):
            # We initiated the close; a peer that hangs up instead of
            # answering with close_notify truncates nothing we asked for.
            self._reason = None

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.connected:
            return
        self._drop_batch()
        for timer in (self._close_timer, self._handshake_timer, self._idle_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._close_timer = self._idle_timer = self._handshake_timer = None
        self.factory.stats.active -= 1
        self.factory.forget(self)
        # From here on the transport is gone: what the application writes
        # while we deliver the last records is dropped, not sent.
        self.connected = 0
        self._end_of_input()
        self._engine.abort()
        # The connection's app data (for Twisted's callbacks) points back at
        # us: without this the SSL object waits for the cyclic GC.
        self._engine.connection.set_app_data(None)
        # The real transport stops the producer itself when it goes away.
        self._producer = None
        final = self._for_application(self._reason or reason)
        self._reason = None
        if self.wrappedProtocol is not None:
            ProtocolWrapper.connectionLost(self, final)

    def _for_application(self, reason: Failure | None) -> Failure | None:
        """
        What the application's ``connectionLost`` gets for C{reason}: what
        Twisted's layer would give it.
        """
        value = reason.value if reason is not None else None
        if isinstance(value, TLSTruncationError):
            return Failure(ConnectionLost(value.reason))
        if isinstance(value, TLSConnectionError):
            original = value.__cause__
            if isinstance(original, SSL.Error):
                return Failure(original, type(original), original.__traceback__)
            # Ours alone (a handshake timeout, plain HTTP): no pyOpenSSL
            # exception to stand for it.
            return reason
        if self._abandoned and (reason is None or isinstance(value, ConnectionDone)):
            # A transport closed under a session we abandoned ends cleanly as
            # far as TCP knows, but TLS never finished.
            return Failure(ConnectionLost("TLS connection abandoned before its close_notify"))
        return reason

    # -- producers and consumers ---------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self.connected or self._engine.state not in _SENDABLE:
            producer.stopProducing()
            return
        proxy = ProducerProxy(producer, streaming, self._batched)
        # Raises if a producer is already registered, as Twisted's does.
        self.transport.registerProducer(proxy, streaming)
        self._producer = proxy
        if self._engine.buffered >= self._engine.send_buffer_limit:
            proxy.pause_for_tls()

    def unregisterProducer(self) -> None:
        if self._producer is None:
            return
        self._producer = None
        if self.transport is not None:
            self.transport.unregisterProducer()
        if self.disconnecting and self.connected:
            self._flush()
            self._begin_close()

    def _batched(self, call: Callable[[], object]) -> None:
        """
        Run C{call} (a pull producer producing) as one burst: its writes
        leave in one transport write when it returns.
        """
        if self._busy:
            call()
            return
        self._busy = True
        try:
            call()
        finally:
            self._busy = False
        if self._resume_pending:
            self._process()
        else:
            self._flush()

    def pauseProducing(self) -> None:
        """Stop delivering data to the application, buffered records included."""
        self._paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        was_paused = self._paused
        self._paused = False
        if not self.connected:
            return
        self.transport.resumeProducing()
        if not was_paused:
            # twisted.web resumes after every request, paused or not.
            return
        if self._busy:
            # Inside a callback of ours: the delivery loop, if that is where
            # we are, sees the change itself; `_batched` looks at this flag.
            self._resume_pending = True
        else:
            self._process()

    def stopProducing(self) -> None:
        self.transport.stopProducing()

    # -- ISSLTransport / INegotiated -------------------------------------------

    def getPeerCertificate(self) -> Any:
        return self._engine.connection.get_peer_certificate()

    @property
    def negotiatedProtocol(self) -> bytes | None:
        engine: TLSEngine | None = self.__dict__.get("_engine")
        if engine is None:
            return None
        return engine.connection.get_alpn_proto_negotiated() or None

    def _peer_text(self) -> str:
        try:
            peer = self.transport.getPeer()
        except Exception:
            return "unknown peer"
        host, port = getattr(peer, "host", None), getattr(peer, "port", None)
        if host is None:
            return str(peer)
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


_SENDABLE = frozenset({TLSState.HANDSHAKING, TLSState.OPEN, TLSState.PEER_CLOSED})
_CLOSABLE = frozenset({TLSState.OPEN, TLSState.PEER_CLOSED})
