"""The one exception the certificate code raises, and its file-problem messages.

Every certificate and key problem reaches the user as a single actionable line
(``CertificateError``), whether it comes from the generated state directory
(``_store``), the user's own ``--cert``/``--key`` files (``_usercerts``) or a host name
(``_hostnames``).  The helpers here word the failures those modules share: an ``OSError``
as text, and a private key file that other users can read or write.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

__all__ = ["CertificateError", "check_key_permissions", "os_reason"]


class CertificateError(Exception):
    """A certificate or key cannot be used; the message is one actionable line."""


def check_key_permissions(path: Path, forbidden_bits: int) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as error:
        raise CertificateError(f"cannot read key file {path}: {os_reason(error)}") from None
    if mode & forbidden_bits:
        raise CertificateError(
            f"{path} is {_access(mode & forbidden_bits)} by other users (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(str(path))}"
        )


def _access(bits: int) -> str:
    if bits & 0o044:
        return "readable"
    return "writable" if bits & 0o022 else "accessible"


def os_reason(error: OSError) -> str:
    return error.strerror or type(error).__name__
