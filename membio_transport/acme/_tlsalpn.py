"""tls-alpn-01 on the TLS port itself: the ALPN hook, and the gate that keeps the app out.

A CA validating ``example.org`` by tls-alpn-01 (RFC 8737) connects to port 443, sends
SNI ``example.org`` and offers exactly one ALPN protocol, ``acme-tls/1``.  OpenSSL asks
the server's ALPN select callback after the SNI callback has run and before it commits to
a certificate, so the callback can still swap the connection's certificate and key
(``SSL_use_certificate`` on the connection, the way Apache's mod_md does it) and select
``acme-tls/1``.  Everyone else offers other protocols and gets the normal choice.

`TLSALPNResponder.select` is that first step; ``install`` puts it in front of an ALPN
preference list on any ``SSL.Context``.  It must be installed on every context a
connection can end up on: an SNI switch (``Connection.set_context``) happens before ALPN,
and OpenSSL then calls the new context's ALPN callback.

RFC 8737 section 3: after a handshake on ``acme-tls/1`` no application data flows, and
the application must not see such a connection.  `ChallengeGate` wraps the application's
factory under the TLS layer: it connects the application only once the handshake is done
and the protocol is not ``acme-tls/1``, and closes challenge connections itself
(`is_challenge_connection` is the same test, for a serving layer that gates elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ITransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import alsoProvides, directlyProvides, implementer, providedBy

from ._board import ChallengeBoard
from ._challengecert import ACME_TLS_ALPN_PROTOCOL

__all__ = [
    "ChallengeGate",
    "TLSALPNResponder",
    "is_challenge_connection",
]

_log = Logger(namespace="membio_transport.acme")

ALPNSelect = Callable[[SSL.Connection, list[bytes]], Any]


class TLSALPNResponder:
    """Answers tls-alpn-01 validations for the names the board has challenges for.

    @ivar answered: how many validation handshakes got a challenge certificate.
    """

    def __init__(self, board: ChallengeBoard) -> None:
        self.board = board
        self.answered = 0

    def select(self, connection: SSL.Connection, offered: Sequence[bytes]) -> bytes | None:
        """``acme-tls/1`` after switching to the challenge certificate, or None.

        None means "not a validation for a pending challenge": choose among the normal
        protocols.  Cheap for ordinary clients: one membership test.
        """
        if ACME_TLS_ALPN_PROTOCOL not in offered:
            return None
        raw = connection.get_servername()
        if not raw:
            return None
        challenge = self.board.tls_alpn_certificate(raw.decode("ascii", "replace"))
        if challenge is None:
            return None
        connection.use_certificate(challenge.certificate)
        connection.use_privatekey(challenge.key)
        self.answered += 1
        _log.info(
            "ACME: served the tls-alpn-01 challenge certificate for {name} (the CA is "
            "validating)", name=challenge.name,
        )  # fmt: skip
        return ACME_TLS_ALPN_PROTOCOL

    def alpn_callback(self, protocols: Sequence[bytes] = ()) -> ALPNSelect:
        """An ALPN select callback: challenges first, then ``protocols`` in preference order.

        With no ``protocols`` an ordinary client gets no ALPN at all, as on a context
        without ALPN.
        """
        preference = [p for p in protocols if p != ACME_TLS_ALPN_PROTOCOL]

        def select(connection: SSL.Connection, offered: list[bytes]) -> Any:
            chosen = self.select(connection, offered)
            if chosen is not None:
                return chosen
            for candidate in preference:
                if candidate in offered:
                    return candidate
            return SSL.NO_OVERLAPPING_PROTOCOLS

        return select

    def install(self, context: SSL.Context, protocols: Sequence[bytes] = ()) -> None:
        """Make ``context`` answer challenges, keeping ``protocols`` for everyone else.

        This replaces the context's ALPN callback (pyOpenSSL cannot chain to the old
        one), so pass the same preference list the context was built with.
        """
        context.set_alpn_select_callback(self.alpn_callback(protocols))


def is_challenge_connection(transport: object) -> bool:
    """Whether a TLS transport's handshake negotiated ``acme-tls/1`` (close it at once)."""
    return getattr(transport, "negotiatedProtocol", None) == ACME_TLS_ALPN_PROTOCOL


@implementer(IHandshakeListener)
class _GateProtocol(ProtocolWrapper):
    """Holds the application back until the handshake shows what the connection is.

    The application's protocol is built then too, so a factory that counts or limits
    connections never hears of a challenge connection.
    """

    factory: ChallengeGate
    _app_connected = False
    _closed = False

    def __init__(self, factory: ChallengeGate, address: Any) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._address = address

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "ChallengeGate"
        return super().logPrefix()  # type: ignore[no-untyped-call,no-any-return]

    def makeConnection(self, transport: ITransport) -> None:
        # ProtocolWrapper.makeConnection minus connecting the application, and minus the
        # transport's own IHalfCloseableProtocol: the TLS layer asks whether *we* can
        # take a half-close, which depends on the application (_connect_application).
        directlyProvides(
            self, *(i for i in providedBy(transport) if i is not IHalfCloseableProtocol)
        )
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]

    def handshakeCompleted(self) -> None:
        if is_challenge_connection(self.transport):
            self.factory.challenges_closed += 1
            self._closed = True
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self._connect_application()
        wrapped = self.wrappedProtocol
        if IHandshakeListener.providedBy(wrapped):
            wrapped.handshakeCompleted()

    def _connect_application(self) -> None:
        if self._app_connected or self._closed:
            return
        application = self.factory.wrappedFactory.buildProtocol(self._address)
        if application is None:  # the factory refuses the connection
            self._closed = True
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.wrappedProtocol = application
        self._app_connected = True
        if IHalfCloseableProtocol.providedBy(self.wrappedProtocol):
            alsoProvides(self, IHalfCloseableProtocol)
        # The wrapper is the application's transport (ProtocolWrapper relays ITransport).
        self.wrappedProtocol.makeConnection(self)  # type: ignore[arg-type]

    def dataReceived(self, data: bytes) -> None:
        # Data before handshakeCompleted cannot come from a challenge connection (the CA
        # sends none), so it belongs to an application connection.
        self._connect_application()
        if self._app_connected:
            self.wrappedProtocol.dataReceived(data)

    def readConnectionLost(self) -> None:
        if self._app_connected:
            self.wrappedProtocol.readConnectionLost()  # type: ignore[attr-defined]

    def writeConnectionLost(self) -> None:
        if self._app_connected:
            self.wrappedProtocol.writeConnectionLost()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]
        if self._app_connected:
            self.wrappedProtocol.connectionLost(reason)  # type: ignore[arg-type]


class ChallengeGate(WrappingFactory):
    """Wraps an application factory, under the TLS factory, so that connections that
    negotiated ``acme-tls/1`` are closed after the handshake and never reach it.

    The application's ``connectionMade`` moves from TCP accept to handshake completion;
    connections whose handshake fails never reach it at all.

    @ivar challenges_closed: how many challenge connections were closed.
    """

    protocol = _GateProtocol

    def __init__(self, wrappedFactory: Any) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        self.challenges_closed = 0

    def buildProtocol(self, addr: Any) -> _GateProtocol:
        # The application's protocol waits for the handshake (_connect_application).
        return _GateProtocol(self, addr)
