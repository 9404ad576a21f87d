"""When to renew and when to retry: pure functions of a certificate, a count and a time.

Renewal starts when two thirds of the lifetime have passed (a 90-day certificate renews
with 30 days left, a 6-day one with 2), which leaves a failing renewal many retries before
the certificate expires.  A jitter of up to 1/30 of the lifetime (3 days of 90, 4.8 hours
of 6 days) spreads the renewals of many servers that were set up at the same moment,
which is what CAs ask of clients; it is derived from the certificate's serial number, so
a restart does not move it.  A CA's renewal information (ARI, RFC 9773) overrides this
when the CA offers it.

Failures back off exponentially from ``initial`` to ``maximum``, never beyond: a CA that
was down for a day is asked again within hours of coming back.  A CA's Retry-After (a
rate limit) pushes the next attempt later, never earlier.
"""

from __future__ import annotations

import datetime
import hashlib
from typing import Final

from cryptography import x509

__all__ = [
    "RENEW_AFTER_FRACTION",
    "renewal_time",
    "retry_delay",
]

# Renew after this share of the lifetime (see the docstring).
RENEW_AFTER_FRACTION: Final = 2 / 3
# Up to this share of the lifetime earlier, spread by serial number.
JITTER_FRACTION: Final = 1 / 30
# Let's Encrypt asks clients to retry a failed order after minutes, not seconds, and
# allows 5 failed validations per name per hour: 2, 4, 8, 16 and 32 minutes make 5.
DEFAULT_RETRY_INITIAL: Final = 120.0
# Bounded backoff: even after a long outage, the next attempt is at most 6 hours away.
DEFAULT_RETRY_MAXIMUM: Final = 6 * 3600.0
# However far away renewal is, check at least this often (suspend/resume, clock changes;
# RFC 9773 section 4.3 asks for renewal information twice a day).
MAX_SLEEP: Final = 12 * 3600.0


def _lifetime(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc


def _jitter(cert: x509.Certificate) -> float:
    """A stable number in [0, 1) from the serial number."""
    digest = hashlib.sha256(str(cert.serial_number).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32


def renewal_time(cert: x509.Certificate) -> datetime.datetime:
    """When to start renewing ``cert`` by its own dates (no ARI)."""
    lifetime = _lifetime(cert)
    early = lifetime * JITTER_FRACTION * _jitter(cert)
    return cert.not_valid_before_utc + lifetime * RENEW_AFTER_FRACTION - early


def retry_delay(
    failures: int,
    *,
    initial: float = DEFAULT_RETRY_INITIAL,
    maximum: float = DEFAULT_RETRY_MAXIMUM,
    not_before: float = 0.0,
) -> float:
    """Seconds before attempt ``failures + 1``: ``initial * 2**(failures - 1)``, bounded.

    @param not_before: seconds the CA asked us to wait (Retry-After), honoured even
        beyond ``maximum``.
    """
    exponent = max(failures - 1, 0)
    # Cap the exponent so that a long outage cannot overflow the float.
    backoff = min(initial * 2.0 ** min(exponent, 32), maximum)
    return max(backoff, not_before)
