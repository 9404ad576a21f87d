"""
`TLSServerEndpoint`: TLS around any server endpoint, the way every entry
point of this project listens (``TLSServing.wrap`` makes them).

Like ``wrapServerTLS``, it listens on another endpoint with a
`MemoryBIOTLSFactory` over the application's factory, on the hardened
policy (``tls.HARDENED``) plus the server's own settings.  It also ties the
server's lifecycle to its ports: when one listens, the server's certificate
source starts (polling, SIGHUP, renewal), and the `ServingPort` it returns
stops it again when the last one stops listening.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from zope.interface import implementer

from ..certs import ServerCertificate
from ..tls import HARDENED, MemoryBIOTLSFactory, format_address

__all__ = ["Lifecycle", "ServingPort", "TLSServerEndpoint"]

_log = Logger(namespace="membio")


class Lifecycle(Protocol):
    """What a listening port starts and stops (``TLSServing``)."""

    @property
    def certificate(self) -> ServerCertificate: ...

    def acquire(self) -> None: ...

    def release(self) -> Deferred[None] | None: ...


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listen on another server endpoint and add TLS (with
    L{MemoryBIOTLSFactory}) to every connection it accepts, like
    L{wrapServerTLS}, and say which certificate it serves.

    @ivar certificate: what is served now, when known; logged on C{listen}
        if C{announce} is true.
    @ivar factory_options: keyword arguments for L{MemoryBIOTLSFactory}
        (C{handshake_timeout=...}), over the hardened policy every listener
        of this project starts from (``tls.HARDENED``).
    @ivar serving: the lifecycle its ports start and stop, if any.
    @ivar gate: wraps the application's factory under TLS (the ACME
        challenge gate, which keeps validation connections from it), if any.
    """

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        creator: IOpenSSLServerConnectionCreator,
        *,
        clock: IReactorTime | None = None,
        certificate: ServerCertificate | None = None,
        announce: bool = False,
        factory_options: Mapping[str, Any] | None = None,
        serving: Lifecycle | None = None,
        gate: Callable[[IProtocolFactory], IProtocolFactory] | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.creator = creator
        self.clock = clock
        self._certificate = certificate
        self.announce = announce
        self.factory_options = dict(factory_options or {})
        self.serving = serving
        self.gate = gate

    @property
    def certificate(self) -> ServerCertificate | None:
        if self.serving is not None:
            return self.serving.certificate
        return self._certificate

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        if self.gate is not None:
            protocolFactory = self.gate(protocolFactory)
        tls = MemoryBIOTLSFactory(
            self.creator,
            False,
            protocolFactory,
            self.clock,
            **{**HARDENED.keywords(), **self.factory_options},
        )
        listening: Deferred[IListeningPort] = self.wrapped.listen(tls)
        if self.serving is not None:
            listening.addCallback(self._serving, self.serving)
        if self.announce:
            listening.addCallback(self._announce)
        return listening

    @staticmethod
    def _serving(port: IListeningPort, serving: Lifecycle) -> IListeningPort:
        serving.acquire()
        return ServingPort(port, serving)

    def _announce(self, port: IListeningPort) -> IListeningPort:
        certificate = self.certificate
        if certificate is None:
            return port
        lines = [f"TLS on {format_address(port.getHost())}"]
        lines += (
            certificate.trust_instructions(_url_for(port))
            if certificate.new_trust_anchor
            else [
                *certificate.summary(),
                f"  clients must trust {certificate.trust_path} "
                f"(for example: curl --cacert {certificate.trust_path} ...)",
            ]
        )
        for line in lines:
            _log.info("{line}", line=line, log_system="membio")
        return port


@implementer(IListeningPort)
class ServingPort:
    """
    A listening port that stops its server's lifecycle (once) when it stops
    listening; everything else is the port's own (``getattr`` passes through).
    """

    def __init__(self, port: IListeningPort, serving: Lifecycle) -> None:
        self.port = port
        self._serving: Lifecycle | None = serving

    def startListening(self) -> None:
        self.port.startListening()

    def stopListening(self) -> Deferred[None] | None:
        stopping: Deferred[None] | None = self.port.stopListening()
        serving, self._serving = self._serving, None
        released = serving.release() if serving is not None else None
        if released is None:
            return stopping
        if stopping is None:
            return released
        both = gatherResults([stopping, released], consumeErrors=True)
        return both.addCallback(lambda _: None)

    def getHost(self) -> Any:
        return self.port.getHost()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.port, name)

    def __repr__(self) -> str:
        return f"<ServingPort of {self.port!r}>"


def _url_for(port: IListeningPort) -> str:
    number = getattr(port.getHost(), "port", None)
    if not isinstance(number, int):
        return "https://localhost/"
    return f"https://localhost:{number}/"
