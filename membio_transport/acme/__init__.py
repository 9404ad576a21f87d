"""Public certificates from an ACME CA (RFC 8555): Let's Encrypt, a private CA, pebble.

What this layer is for: obtaining a certificate for a server's public names, storing it,
serving challenge answers, and renewing it while the server runs, so that the serving
layer only ever sees "here is a new certificate to serve".  It offers four pieces:

`AcmeManager` (with `AcmeConfig`)
    a Twisted service that reuses the stored certificate, or registers an account,
    orders, stores, and calls ``on_certificate(ServerCertificate)``; it renews at two
    thirds of the lifetime (or when the CA's renewal information says) and retries
    failures with bounded backoff.  Its blocking ACME calls run in its own thread; one
    process at a time orders, through a lock in the state directory.
`ChallengeBoard`
    the pending challenge answers, written by the manager and read by the responders,
    shared through the state directory with worker processes.
`TLSALPNResponder` and `ChallengeGate`
    tls-alpn-01 on the TLS port: an ALPN select callback that serves the challenge
    certificate to ``acme-tls/1`` clients, and the wrapper that keeps such connections
    away from the application (`is_challenge_connection` is the bare test).
`HTTP01Resource`
    http-01 on the plain-HTTP port, in front of any other resource (the redirect).

`preflight`
    one blocking look at the CA's directory at start-up: its terms of service, and
    whether the URL is an ACME directory at all.

Errors are `AcmeError` subclasses whose ``str()`` is one line saying what to do.

What it may import: Twisted, ``acme``/``josepy`` (the optional extra
``membio-transport[acme]``), ``requests`` through ``acme``, ``cryptography``, pyOpenSSL,
and the package's certificate layer (``certs``, its face).  Nothing from the TLS
transport, the endpoint, the twistd plugins or the proxy: those wire this in, never the
other way round.
"""

from __future__ import annotations

from ._board import ChallengeBoard
from ._challengecert import (
    ACME_TLS_ALPN_PROTOCOL,
    ChallengeCertificate,
    key_authorization,
    tls_alpn_challenge_certificate,
)
from ._client import CHALLENGE_TYPES, ChallengeType
from ._config import LETS_ENCRYPT_DIRECTORY, WELL_KNOWN_DIRECTORIES, AcmeConfig, AcmeConfigError
from ._errors import (
    AccountUnknown,
    AcmeError,
    CAProblem,
    CAUnreachable,
    ChallengeFailed,
    ChallengeUnreachable,
    ExternalAccountRequired,
    NameNotResolved,
    NameRefused,
    NotAnAcmeDirectory,
    OrderCancelled,
    RateLimited,
    TermsNotAgreed,
)
from ._http01 import HTTP01Resource
from ._manager import AcmeManager, CheckResult
from ._preflight import preflight
from ._store import AcmeStateError
from ._tlsalpn import ChallengeGate, TLSALPNResponder, is_challenge_connection

__all__ = [
    "ACME_TLS_ALPN_PROTOCOL",
    "CHALLENGE_TYPES",
    "LETS_ENCRYPT_DIRECTORY",
    "WELL_KNOWN_DIRECTORIES",
    "AccountUnknown",
    "AcmeConfig",
    "AcmeConfigError",
    "AcmeError",
    "AcmeManager",
    "AcmeStateError",
    "CAProblem",
    "CAUnreachable",
    "ChallengeBoard",
    "ChallengeCertificate",
    "ChallengeFailed",
    "ChallengeGate",
    "ChallengeType",
    "ChallengeUnreachable",
    "CheckResult",
    "ExternalAccountRequired",
    "HTTP01Resource",
    "NameNotResolved",
    "NameRefused",
    "NotAnAcmeDirectory",
    "OrderCancelled",
    "RateLimited",
    "TLSALPNResponder",
    "TermsNotAgreed",
    "is_challenge_connection",
    "key_authorization",
    "preflight",
    "tls_alpn_challenge_certificate",
]
