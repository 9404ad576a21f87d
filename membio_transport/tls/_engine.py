"""
A sans-I/O TLS engine: one pyOpenSSL connection over two memory BIOs.

Theory of operation
===================

OpenSSL never touches a socket here.  A ``SSL.Connection(ctx, None)`` owns
two memory BIOs: the *incoming* one, into which we copy ciphertext that
arrived from the peer (``bio_write``), and the *outgoing* one, from which we
copy ciphertext that OpenSSL wants sent (``bio_read``).  Between them
OpenSSL runs the TLS state machine: ``do_handshake``, ``recv`` and ``send``
consume the incoming BIO and fill the outgoing one.  This module moves
bytes in and out and keeps score; the caller (a Twisted protocol, a test,
a benchmark) does all I/O::

    peer --ciphertext--> receive() --> [in BIO] --> next_event() --> plaintext
    app  --plaintext---> send() -----> [out BIO] -> data_to_send() --> peer

*One pump.*  `data_to_send` is the only place that reads the outgoing BIO,
and it drains it completely every time.  Any call may have queued bytes
there: the handshake flight, a KeyUpdate reply, a session ticket, an alert
describing a failure, close_notify.  Twisted's layer reads the BIO once,
32 KiB at a time, per event, so a server flight larger than that (a long
certificate chain) never finishes; draining to empty makes that impossible.
The contract for callers is simple: after *any* call, including one that
raised, call `data_to_send` and put what it returns on the wire.

*WantRead is not an error.*  It means "OpenSSL needs more ciphertext before
it can go on".  From ``do_handshake`` or ``recv`` it becomes the
`Event.NEED_DATA` event.  From ``send`` it means a handshake message (a
TLS 1.2 renegotiation) must be read before application data can be
written: the unsent bytes stay at the head of the pending queue and are
retried, unchanged, after the next read makes progress.  OpenSSL requires
exactly that (a retried write must carry the same bytes), and it is what
keeps data from being lost or duplicated across renegotiation.

*The calls per record* (feed ciphertext, decrypt, encrypt, drain) go
through `_record_io`, which makes them directly on OpenSSL where the
binding allows and through pyOpenSSL's public methods otherwise.

*Knowing when to stop reading.*  Reading until OpenSSL says WantRead costs
a buffer allocation and two C calls per batch of input (and an exception
through pyOpenSSL); for small messages that is a large share of the work.
The engine therefore follows the record framing of the incoming stream
(5-byte headers carry each record's length) and keeps an upper bound on
the complete records not yet consumed; once it reaches zero, `next_event`
reports NEED_DATA without asking OpenSSL.  The bound can only err high
(OpenSSL consumes handshake and ticket records silently), which costs one
redundant read, never a missed record.

*Memory.*  A memory BIO keeps the largest buffer it ever grew to.  Once
the handshake's last flight has been drained, both BIOs are swapped for
empty ones; after a burst of traffic the Twisted layer asks for the same
(`release_buffers`) when the connection has gone quiet (`_reclaim`).

*Pending plaintext.*  Application data written during the handshake, or
while a write is blocked as above, waits in a queue.  Its size is reported
by `send` against ``send_buffer_limit`` so the caller can apply
backpressure (pause its producer) instead of letting the queue grow.

*Shutdown.*  `close` sends close_notify once every pending byte has gone
out, and moves to LOCAL_CLOSED; reading continues until the peer's
close_notify (`Event.PEER_CLOSED`).  A peer's close_notify first moves us to
PEER_CLOSED, where we may still send (half-close) until we `close` too.
An end of the transport without close_notify (`receive_eof`) surfaces as
`TLSTruncationError`, never as a clean close: it may be a truncation attack.

*Renegotiation.*  A server engine refuses client-initiated renegotiation
(``OP_NO_RENEGOTIATION``) unless told otherwise: it buys nothing in TLS 1.2
and costs the server CPU on the peer's command.  A client engine follows a server-initiated
TLS 1.2 renegotiation transparently.  TLS 1.3 has no renegotiation; its
KeyUpdate messages (from either side) are handled inside ``recv`` by
OpenSSL, whose replies the pump drains like anything else.

*Failure.*  Any OpenSSL error moves the engine to FAILED and is raised as
one precise `TLSConnectionError` subclass (see `_errors.classify`); the
alert OpenSSL produced is still in the outgoing BIO for `data_to_send`.

*Callbacks.*  OpenSSL runs Python callbacks inside a handshake step
(servername, ALPN, verification, info, key log).  Whatever one of them
raises, however pyOpenSSL reports it (see `_callbacks`), fails the
handshake exactly once as `TLSCallbackError`, which carries the original
exception.  A callback may also abandon the connection (Twisted's SNI
callback calls ``abortConnection`` when its lookup raises): `abort` during
a handshake step is carried out when the step returns, since OpenSSL is
still in the middle of it.
"""

from __future__ import annotations

import enum
from typing import Final

from OpenSSL import SSL
from OpenSSL._util import ffi as _openssl_ffi
from OpenSSL._util import lib as _openssl_lib

from ._callbacks import Capture
from ._errors import TLSCallbackError, TLSConnectionError, TLSStateError, classify
from ._record_io import record_io
from ._state import CAN_SEND, TLSState, check_transition

__all__ = ["DEFAULT_SEND_BUFFER_LIMIT", "Event", "TLSEngine"]

#: Default high-water mark for plaintext queued inside the engine (written
#: during the handshake or while a write waits on a read).  Matches the
#: order of a socket send buffer: enough for a burst, small enough that
#: thousands of stalled connections stay cheap.
DEFAULT_SEND_BUFFER_LIMIT: Final = 256 * 1024


class Event(enum.Enum):
    """What `TLSEngine.next_event` reports besides plaintext bytes."""

    #: Nothing more can be done until more ciphertext arrives.
    NEED_DATA = "need-data"
    #: The handshake just completed; the next events may carry data.
    HANDSHAKE_COMPLETE = "handshake-complete"
    #: The peer sent close_notify: it will send no more application data.
    PEER_CLOSED = "peer-closed"

    __hash__ = object.__hash__  # see TLSState.__hash__


class TLSEngine:
    """
    Drive one memory-BIO ``SSL.Connection`` without doing any I/O.

    The connection must have been created with ``SSL.Connection(ctx, None)``
    and put in connect (client) or accept (server) state by the caller.
    """

    __slots__ = (
        "_abort_requested",
        "_conn",
        "_error",
        "_frame_left",
        "_framing",
        "_head_is_retry",
        "_header_part",
        "_in_handshake",
        "_io",
        "_pending",
        "_pending_size",
        "_records",
        "_release_due",
        "_saw_eof",
        "_state",
        "send_buffer_limit",
    )

    def __init__(
        self,
        connection: SSL.Connection,
        *,
        server_side: bool,
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        direct_io: bool = True,
        refuse_renegotiation: bool = True,
    ) -> None:
        if send_buffer_limit <= 0:
            raise ValueError(f"send_buffer_limit must be positive, not {send_buffer_limit}")
        self._conn = connection
        self._io = record_io(connection, direct=direct_io)
        self._state = TLSState.HANDSHAKING
        # A list, not a deque: it is nearly always empty, and an empty deque
        # costs ten times the memory of an empty list on every connection.
        self._pending: list[bytes | memoryview] = []
        self._pending_size = 0
        # The first pending chunk is a write OpenSSL refused (WantRead).
        self._head_is_retry = False
        self._saw_eof = False
        self._error: TLSConnectionError | None = None
        # Record framing of the incoming stream (see `_count_records`).
        self._framing = True
        self._records = 0
        self._frame_left = 0
        self._header_part = b""
        # The handshake grew both BIOs; their memory goes back once its
        # last flight has been drained (see `data_to_send`).
        self._release_due = False
        # A handshake step is running (callbacks may call `abort`), and one
        # of them asked for it.
        self._in_handshake = False
        self._abort_requested = False
        self.send_buffer_limit = send_buffer_limit
        if server_side and refuse_renegotiation and not _refuses_renegotiation(connection):
            connection.set_options(SSL.OP_NO_RENEGOTIATION)

    # -- what callers may look at ------------------------------------------

    @property
    def state(self) -> TLSState:
        return self._state

    @property
    def connection(self) -> SSL.Connection:
        """The pyOpenSSL connection, for inspection (certificates, ALPN...)."""
        return self._conn

    @property
    def buffered(self) -> int:
        """Bytes of plaintext accepted by `send` but not yet encrypted."""
        return self._pending_size

    @property
    def error(self) -> TLSConnectionError | None:
        """
        The failure that ended the session, if any: the one that moved the
        engine to FAILED, or one that came after a callback abandoned it.
        """
        return self._error

    # -- input -------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """
        Take ciphertext from the peer.  Call `next_event` to process it.

        Data arriving once nothing more can be read (the peer closed, or we
        failed or closed) is discarded, so a peer cannot grow our buffers
        by talking past the end of the session.
        """
        if data and self._state in _READABLE:
            self._io.feed(data)
            if self._framing:
                self._count_records(data)

    def receive_eof(self) -> None:
        """The transport has no more input: the peer closed its side."""
        if self._state in _READABLE and not self._saw_eof:
            self._saw_eof = True
            self._conn.bio_shutdown()

    def send(self, data: bytes | memoryview) -> bool:
        """
        Encrypt application data (or queue it until it can be).

        @return: False when the queued plaintext reached
            ``send_buffer_limit``: the caller should stop writing (pause its
            producer) until `buffered` drops.
        @raise TLSStateError: we already sent close_notify, or the
            connection closed or failed.
        """
        state = self._state
        if state not in CAN_SEND:
            raise TLSStateError(f"cannot send application data in state {state.value}")
        if not data:
            # SSL_write of nothing is an error in OpenSSL, and means nothing.
            pass
        elif state is TLSState.HANDSHAKING or self._pending:
            self._pending.append(data)
            self._pending_size += len(data)
        else:
            self._write(data)
        return self._pending_size < self.send_buffer_limit

    def close(self) -> None:
        """
        Start an orderly shutdown: close_notify goes out after any queued
        plaintext.  During the handshake there is nothing orderly to do, so
        the session is abandoned instead.  Closing again does nothing.
        """
        state = self._state
        if state is TLSState.HANDSHAKING:
            self.abort()
        elif state is TLSState.OPEN:
            self._set_state(TLSState.LOCAL_CLOSED)
            if not self._pending:
                self._send_close_notify()
        elif state is TLSState.PEER_CLOSED:
            # Nothing can unblock a waiting write once the peer has stopped
            # talking, so whatever still waits goes now or never.
            self._flush_pending()
            self._set_state(TLSState.CLOSED)
            self._send_close_notify()

    def abort(self) -> None:
        """
        Abandon the session at once: no close_notify, queues dropped.
        From a callback inside a handshake step, this happens when the
        step returns.
        """
        if self._in_handshake:
            self._abort_requested = True
        elif self._state not in _TERMINAL:
            self._abandon()

    # -- output ------------------------------------------------------------

    def next_event(self) -> bytes | Event:
        """
        Advance the session with the ciphertext received so far.

        @return: decrypted application data (never empty), or an `Event`.
        @raise TLSConnectionError: the session failed; send `data_to_send`
            (it holds the alert) and close the transport.
        @raise TLSStateError: the engine already failed.
        """
        state = self._state
        if state is TLSState.OPEN or state is TLSState.LOCAL_CLOSED:
            if self._records or not self._framing or self._saw_eof:
                try:
                    data = self._io.read()
                except SSL.ZeroReturnError:
                    if self._state is not state:
                        # A callback abandoned the session meanwhile.
                        return Event.NEED_DATA
                    self._set_state(
                        TLSState.CLOSED if state is TLSState.LOCAL_CLOSED else TLSState.PEER_CLOSED
                    )
                    return Event.PEER_CLOSED
                except SSL.Error as e:
                    raise self._fail(e) from e
                except Exception as e:
                    # A callback of a renegotiation, raised again by pyOpenSSL.
                    raise self._callback_failed(e) from e
                if data is not None:
                    if self._records:
                        self._records -= 1
                    return data
                self._records = 0
            # A read that made progress may have finished a renegotiation
            # that a queued write was waiting for.
            if self._pending:
                self._flush_pending()
            return Event.NEED_DATA
        if state is TLSState.HANDSHAKING:
            return self._handshake_step()
        if state is TLSState.FAILED:
            raise TLSStateError("the TLS session already failed") from self._error
        return Event.NEED_DATA

    def data_to_send(self) -> bytes:
        """
        Drain the outgoing BIO completely and return its ciphertext.

        This is the one pump: every other method only queues work.
        """
        out = self._io.drain()
        if self._release_due:
            # Retried on later drains while the peer's next record is
            # still arriving (the incoming BIO is not empty).
            self._release_due = not self.release_buffers()
        return out

    def release_buffers(self) -> bool:
        """
        Give back the memory the BIOs grew to (the handshake, a burst of
        traffic) if nothing is waiting in them; True if that was done.
        Idle connections call for it; a busy one would only grow them again.
        """
        if self._state is not TLSState.OPEN or self._saw_eof:
            return False
        return self._io.release_buffers()

    # -- internals ---------------------------------------------------------

    def _count_records(self, data: bytes) -> None:
        """
        Keep an upper bound on the complete records waiting in the incoming
        BIO, so that `next_event` can skip the ``recv`` that would only
        raise WantReadError.

        Every ``recv`` that returns data consumes at least one record (one
        record holds at most the 16 KiB a ``recv`` asks for), and a
        WantReadError proves none is left, so the bound never drops below
        the truth.  Anything that does not look like a TLS record header
        turns the shortcut off for good; OpenSSL will judge those bytes.
        """
        if self._header_part:
            data = self._header_part + data
            self._header_part = b""
        size = len(data)
        pos = self._frame_left
        records = self._records
        if pos:
            if pos > size:
                self._frame_left = pos - size
                return
            records += 1
        while pos + 5 <= size:
            if not 20 <= data[pos] <= 24 or data[pos + 1] != 3:
                self._framing = False
                return
            pos += 5 + ((data[pos + 3] << 8) | data[pos + 4])
            if pos <= size:
                records += 1
        if pos > size:
            self._frame_left = pos - size
        else:
            self._frame_left = 0
            if pos < size:
                self._header_part = data[pos:]
        self._records = records

    def _handshake_step(self) -> Event:
        """
        Run the handshake as far as the ciphertext received allows, with
        what callbacks raise or ask for (`abort`) dealt with afterwards.
        """
        complete = False
        failure: SSL.Error | None = None
        self._in_handshake = True
        with Capture() as captured:
            try:
                self._conn.do_handshake()
                complete = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                failure = e
            except Exception as e:
                # pyOpenSSL raises again what verification or ALPN raised.
                captured.errors.append(e)
            finally:
                self._in_handshake = False
        if captured.errors:
            self._abort_requested = False
            raise self._callback_failed(captured.errors[0])
        if self._abort_requested:
            self._abort_requested = False
            self._abandon()
            return Event.NEED_DATA
        if failure is not None:
            raise self._fail(failure)
        if not complete:
            return Event.NEED_DATA
        self._set_state(TLSState.OPEN)
        self._release_due = self._io.can_release
        if self._pending:
            self._flush_pending()
        return Event.HANDSHAKE_COMPLETE

    def _set_state(self, new: TLSState) -> None:
        self._state = check_transition(self._state, new)

    def _write(self, data: bytes | memoryview) -> bool:
        """
        Encrypt C{data}; whatever a WantRead leaves unsent goes back to the
        head of the queue.  Return True if everything was written.
        """
        try:
            written = self._io.write(data)
        except SSL.Error as e:
            raise self._fail(e) from e
        except Exception as e:
            # A callback of a renegotiation, raised again by pyOpenSSL.
            raise self._callback_failed(e) from e
        if written == len(data):
            return True
        rest = memoryview(data)[written:] if written else data
        self._pending.insert(0, rest)
        self._pending_size += len(rest)
        self._head_is_retry = True
        return False

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            if self._head_is_retry:
                # OpenSSL wants a write it refused retried with the same
                # bytes: that one goes alone, before anything is joined.
                self._head_is_retry = False
            elif len(pending) > 1:
                # Many small writes queued during the handshake: one
                # buffer makes full records instead of many tiny ones.
                joined = b"".join(pending)
                pending.clear()
                pending.append(joined)
            chunk = pending.pop(0)
            self._pending_size -= len(chunk)
            if not self._write(chunk):
                return
        if self._state is TLSState.LOCAL_CLOSED:
            self._send_close_notify()

    def _send_close_notify(self) -> None:
        if self._conn.get_shutdown() & SSL.SENT_SHUTDOWN:
            return
        try:
            self._conn.shutdown()
        except SSL.Error as e:
            raise self._fail(e) from e

    def _abandon(self) -> None:
        self._head_is_retry = False
        self._pending.clear()
        self._pending_size = 0
        self._set_state(TLSState.CLOSED)

    def _fail(self, error: SSL.Error) -> TLSConnectionError:
        handshaking = self._state is TLSState.HANDSHAKING
        self._pending.clear()
        self._pending_size = 0
        converted = classify(
            error, handshaking=handshaking, saw_eof=self._saw_eof, detail=self._verify_detail()
        )
        return self._failed(converted)

    def _callback_failed(self, error: BaseException) -> TLSConnectionError:
        self._pending.clear()
        self._pending_size = 0
        return self._failed(TLSCallbackError(error))

    def _failed(self, error: TLSConnectionError) -> TLSConnectionError:
        """
        Move to FAILED with C{error}, once.  A session a callback abandoned
        during the very call that failed stays abandoned (CLOSED).
        """
        if self._state not in _TERMINAL:
            self._set_state(TLSState.FAILED)
        if self._error is None:
            self._error = error
        return error

    def _verify_detail(self) -> str | None:
        """
        Why certificate verification failed, in OpenSSL's words ("unable
        to get local issuer certificate"), or None if it did not.

        pyOpenSSL has no public call for the verify result; its binding has
        the functions, reached through the connection's private handle.
        """
        get_result = getattr(_openssl_lib, "SSL_get_verify_result", None)
        describe_code = getattr(_openssl_lib, "X509_verify_cert_error_string", None)
        handle = getattr(self._conn, "_ssl", None)
        if get_result is None or describe_code is None or handle is None:
            return None
        code = get_result(handle)
        if code == 0:
            return None
        return str(_openssl_ffi.string(describe_code(code)).decode("ascii", "replace"))


_SSL_get_options = getattr(_openssl_lib, "SSL_get_options", None)


def _refuses_renegotiation(connection: SSL.Connection) -> bool:
    """
    Whether the connection already has ``OP_NO_RENEGOTIATION`` (our hardened
    contexts set it once for all their connections): reading the options is
    one C call, setting them through pyOpenSSL a Python call per connection.
    """
    handle = getattr(connection, "_ssl", None)
    if _SSL_get_options is None or handle is None:
        return False
    return bool(_SSL_get_options(handle) & SSL.OP_NO_RENEGOTIATION)


_TERMINAL: Final = frozenset({TLSState.CLOSED, TLSState.FAILED})

#: States in which ciphertext from the peer can still mean something.
_READABLE: Final = frozenset({TLSState.HANDSHAKING, TLSState.OPEN, TLSState.LOCAL_CLOSED})
