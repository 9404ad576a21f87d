"""
Serving ``/metrics`` on any Twisted server endpoint.

`listen_metrics` is what ``--metrics ENDPOINT`` (and the ``metrics=`` key
of ``membio:``) turns into, when the server's first TLS port listens
(``serving._operations``): it listens on the endpoint description and
serves the registry at ``/metrics`` with ``prometheus_client``'s own
Twisted resource, which formats the exposition (text, or OpenMetrics when
Prometheus asks for it); `metrics_service` does the same as a twistd
service.  Any
endpoint works, ``tcp:9100:interface=127.0.0.1`` for a local Prometheus,
``unix:/run/membio/metrics.sock``, or ``membio:9443`` for metrics over TLS.

Scrapes are not logged: Prometheus asks every few seconds, and an access
line each time would drown the lines that matter.
"""

from __future__ import annotations

from typing import Any, Final

from prometheus_client.registry import CollectorRegistry
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from zope.interface import implementer

from ..tls import format_address

__all__ = ["METRICS_PATH", "listen_metrics", "metrics_resource", "metrics_service"]

_log = Logger(namespace="membio_transport.observe")

#: Where Prometheus looks by default.
METRICS_PATH: Final = b"metrics"


class _Root(Resource):
    """C{/}: one line pointing at C{/metrics}, so a browser finds it."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        child: Resource = super().getChild(path, request)  # type: ignore[no-untyped-call]
        return child

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Prometheus metrics are at /metrics\n"


class _QuietSite(Site):
    noisy = False  # no "Starting factory" line: the announcement says where it listens

    def log(self, request: http.Request) -> None:
        """No access log line per scrape."""


def metrics_resource(registry: CollectorRegistry) -> Resource:
    """
    A resource tree serving C{registry} at C{/metrics}.  Build it once the
    reactor is installed: ``prometheus_client``'s resource runs scrapes in
    the reactor's thread pool, and importing it imports the reactor.
    """
    from prometheus_client.twisted import MetricsResource

    root = _Root()
    root.putChild(METRICS_PATH, MetricsResource(registry))  # type: ignore[no-untyped-call]
    return root


@implementer(IStreamServerEndpoint)
class _Announcing:
    """Logs one line once C{wrapped} listens: where Prometheus should scrape."""

    def __init__(self, wrapped: IStreamServerEndpoint, description: str, system: str) -> None:
        self.wrapped = wrapped
        self.description = description
        self.system = system

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        listening = self.wrapped.listen(protocolFactory)

        def announce(port: IListeningPort) -> IListeningPort:
            where = format_address(port.getHost())
            _log.info(
                "Prometheus metrics on {listener} at /metrics ({description})",
                listener=where, description=self.description, log_system=self.system,
                event_name="metrics_listening",
            )
            return port

        return listening.addCallback(announce)


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        return default_reactor
    return reactor


def listen_metrics(
    description: str,
    registry: CollectorRegistry,
    *,
    reactor: Any = None,
    system: str = "membio",
) -> Deferred[IListeningPort]:
    """
    Serve C{registry} at C{/metrics} on the endpoint C{description} now,
    outside any service (the ``metrics=`` key of an endpoint string, a
    program of one's own); fires with the listening port.

    @raise ValueError: C{description} is not a valid endpoint description.
    """
    reactor = _reactor(reactor)
    endpoint = _Announcing(serverFromString(reactor, description), description, system)
    site = _QuietSite(metrics_resource(registry))  # type: ignore[no-untyped-call]
    return endpoint.listen(site)


def metrics_service(
    description: str,
    registry: CollectorRegistry,
    *,
    reactor: Any = None,
    system: str = "membio",
) -> StreamServerEndpointService:
    """
    A service that serves C{registry} at C{/metrics} on the endpoint
    C{description} (``tcp:9100:interface=127.0.0.1``).  Under twistd, a
    failure to listen stops the start-up with an error, as for any port.

    @raise ValueError: C{description} is not a valid endpoint description.
    """
    reactor = _reactor(reactor)
    endpoint = _Announcing(serverFromString(reactor, description), description, system)
    site = _QuietSite(metrics_resource(registry))  # type: ignore[no-untyped-call]
    service = StreamServerEndpointService(endpoint, site)
    # As twisted.application.strports.service does: a port that cannot
    # listen fails startService instead of leaving a service that serves nothing.
    service._raiseSynchronously = True
    return service
