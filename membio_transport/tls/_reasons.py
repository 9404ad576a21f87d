"""
The reason a TLS connection ended, in words a person can act on.

Applications receive in ``connectionLost`` what Twisted's layer would hand
them: pyOpenSSL's own ``SSL.Error`` (its ``args`` the raw OpenSSL error
queue), ``ConnectionLost`` or ``ConnectionDone``.  `tls_failure_reason`
turns any of those, or the engine's own exceptions, into the short text
our log lines use ("no shared cipher", "certificate verify failed: unable
to get local issuer certificate", "connection closed without
close_notify").
"""

from __future__ import annotations

from OpenSSL import SSL
from twisted.internet.error import ConnectionClosed
from twisted.python.failure import Failure

from ._errors import readable_reason

__all__ = ["tls_failure_reason"]


def tls_failure_reason(reason: Failure | BaseException) -> str:
    """
    Say why a connection ended, from the C{Failure} handed to
    ``connectionLost`` or from an exception.
    """
    value = reason.value if isinstance(reason, Failure) else reason
    if isinstance(value, SSL.Error):
        return readable_reason(value)
    if isinstance(value, ConnectionClosed):
        if value.args:
            return " ".join(str(arg) for arg in value.args)
        # Twisted's own text for these, without its full stop (not the
        # docstring's first line: ConnectionAborted's stops mid-sentence).
        return str(value).rstrip(".") or type(value).__name__
    return str(value) or type(value).__name__
