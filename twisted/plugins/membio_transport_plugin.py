"""
Twisted drop-in for membio-transport.

* ``twistd membio-https``: a zero-config HTTPS server (``membio_transport.https.tap``).
* ``twistd membio-tls``: a TLS termination proxy to a plaintext backend
  (``membio_transport.proxy.tap``).
* ``membio:`` server and client endpoint descriptions
  (``membio_transport.serving._endpoint`` documents the syntax).

Twisted imports every drop-in whenever it looks for plugins (each ``twistd``
run, each unknown endpoint prefix), so this module imports nothing heavy:
the real code is loaded only when one of these plugins is used.

This directory must never get an ``__init__.py``: ``twisted.plugins`` is
Twisted's own package, extended through its search path.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

membioHTTPS = ServiceMaker(
    "membio-https",
    "membio_transport.https.tap",
    "HTTPS server with a generated, trusted-once certificate (membio-transport TLS)",
    "membio-https",
)

membioTLS = ServiceMaker(
    "membio-tls",
    "membio_transport.proxy.tap",
    "TLS termination proxy: decrypt and relay to a plaintext backend (membio-transport TLS)",
    "membio-tls",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MembioServerParser:
    """``membio:PORT[:options]``: TLS on TCP or around another server endpoint."""

    prefix = "membio"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from membio_transport.serving import parse_server

        return parse_server(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _MembioClientParser:
    """``membio:host=H:port=P[:options]``: verified TLS client connections."""

    prefix = "membio"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from membio_transport.serving import parse_client

        return parse_client(reactor, *args, **kwargs)


membioServerEndpointParser = _MembioServerParser()
membioClientEndpointParser = _MembioClientParser()
