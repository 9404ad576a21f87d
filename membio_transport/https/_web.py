"""
What ``membio-https`` adds on top of the TLS settings, because it serves
the web: which HTTP versions ALPN may offer, and HSTS.

* ALPN: twisted.web speaks ``h2`` (with the h2 package, a default
  dependency) and ``http/1.1``, and refuses any other negotiated protocol,
  so ``--alpn`` takes those only; without ``--alpn`` both are offered.
* ``--hsts`` or ``--hsts=SECONDS`` (``--hsts`` alone: two years): getopt has
  no optional values, so the command line is rewritten before parsing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from twisted.python import usage

from ._site import DEFAULT_HSTS_MAX_AGE

__all__ = ["HSTS_ALONE", "check_http_alpn", "default_alpn", "hsts_arguments", "hsts_max_age"]

#: ``--hsts`` alone: argv rewriting turns it into this.
HSTS_ALONE: Final = "default"
#: ALPN protocols twisted.web serves (h2 only with the h2 package); it
#: refuses any other negotiated protocol, http/1.0 included.
_HTTP_PROTOCOLS: Final = ("h2", "http/1.1")


def default_alpn() -> list[bytes]:
    """HTTP/2 only when twisted.web can speak it (it needs the h2 package)."""
    return [b"h2", b"http/1.1"] if _h2_enabled() else [b"http/1.1"]


def _h2_enabled() -> bool:
    from twisted.web import http

    return bool(getattr(http, "H2_ENABLED", False))


def check_http_alpn(protocols: Sequence[bytes]) -> None:
    """
    Refuse ALPN protocols twisted.web cannot serve here.

    @raise usage.UsageError: one line naming the protocol.
    """
    for protocol in protocols:
        name = protocol.decode("ascii", "replace")
        if name not in _HTTP_PROTOCOLS:
            raise usage.UsageError(
                f"--alpn {name!r}: this server speaks {', '.join(_HTTP_PROTOCOLS)}"
            )
        if name == "h2" and not _h2_enabled():
            raise usage.UsageError(
                "--alpn h2: Twisted has no HTTP/2 support here; install it with "
                "pip install 'twisted[http2]'"
            )


def hsts_arguments(arguments: Sequence[str]) -> list[str]:
    """The command line with a bare ``--hsts`` given its value."""
    return [f"--hsts={HSTS_ALONE}" if arg == "--hsts" else arg for arg in arguments]


def hsts_max_age(value: str | None) -> int | None:
    """The max-age ``--hsts`` asks for, or None without it."""
    if value is None:
        return None
    if value == HSTS_ALONE:
        return DEFAULT_HSTS_MAX_AGE
    try:
        seconds = int(value)
    except ValueError:
        raise usage.UsageError(f"--hsts {value!r} is not a whole number of seconds") from None
    if seconds < 0:
        raise usage.UsageError(f"--hsts {value} must be 0 or more")
    return seconds
