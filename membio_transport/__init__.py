"""
membio-transport: a memory-BIO TLS transport for Twisted, on pyOpenSSL.

`MemoryBIOTLSFactory` is a drop-in replacement for
``twisted.protocols.tls.TLSMemoryBIOFactory`` (Twisted's behaviour unless
given a policy such as `HARDENED`); `TLSEngine` is the sans-I/O core it
drives, usable without Twisted.

The names here are the public API, re-exported from the layers that hold
them (``membio_transport.tls``; the README's "Design" shows the layers):
``tls`` (the transport), ``certs`` (certificates), ``serving`` (the one
serving layer under every entry point, the ``membio:`` endpoint),
``workers`` (``--workers``), ``https`` and ``proxy`` (the two twistd apps),
``acme`` and ``observe``.
"""

from .tls import (
    HARDENED,
    TWISTED,
    Event,
    FactoryPolicy,
    MemoryBIOTLSFactory,
    MemoryBIOTLSProtocol,
    ServerTLSOptions,
    TLSCallbackError,
    TLSConnectionError,
    TLSEngine,
    TLSError,
    TLSHandshakeError,
    TLSProtocolError,
    TLSState,
    TLSStateError,
    TLSStats,
    TLSTruncationError,
    server_context,
    startTLS,
    tls_failure_reason,
    wrapClientTLS,
    wrapServerTLS,
)

__all__ = [
    "HARDENED",
    "TWISTED",
    "Event",
    "FactoryPolicy",
    "MemoryBIOTLSFactory",
    "MemoryBIOTLSProtocol",
    "ServerTLSOptions",
    "TLSCallbackError",
    "TLSConnectionError",
    "TLSEngine",
    "TLSError",
    "TLSHandshakeError",
    "TLSProtocolError",
    "TLSState",
    "TLSStateError",
    "TLSStats",
    "TLSTruncationError",
    "server_context",
    "startTLS",
    "tls_failure_reason",
    "wrapClientTLS",
    "wrapServerTLS",
]
