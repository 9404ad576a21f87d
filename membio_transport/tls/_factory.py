"""
`MemoryBIOTLSFactory`: the drop-in for Twisted's ``TLSMemoryBIOFactory``.

Same constructor, same accepted context factories (with the same warning
and errors for legacy and broken ones), same wrapping behaviour; code
written for Twisted's class works when handed this one.  Its policy
keywords default to Twisted's behaviour (`_policy.TWISTED`); the
project's own entry points pass `_policy.HARDENED`.  The factory also
holds what is shared by all its connections: how to make an
``SSL.Connection``, the clock, and the limits and timeouts.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from OpenSSL import SSL
from twisted.internet.interfaces import (
    ILoggingContext,
    IOpenSSLClientConnectionCreator,
    IOpenSSLContextFactory,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
)
from twisted.protocols.policies import WrappingFactory
from zope.interface import classImplements, directlyProvides
from zope.interface.declarations import Declaration

from ._aggregate import TurnFlush
from ._policy import TWISTED, FactoryPolicy, PlainHTTPPolicy
from ._protocol import MemoryBIOTLSProtocol
from ._reclaim import BufferReclaimer
from ._stats import TLSStats
from ._timers import Deadline, HandshakeDeadlines

if TYPE_CHECKING:
    ConnectionFor = Callable[[MemoryBIOTLSProtocol], SSL.Connection]

#: The category Twisted's own factory warns with about a context factory
#: that declares no interface, so that filters set for it apply to ours.
_LEGACY_WARNING: type[Warning]
try:
    from twisted.protocols._tls_legacy import LegacyContextFactoryWarning as _LEGACY_WARNING
except ImportError:  # older Twisted: its factory had no such category
    _LEGACY_WARNING = DeprecationWarning

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "MemoryBIOTLSFactory",
    "connection_creator",
]

#: Seconds `loseConnection` waits for the peer's close_notify before
#: closing anyway.  Long enough for a reply over a slow link, short enough
#: that a peer which never answers does not pin the connection (Twisted
#: waits forever: twisted#7926).
DEFAULT_CLOSE_TIMEOUT: Final = 5.0

def connection_creator(is_client: bool, context_factory: object) -> ConnectionFor:
    """
    Turn any of the context factories Twisted accepts into a function
    making a memory-BIO ``SSL.Connection`` for one protocol.

    In order of preference: an ``IOpenSSL{Client,Server}ConnectionCreator``
    (``optionsForClientTLS(...)``, ``CertificateOptions``), then an
    ``IOpenSSLContextFactory``, then, with a warning, any object whose
    ``getContext()`` returns a ``Context``, as with Twisted's factory.

    @raise TypeError: C{context_factory} is none of these.
    """
    make: Callable[[Any], SSL.Connection]
    creator: Any = context_factory
    if is_client and IOpenSSLClientConnectionCreator.providedBy(creator):
        make = cast("Callable[[Any], SSL.Connection]", creator.clientConnectionForTLS)
    elif not is_client and IOpenSSLServerConnectionCreator.providedBy(creator):
        make = cast("Callable[[Any], SSL.Connection]", creator.serverConnectionForTLS)
    else:
        if not IOpenSSLContextFactory.providedBy(creator):
            _check_undeclared(is_client, creator)
        get_context: Callable[[], SSL.Context] = creator.getContext

        def make(protocol: Any) -> SSL.Connection:
            return SSL.Connection(get_context(), None)

    def create(protocol: MemoryBIOTLSProtocol) -> SSL.Connection:
        connection = make(protocol)
        if is_client:
            connection.set_connect_state()
        else:
            connection.set_accept_state()
        # Twisted's verification and SNI callbacks find the protocol here.
        connection.set_app_data(protocol)
        return connection

    return create


#: Frames between `_check_undeclared`'s warning and the code that built the
#: factory: _check_undeclared, connection_creator, MemoryBIOTLSFactory.__init__.
_WARNING_STACKLEVEL: Final = 4


def _check_undeclared(is_client: bool, creator: object) -> None:
    """
    Accept an object that declares no TLS interface, the way Twisted's
    factory does: warn (the same words and category), and try its
    ``getContext()`` now, so that ``listenSSL``/``connectSSL`` raise its
    error at once rather than at the first connection.

    @raise TypeError: there is no ``getContext``, or it returns no
        ``Context``; the messages are Twisted's.
    """
    side = "Client" if is_client else "Server"
    warnings.warn(
        f"{creator} does not explicitly provide any OpenSSL connection-creator "
        f"{side} interface; neither IOpenSSL{side}ConnectionCreator, nor "
        "IOpenSSLContextFactory.",
        _LEGACY_WARNING,
        stacklevel=_WARNING_STACKLEVEL,
    )
    get_context = getattr(creator, "getContext", None)
    if get_context is None:
        raise TypeError(f"{creator} does not even have a `getContext` method")
    if not isinstance(get_context(), SSL.Context):
        raise TypeError(f"{creator}'s `getContext` method doesn't return a `Context`")


class _Default(enum.Enum):
    """A keyword left out: the creator's declared policy, else Twisted's."""

    TOKEN = enum.auto()


_DEFAULT: Final = _Default.TOKEN


def policy_of(context_factory: object) -> FactoryPolicy:
    """
    The policy a connection creator asks for (`ServerTLSOptions` asks for
    `HARDENED`), or Twisted's behaviour.
    """
    declared = getattr(context_factory, "factory_policy", None)
    return declared if isinstance(declared, FactoryPolicy) else TWISTED


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
    @param close_timeout: seconds `loseConnection` waits for the peer's
        close_notify before closing the transport anyway.
    @param idle_timeout: seconds without a byte in either direction after
        which an established connection is closed (with close_notify), or
        None (the default) to leave idle connections alone.
    @param stats: counters to update; share one between factories to
        count them together.  Read them from ``factory.stats``.

    The policy keywords below default to Twisted's behaviour, or to the
    policy C{contextFactory} declares (`ServerTLSOptions` declares
    `HARDENED`); ``**HARDENED.keywords()`` asks for ours explicitly.

    @param handshake_timeout: seconds before a handshake that has not
        finished is aborted, or None for no limit.
    @param plain_http: what a server does when a client speaks plain HTTP
        to it: ``"explain"`` (an HTTP 400 naming the https:// URL),
        ``"redirect"`` (a 301 there), ``"close"``, or None to hand every
        byte to OpenSSL as Twisted's layer does.
    @param refuse_renegotiation: a server refuses client-initiated
        renegotiation.
    @param log_handshake_failures: log one line per failed handshake.
    @param send_buffer_limit: plaintext bytes held back (during the
        handshake, or while a write waits for a renegotiation) at which
        registered producers are paused.
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
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
        idle_timeout: float | None = None,
        stats: TLSStats | None = None,
        handshake_timeout: float | Literal[_Default.TOKEN] | None = _DEFAULT,
        plain_http: PlainHTTPPolicy | Literal[_Default.TOKEN] | None = _DEFAULT,
        refuse_renegotiation: bool | Literal[_Default.TOKEN] = _DEFAULT,
        log_handshake_failures: bool | Literal[_Default.TOKEN] = _DEFAULT,
        send_buffer_limit: int | Literal[_Default.TOKEN] = _DEFAULT,
    ) -> None:
        super().__init__(wrappedFactory)  # type: ignore[no-untyped-call]
        policy = policy_of(contextFactory)
        if plain_http is _DEFAULT:
            plain_http = policy.plain_http
        if plain_http not in (None, "explain", "redirect", "close"):
            raise ValueError(f"plain_http must be explain, redirect, close or None: {plain_http!r}")
        self.isClient = bool(isClient)
        self.connection_for = connection_creator(self.isClient, contextFactory)
        self._clock = clock
        self._clock_given = clock is not None
        self.handshake_timeout: float | None = (
            policy.handshake_timeout if handshake_timeout is _DEFAULT else handshake_timeout
        )
        self.close_timeout = close_timeout
        self.send_buffer_limit: int = (
            policy.send_buffer_limit if send_buffer_limit is _DEFAULT else send_buffer_limit
        )
        self.idle_timeout = idle_timeout
        self.plain_http: PlainHTTPPolicy | None = plain_http
        self.refuse_renegotiation: bool = (
            policy.refuse_renegotiation
            if refuse_renegotiation is _DEFAULT
            else refuse_renegotiation
        )
        self.log_handshake_failures: bool = (
            policy.log_handshake_failures
            if log_handshake_failures is _DEFAULT
            else log_handshake_failures
        )
        self.stats = stats if stats is not None else TLSStats()
        self._reclaimer: BufferReclaimer | None = None
        self._turn_flush: TurnFlush | None = None
        self._deadlines: HandshakeDeadlines | None = None

    @property
    def clock(self) -> IReactorTime:
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    @property
    def schedules_timers(self) -> bool:
        """
        Whether the close timeout and the memory sweeper may set timers:
        with a clock given, or once a port or a connector has started the
        factory.  A factory built and driven by hand (a test over a
        ``StringTransport``, ``reactor.startTLS``) leaves nothing of ours
        pending on the global reactor, just as Twisted's leaves nothing;
        trial would report it as a dirty reactor.
        """
        return self._clock_given or self.numPorts > 0

    @property
    def reclaimer(self) -> BufferReclaimer:
        """Gives back what bursts of traffic grew in quiet connections."""
        if self._reclaimer is None:
            self._reclaimer = BufferReclaimer(self.clock)
        return self._reclaimer

    def burst(self, protocol: MemoryBIOTLSProtocol) -> None:
        """C{protocol} moved a burst: release its buffers once it is quiet."""
        if self.schedules_timers:
            self.reclaimer.burst(protocol)

    def handshake_deadline(self, protocol: MemoryBIOTLSProtocol, timeout: float) -> Deadline:
        """Abort C{protocol}'s handshake after C{timeout} seconds; cancel() the result."""
        if self._deadlines is None:
            self._deadlines = HandshakeDeadlines(self.clock)
        return self._deadlines.add(protocol, timeout)

    def flush_next_turn(self, protocol: MemoryBIOTLSProtocol) -> None:
        """C{protocol} wrote outside a callback: flush it at the next reactor turn."""
        if self._turn_flush is None:
            self._turn_flush = TurnFlush(self.clock)
        self._turn_flush.add(protocol)

    def no_flush_next_turn(self, protocol: MemoryBIOTLSProtocol) -> None:
        """C{protocol} is gone before that flush."""
        if self._turn_flush is not None:
            self._turn_flush.discard(protocol)

    def forget(self, protocol: MemoryBIOTLSProtocol) -> None:
        """C{protocol} is gone."""
        if self._reclaimer is not None:
            self._reclaimer.forget(protocol)

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
