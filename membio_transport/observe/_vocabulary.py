"""
Why a handshake failed, as one of a fixed set of label values.

`TLSStats.failed` counts failures by the reason our log lines print: free
text that carries OpenSSL's own words and sometimes a detail ("certificate
verify failed: unable to get local issuer certificate", "ValueError in a
TLS callback").  A Prometheus label must take few values, or every new
wording becomes a new time series; so each reason is mapped here to one of
the kinds in `FAILURE_KINDS`, by the first rule whose words it contains,
and to "other" when none matches.  The table is the documentation: its
order matters (the callback rule comes first because a callback's message
may contain any words).
"""

from __future__ import annotations

from typing import Final

__all__ = ["FAILURE_KINDS", "FAILURE_RULES", "OTHER", "failure_kind"]

#: The label value of a reason no rule matches.
OTHER: Final = "other"

#: (kind, words any of which in the lower-cased reason means that kind), in
#: the order they are tried.
FAILURE_RULES: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    # A callback of the application raised (a bug to fix, not the peer).
    ("callback_error", ("in a tls callback",)),
    # Our handshake timeout: a stalled or trickling client.
    ("timeout", ("handshake timeout",)),
    # Plain HTTP on the TLS port: ours ("plain http on the tls port") or
    # OpenSSL's own detection when no plain-HTTP policy is set.
    ("plain_http", ("plain http", "http request", "https proxy request")),
    # The peer hung up before the handshake completed (port scans, health
    # checks, clients that gave up).
    ("peer_closed", ("closed without close_notify", "connection closed", "unexpected eof",
                     "connection reset")),
    # Bytes that are no TLS record at all.
    ("not_tls", ("not tls", "wrong version number", "packet length too long",
                 "unknown protocol", "record length mismatch")),
    # The client offered only versions we refuse (TLS 1.0/1.1, or 1.2 under
    # the modern profile).
    ("protocol_version", ("unsupported protocol", "protocol version", "wrong ssl version",
                          "version too low", "inappropriate fallback")),
    # Nothing in common: ciphers, signature algorithms, groups.
    ("no_shared_cipher", ("no shared cipher", "no cipher", "no shared signature",
                          "no suitable signature", "no suitable key share", "no shared group",
                          "no suitable digest")),
    # ALPN: the client offered only protocols we do not serve.
    ("no_application_protocol", ("no application protocol",)),
    # Client certificates (mutual TLS): none sent although required.
    ("no_client_certificate", ("did not return a certificate", "certificate required")),
    # Certificate verification failed on our side (a client's certificate,
    # or the server's when we are the client).
    ("certificate_verify_failed", ("certificate verify failed",)),
    # The peer refused our certificate (an alert naming a certificate
    # problem: unknown CA, expired, bad, revoked...).  Watch this one after a
    # certificate change.
    ("peer_rejected_certificate", ("alert unknown ca", "alert bad certificate",
                                   "alert certificate", "alert unsupported certificate")),
    # Any other alert the peer sent.
    ("peer_alert", ("alert",)),
)

#: Every label value `failure_kind` can return.
FAILURE_KINDS: Final = (*(kind for kind, _ in FAILURE_RULES), OTHER)

#: Reasons already mapped.  There are few distinct reasons (OpenSSL's
#: vocabulary, our own, callback exception types), but cap the cache anyway.
_CACHE_LIMIT: Final = 1024
_cache: dict[str, str] = {}


def failure_kind(reason: str) -> str:
    """The label value, one of `FAILURE_KINDS`, for a failure C{reason}."""
    known = _cache.get(reason)
    if known is not None:
        return known
    text = reason.casefold()
    kind = next(
        (kind for kind, words in FAILURE_RULES if any(word in text for word in words)), OTHER
    )
    if len(_cache) < _CACHE_LIMIT:
        _cache[reason] = kind
    return kind
