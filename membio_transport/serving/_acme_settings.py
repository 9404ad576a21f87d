"""
The ACME rows of the settings table: their parsers and the rules between them.

``--acme-email`` turns public certificates on (``membio_transport.acme``, the
optional extra ``membio-transport[acme]``), from Let's Encrypt unless
``--acme-directory`` names another CA (which turns them on by itself too, for a
CA that needs no contact address); the other ``--acme-*`` settings only refine
them, and ``--hostname`` names what to ask for.  Everything that can be checked without
the network is checked here, when the command line or endpoint string is parsed,
in one line spelled the way the user typed it.  What needs the CA (its terms of
service, whether the URL is an ACME directory at all) is `_acme.AcmeServing`'s
preflight.

Nothing here imports the ``acme`` library until ACME is actually asked for, so
that a plain install parses every command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from ._values import SettingError, parse_path, said

__all__ = [
    "ACME_EXTRA",
    "ACME_SETTINGS",
    "acme_layer",
    "acme_trigger",
    "check_acme",
    "parse_acme",
    "parse_challenges",
    "parse_email",
    "parse_existing_file",
]

#: What to install for ACME, named in the message when it is missing.
ACME_EXTRA: Final = "pip install 'membio-transport[acme]'"
#: The rows that refine ACME (they mean nothing without a contact or a directory).
ACME_SETTINGS: Final = ("acme_agree_tos", "acme_challenges", "acme_directory_ca")


def acme_layer() -> Any:
    """The ``acme`` subpackage, or a one-line error naming the extra to install."""
    try:
        from .. import acme
    except ImportError as error:
        raise SettingError(
            f"public certificates need the ACME libraries ({error.name} is missing): "
            f"{ACME_EXTRA}"
        ) from None
    return acme


def parse_acme(text: str, spelling: str) -> str:
    """A well-known CA's name (``letsencrypt``) or an https:// directory URL -> the URL."""
    known: dict[str, str] = acme_layer().WELL_KNOWN_DIRECTORIES
    if text.lower() in known:
        return known[text.lower()]
    if text.startswith("https://") and len(text) > len("https://"):
        return text
    raise SettingError(
        f"{said(spelling, text)}: give {' or '.join(known)}, or the CA's ACME directory "
        "URL (https://...)"
    )


def parse_email(text: str, spelling: str) -> str:
    if "@" not in text or any(c.isspace() or c in ",;" for c in text) or text.count("@") != 1:
        raise SettingError(f"{said(spelling, text)} is not one e-mail address")
    return text


def parse_challenges(text: str, spelling: str) -> tuple[str, ...]:
    """Comma-separated challenge types, in preference order."""
    kinds: tuple[str, ...] = acme_layer().CHALLENGE_TYPES
    given = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [kind for kind in given if kind not in kinds]
    if unknown or not given:
        raise SettingError(
            f"{said(spelling, text)}: use {' and/or '.join(kinds)}, comma-separated "
            "(dns-01 is not supported)"
        )
    return given


def parse_existing_file(text: str, spelling: str) -> Path:
    path = parse_path(text, spelling)
    if not path.is_file():
        raise SettingError(f"{said(spelling, text)}: no such file")
    return path


def acme_trigger(settings: Any) -> str:
    """The setting that turned ACME on, to name it in messages: the contact, else the CA."""
    return "acme_email" if settings.acme_email is not None else "acme_directory"


def check_acme(settings: Any) -> None:
    """
    The rules between the ACME settings and the others (`TLSSettings.check`).

    @raise SettingError: one line naming the settings as the user spelled them.
    """

    def name(setting: str) -> str:
        return str(settings.spell(setting)).rstrip("=")

    if not settings.acme:
        given = [row for row in ACME_SETTINGS if getattr(settings, row) not in (None, False, ())]
        if given:
            raise SettingError(
                f"{name(given[0])} needs {name('acme_email')} (public certificates from Let's "
                f"Encrypt) or {name('acme_directory')} (from another ACME CA)"
            )
        return
    acme_layer()  # the extra is installed, or one line says how
    trigger = name(acme_trigger(settings))
    if settings.cert:
        raise SettingError(
            f"{trigger} gets the certificate from an ACME CA; {name('cert')} serves your own: "
            "give one or the other"
        )
    if not settings.hostname:
        example = (
            "hostname=example.org" if settings.spell("hostname").endswith("=")
            else "--hostname example.org"
        )
        raise SettingError(
            f"{trigger} needs {name('hostname')}: the public DNS name(s) of this server "
            f"to get the certificate for, e.g. {example}"
        )
