"""`AcmeConfig`: what to ask for, from which CA, checked when made.

Every mistake an operator can make on the command line (an IP address or a wildcard as a
name, an http:// directory, two e-mail addresses, a missing CA file) is refused here, in
one line naming the option, before anything talks to a CA.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ..certs import CertificateError, default_cert_dir, normalize_name
from ._client import CHALLENGE_TYPES, ChallengeType
from ._errors import AcmeError
from ._policy import DEFAULT_RETRY_INITIAL, DEFAULT_RETRY_MAXIMUM

__all__ = [
    "ACME_STATE_SUBDIR",
    "LETS_ENCRYPT_DIRECTORY",
    "WELL_KNOWN_DIRECTORIES",
    "AcmeConfig",
    "AcmeConfigError",
]

# The default CA: Let's Encrypt's production directory (RFC 8555 section 7.1.1).
LETS_ENCRYPT_DIRECTORY: Final = "https://acme-v02.api.letsencrypt.org/directory"
# Let's Encrypt's staging CA: untrusted certificates, generous rate limits, for trying out.
LETS_ENCRYPT_STAGING_DIRECTORY: Final = "https://acme-staging-v02.api.letsencrypt.org/directory"
# Names an operator may give instead of a directory URL (--acme-directory letsencrypt).
WELL_KNOWN_DIRECTORIES: Final[dict[str, str]] = {
    "letsencrypt": LETS_ENCRYPT_DIRECTORY,
    "letsencrypt-staging": LETS_ENCRYPT_STAGING_DIRECTORY,
}
# The ACME state lives next to the generated local CA, in its own folder.
ACME_STATE_SUBDIR: Final = "acme"


class AcmeConfigError(AcmeError):
    """The ACME settings cannot work (a name, the e-mail, the URL); fix the command line."""

    retry = False


def _flag(name: str) -> str:
    """How a setting is spelled on a command line (``acme_email`` -> ``--acme-email``)."""
    return "--" + name.replace("_", "-")


def _said(spelling: str, text: object) -> str:
    """``--hostname x`` on a command line, ``hostname=x`` in an endpoint string."""
    return f"{spelling}{text}" if spelling.endswith("=") else f"{spelling} {text}"


def _checked_names(names: Sequence[str], spell: Callable[[str], str]) -> tuple[str, ...]:
    hostname = spell("hostname")
    if isinstance(names, str) or not names:
        raise AcmeConfigError(
            f"ACME needs at least one {hostname.rstrip('=')} (a public DNS name)"
        )
    checked = []
    for raw in names:
        try:
            name = normalize_name(raw)
        except CertificateError as error:
            raise AcmeConfigError(str(error)) from None
        try:
            ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            raise AcmeConfigError(
                f"{_said(hostname, raw)}: public CAs issue ACME certificates for DNS names "
                "here, not IP addresses"
            )
        if name.startswith("*."):
            raise AcmeConfigError(
                f"{_said(hostname, raw)}: wildcard names need the dns-01 challenge, which is "
                "not supported; list each name instead"
            )
        if "." not in name:
            raise AcmeConfigError(
                f"{_said(hostname, raw)}: not a public DNS name (no dot); a public CA cannot "
                "validate it"
            )
        checked.append(name)
    return tuple(dict.fromkeys(checked))


@dataclass(frozen=True)
class AcmeConfig:
    """What to ask for, from which CA; checked and normalized when made.

    @ivar names: the DNS names the certificate covers, first one first.
    @ivar email: contact address for the CA's expiry and policy mail (optional).
    @ivar agree_tos: the operator agreed to the CA's terms (``--acme-agree-tos``).
    @ivar challenges: challenge types to answer, in preference order.
    @ivar directory_ca: PEM file to trust for the directory's HTTPS (a private CA).
    @ivar state_dir: where accounts and certificates live; default
        ``default_cert_dir() / "acme"``.
    @ivar retry_initial, retry_maximum: backoff bounds in seconds for failed checks.
    @ivar spell: how the user spells a setting (``--acme-email``, or ``acmeEmail=`` in a
        ``membio:`` endpoint), for the messages.
    """

    names: tuple[str, ...]
    email: str | None = None
    directory_url: str = LETS_ENCRYPT_DIRECTORY
    agree_tos: bool = False
    challenges: tuple[ChallengeType, ...] = ("tls-alpn-01",)
    directory_ca: Path | None = None
    state_dir: Path | None = None
    retry_initial: float = DEFAULT_RETRY_INITIAL
    retry_maximum: float = DEFAULT_RETRY_MAXIMUM
    spell: Callable[[str], str] = field(default=_flag, compare=False, repr=False)

    def __post_init__(self) -> None:
        spell = self.spell
        object.__setattr__(self, "names", _checked_names(self.names, spell))
        if not self.directory_url.startswith("https://"):
            raise AcmeConfigError(
                f"{_said(spell('acme_directory'), self.directory_url)}: ACME directories are "
                "https:// URLs (RFC 8555 section 6.1)"
            )
        if self.email is not None and (
            "@" not in self.email or any(c.isspace() or c == "," for c in self.email)
        ):
            raise AcmeConfigError(
                f"{_said(spell('acme_email'), repr(self.email))} is not one e-mail address"
            )
        unknown = [kind for kind in self.challenges if kind not in CHALLENGE_TYPES]
        if unknown or not self.challenges:
            raise AcmeConfigError(
                f"ACME challenges must be some of {', '.join(CHALLENGE_TYPES)}, "
                f"not {', '.join(unknown) or 'none'}"
            )
        if self.directory_ca is not None and not Path(self.directory_ca).is_file():
            raise AcmeConfigError(
                f"{_said(spell('acme_directory_ca'), self.directory_ca)}: no such file"
            )
        if not 0 < self.retry_initial <= self.retry_maximum:
            raise AcmeConfigError("ACME retry delays must satisfy 0 < initial <= maximum")

    @property
    def state_path(self) -> Path:
        """The state directory actually used."""
        if self.state_dir is not None:
            return Path(self.state_dir)
        return default_cert_dir() / ACME_STATE_SUBDIR
