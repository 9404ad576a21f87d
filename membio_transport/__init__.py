"""
membio-transport: a memory-BIO TLS transport for Twisted, on pyOpenSSL.

`MemoryBIOTLSFactory` is a drop-in replacement for
``twisted.protocols.tls.TLSMemoryBIOFactory``; `TLSEngine` is the sans-I/O
core it drives, usable without Twisted.
"""

from ._engine import Event, TLSEngine
from ._errors import (
    TLSConnectionError,
    TLSError,
    TLSHandshakeError,
    TLSProtocolError,
    TLSStateError,
    TLSTruncationError,
)
from ._factory import MemoryBIOTLSFactory
from ._options import ServerTLSOptions, server_context
from ._protocol import MemoryBIOTLSProtocol
from ._state import TLSState
from ._stats import TLSStats
from ._wrap import startTLS, wrapClientTLS, wrapServerTLS

__all__ = [
    "Event",
    "MemoryBIOTLSFactory",
    "MemoryBIOTLSProtocol",
    "ServerTLSOptions",
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
    "wrapClientTLS",
    "wrapServerTLS",
]
