"""
Hardened TLS settings: what a server built on this package offers by default.

Twisted's ``CertificateOptions`` still accepts CBC and CCM suites, X448 and
secp521r1, and disables session tickets.  The profiles here follow
Mozilla's server-side guidelines instead:

* ``intermediate`` (default): TLS 1.2 and 1.3, ECDHE key exchange with
  AEAD ciphers only (AES-GCM, ChaCha20-Poly1305), groups X25519 and
  P-256/P-384 (plus the X25519+ML-KEM hybrid where OpenSSL has it).
* ``modern``: TLS 1.3 only.

Both refuse compression and client-initiated renegotiation, keep session
resumption on (tickets and a server-side cache), and release idle buffers
so that quiet connections cost little memory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, Literal

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

__all__ = ["PROFILES", "Profile", "ServerTLSOptions", "server_context"]

Profile = Literal["intermediate", "modern"]
#: The key types OpenSSL can sign a handshake with (what pyOpenSSL accepts).
PrivateKey = (
    ec.EllipticCurvePrivateKey
    | rsa.RSAPrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | dsa.DSAPrivateKey
)
PROFILES: Final[tuple[Profile, ...]] = ("intermediate", "modern")

#: TLS 1.2 suites of Mozilla's intermediate profile, minus finite-field
#: DHE (slow, and its parameters are a foot-gun): ECDHE + AEAD only.
_TLS12_CIPHERS: Final = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)

#: TLS 1.3 suites: the AEADs every client has; CCM suites stay off.
_TLS13_CIPHERS: Final = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

#: Key-exchange groups in preference order.  The hybrid post-quantum group
#: is tried first and silently dropped where OpenSSL lacks it.
_GROUPS: Final = ("X25519MLKEM768", "X25519", "P-256", "P-384")

#: Server-side session cache: one id context for everything we serve.
_SESSION_ID_CONTEXT: Final = b"membio-transport"


def _set_groups(context: SSL.Context) -> None:
    # pyOpenSSL has no public call for the group list; go through the
    # binding it ships, trying without the hybrid group when unsupported.
    from OpenSSL._util import lib as _lib

    set_list: Any = getattr(_lib, "SSL_CTX_set1_groups_list", None)
    if set_list is None:
        return
    candidates = [":".join(_GROUPS), ":".join(g for g in _GROUPS if "MLKEM" not in g)]
    for groups in candidates:
        if set_list(context._context, groups.encode()) == 1:
            return


def server_context(
    cert_file: Path | str,
    key: Path | str | PrivateKey,
    *,
    profile: Profile = "intermediate",
    alpn: Sequence[bytes] = (),
) -> SSL.Context:
    """
    Build a server ``SSL.Context`` for one certificate chain and key.

    @param cert_file: PEM, leaf first, then intermediates.
    @param key: a PEM private key file, or a key already loaded with
        ``cryptography`` (how an encrypted key gets here: decrypt it first,
        e.g. with ``_certs.read_private_key``).
    @param alpn: protocols to offer, in server preference order.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown TLS profile {profile!r}; choose one of {', '.join(PROFILES)}")
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(
        SSL.TLS1_3_VERSION if profile == "modern" else SSL.TLS1_2_VERSION
    )
    context.set_cipher_list(_TLS12_CIPHERS.encode())
    context.set_tls13_ciphersuites(_TLS13_CIPHERS.encode())
    _set_groups(context)
    context.set_options(
        SSL.OP_NO_COMPRESSION
        | SSL.OP_NO_RENEGOTIATION
        | SSL.OP_CIPHER_SERVER_PREFERENCE
        | SSL.OP_SINGLE_ECDH_USE
    )
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    context.set_session_id(_SESSION_ID_CONTEXT)
    context.set_session_cache_mode(SSL.SESS_CACHE_SERVER)
    context.use_certificate_chain_file(os.fspath(cert_file))
    if isinstance(key, (str, os.PathLike)):
        context.use_privatekey_file(os.fspath(key))
    else:
        context.use_privatekey(key)
    context.check_privatekey()
    if alpn:
        offered = list(alpn)

        def select(connection: SSL.Connection, client_protocols: list[bytes]) -> Any:
            for candidate in offered:
                if candidate in client_protocols:
                    return candidate
            return SSL.NO_OVERLAPPING_PROTOCOLS

        context.set_alpn_select_callback(select)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSOptions:
    """
    A connection creator around one shared server context, for
    `MemoryBIOTLSFactory` (or Twisted's factory, which accepts it too).
    """

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)
