"""
The default page of ``twistd membio-https``: proof that TLS works, and how.

It shows the visitor what their own connection negotiated (TLS version,
cipher, key-exchange group, SNI name, ALPN protocol, client certificate) as
plain text for command-line clients and as HTML for browsers, chosen from
the ``Accept`` header.

The page sends the strictest headers that still let it display: a
Content-Security-Policy that allows nothing but its own inline style
(by hash), no referrer, no framing, and no sharing with other origins.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from OpenSSL import SSL
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Request

from ..tls import client_auth_of

__all__ = [
    "ConnectionInfo",
    "TLSInfoPage",
    "connection_info",
    "find_tls_connection",
    "prefers_html",
]

#: Longest client-supplied text (SNI name, certificate subject) shown.
_MAX_SHOWN: Final = 255


@dataclass(frozen=True)
class ConnectionInfo:
    """What one visitor's TLS connection negotiated, as display text."""

    tls_version: str
    cipher: str
    group: str
    server_name: str
    alpn: str
    client_certificate: str
    server_certificate: str


def _transports(request: Request) -> Iterator[Any]:
    """
    The layers under C{request}, outermost first.  Over HTTP/1.1 the channel's
    transport is the TLS layer; over HTTP/2 the channel is a stream whose
    connection (Twisted keeps it in C{_conn}) has the TLS layer as transport.
    """
    layer: Any = request.channel
    for _ in range(6):
        below = getattr(layer, "transport", None)
        if below is None:
            below = getattr(layer, "_conn", None)
        if below is None:
            return
        layer = below
        yield layer


def find_tls_connection(request: Request) -> SSL.Connection | None:
    """The pyOpenSSL connection carrying C{request}, or None without TLS."""
    for transport in _transports(request):
        get_handle = getattr(transport, "getHandle", None)
        if get_handle is None:
            continue
        try:
            handle = get_handle()
        except Exception:
            continue
        if isinstance(handle, SSL.Connection):
            return handle
    return None


def _clean(value: bytes | str | None, absent: str = "none") -> str:
    """Client-supplied text made safe to print: no control characters, bounded."""
    if value is None or value == b"" or value == "":
        return absent
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    shown = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text[:_MAX_SHOWN])
    return shown + ("..." if len(text) > _MAX_SHOWN else "")


def _fingerprint(certificate: Any) -> str:
    from cryptography.hazmat.primitives import hashes

    digest: bytes = certificate.fingerprint(hashes.SHA256())
    return ":".join(f"{byte:02X}" for byte in digest)


def _describe_certificate(certificate: Any) -> str:
    return (
        f"{_clean(certificate.subject.rfc4514_string(), '(empty subject)')}, "
        f"issued by {_clean(certificate.issuer.rfc4514_string(), '(empty issuer)')}, "
        f"valid until {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC, "
        f"SHA-256 {_fingerprint(certificate)}"
    )


def connection_info(connection: SSL.Connection) -> ConnectionInfo:
    """Describe what C{connection} negotiated."""
    bits = connection.get_cipher_bits()
    cipher = _clean(connection.get_cipher_name(), "unknown")
    peer = connection.get_peer_certificate(as_cryptography=True)
    auth = client_auth_of(connection)
    verifying = auth is not None and auth.ca_file is not None
    if peer is not None:
        client = _describe_certificate(peer) + (
            " (verified against the server's --client-ca)" if verifying
            else " (presented; not verified by this page)"
        )
    elif verifying:
        client = "none presented (optional: --client-cert optional)"
    elif connection.get_context().get_verify_mode() & SSL.VERIFY_PEER:
        client = "none presented"
    else:
        client = "none (not requested; start the server with --request-client-cert to ask)"
    own = connection.get_certificate(as_cryptography=True)
    return ConnectionInfo(
        tls_version=_clean(connection.get_protocol_version_name(), "unknown"),
        cipher=f"{cipher} ({bits} bits)" if bits else cipher,
        group=_clean(connection.get_group_name(), "unknown"),
        server_name=_clean(connection.get_servername(), "none (the client sent no SNI)"),
        alpn=_clean(connection.get_alpn_proto_negotiated(), "none negotiated"),
        client_certificate=client,
        server_certificate=(
            "unknown" if own is None else f"SHA-256 {_fingerprint(own)}"
        ),
    )


def _quality(accept: str, wanted: str) -> float:
    """The q-value C{accept} gives C{wanted} (RFC 9110: the most specific range wins)."""
    kind = wanted.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        media = media.lower()
        if media == wanted:
            specificity = 2
        elif media == f"{kind}/*":
            specificity = 1
        elif media == "*/*":
            specificity = 0
        else:
            continue
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value.strip())
                except ValueError:
                    quality = 0.0
        if specificity > best[0]:
            best = (specificity, quality)
    return best[1]


def prefers_html(accept: str | None) -> bool:
    """
    Whether a client sending C{accept} prefers HTML to plain text: browsers
    do; curl (``*/*``) and clients without an Accept header get text.
    """
    if not accept:
        return False
    html_quality = _quality(accept, "text/html")
    return html_quality > 0 and html_quality > _quality(accept, "text/plain")


_LABELS: Final = (
    ("TLS version", "tls_version"),
    ("Cipher", "cipher"),
    ("Key exchange group", "group"),
    ("SNI server name", "server_name"),
    ("ALPN protocol", "alpn"),
    ("Client certificate", "client_certificate"),
    ("Server certificate", "server_certificate"),
)

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:50em;padding:0 1em}"
    "th{text-align:left;padding-right:1em;vertical-align:top;white-space:nowrap}"
    "td{font-family:monospace;overflow-wrap:anywhere}"
)


#: Only the page's own stylesheet may apply, by hash (no 'unsafe-inline').
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

#: Headers for every response of the page (its 404 included).
_SECURITY_HEADERS: Final = (
    # Nothing may load or run; the page is one document with one style.
    (
        b"Content-Security-Policy",
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'".encode(),
    ),
    (b"X-Content-Type-Options", b"nosniff"),
    # The page shows connection details: no other site learns its URL ...
    (b"Referrer-Policy", b"no-referrer"),
    # ... frames it (clickjacking; for browsers without frame-ancestors) ...
    (b"X-Frame-Options", b"DENY"),
    # ... shares a browsing context with it, or embeds it.
    (b"Cross-Origin-Opener-Policy", b"same-origin"),
    (b"Cross-Origin-Resource-Policy", b"same-origin"),
    (b"Permissions-Policy", b"camera=(), microphone=(), geolocation=()"),
    (b"Cache-Control", b"no-store"),
)


def render_text(info: ConnectionInfo | None, extra: list[tuple[str, str]]) -> str:
    if info is None:
        return "This connection does not use TLS.\n"
    rows = [(label, getattr(info, field)) for label, field in _LABELS] + extra
    width = max(len(label) for label, _ in rows) + 1
    lines = ["TLS works: this page was sent over an encrypted connection.", ""]
    lines += [f"{label + ':':<{width}} {value}" for label, value in rows]
    return "\n".join(lines) + "\n"


def render_html(info: ConnectionInfo | None, extra: list[tuple[str, str]]) -> str:
    if info is None:
        heading, rows = "This connection does not use TLS", ""
    else:
        heading = "TLS works"
        rows = "".join(
            f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>"
            for label, value in [(label, getattr(info, field)) for label, field in _LABELS]
            + extra
        )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{heading} - membio-transport</title><style>{_STYLE}</style></head>"
        f"<body><h1>{heading}</h1>"
        "<p>This page was sent over the TLS connection described below.</p>"
        f"<table>{rows}</table></body></html>\n"
    )


class TLSInfoPage(Resource):
    """
    C{/}: the visitor's TLS connection parameters; every other path is 404.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource is untyped

    def render_GET(self, request: Request) -> bytes:
        for name, value in _SECURITY_HEADERS:
            request.setHeader(name, value)
        if request.postpath not in ([], [b""]):
            page: Any = notFound("Not found", "This server has only the page at /.")
            result: bytes = page.render(request)
            return result
        connection = find_tls_connection(request)
        info = None if connection is None else connection_info(connection)
        version = request.clientproto.decode("ascii", "replace")
        extra = [("HTTP version", _clean(version, "unknown"))]
        request.setHeader(b"Vary", b"Accept")
        accept = request.getHeader(b"accept")
        if prefers_html(None if accept is None else accept.decode("latin-1")):
            request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
            return render_html(info, extra).encode("utf-8")
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return render_text(info, extra).encode("utf-8")

    def render_HEAD(self, request: Request) -> bytes:
        # The headers of a GET, without the body Twisted would complain about.
        body = self.render_GET(request)
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return b""
