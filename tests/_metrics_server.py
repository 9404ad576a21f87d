"""
A TLS web server with ``/metrics``, in its own process, for the Prometheus
test: ``python -m tests._metrics_server CERT KEY``.  It serves a page over
our TLS (hardened, as our entry points) on a free loopback port, and the
metrics of that server on another, through the observe layer exactly as an
entry point wires it; then prints ``{"tls": PORT, "metrics": PORT}`` on one
line and runs until SIGTERM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.web.server import Site
from twisted.web.static import Data

from membio_transport import MemoryBIOTLSFactory, ServerTLSOptions, TLSStats, server_context
from membio_transport.certs import load_certificate
from membio_transport.observe import MetricSources, listen_metrics


def main(cert: str, key: str) -> None:
    certificate = load_certificate(Path(cert), Path(key))
    stats = TLSStats()
    sources = MetricSources()
    sources.add_tls(stats)
    sources.add_certificates(lambda: [certificate])
    page = Data(b"hello over TLS\n", "text/plain")
    page.isLeaf = True  # every path gets the page
    site = Site(page)
    factory = MemoryBIOTLSFactory(
        ServerTLSOptions(server_context(cert, key)), False, site, stats=stats
    )
    tls = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    listening = listen_metrics("tcp:0:interface=127.0.0.1", sources.registry())

    def ready(port: Any) -> None:
        print(json.dumps({"tls": tls.getHost().port, "metrics": port.getHost().port}), flush=True)

    listening.addCallback(ready)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(*sys.argv[1:3])
