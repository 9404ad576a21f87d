"""The password of an encrypted private key: the one rule every entry point follows.

A key may be encrypted (``openssl pkey -aes256``), and a server that starts unattended
needs its password from somewhere: the first line of a file the user names
(``--key-password-file``, ``keyPasswordFile=``), else the ``MEMBIO_KEY_PASSWORD``
environment variable.  A key found encrypted with no password at hand is refused with one
line naming the key and how to give its password, in the words of the entry point the user
typed (a flag or an endpoint key).  Once a password is known, an encrypted key is decrypted
in memory for OpenSSL; a plain one is handed to OpenSSL as a file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from ._errors import CertificateError, os_reason
from ._usercerts import ServerKey, read_private_key

__all__ = [
    "KEY_PASSWORD_ENV",
    "check_key_passwords",
    "key_for_openssl",
    "key_is_encrypted",
    "read_key_password",
]

#: Environment variable holding the password of an encrypted private key.
KEY_PASSWORD_ENV: Final = "MEMBIO_KEY_PASSWORD"


def read_key_password(password_file: str | Path | None) -> bytes | None:
    """
    The private key password: the first line of C{password_file}, else the
    C{MEMBIO_KEY_PASSWORD} environment variable, else None.

    @raise CertificateError: the file cannot be read.
    """
    if password_file is not None:
        path = Path(password_file).expanduser()
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CertificateError(
                f"cannot read key password file {path}: {os_reason(error)}"
            ) from None
        lines = data.splitlines()
        return lines[0] if lines else b""
    value = os.environ.get(KEY_PASSWORD_ENV)
    return None if value is None else os.fsencode(value)


def key_is_encrypted(key_file: str | Path) -> bool:
    """Whether C{key_file} holds an encrypted PEM key (False when unreadable)."""
    try:
        # PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY") and legacy ("Proc-Type: 4,ENCRYPTED").
        return b"ENCRYPTED" in Path(key_file).expanduser().read_bytes()
    except OSError:
        return False


def check_key_passwords(
    key_files: Iterable[str | Path], password: bytes | None, how: str
) -> None:
    """
    Refuse, before anything is loaded, an encrypted key with no password at hand.

    @param how: how the user gives a password where they started us, e.g.
        ``"--key-password-file FILE"`` or ``"keyPasswordFile="``.
    @raise CertificateError: naming the first such key and the two ways to
        give its password.
    """
    if password is not None:
        return
    for key_file in key_files:
        if key_is_encrypted(key_file):
            raise CertificateError(
                f"{key_file} is encrypted: give its password with {how} or the "
                f"{KEY_PASSWORD_ENV} environment variable"
            )


def key_for_openssl(key_file: Path, password: bytes | None) -> Path | ServerKey:
    """
    What to hand OpenSSL for C{key_file}: the file itself when it is plain
    (OpenSSL reads it), the key decrypted in memory when it is encrypted.

    @raise CertificateError: the key is encrypted and C{password} is wrong
        or missing, or the file is unreadable or damaged.
    """
    if password is not None or key_is_encrypted(key_file):
        return read_private_key(key_file, password)
    return key_file
