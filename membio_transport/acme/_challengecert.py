"""Key authorizations and the tls-alpn-01 challenge certificate (RFC 8737), with no I/O.

``acme`` 5 dropped its model of tls-alpn-01, and what the challenge needs is small: the
key authorization (RFC 8555 section 8.1: the challenge token, a dot, and the base64url
SHA-256 thumbprint of the account key), and a self-signed certificate that carries the
name being validated as its only subjectAltName and, in a critical ``id-pe-acmeIdentifier``
extension, the DER OCTET STRING of SHA-256 of that key authorization.  The CA connects
offering only the ``acme-tls/1`` ALPN protocol, checks those two things and hangs up;
nobody verifies the certificate's signature, so any key type would do, and P-256 is the
cheapest to make.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier
from josepy.b64 import b64encode
from josepy.jwk import JWK

__all__ = [
    "ACME_IDENTIFIER_OID",
    "ACME_TLS_ALPN_PROTOCOL",
    "ChallengeCertificate",
    "key_authorization",
    "tls_alpn_challenge_certificate",
]

# RFC 8737 section 6.1: the ALPN protocol id the CA offers, and only it.
ACME_TLS_ALPN_PROTOCOL: Final = b"acme-tls/1"
# RFC 8737 section 6.1: id-pe-acmeIdentifier, under id-pe (1.3.6.1.5.5.7.1).
ACME_IDENTIFIER_OID: Final = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
# DER header of an OCTET STRING (tag 0x04) of 32 bytes (a SHA-256 digest).
_DER_OCTET_STRING_32: Final = b"\x04\x20"
# The CA validates within seconds to minutes of our answer; a week covers any clock skew
# between us and a CA that checks validity dates at all (most do not).
CHALLENGE_CERT_LIFETIME: Final = datetime.timedelta(days=7)
# Backdated like our other certificates, for a validator whose clock runs behind.
CHALLENGE_CERT_BACKDATE: Final = datetime.timedelta(hours=1)


def key_authorization(token: str, account_key: JWK) -> str:
    """RFC 8555 section 8.1: ``token || '.' || base64url(SHA-256 JWK thumbprint)``."""
    thumbprint = b64encode(account_key.thumbprint(hash_function=hashes.SHA256)).decode()
    return f"{token}.{thumbprint}"


@dataclass(frozen=True)
class ChallengeCertificate:
    """What a tls-alpn-01 connection for one name is served instead of the real chain."""

    name: str
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def to_pem(self) -> bytes:
        """Certificate then unencrypted key, for sharing with worker processes (0600)."""
        key = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return self.certificate.public_bytes(serialization.Encoding.PEM) + key

    @classmethod
    def from_pem(cls, name: str, data: bytes) -> ChallengeCertificate | None:
        """The inverse of to_pem; None when the file is damaged or not for ``name``."""
        try:
            certificate = x509.load_pem_x509_certificate(data)
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return None
        return cls(name, certificate, key)


def tls_alpn_challenge_certificate(
    name: str, key_authorization: str, *, now: datetime.datetime | None = None
) -> ChallengeCertificate:
    """The RFC 8737 certificate proving control of ``name`` for ``key_authorization``."""
    start = now if now is not None else datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CHALLENGE_CERT_BACKDATE)
        .not_valid_after(start + CHALLENGE_CERT_LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, _DER_OCTET_STRING_32 + digest),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return ChallengeCertificate(name, certificate, key)
