"""
``twistd membio-tls``: the TLS termination proxy, an application of the
serving layer.

What this layer is for: accepting TLS with everything the serving layer
offers and relaying each decrypted connection to a plaintext backend with
backpressure, half-close and the PROXY protocol (``_relay``); ``tap`` is
the module the plugin's ServiceMaker names (the command line, the service
and its ``--workers`` pool).

What it may import: ``workers``, ``serving``, ``observe``, ``acme``,
``tls`` and ``certs`` through their faces; Twisted.  Never ``https``: the
two apps are siblings.
"""

from ._relay import (
    PROXY_PROTOCOL_VERSIONS,
    ClientCertificate,
    ProxyFactory,
    ProxyVersion,
    proxy_header_v1,
    proxy_header_v2,
)
from .tap import Options, TLSProxyService, makeService

__all__ = [
    "PROXY_PROTOCOL_VERSIONS",
    "ClientCertificate",
    "Options",
    "ProxyFactory",
    "ProxyVersion",
    "TLSProxyService",
    "makeService",
    "proxy_header_v1",
    "proxy_header_v2",
]
