"""
`MemoryBIOTLSFactory`: the drop-in for Twisted's ``TLSMemoryBIOFactory``.

Same constructor, same accepted context factories, same wrapping
behaviour; code written for Twisted's class works when handed this one.
The factory also holds what is shared by all its connections: how to make
an ``SSL.Connection``, the clock, and the limits and timeouts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, cast

from OpenSSL import SSL
from twisted.internet.interfaces import (
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.policies import WrappingFactory
from zope.interface import classImplements, directlyProvides
from zope.interface.declarations import Declaration

from ._engine import DEFAULT_SEND_BUFFER_LIMIT
from ._protocol import MemoryBIOTLSProtocol
from ._reclaim import BufferReclaimer
from ._sniff import PlainHTTPPolicy
from ._stats import TLSStats

if TYPE_CHECKING:
    ConnectionFor = Callable[[MemoryBIOTLSProtocol], SSL.Connection]

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "MemoryBIOTLSFactory",
    "connection_creator",
]

#: Seconds `loseConnection` waits for the peer's close_notify before
#: closing anyway.  Long enough for a reply over a slow link, short enough
#: that a peer which never answers does not pin the connection (Twisted
#: waits forever: twisted#7926).
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

#: Seconds a handshake may take before the connection is dropped.  Real
#: handshakes take milliseconds to a few round trips; a peer that stalls or
#: trickles its ClientHello (slowloris) must not hold a connection open.
DEFAULT_HANDSHAKE_TIMEOUT: Final = 10.0


def connection_creator(is_client: bool, context_factory: object) -> ConnectionFor:
    """
    Turn any of the context factories Twisted accepts into a function
    making a memory-BIO ``SSL.Connection`` for one protocol.

    In order of preference: an ``IOpenSSL{Client,Server}ConnectionCreator``
    (``optionsForClientTLS(...)``, ``CertificateOptions``), then an
    ``IOpenSSLContextFactory`` or anything with ``getContext()``.
    """
    make: Callable[[Any], SSL.Connection]
    creator: Any = context_factory
    if is_client and IOpenSSLClientConnectionCreator.providedBy(creator):
        make = cast("Callable[[Any], SSL.Connection]", creator.clientConnectionForTLS)
    elif not is_client and IOpenSSLServerConnectionCreator.providedBy(creator):
        make = cast("Callable[[Any], SSL.Connection]", creator.serverConnectionForTLS)
    else:
        get_context: Any = getattr(creator, "getContext", None)
        if get_context is None:
            side = "Client" if is_client else "Server"
            raise TypeError(
                f"{context_factory!r} is not a TLS context factory: expected an "
                f"IOpenSSL{side}ConnectionCreator or an object with getContext()"
            )

        def make(protocol: Any) -> SSL.Connection:
            return SSL.Connection(get_context(), None)

    set_state = SSL.Connection.set_connect_state if is_client else SSL.Connection.set_accept_state

    def create(protocol: MemoryBIOTLSProtocol) -> SSL.Connection:
        connection = make(protocol)
        set_state(connection)
        # Twisted's verification and SNI callbacks find the protocol here.
        connection.set_app_data(protocol)
        return connection

    return create


class MemoryBIOTLSFactory(WrappingFactory):
    """
    Add TLS to the connections of C{wrappedFactory}.

    @param contextFactory: for a server, an ``IOpenSSLServerConnectionCreator``
        such as ``CertificateOptions``; for a client, an
        ``IOpenSSLClientConnectionCreator`` such as ``optionsForClientTLS``
        (which verifies the host name with service_identity).  Legacy
        ``getContext()`` factories work too.
    @param isClient: True to send the ClientHello, False to answer it.
    @param wrappedFactory: makes the application protocols.
    @param clock: schedules batching and timeouts; the reactor by default.
    @param handshake_timeout: seconds before a handshake that has not
        finished is aborted, or None for no limit.
    @param close_timeout: seconds `loseConnection` waits for the peer's
        close_notify before closing the transport anyway.
    @param send_buffer_limit: plaintext bytes held before the handshake
        completes beyond which registered producers are paused.
    @param idle_timeout: seconds without a byte in either direction after
        which an established connection is closed (with close_notify), or
        None (the default) to leave idle connections alone.
    @param plain_http: what a server does when a client speaks plain HTTP
        to it: ``"explain"`` (an HTTP 400 naming the https:// URL),
        ``"redirect"`` (a 301 there), ``"close"``, or None to hand every
        byte to OpenSSL as Twisted's layer does.
    @param stats: counters to update; share one between factories to
        count them together.  Read them from ``factory.stats``.
    """

    protocol = MemoryBIOTLSProtocol
    noisy = False

    def __init__(
        self,
        contextFactory: object,
        isClient: bool,
        wrappedFactory: IProtocolFactory,
        clock: IReactorTime | None = None,
        *,
        handshake_timeout: float | None = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        send_buffer_limit: int = DEFAULT_SEND_BUFFER_LIMIT,
        idle_timeout: float | None = None,
        plain_http: PlainHTTPPolicy | None = "explain",
        stats: TLSStats | None = None,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        if plain_http not in (None, "explain", "redirect", "close"):
            raise ValueError(f"plain_http must be explain, redirect, close or None: {plain_http!r}")
        self.isClient = bool(isClient)
        self.connection_for = connection_creator(self.isClient, contextFactory)
        self._clock = clock
        self.handshake_timeout = handshake_timeout
        self.close_timeout = close_timeout
        self.send_buffer_limit = send_buffer_limit
        self.idle_timeout = idle_timeout
        self.plain_http: PlainHTTPPolicy | None = plain_http
        self.stats = stats if stats is not None else TLSStats()
        self._reclaimer: BufferReclaimer | None = None

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    @property
    def reclaimer(self) -> BufferReclaimer:
        """Gives back what bursts of traffic grew in quiet connections."""
        if self._reclaimer is None:
            self._reclaimer = BufferReclaimer(self.clock)
        return self._reclaimer

    def logPrefix(self) -> str:
        wrapped = self.wrappedFactory
        prefix = (
            wrapped.logPrefix()
            if ILoggingContext.providedBy(wrapped)
            else wrapped.__class__.__name__
        )
        return f"{prefix} (TLS)"

    def provide_transport_interfaces(
        self, protocol: MemoryBIOTLSProtocol, transport_spec: Declaration
    ) -> None:
        """
        Make C{protocol} also provide what its transport provides (a TLS
        layer over TCP is an ``ITCPTransport`` too), as Twisted's layer does.

        Twisted re-declares interfaces on every connection; here each
        (protocol class, transport interfaces) pair gets one subclass, made
        once and reused, so a connection pays only a class assignment.
        """
        key = (type(protocol), transport_spec)
        view = _VIEWS.get(key)
        if view is None:
            if len(_VIEWS) >= _MAX_VIEWS:
                # Transports that declare interfaces per instance would
                # grow the cache without bound: fall back to Twisted's way.
                directlyProvides(protocol, transport_spec)
                return
            cls = type(protocol)
            view = type(cls.__name__, (cls,), {"__module__": cls.__module__})
            classImplements(view, *tuple(transport_spec))  # type: ignore[misc]
            _VIEWS[key] = view
        protocol.__class__ = view


#: One subclass per (protocol class, transport interfaces), shared by all
#: factories.  Transports of one class declare the same interfaces, so a
#: process sees a handful of keys; the cap guards against odd transports.
_VIEWS: dict[tuple[type, Declaration], type] = {}
_MAX_VIEWS: Final = 64
