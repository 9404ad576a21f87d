"""
The Twisted side of the TLS layer: the transport the application sees.

`MemoryBIOTLSProtocol` sits between a real transport (TCP, UNIX, another
TLS layer, a test double) and the application protocol.  It moves bytes
between them and a sans-I/O `TLSEngine`, and turns engine events into the
calls Twisted applications expect.  All TLS logic lives in the engine; this
module only decides *when* to feed it and where its output goes:

* `_process` is the one loop that feeds the engine's events to the
  application; `_flush` (in `_aggregate`) is the one place that writes
  ciphertext out.
* Pausing this transport stops delivery at once, including records that
  already arrived: the engine simply is not asked for more events.

The class is made of five pieces, one per module, whose methods all run on
the one protocol object (a mixin's method costs what the same method costs
here: no call is added on the per-record path):

* this module: the ``ITransport``/``ISSLTransport`` the application sees,
  the delivery loop, closing, producers;
* `_aggregate.WriteCoalescing`: batching writes, encrypting, the flush;
* `_timers.ConnectionTimers`: the handshake, idle and close timeouts;
* `_sniff.FirstBytes`: the first bytes of a server connection (TLS, plain
  HTTP to answer, or garbage to close);
* `_failures.FailureReports`: a failed connection counted, logged and
  reported to the application.

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
hands it (`_failures` is the one place that decides).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from OpenSSL import SSL
from OpenSSL._util import lib as _openssl_lib
from twisted.internet.interfaces import (
    IConsumer,
    IHalfCloseableProtocol,
    IHandshakeListener,
    INegotiated,
    IProtocol,
    IPushProducer,
    ISSLTransport,
    ISystemHandle,
    ITransport,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from zope.interface import implementer, providedBy

from ._aggregate import WriteCoalescing
from ._engine import Event, TLSEngine
from ._errors import TLSConnectionError, TLSTruncationError
from ._factory_view import FactoryView
from ._failures import FailureReports
from ._producers import ProducerProxy
from ._reclaim import BURST_SIZE
from ._sniff import FirstBytes
from ._state import CAN_SEND, TLSState
from ._timers import ConnectionTimers

__all__ = ["MemoryBIOTLSProtocol"]

_HANDSHAKING = TLSState.HANDSHAKING
_NEED_DATA = Event.NEED_DATA
_HANDSHAKE_COMPLETE = Event.HANDSHAKE_COMPLETE


def _session_reused(connection: SSL.Connection) -> bool:
    # pyOpenSSL has no public call for SSL_session_reused; its binding has
    # the function, reached through the connection's private handle.
    reused = getattr(_openssl_lib, "SSL_session_reused", None)
    handle = getattr(connection, "_ssl", None)
    return bool(reused(handle)) if reused is not None and handle is not None else False


@implementer(
    ISSLTransport, INegotiated, ITransport, ISystemHandle, IConsumer, IPushProducer,
    IHalfCloseableProtocol,
)
class MemoryBIOTLSProtocol(
    WriteCoalescing, ConnectionTimers, FirstBytes, FailureReports, ProtocolWrapper
):
    """
    A TLS transport over any transport, driving a `TLSEngine`.

    @ivar wrappedProtocol: the application protocol.
    @ivar disconnecting: the application asked to close (Twisted's name).
    """

    factory: FactoryView
    #: Any transport: TCP, UNIX, another TLS layer, a test double.  Optional
    #: methods (abortConnection, loseWriteConnection...) are looked up as
    #: Twisted's own layer does, so it is typed loosely on purpose.
    transport: Any
    wrappedProtocol: Any
    _engine: TLSEngine
    _producer: ProducerProxy | None = None
    #: The application half-closed during the handshake (see
    #: `loseWriteConnection`): done once the handshake completes.
    _half_close_pending = False
    #: When the connection started, for ``stats.detail`` (set only with one;
    #: a handshake under way when the detail was installed is not timed).
    _started: float | None = None

    def __init__(
        self,
        factory: FactoryView,
        wrappedProtocol: IProtocol,
        _connectWrapped: bool = True,
    ) -> None:
        super().__init__(factory, wrappedProtocol)  # type: ignore[arg-type]
        self._connect_wrapped = _connectWrapped
        # Write coalescing's state (see `_aggregate`).
        self._batch: list[bytes] = []
        self._batch_size = 0
        self._unsent = 0
        # True while we are inside a callback into the application or the
        # engine loop: writes then wait for the flush that surely follows,
        # and a resumeProducing() must not start a nested delivery loop.
        self._busy = False
        # The application paused us (pauseProducing on this transport).
        self._paused = False
        # It resumed us while we were busy, outside the delivery loop.
        self._resume_pending = False
        # Clock time of the last byte in or out (for the idle timeout).
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
        factory.registerProtocol(self)
        stats = factory.stats
        stats.active += 1
        stats.connections += 1
        if stats.detail is not None:
            self._started = stats.detail.now()
        if not factory.isClient and factory.plain_http is not None:
            self._preamble = b""
        if factory.handshake_timeout is not None:
            self._start_handshake_timer(factory.handshake_timeout)
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
        producer = self._producer
        if producer is not None and producer.paused_for_tls:
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
        if stats.detail is not None and self._started is not None:
            stats.detail.handshake_completed(self._engine.connection, self._started)
        if factory.idle_timeout is not None:
            self._start_idle_timer(factory.idle_timeout)
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

    # -- outgoing ------------------------------------------------------------

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
        else:
            self._start_close_timer()

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
        self._cancel_timers()
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

    # -- producers and consumers ---------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if not self.connected or self._engine.state not in CAN_SEND:
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




_CLOSABLE = frozenset({TLSState.OPEN, TLSState.PEER_CLOSED})
