"""
Exception types, and the one place where OpenSSL errors become ours.

Two families, as in h11: `TLSStateError` means *our caller* misused the API
(a bug to fix in code); `TLSConnectionError` and its subclasses mean *the
peer or the network* misbehaved (something to log and survive).

The peer-side errors subclass `OpenSSL.SSL.Error`, keep its ``args`` (the
OpenSSL error queue) and carry pyOpenSSL's own exception as ``__cause__``.
They are what the sans-I/O `TLSEngine` raises; the Twisted layer hands
applications pyOpenSSL's original exception instead, exactly as Twisted's
layer does, and `readable_reason` still finds the words we chose for it.
`classify` is the single translation point.
"""

from __future__ import annotations

import weakref
from typing import Final

from OpenSSL import SSL

__all__ = [
    "TLSCallbackError",
    "TLSConnectionError",
    "TLSError",
    "TLSHandshakeError",
    "TLSProtocolError",
    "TLSStateError",
    "TLSTruncationError",
    "classify",
    "describe",
    "readable_reason",
]


class TLSError(Exception):
    """Base class of every exception this package raises on purpose."""


class TLSStateError(TLSError, RuntimeError):
    """
    The API was used in a way the connection's state does not allow, such
    as sending after close.  Always a bug in the calling code.
    """


class TLSConnectionError(TLSError, SSL.Error):
    """
    The TLS conversation with the peer failed.

    @ivar reason: a short human-readable reason ("no shared cipher").
    @ivar during_handshake: the session never got past its handshake.
    """

    reason: str
    during_handshake: bool

    def __init__(
        self, *args: object, reason: str = "TLS error", during_handshake: bool = False
    ) -> None:
        super().__init__(*args)
        self.reason = reason
        self.during_handshake = during_handshake or isinstance(self, TLSHandshakeError)

    def __str__(self) -> str:
        return self.reason


class TLSHandshakeError(TLSConnectionError):
    """The handshake failed: no shared parameters, a rejected certificate..."""


class TLSCallbackError(TLSHandshakeError):
    """
    A Python callback that OpenSSL ran during the handshake (servername,
    ALPN selection, certificate verification, info, key log) raised.  That
    is a bug in the callback, not the peer's doing.

    @ivar error: what the callback raised, with its traceback.
    """

    error: BaseException

    def __init__(self, error: BaseException) -> None:
        text = str(error)
        kind = type(error).__name__
        super().__init__(
            reason=f"{text} ({kind} in a TLS callback)" if text else f"{kind} in a TLS callback",
            during_handshake=True,
        )
        self.error = error
        self.__cause__ = error


class TLSProtocolError(TLSConnectionError):
    """After the handshake, the peer sent something TLS does not allow."""


class TLSTruncationError(TLSConnectionError):
    """
    The transport ended without the peer's close_notify.  The data seen so
    far may be truncated, so this must never be reported as a clean end.
    """


#: OpenSSL's reason strings that mean "the peer hung up on us".  OpenSSL 3
#: and later report a missing close_notify as an ordinary SSL error with
#: this text; older releases raised SysCallError instead.
_EOF_REASONS: Final = ("unexpected eof", "unexpected_eof")


#: OpenSSL error-queue entries that only summarise the ones before them.
_GENERIC_REASONS: Final = frozenset({"record layer failure"})


#: The words `classify` chose for pyOpenSSL's own exceptions, which are what
#: applications receive; weak, so the table never keeps an exception alive.
_READABLE: weakref.WeakKeyDictionary[BaseException, str] = weakref.WeakKeyDictionary()


def readable_reason(error: SSL.Error) -> str:
    """
    The reason in words for an OpenSSL error: the one `classify` gave it
    (with certificate verification's own explanation, for instance), or
    else `describe`'s.
    """
    if isinstance(error, TLSConnectionError):
        return error.reason
    known = _READABLE.get(error)
    return known if known is not None else describe(error)


def describe(error: SSL.Error) -> str:
    """
    Give the most specific reason an OpenSSL error carries, in words a
    person can act on ("no shared cipher", "tlsv1 alert unknown ca").
    """
    if isinstance(error, TLSConnectionError):
        return error.reason
    if isinstance(error, SSL.SysCallError):
        _errno, message = [*error.args, None, None][:2]
        return str(message or "connection closed by peer")
    if isinstance(error, SSL.ZeroReturnError):
        return "peer closed the TLS session"
    queue = error.args[0] if error.args else None
    if isinstance(queue, list) and queue:
        reasons = [
            str(entry[2]) if isinstance(entry, tuple) and len(entry) == 3 else str(entry)
            for entry in queue
        ]
        # The last entry is normally the most specific, except that OpenSSL
        # 3.2+ ends record-layer errors with a generic summary line.
        specific = [r for r in reasons if r.casefold() not in _GENERIC_REASONS]
        return (specific or reasons)[-1]
    return "unspecified TLS error"


def _is_eof(error: SSL.Error, saw_eof: bool) -> bool:
    if isinstance(error, SSL.SysCallError):
        return True
    text = describe(error).casefold()
    if text.startswith(_EOF_REASONS):
        return True
    # OpenSSL 4 may leave the error queue empty for an EOF it saw on a
    # memory BIO; only trust that reading once we know the EOF happened.
    return saw_eof and not error.args[0]


def classify(
    error: SSL.Error, *, handshaking: bool, saw_eof: bool, detail: str | None = None
) -> TLSConnectionError:
    """
    Turn an error raised by pyOpenSSL into the precise exception of ours.

    @param handshaking: the error happened before the handshake completed.
    @param saw_eof: the transport already told us there is no more input.
    @param detail: what certificate verification said, if it failed.
    """
    reason = describe(error)
    if detail and "certificate verify failed" in reason:
        reason = f"{reason}: {detail}"
    kind: type[TLSConnectionError]
    if _is_eof(error, saw_eof):
        kind = TLSTruncationError
        reason = "connection closed without close_notify" + (
            " during the handshake" if handshaking else ""
        )
    elif handshaking:
        kind = TLSHandshakeError
    else:
        kind = TLSProtocolError
    converted = kind(*error.args, reason=reason, during_handshake=handshaking)
    converted.__cause__ = error
    _READABLE[error] = reason
    return converted
