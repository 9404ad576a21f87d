"""
From a certificate to an OpenSSL server context: the one place that turns
a `ServerCertificate` (generated, the user's files, an SNI directory's, and
later ACME's) into the hardened ``SSL.Context`` every listener serves.

The context's settings (protocol versions, ciphers, groups, session
resumption, ALPN, client certificates, key log) are the TLS layer's
(`membio_transport.tls.server_context`); what this module adds is the
certificate side: decrypting an encrypted key in memory, and saying in one
line why OpenSSL refuses a certificate or key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from OpenSSL import SSL

from ..certs import CertificateError, ServerCertificate, ServerKey, key_for_openssl
from ..tls import PROFILES, ClientAuth, Profile, describe, server_context

__all__ = ["build_server_context"]


def build_server_context(
    certificate: ServerCertificate,
    *,
    password: bytes | None = None,
    profile: str = "intermediate",
    alpn: Sequence[bytes] = (),
    client_auth: ClientAuth | None = None,
) -> SSL.Context:
    """
    A hardened server context for C{certificate} (see L{server_context}).

    @raise CertificateError: OpenSSL refuses the certificate or key, or the
        profile is unknown.
    """
    if profile not in PROFILES:
        raise CertificateError(
            f"unknown TLS profile {profile!r}: use {' or '.join(map(repr, PROFILES))}"
        )
    chosen: Profile = "modern" if profile == "modern" else "intermediate"
    key: Path | ServerKey = key_for_openssl(certificate.key_path, password)
    try:
        return server_context(
            certificate.cert_path, key, profile=chosen, alpn=alpn, client_auth=client_auth
        )
    except SSL.Error as error:
        raise CertificateError(
            f"OpenSSL cannot use {certificate.cert_path} with {certificate.key_path}: "
            f"{describe(error)}"
        ) from None
