"""
How a TLS connection ends when TLS fails: counted, logged in one line,
remembered, and what the application's ``connectionLost`` then receives.

`FailureReports` is one of the pieces `MemoryBIOTLSProtocol` is made of
(see `_protocol`); its methods run on the protocol itself, and only on the
way out of a failed connection, never per record.

What the application's ``connectionLost`` receives is what Twisted's layer
hands it (`FailureReports._for_application` is the one place that
decides): pyOpenSSL's own ``SSL.Error`` for a failed handshake or a bad
record, ``ConnectionLost`` for an end without close_notify,
``ConnectionDone`` for a clean close.  The engine's precise exceptions stay
inside; their words reach the log (one line per failed handshake, if the
policy says so), and ``tls_failure_reason`` finds them again.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._addresses import format_address
from ._errors import TLSCallbackError, TLSConnectionError, TLSTruncationError

if TYPE_CHECKING:
    from ._engine import TLSEngine
    from ._factory_view import FactoryView

__all__ = ["FailureReports"]

#: One namespace for the lines about connections, whichever piece logs them.
_log = Logger(namespace="membio_transport.tls")


class FailureReports:
    """
    @ivar _reason: why the connection ended, once known: what
        ``connectionLost`` reports instead of the transport's own reason.
    @ivar _abandoned: we abandoned the session (abort, or a close before the
        handshake completed): however the transport ends, it was not a clean
        TLS end.
    """

    factory: FactoryView
    transport: Any
    disconnecting: int
    _engine: TLSEngine
    _preamble: bytes | None
    _reason: Failure | None = None
    _abandoned = False

    if TYPE_CHECKING:

        def _cancel_handshake_timer(self) -> None: ...
        def _drop_batch(self) -> None: ...
        def _flush(self) -> None: ...
        def _close_transport(self) -> None: ...
        def abortConnection(self) -> None: ...

    def _tls_failed(self, error: TLSConnectionError) -> None:
        if isinstance(error, TLSCallbackError):
            self._callback_failed(error)
            return
        _forget_tracebacks(error)
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
            **self._where(),
        )
        _forget_tracebacks(error)
        if self._reason is None:
            self._reason = Failure(ConnectionLost(error.reason))
        # Drop the alert OpenSSL may have queued: as with Twisted's layer,
        # nothing more leaves after an exception in the handshake.
        self._engine.data_to_send()
        self.abortConnection()

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
                **self._where(),
            )
        if self._reason is None:
            self._reason = Failure(error)

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

    def _where(self) -> dict[str, Any]:
        """
        The listener (our address) and the server name the client asked
        for, when known: fields of the log line for JSON logs, not words of
        the text line.  Only on the way out of a failed handshake.
        """
        where: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            where["listener"] = format_address(self.transport.getHost())
        try:
            name = self._engine.connection.get_servername()
        except Exception:
            name = None
        if name:
            where["server_name"] = name.decode("ascii", "replace")
        return where

    def _peer_text(self) -> str:
        try:
            peer = self.transport.getPeer()
        except Exception:
            return "unknown peer"
        return format_address(peer)


def _forget_tracebacks(error: BaseException) -> None:
    """
    Keep C{error} from holding its connection in a reference cycle.

    The error is kept after it was caught (the engine's ``error``, the
    protocol's ``_reason``), and a traceback holds the frames it went
    through, the protocol's own among them (through ``f_back`` even when
    only a chained pyOpenSSL exception keeps one): their ``self`` holds the
    protocol, the engine and the ``SSL`` object.  Such a cycle waits for a
    full collection of the cyclic GC; a server whose peers leave without
    close_notify by the thousand (browsers do) then pays a pause of
    hundreds of milliseconds in the middle of its traffic (issue #14:
    keep-alive p99 298 ms with the GC on, 46 ms with it off).  These
    exceptions stand for what the peer did, and their frames are ours
    only: nothing worth keeping for the application is lost, whose
    ``Failure`` still carries pyOpenSSL's exception and its OpenSSL error
    queue.  Call it once whatever needed the traceback (the log line of a
    raising callback) has used it.
    """
    seen: set[int] = set()
    chain: list[BaseException | None] = [error]
    while chain:
        link = chain.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        link.__traceback__ = None
        chain += (link.__cause__, link.__context__)
