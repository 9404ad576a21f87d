"""
``--redirect-http``: the plain-HTTP resource that answers every request with
a redirect to the same path over HTTPS.  It only needs the Host header and
the HTTPS port, so it is kept apart from the options and the service.
"""

from __future__ import annotations

import ipaddress

from twisted.web.resource import Resource
from twisted.web.server import Request

from ..tls import format_host


class RedirectToHTTPS(Resource):
    """Every request: 301 (308 for other methods than GET/HEAD) to the HTTPS URL."""

    isLeaf = True

    def __init__(self, default_host: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource is untyped
        self.default_host = default_host
        self.https_port = 0  # set once the HTTPS port listens

    def render(self, request: Request) -> bytes:
        host = _request_host(request.getHeader(b"host")) or self.default_host
        port = "" if self.https_port == 443 else f":{self.https_port}"
        uri = request.uri.decode("latin-1")
        if not uri.startswith("/"):
            uri = "/"  # absolute-form or garbage: go to the root
        location = f"https://{host}{port}{uri}"
        request.setResponseCode(301 if request.method in (b"GET", b"HEAD") else 308)
        request.setHeader(b"Location", location.encode("latin-1"))
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        body = f"This server only serves HTTPS: {location}\n".encode("latin-1")
        if request.method == b"HEAD":
            request.setHeader(b"Content-Length", b"%d" % len(body))
            return b""
        return body


def _request_host(header: bytes | None) -> str | None:
    """The host part of a Host header when it is a plausible name or address."""
    if not header:
        return None
    text = header.decode("latin-1").strip()
    if text.startswith("["):
        literal, _, _ = text[1:].partition("]")
        try:
            return format_host(str(ipaddress.IPv6Address(literal)))
        except ValueError:
            return None
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
    if host and len(host) <= 253 and set(host) <= allowed:
        return host
    return None


def redirect_host(interface: str) -> str:
    """Where redirects point when a request has no usable Host header."""
    address = ipaddress.ip_address(interface)
    if address.is_loopback or address.is_unspecified:
        return "localhost"
    return format_host(str(address))
