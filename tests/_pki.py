"""
Test certificates, made in memory with `cryptography`.

Every test that needs TLS takes its keys and certificates from here, so
that ECDSA and RSA, short and very long chains are one parameter away.
"""

from __future__ import annotations

import datetime
import functools
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL, crypto

KeyType = Literal["ecdsa", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class PKI:
    """A CA, and a server chain signed by it."""

    ca_pem: bytes
    chain_pem: bytes  # leaf first, then intermediates
    key_pem: bytes
    key_type: KeyType

    def server_context(self, version: int | None = None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        if version is not None:
            ctx.set_min_proto_version(version)
            ctx.set_max_proto_version(version)
        certs = x509.load_pem_x509_certificates(self.chain_pem)
        ctx.use_certificate(certs[0])
        for extra in certs[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(serialization.load_pem_private_key(self.key_pem, None))  # type: ignore[arg-type]
        return ctx

    def client_context(self, version: int | None = None) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if version is not None:
            ctx.set_min_proto_version(version)
            ctx.set_max_proto_version(version)
        store = ctx.get_cert_store()
        assert store is not None
        store.add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(self.ca_pem)))
        ctx.set_verify(SSL.VERIFY_PEER, lambda *args: bool(args[-1]))
        return ctx


def _key(kind: KeyType, bits: int = 2048) -> PrivateKey:
    if kind == "ecdsa":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: PrivateKey,
    issuer: str,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    padding: int = 0,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if padding:
        # An unrecognised, non-critical extension: verifiers skip it, but it
        # makes the certificate (and so the handshake flight) large.
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.4.1.55555.1"), b"\x04" + b"\x82" +
                padding.to_bytes(2, "big") + b"p" * padding
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


#: A chain whose PEM form exceeds 100 KiB while its DER form stays under
#: OpenSSL's default client limit for a Certificate message (100 KiB).
LONG_CHAIN_DER_BYTES = 94 * 1024


@functools.cache
def make_pki(key_type: KeyType = "ecdsa", chain_bytes: int = 0) -> PKI:
    """
    A CA and a server chain for ``localhost``.  With C{chain_bytes}, padded
    intermediates are added until the chain's DER is at least that large.
    """
    ca_key = _key(key_type)
    ca = _cert("membio test CA", ca_key, "membio test CA", ca_key, ca=True)
    issuer_name, issuer_key = "membio test CA", ca_key
    intermediates: list[x509.Certificate] = []
    size = 0
    while size < chain_bytes:
        name = f"membio intermediate {len(intermediates)}"
        key = _key(key_type)
        cert = _cert(name, key, issuer_name, issuer_key, ca=True, padding=16000)
        intermediates.append(cert)
        size += len(cert.public_bytes(serialization.Encoding.DER))
        issuer_name, issuer_key = name, key
    leaf_key = _key(key_type)
    leaf = _cert("localhost", leaf_key, issuer_name, issuer_key, ca=False)
    chain = [leaf, *reversed(intermediates)]
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return PKI(
        ca_pem=_pem(ca),
        chain_pem=b"".join(_pem(c) for c in chain),
        key_pem=key_pem,
        key_type=key_type,
    )
