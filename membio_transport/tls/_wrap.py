"""
Putting TLS around things: endpoints, and connections already open.

`wrapClientTLS` / `wrapServerTLS` mirror Twisted's
``twisted.internet.endpoints.wrapClientTLS`` (which has no server twin) but
use our transport.  `startTLS` upgrades a connected plaintext protocol in
place, as STARTTLS in IRC, SMTP or LDAP does, without losing the bytes
that may already sit on either side of the switch.

These are this project's own entry points, so their factories follow the
hardened policy (`_policy.HARDENED`), not Twisted's defaults.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory
from zope.interface import implementer

from ._factory import MemoryBIOTLSFactory
from ._policy import HARDENED
from ._protocol import MemoryBIOTLSProtocol

__all__ = ["startTLS", "wrapClientTLS", "wrapServerTLS"]


@implementer(IStreamClientEndpoint)
class _TLSClientEndpoint:
    def __init__(self, creator: object, wrapped: IStreamClientEndpoint, clock: Any) -> None:
        self._creator = creator
        self._wrapped = wrapped
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        factory = MemoryBIOTLSFactory(
            self._creator, True, protocolFactory, self._clock, **HARDENED.keywords()
        )
        d = self._wrapped.connect(factory)

        def unwrap(tls: Any) -> IProtocol:
            # Like Twisted's wrapClientTLS: callers get their own protocol.
            wrapped: IProtocol = tls.wrappedProtocol
            return wrapped

        return d.addCallback(unwrap)


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    def __init__(self, creator: object, wrapped: IStreamServerEndpoint, clock: Any) -> None:
        self._creator = creator
        self._wrapped = wrapped
        self._clock = clock

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        factory = MemoryBIOTLSFactory(
            self._creator, False, protocolFactory, self._clock, **HARDENED.keywords()
        )
        return self._wrapped.listen(factory)


def wrapClientTLS(
    connectionCreator: object,
    wrappedEndpoint: IStreamClientEndpoint,
    clock: IReactorTime | None = None,
) -> IStreamClientEndpoint:
    """
    A client endpoint that speaks TLS over C{wrappedEndpoint}.

    @param connectionCreator: usually ``optionsForClientTLS(hostname)``,
        which verifies the server's name with service_identity.
    """
    return _TLSClientEndpoint(connectionCreator, wrappedEndpoint, clock)


def wrapServerTLS(
    contextFactory: object,
    wrappedEndpoint: IStreamServerEndpoint,
    clock: IReactorTime | None = None,
) -> IStreamServerEndpoint:
    """A server endpoint whose connections speak TLS over C{wrappedEndpoint}'s."""
    return _TLSServerEndpoint(contextFactory, wrappedEndpoint, clock)


def startTLS(
    protocol: IProtocol,
    contextFactory: object,
    isClient: bool,
    *,
    received: bytes = b"",
    clock: IReactorTime | None = None,
    **factory_options: Any,
) -> MemoryBIOTLSProtocol:
    """
    Switch a connected protocol to TLS, in place.

    Everything the protocol wrote before this call goes out in plaintext
    first; everything it writes afterwards is encrypted.  Its transport is
    replaced by the TLS transport; ``connectionMade`` is not called again,
    and ``handshakeCompleted`` is, if the protocol listens for it.

    @param protocol: a connected protocol.  Its transport must deliver
        through a ``protocol`` attribute, as Twisted's TCP, UNIX and
        in-memory transports do (to it, or to a wrapper in front of it).
    @param received: bytes the protocol already read past its STARTTLS
        command (for a ``LineReceiver``, what ``clearLineBuffer()``
        returns): they are the start of the peer's TLS stream.
    @param factory_options: keywords for `MemoryBIOTLSFactory`, over the
        hardened policy this starts from (``handshake_timeout=None``...).
    @return: the TLS transport now under C{protocol}.
    """
    transport: Any = getattr(protocol, "transport", None)
    # What the transport delivers to: the protocol itself, or a wrapper in
    # front of it (an endpoint's, say) that forwards to it.  TLS goes
    # between the transport and that receiver, so the chain stays intact.
    receiver: Any = getattr(transport, "protocol", None)
    if transport is None or receiver is None:
        raise ValueError(
            "startTLS needs a connected protocol whose transport delivers through a "
            "'protocol' attribute, as Twisted's TCP, UNIX and in-memory transports do"
        )
    factory = MemoryBIOTLSFactory(
        contextFactory,
        isClient,
        _ExistingProtocolFactory(protocol),
        clock,
        **{**HARDENED.keywords(), **factory_options},
    )
    tls = factory.protocol(factory, receiver, _connectWrapped=False)
    transport.protocol = tls
    protocol.transport = tls  # type: ignore[attr-defined]  # every Protocol has one
    if receiver is not protocol and getattr(receiver, "transport", None) is transport:
        receiver.transport = tls
    tls.makeConnection(transport)
    if received:
        tls.dataReceived(received)
    return tls


class _ExistingProtocolFactory(Factory):
    """The factory behind a `startTLS` switch: its one protocol exists."""

    def __init__(self, protocol: IProtocol) -> None:
        self._existing = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._existing
