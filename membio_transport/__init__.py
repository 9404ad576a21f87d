"""
membio-transport: a memory-BIO TLS transport for Twisted, on pyOpenSSL.

`MemoryBIOTLSFactory` is a drop-in replacement for
``twisted.protocols.tls.TLSMemoryBIOFactory`` (Twisted's behaviour unless
given a policy such as `HARDENED`); `TLSEngine` is the sans-I/O core it
drives, usable without Twisted.
"""

from ._engine import Event, TLSEngine
from ._errors import (
    TLSCallbackError,
    TLSConnectionError,
    TLSError,
    TLSHandshakeError,
    TLSProtocolError,
    TLSStateError,
    TLSTruncationError,
)
from ._factory import MemoryBIOTLSFactory
from ._options import ServerTLSOptions, server_context
from ._policy import HARDENED, TWISTED, FactoryPolicy
from ._protocol import MemoryBIOTLSProtocol
from ._reasons import tls_failure_reason
from ._state import TLSState
from ._stats import TLSStats
from ._wrap import startTLS, wrapClientTLS, wrapServerTLS

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
