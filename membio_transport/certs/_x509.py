"""Pure X.509 with ``cryptography``: making keys, local roots and leaves, and reading them.

Nothing here touches the file system.  The certificates made here must pass strict
verifiers (Python's ``ssl`` with ``VERIFY_X509_STRICT``, ``openssl verify -x509_strict``,
curl, browsers), which is what the exact extensions below are for; the helpers that read
certificates back (names, fingerprint, lifetime, issuer, key match) serve both the state
directory's reuse decisions and the checks on the user's own files.
"""

from __future__ import annotations

import datetime
import getpass
import os
import socket
from collections.abc import Sequence
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ._errors import CertificateError
from ._hostnames import parse_ip

__all__ = [
    "GeneratedKey",
    "KeyType",
    "fingerprint",
    "generate_leaf",
    "generate_private_key",
    "generate_root_ca",
    "is_ca",
    "is_issued_by",
    "key_matches",
    "key_type_of",
    "lifetime_of",
    "pem_cert",
    "pem_key",
    "san_names",
    "utc_now",
]

KeyType: TypeAlias = Literal["ecdsa", "rsa"]
GeneratedKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# P-256 is the curve every TLS client implements, and its keys are instant to generate.
ECDSA_CURVE: Final = ec.SECP256R1
# 3072 bits gives the same ~128-bit security level as P-256 (NIST SP 800-57).
RSA_KEY_SIZE: Final = 3072
# The exponent every implementation expects; cryptography advises against any other.
RSA_PUBLIC_EXPONENT: Final = 65537

# Clients whose clock runs a little behind ours must not see a not-yet-valid certificate.
CLOCK_SKEW_ALLOWANCE: Final = datetime.timedelta(hours=1)
# Long enough that users trust the root once per machine, as mkcert does.
ROOT_LIFETIME: Final = datetime.timedelta(days=3650)
# Short leaves limit the damage of a leaked leaf key; rotation costs the user nothing.
LOCAL_CA_LEAF_LIFETIME: Final = datetime.timedelta(days=30)
# RFC 5280 upper bound for a commonName.
MAX_COMMON_NAME_LENGTH: Final = 64


# --------------------------------------------------------------------------- generation


def generate_private_key(key_type: KeyType = "ecdsa") -> GeneratedKey:
    """A new private key of the requested kind."""
    if key_type == "ecdsa":
        return ec.generate_private_key(ECDSA_CURVE())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_SIZE)
    raise CertificateError(f"unknown key type {key_type!r}: use 'ecdsa' or 'rsa'")


def generate_root_ca(
    key_type: KeyType = "ecdsa",
    *,
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = ROOT_LIFETIME,
) -> tuple[x509.Certificate, GeneratedKey]:
    """A new self-signed local root that may sign leaves but no intermediates."""
    start = utc_now(now)
    key = generate_private_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "membio-transport local CA"),
            x509.NameAttribute(NameOID.COMMON_NAME, _common_name(_root_common_name(start))),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        _base_builder(name, name, key, start, start + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    )
    return builder.sign(key, hashes.SHA256()), key


def _root_common_name(now: datetime.datetime) -> str:
    # Lets users tell our roots apart from each other (and from mkcert's) in trust stores.
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.geteuid())
    return f"membio-transport CA {user}@{socket.gethostname()} {now:%Y-%m-%d}"


def generate_leaf(
    names: Sequence[str],
    key_type: KeyType = "ecdsa",
    *,
    issuer: tuple[x509.Certificate, GeneratedKey] | None = None,
    now: datetime.datetime | None = None,
    lifetime: datetime.timedelta = LOCAL_CA_LEAF_LIFETIME,
) -> tuple[x509.Certificate, GeneratedKey]:
    """A new TLS server certificate for ``names``, signed by ``issuer`` or by itself."""
    if not names:
        raise CertificateError("a server certificate needs at least one name")
    start = utc_now(now)
    key = generate_private_key(key_type)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(names[0]))])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    if issuer is None:
        issuer_name, signer, aki_source = subject, key, ski
        not_after = start + lifetime
    else:
        issuer_name, signer = issuer[0].subject, issuer[1]
        aki_source = _subject_key_identifier(issuer[0])
        # A leaf outliving its issuer would fail verification in its last days.
        not_after = min(start + lifetime, issuer[0].not_valid_after_utc)
    builder = (
        _base_builder(subject, issuer_name, key, start, not_after)
        .add_extension(_subject_alt_name(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(aki_source), False
        )
    )
    return builder.sign(signer, hashes.SHA256()), key


def _base_builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: GeneratedKey,
    start: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        # Random serials keep NSS from seeing two certificates with one issuer and serial.
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(not_after)
    )


def _key_usage(*, key_cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        # Leaves sign the TLS handshake; a root signs only certificates and CRLs.
        digital_signature=not key_cert_sign,
        content_commitment=False,
        # TLS 1.2 RSA key exchange encrypts to the leaf key; harmless where unused.
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=key_cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _subject_alt_name(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        address = parse_ip(name)
        entries.append(x509.DNSName(name) if address is None else x509.IPAddress(address))
    return x509.SubjectAlternativeName(entries)


def _subject_key_identifier(cert: x509.Certificate) -> x509.SubjectKeyIdentifier:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.SubjectKeyIdentifier.from_public_key(cert.public_key())


def _common_name(text: str) -> str:
    return text[:MAX_COMMON_NAME_LENGTH]


# ----------------------------------------------------------------- reading certificates


def utc_now(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    # X.509 times have whole seconds; dropping the rest makes comparisons exact.
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def san_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for entry in san:
        if isinstance(entry, x509.DNSName):
            names.append(entry.value)
        elif isinstance(entry, x509.IPAddress):
            names.append(str(entry.value))
    return tuple(names)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def lifetime_of(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc - CLOCK_SKEW_ALLOWANCE


def _public_key_bytes(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _public_key_bytes(cert) == _public_key_bytes(key)


def is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def key_type_of(key: PrivateKeyTypes) -> KeyType | None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ECDSA_CURVE):
        return "ecdsa"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= RSA_KEY_SIZE:
        return "rsa"
    return None


def pem_key(key: GeneratedKey) -> bytes:
    # Unencrypted: the server must start unattended; file permissions protect the key.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)
