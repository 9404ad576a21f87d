"""
Policy, as opposed to correctness: the choices a TLS server may make
differently from Twisted's layer, in one place.

`MemoryBIOTLSFactory` is a drop-in for Twisted's ``TLSMemoryBIOFactory``:
built exactly as Twisted's is, it behaves as Twisted's does, apart from the
defects it fixes (the differences table in the README).  Everything else
that ours can do differently is a *policy*: a handshake timeout, an answer
to plain HTTP, refusing client renegotiation, a log line per failed
handshake, how early a producer is paused.  Those are off on the bare
factory (`TWISTED`) and on where this project owns the policy (`HARDENED`):
the ``membio:`` endpoint, ``membio-https``, ``membio-tls``, the endpoint
wrappers, `startTLS` and `ServerTLSOptions`.

Every such entry point takes its settings from `HARDENED`, so a change of
policy is made here once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from ._engine import DEFAULT_SEND_BUFFER_LIMIT

__all__ = ["HARDENED", "HARDENED_HANDSHAKE_TIMEOUT", "TWISTED", "FactoryPolicy", "PlainHTTPPolicy"]

#: What a server does with a plain HTTP request on the TLS port (see
#: `_sniff`): answer with the https:// URL, redirect there, or just close.
PlainHTTPPolicy = Literal["explain", "redirect", "close"]


@dataclass(frozen=True)
class FactoryPolicy:
    """
    The policy keywords of `MemoryBIOTLSFactory`, with Twisted's behaviour
    as the default of each.

    @ivar handshake_timeout: seconds a handshake may take, or None for no
        limit (Twisted has none).
    @ivar plain_http: how a server answers a client speaking plain HTTP
        (see `_sniff`), or None to hand every byte to OpenSSL as Twisted
        does.
    @ivar refuse_renegotiation: a server refuses client-initiated TLS 1.2
        renegotiation (Twisted allows it).
    @ivar log_handshake_failures: one log line per failed handshake
        (Twisted logs none).
    @ivar send_buffer_limit: plaintext bytes held back (during the
        handshake, or while a write waits for a renegotiation) at which a
        registered producer is paused.
    """

    handshake_timeout: float | None = None
    plain_http: PlainHTTPPolicy | None = None
    refuse_renegotiation: bool = False
    log_handshake_failures: bool = False
    #: 1: a producer is paused as soon as one byte has to wait, as
    #: Twisted's layer does.
    send_buffer_limit: int = 1

    def keywords(self) -> dict[str, Any]:
        """These settings as keyword arguments for `MemoryBIOTLSFactory`."""
        return asdict(self)


#: What `MemoryBIOTLSFactory` does unless told otherwise: Twisted's way.
TWISTED: Final = FactoryPolicy()

#: Seconds a handshake may take where we own the policy.  Real handshakes
#: take milliseconds to a few round trips; a peer that stalls or trickles
#: its ClientHello (slowloris) must not hold a connection open.
HARDENED_HANDSHAKE_TIMEOUT: Final = 10.0

#: What this project's own entry points use.
HARDENED: Final = FactoryPolicy(
    handshake_timeout=HARDENED_HANDSHAKE_TIMEOUT,
    plain_http="explain",
    refuse_renegotiation=True,
    log_handshake_failures=True,
    # Writes made during the handshake (a response prepared early, a
    # proxied stream) wait without stalling their producer for one round
    # trip; 256 KiB is the order of a socket send buffer.
    send_buffer_limit=DEFAULT_SEND_BUFFER_LIMIT,
)
