"""The user's own ``--cert``/``--key`` files: loading and validating them.

A certificate brought along by the user fails in ways a generated one never does: a
missing or unreadable file, DER instead of PEM, an encrypted key without its password, a
key of another certificate, an expired chain member, a key others can read.  Each becomes
one ``CertificateError`` line naming the file and, where there is one, the fix.
"""

from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Final, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ._errors import CertificateError, check_key_permissions, os_reason
from ._servercert import ServerCertificate
from ._x509 import fingerprint, is_ca, key_matches, san_names, utc_now

__all__ = ["ServerKey", "load_certificate", "read_private_key"]

# The key types OpenSSL.SSL.Context.use_privatekey accepts.
ServerKey: TypeAlias = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
# A user's own key may be group-readable (Debian's ssl-cert group convention, 0640), but
# never readable or writable by everybody.
USER_KEY_FORBIDDEN_BITS: Final = 0o007


def load_certificate(
    cert_file: Path,
    key_file: Path,
    password: bytes | None = None,
    now: datetime.datetime | None = None,
) -> ServerCertificate:
    """Validate the user's PEM certificate (leaf first, then its chain) and private key.

    Raises CertificateError naming the offending file when a file is missing, unreadable,
    not PEM, encrypted with another password, not matching, expired or not yet valid.
    """
    cert_file, key_file = Path(cert_file).absolute(), Path(key_file).absolute()
    moment = utc_now(now)
    chain = _parse_chain(cert_file, _read_user_file(cert_file, "certificate"))
    key = read_private_key(key_file, password)
    if not key_matches(chain[0], key):
        raise CertificateError(
            f"{key_file} is not the private key of the certificate in {cert_file}"
        )
    for index, cert in enumerate(chain):
        _check_validity(cert, _position(cert_file, index, cert), moment)
    leaf = chain[0]
    return ServerCertificate(
        cert_path=cert_file,
        key_path=key_file,
        trust_path=cert_file,
        fingerprint_sha256=fingerprint(leaf),
        names=san_names(leaf),
        not_after=leaf.not_valid_after_utc,
        generated=False,
        trust_anchor_is_ca=is_ca(chain[-1]),
    )


def read_private_key(key_file: Path, password: bytes | None = None) -> ServerKey:
    """The user's PEM private key, for ``OpenSSL.SSL.Context.use_privatekey``.

    The plugin needs this only for an encrypted key: ``use_privatekey_file`` would need
    pyOpenSSL's deprecated password callback.  Raises CertificateError naming the file.
    """
    data = _read_user_file(key_file, "key")
    check_key_permissions(key_file, USER_KEY_FORBIDDEN_BITS)
    key = _parse_key(key_file, data, password)
    if not isinstance(key, ServerKey):
        raise CertificateError(f"{key_file} holds a {type(key).__name__}, which cannot sign TLS")
    return key


def _read_user_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateError(f"cannot read {what} file {path}: {os_reason(error)}") from None


def _looks_like_der(data: bytes) -> bool:
    return data[:1] == b"\x30"  # an ASN.1 SEQUENCE: DER, where PEM text was expected


def _parse_chain(path: Path, data: bytes) -> list[x509.Certificate]:
    quoted = shlex.quote(str(path))
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if _looks_like_der(data):
            raise CertificateError(
                f"{path} is a DER certificate, not PEM; convert it with: "
                f"openssl x509 -inform DER -in {quoted} -out {quoted}.pem"
            )
        raise CertificateError(f"{path} is not a PEM certificate file (no BEGIN CERTIFICATE line)")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{path} holds a damaged PEM certificate") from None


def _parse_key(path: Path, data: bytes, password: bytes | None) -> PrivateKeyTypes:
    if b"PRIVATE KEY-----" not in data:
        if _looks_like_der(data):
            quoted = shlex.quote(str(path))
            raise CertificateError(
                f"{path} is a DER key, not PEM; convert it with: "
                f"openssl pkey -inform DER -in {quoted} -out {quoted}.pem"
            )
        raise CertificateError(f"{path} is not a PEM private key file (no BEGIN PRIVATE KEY line)")
    # Both PKCS#8 ("BEGIN ENCRYPTED PRIVATE KEY") and legacy ("Proc-Type: 4,ENCRYPTED").
    encrypted = b"ENCRYPTED" in data
    if encrypted and password is None:
        raise CertificateError(f"{path} is encrypted and no password was given")
    try:
        # A password for a key that needs none is harmless; do not make it an error.
        return serialization.load_pem_private_key(data, password if encrypted else None)
    except ValueError:
        if encrypted:
            raise CertificateError(f"cannot decrypt {path}: wrong password") from None
        raise CertificateError(f"{path} holds a damaged or unsupported private key") from None
    except (TypeError, UnsupportedAlgorithm):
        raise CertificateError(f"{path} holds a damaged or unsupported private key") from None


def _position(path: Path, index: int, cert: x509.Certificate) -> str:
    if index == 0:
        return str(path)
    return f"{path} (chain certificate {index + 1}, {cert.subject.rfc4514_string()})"


def _check_validity(cert: x509.Certificate, where: str, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{where} is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC "
            f"(now {now:%Y-%m-%d %H:%M:%S} UTC)"
        )
    if now >= cert.not_valid_after_utc:
        raise CertificateError(
            f"{where} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"
        )
