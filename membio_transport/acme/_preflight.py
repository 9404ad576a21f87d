"""`preflight`: one look at the CA's directory before a server starts.

A server that turns ACME on wants to know at start-up, not weeks later in a log, what
only a configuration change can fix: a URL that is not an ACME directory, or terms of
service nobody agreed to (whose URL the refusal must name).  One GET of the directory
tells both.  It blocks, with a short timeout; the serving layer calls it before the
reactor runs, and decides what an unreachable CA means (keep serving, retry).
"""

from __future__ import annotations

import threading

from ._client import AcmeSession
from ._config import AcmeConfig

__all__ = ["preflight"]


def preflight(config: AcmeConfig, timeout: float) -> str | None:
    """The CA's terms-of-service URL (None when it has none), or raise an AcmeError.

    @raise NotAnAcmeDirectory: the URL answers, with something else.
    @raise CAUnreachable: no answer (network, DNS, TLS trust, a failing CA).
    """
    session = AcmeSession(
        config.directory_url,
        cancelled=threading.Event(),
        ca_file=config.directory_ca,
        timeout=timeout,
    )
    return session.terms_of_service()
