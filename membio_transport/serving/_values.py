"""
How the text of a setting becomes its value: the parsers the settings
table (``_settings``) names, one per kind of value.

Each takes the text the user typed and how the user spelled the setting
(``--idle-timeout`` on a command line, ``idleTimeout=`` in an endpoint
string), and raises `SettingError` with one line that quotes both back, so
that every entry point words a mistake the way the user typed it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final, Literal

from ..tls import PROFILES, PlainHTTPPolicy, Profile

__all__ = [
    "SettingError",
    "parse_alpn",
    "parse_backlog",
    "parse_client_cert",
    "parse_count",
    "parse_directory",
    "parse_endpoint",
    "parse_key_path",
    "parse_log_format",
    "parse_names",
    "parse_path",
    "parse_plain_http",
    "parse_profile",
    "parse_seconds_or_off",
    "parse_switch",
    "said",
]

#: The largest listen queue anyone should ask for (the kernel caps it anyway).
_MAX_BACKLOG: Final = 65535
#: A timeout or interval longer than a year is a typing mistake.
_MAX_SECONDS: Final = 365 * 86400
#: More simultaneous connections than this is a typing mistake too.
_MAX_COUNT: Final = 10**9


class SettingError(ValueError):
    """A setting's value cannot be used; the message is one line naming what the user typed."""


def said(spelling: str, text: str) -> str:
    """How a value is quoted back: ``--idle-timeout 'x'`` or ``idleTimeout='x'``."""
    return f"{spelling}{text!r}" if spelling.endswith("=") else f"{spelling} {text!r}"


def parse_path(text: str, spelling: str) -> Path:
    if not text.strip():
        raise SettingError(f"{said(spelling, text)} is empty: give a file or directory")
    return Path(text).expanduser().absolute()


def parse_key_path(text: str, spelling: str) -> Path | None:
    """A key file, or "" for the key inside its certificate's file."""
    return parse_path(text, spelling) if text else None


def parse_directory(text: str, spelling: str) -> Path:
    path = parse_path(text, spelling)
    if not path.is_dir():
        raise SettingError(f"{spelling.rstrip('= ')} {path} is not a directory")
    return path


def parse_names(text: str, spelling: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_profile(text: str, spelling: str) -> Profile:
    for profile in PROFILES:
        if text == profile:
            return profile
    raise SettingError(
        f"{said(spelling, text)} is unknown: the TLS profiles are {' and '.join(PROFILES)}"
    )


def parse_alpn(text: str, spelling: str) -> tuple[bytes, ...]:
    names = parse_names(text, spelling)
    if names == ("none",):
        return ()
    if "none" in names:
        raise SettingError(f"{said(spelling, text)}: none (no ALPN) stands alone")
    if not names:
        raise SettingError(f"{spelling.rstrip('= ')} needs at least one protocol, or 'none'")
    try:
        encoded = [name.encode("ascii") for name in dict.fromkeys(names)]
    except UnicodeEncodeError:
        raise SettingError(f"{said(spelling, text)}: protocol names are ASCII") from None
    if any(len(name) > 255 for name in encoded):
        raise SettingError(f"{said(spelling, text)}: a protocol name is at most 255 bytes")
    return tuple(encoded)


def parse_client_cert(text: str, spelling: str) -> Literal["required", "optional"]:
    if text == "required":
        return "required"
    if text == "optional":
        return "optional"
    raise SettingError(f"{said(spelling, text)}: use required or optional")


def _number(text: str, spelling: str, *, integer: bool, low: float, high: float) -> float:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise SettingError(f"{said(spelling, text)} is not {kind}") from None
    if not math.isfinite(value) or value < low:
        raise SettingError(f"{spelling.rstrip('= ')} {text} must be {low:g} or more")
    if value > high:
        raise SettingError(f"{spelling.rstrip('= ')} {text} must be {high:.0f} or less")
    return value


def parse_seconds_or_off(text: str, spelling: str) -> float | None:
    """Seconds, 0 meaning "no limit"."""
    return _number(text, spelling, integer=False, low=0, high=_MAX_SECONDS) or None


def parse_count(text: str, spelling: str) -> int:
    return int(_number(text, spelling, integer=True, low=1, high=_MAX_COUNT))


def parse_backlog(text: str, spelling: str) -> int:
    return int(_number(text, spelling, integer=True, low=1, high=_MAX_BACKLOG))


def parse_plain_http(text: str, spelling: str) -> PlainHTTPPolicy | None:
    if text == "off":
        return None
    if text == "explain":
        return "explain"
    if text == "redirect":
        return "redirect"
    if text == "close":
        return "close"
    raise SettingError(f"{said(spelling, text)}: use explain, redirect, close or off")


def parse_endpoint(text: str, spelling: str) -> str:
    """
    A Twisted server endpoint description (``tcp:9100:interface=127.0.0.1``),
    checked by Twisted's own parser (nothing listens yet).
    """
    example = "e.g. tcp:9100:interface=127.0.0.1"
    if not text.strip():
        raise SettingError(f"{said(spelling, text)} is empty: give a server endpoint, {example}")
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, text)
    except (ValueError, TypeError, KeyError) as error:
        raise SettingError(
            f"{said(spelling, text)} is not a server endpoint ({error}); {example}"
        ) from None
    return text


def parse_log_format(text: str, spelling: str) -> Literal["text", "json"]:
    if text == "text":
        return "text"
    if text == "json":
        return "json"
    raise SettingError(f"{said(spelling, text)}: use text or json")


def parse_switch(text: str, spelling: str) -> bool:
    if text.lower() in ("", "yes", "true", "1", "on"):
        return True
    if text.lower() in ("no", "false", "0", "off"):
        return False
    raise SettingError(f"{said(spelling, text)}: use yes or no")
