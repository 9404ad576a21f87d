"""
The web site of ``twistd membio-https``: Twisted's ``Site`` plus the
response headers an HTTPS server should send on every response.

* ``Strict-Transport-Security`` when asked (``--hsts``): browsers then use
  https:// for the host without trying http:// first.  Opt-in, because a
  browser remembers it for the whole max-age: sent by a development server
  on ``localhost``, it would also apply to every other server the browser
  later reaches as ``localhost``.
* ``X-Content-Type-Options: nosniff``: browsers trust ``Content-Type``
  instead of guessing (a text file served as text never runs as HTML).
* ``Server: membio-https``: Twisted would announce its exact version.

Pages add their own policies (the information page has a strict
``Content-Security-Policy``; see ``_info_page``).
"""

from __future__ import annotations

from typing import Any, Final

from twisted.web.resource import Resource
from twisted.web.server import Request, Site

__all__ = ["DEFAULT_HSTS_MAX_AGE", "SecureSite", "hsts_header"]

#: Two years: Mozilla's server-side TLS guidelines; hstspreload.org asks
#: for at least one.
DEFAULT_HSTS_MAX_AGE: Final = 63072000

#: What the Server header says: no version for scanners to match.
_SERVER: Final = b"membio-https"


def hsts_header(max_age: int) -> bytes:
    """The Strict-Transport-Security value for C{max_age} seconds (0: forget)."""
    if max_age < 0:
        raise ValueError(f"HSTS max-age must be 0 or more seconds, not {max_age}")
    return b"max-age=%d" % max_age


class SecureSite(Site):
    """
    A ``Site`` whose every response carries the headers of the module
    docstring; resources may still override them.

    @param hsts_max_age: seconds for Strict-Transport-Security, or None
        to send no such header.
    """

    displayTracebacks = False

    def __init__(self, resource: Resource, *, hsts_max_age: int | None = None, **kw: Any) -> None:
        super().__init__(resource, **kw)  # type: ignore[no-untyped-call]  # untyped in Twisted
        self.hsts = None if hsts_max_age is None else hsts_header(hsts_max_age)

    def getResourceFor(self, request: Request) -> Any:
        # Called for every request after Twisted has set its own headers
        # and before any resource renders: the one place that sees them all.
        request.setHeader(b"Server", _SERVER)
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if self.hsts is not None:
            request.setHeader(b"Strict-Transport-Security", self.hsts)
        return super().getResourceFor(request)  # type: ignore[no-untyped-call]  # untyped
