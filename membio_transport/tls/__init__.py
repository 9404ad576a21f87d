"""
The TLS layer: a memory-BIO TLS transport for Twisted, on pyOpenSSL.

What this layer is for: turning ciphertext into plaintext and back for one
connection at a time, and handing the application a standard Twisted
transport while doing it.  Nothing here knows where certificates come from,
how a server is configured or what program runs it.

* `TLSEngine` (``_engine``, with ``_state``, ``_errors``, ``_record_io``,
  ``_callbacks``): the sans-I/O core.  These modules import nothing from
  Twisted.
* `MemoryBIOTLSProtocol` (``_protocol``, made of ``_aggregate``,
  ``_timers`` and ``_sniff``) and `MemoryBIOTLSFactory` (``_factory``):
  the drop-in for Twisted's ``TLSMemoryBIOFactory``, with ``_producers``,
  ``_reclaim`` and ``_stats`` beside them.
* `FactoryPolicy`, `HARDENED`, `TWISTED` (``_policy``): where our entry
  points differ from Twisted's defaults, in one place.
* `server_context`, `ServerTLSOptions`, `ClientAuth` (``_profiles``): the
  hardened server contexts (Mozilla's intermediate and modern profiles).
* `wrapClientTLS`, `wrapServerTLS`, `startTLS` (``_wrap``), and
  `tls_failure_reason` (``_reasons``).
* `format_address` and friends (``_addresses``): the one way every layer
  writes ``host:port``.

What it may import: Twisted, pyOpenSSL, cryptography, zope.interface, and
its own modules.  It imports no other part of this package: the layers
above (``serving``, the apps, ``observe``) import it, through this face.
"""

from ._addresses import format_address, format_host, format_host_port
from ._aggregate import DRAIN_THRESHOLD
from ._engine import DEFAULT_SEND_BUFFER_LIMIT, Event, TLSEngine
from ._errors import (
    TLSCallbackError,
    TLSConnectionError,
    TLSError,
    TLSHandshakeError,
    TLSProtocolError,
    TLSStateError,
    TLSTruncationError,
    describe,
    readable_reason,
)
from ._factory import DEFAULT_CLOSE_TIMEOUT, MemoryBIOTLSFactory
from ._policy import (
    HARDENED,
    HARDENED_HANDSHAKE_TIMEOUT,
    TWISTED,
    FactoryPolicy,
    PlainHTTPPolicy,
)
from ._profiles import (
    PROFILES,
    ClientAuth,
    KeyLog,
    Profile,
    ServerTLSOptions,
    client_auth_of,
    keylog_from_environment,
    server_context,
    verified_peer_certificate,
)
from ._protocol import MemoryBIOTLSProtocol
from ._reasons import tls_failure_reason
from ._state import TLSState
from ._stats import HandshakeDetail, TLSStats
from ._wrap import startTLS, wrapClientTLS, wrapServerTLS

__all__ = [
    "DEFAULT_CLOSE_TIMEOUT",
    "DEFAULT_SEND_BUFFER_LIMIT",
    "DRAIN_THRESHOLD",
    "HARDENED",
    "HARDENED_HANDSHAKE_TIMEOUT",
    "PROFILES",
    "TWISTED",
    "ClientAuth",
    "Event",
    "FactoryPolicy",
    "HandshakeDetail",
    "KeyLog",
    "MemoryBIOTLSFactory",
    "MemoryBIOTLSProtocol",
    "PlainHTTPPolicy",
    "Profile",
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
    "client_auth_of",
    "describe",
    "format_address",
    "format_host",
    "format_host_port",
    "keylog_from_environment",
    "readable_reason",
    "server_context",
    "startTLS",
    "tls_failure_reason",
    "verified_peer_certificate",
    "wrapClientTLS",
    "wrapServerTLS",
]
