"""
What arrives first on a TLS port, and what to answer when it is not TLS.

Sending plain HTTP to an HTTPS port is the most common mistake a person
makes with a TLS server; OpenSSL answers it with an alert the browser shows
as an unreadable error.  Looking at the first bytes of a connection tells
the cases apart before OpenSSL sees them:

* a TLS record (or an old SSLv2-style ClientHello): hand it to OpenSSL,
  which answers any malformed record with the proper alert;
* an HTTP request line: answer, in plain HTTP, that this port speaks
  HTTPS (or redirect there), then close;
* anything else: close at once, there is nobody to explain anything to.

`classify` and `answer_plain_http` are pure functions; `FirstBytes` is the
transport's side of it, one of the pieces `MemoryBIOTLSProtocol` is made of
(see `_protocol`): it holds the first bytes of a server connection until
they tell, then either hands them on to the engine or answers and closes.
"""

from __future__ import annotations

import enum
import re
from typing import TYPE_CHECKING, Any, Final

from ._addresses import format_host
from ._errors import TLSConnectionError, TLSHandshakeError
from ._policy import PlainHTTPPolicy

if TYPE_CHECKING:
    from ._engine import TLSEngine
    from ._factory_view import FactoryView

__all__ = ["FirstBytes", "Preamble", "answer_plain_http", "classify"]


class Preamble(enum.Enum):
    """What the first bytes of a connection are."""

    TLS = "tls"
    HTTP = "http"
    GARBAGE = "garbage"
    #: Too few bytes to tell yet (a prefix of an HTTP method, say).
    UNDECIDED = "undecided"

    __hash__ = object.__hash__


#: HTTP/1.x methods (RFC 9110 and WebDAV's common ones) and the HTTP/2
#: preface's "PRI", each followed by the space that ends a method token.
_METHODS: Final = tuple(
    m + b" "
    for m in (
        b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
        b"TRACE", b"PATCH", b"PRI", b"PROPFIND", b"PROPPATCH", b"MKCOL",
        b"COPY", b"MOVE", b"LOCK", b"UNLOCK",
    )
)

#: First bytes of TLS: the record content types (change_cipher_spec 20 to
#: heartbeat 24), and the high bit of an SSLv2-format ClientHello.
_TLS_FIRST: Final = frozenset(range(20, 25)) | frozenset(range(0x80, 0x100))

#: A Host header value safe to echo into a URL and a Location header:
#: a DNS name, IPv4 address or bracketed IPv6 address, and an optional port.
_HOST: Final = re.compile(rb"^(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?$")

#: A request target worth keeping in a redirect: an absolute path with
#: printable, non-space ASCII only.
_PATH: Final = re.compile(rb"^/[\x21-\x7e]{0,2000}$")


def classify(prefix: bytes) -> Preamble:
    """Tell what a connection speaks from its first bytes (at least one)."""
    if prefix[0] in _TLS_FIRST:
        return Preamble.TLS
    for method in _METHODS:
        if prefix.startswith(method):
            return Preamble.HTTP
        if method.startswith(prefix):
            return Preamble.UNDECIDED
    return Preamble.GARBAGE


def _request_parts(request: bytes) -> tuple[bytes | None, bytes]:
    """The Host header and the request path, as far as they can be trusted."""
    head = request.split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    path = parts[1] if len(parts) >= 2 and _PATH.match(parts[1]) else b"/"
    host = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            value = value.strip()
            if _HOST.match(value):
                host = value
            break
    return host, path


def answer_plain_http(
    request: bytes, policy: PlainHTTPPolicy, fallback_host: str, port: int
) -> tuple[bytes, str]:
    """
    The plain-HTTP response for a request sent to the TLS port, and the
    HTTPS URL it points to.

    @param request: the bytes received so far (the request line, usually
        the headers too).
    @param fallback_host: our address, used when the request names none.
    @param port: the port the request came in on, which speaks HTTPS.
    """
    host, path = _request_parts(request)
    if host is None:
        name = format_host(fallback_host)
        authority = name if port == 443 else f"{name}:{port}"
    elif host.endswith(b"]") or b":" not in host:
        # No port: the client dialled HTTP's default, which led here.
        authority = host.decode("ascii") + ("" if port == 443 else f":{port}")
    else:
        # The port the client dialled reaches this listener (perhaps
        # through a port mapping), so it is the one to keep.
        authority = host.decode("ascii")
    url = f"https://{authority}{path.decode('ascii')}"
    if policy == "redirect":
        body = f"This port speaks HTTPS: {url}\n".encode()
        status = b"301 Moved Permanently"
        extra = f"Location: {url}\r\n".encode()
    else:
        body = (
            "400 Bad Request: this port speaks HTTPS, not plain HTTP.\n"
            f"Use {url} instead.\n"
        ).encode()
        status = b"400 Bad Request"
        extra = b""
    response = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        + extra
        + b"Connection: close\r\n\r\n"
        + body
    )
    return response, url


class FirstBytes:
    """
    The server's look at a connection's first bytes, before OpenSSL sees
    them (only with a ``plain_http`` policy).

    @ivar _preamble: bytes seen before we know whether the peer speaks TLS
        at all; None once that is settled or never asked.
    """

    factory: FactoryView
    transport: Any
    disconnecting: int
    _engine: TLSEngine
    _preamble: bytes | None = None

    if TYPE_CHECKING:

        def _handshake_failed(
            self, error: TLSConnectionError, reason: str, *, log: bool = True
        ) -> None: ...
        def _drop_batch(self) -> None: ...
        def _close_transport(self) -> None: ...

    def _sniff(self, prefix: bytes) -> bytes:
        """
        Decide from the first bytes whether the peer speaks TLS; return
        what to feed the engine (nothing while undecided or not TLS).
        """
        kind = classify(prefix)
        if kind is Preamble.UNDECIDED:
            self._preamble = prefix
            return b""
        self._preamble = None
        if kind is Preamble.TLS:
            return prefix
        policy = self.factory.plain_http
        if kind is Preamble.HTTP and policy != "close":
            assert policy is not None
            host = self.transport.getHost()
            response, url = answer_plain_http(
                prefix, policy, str(getattr(host, "host", "localhost")),
                int(getattr(host, "port", 443)),
            )
            self.transport.write(response)
            self.factory.stats.plain_http_answered += 1
            self._handshake_failed(
                TLSHandshakeError(reason="plain HTTP on the TLS port"),
                f"plain HTTP on the TLS port (answered: use {url})",
            )
        else:
            what = "plain HTTP on the TLS port" if kind is Preamble.HTTP else "not TLS"
            self._handshake_failed(TLSHandshakeError(reason=what), what)
        self._engine.abort()
        self._drop_batch()
        self.disconnecting = True
        self._close_transport()
        return b""
