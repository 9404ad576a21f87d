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
resumption on (TLS 1.3 tickets, TLS 1.2 tickets and a server-side session
cache), and release idle buffers so that quiet connections cost little
memory.

Also here, because every context of a server must carry them alike (an SNI
switch moves a connection to another context mid-handshake): client
certificate verification (`ClientAuth`), and the opt-in key log that
``SSLKEYLOGFILE`` asks for (`keylog_from_environment`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from ._policy import HARDENED, FactoryPolicy

__all__ = [
    "PROFILES",
    "ClientAuth",
    "KeyLog",
    "Profile",
    "ServerTLSOptions",
    "client_auth_of",
    "keylog_from_environment",
    "server_context",
    "verified_peer_certificate",
]

_log = Logger(namespace="membio_transport")

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
#: is tried first and dropped where OpenSSL lacks it.  No X448, P-521 or
#: finite-field groups: slower, and no client needs them.
_GROUPS: Final = ("X25519MLKEM768", "X25519", "P-256", "P-384")

#: Server-side session cache: one id context for everything we serve, so
#: that a session stays resumable across an SNI switch of context.
_SESSION_ID_CONTEXT: Final = b"membio-transport"

#: How deep a client certificate chain may be (leaf, intermediates, root):
#: real client PKIs have one or two intermediates.
_CLIENT_VERIFY_DEPTH: Final = 4

#: The environment variable browsers, curl and Python's ssl module honour.
KEYLOG_ENV: Final = "SSLKEYLOGFILE"


def _set_groups(context: SSL.Context) -> None:
    """
    Restrict key exchange to `_GROUPS`.  pyOpenSSL has no public call for
    the group list; its binding exposes ``SSL_CTX_set1_curves_list``, which
    is the same OpenSSL control as ``SSL_CTX_set1_groups_list`` (the
    "curves" name predates finite-field groups in TLS 1.3).
    """
    from OpenSSL._util import lib as _lib

    set_list: Any = getattr(_lib, "SSL_CTX_set1_groups_list", None) or getattr(
        _lib, "SSL_CTX_set1_curves_list", None
    )
    if set_list is None:
        raise RuntimeError("this pyOpenSSL cannot restrict key-exchange groups")
    candidates = [":".join(_GROUPS), ":".join(g for g in _GROUPS if "MLKEM" not in g)]
    for groups in candidates:
        if set_list(context._context, groups.encode()) == 1:
            return
        # The refusal left an error on OpenSSL's queue: a later, unrelated
        # pyOpenSSL call would report it as its own failure.
        _lib.ERR_clear_error()
    raise RuntimeError(f"OpenSSL accepts none of the key-exchange groups {', '.join(_GROUPS)}")


# ---------------------------------------------------------------- client auth


@dataclass(frozen=True)
class ClientAuth:
    """
    How a server asks for client certificates.

    @ivar ca_file: PEM file of the CAs whose client certificates are
        accepted; None asks for a certificate without verifying it (only to
        show what was sent).
    @ivar required: refuse the handshake of a client that sends none.
    """

    ca_file: Path | None
    required: bool = False

    def describe(self) -> str:
        if self.ca_file is None:
            return "requested, not verified"
        return f"{'required' if self.required else 'optional'}, verified against {self.ca_file}"


#: Which contexts verify client certificates, and how: the page (and any
#: application) asks `client_auth_of` rather than guessing from OpenSSL,
#: whose verify result reads "OK" whenever a callback accepted a chain.
_CLIENT_AUTH: weakref.WeakKeyDictionary[SSL.Context, ClientAuth] = weakref.WeakKeyDictionary()


def _verify_chain(
    connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int
) -> bool:
    # OpenSSL's own verdict, unchanged: a bad chain fails the handshake.
    return bool(ok)


def _accept_anything(
    connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int
) -> bool:
    return True


def _configure_client_auth(context: SSL.Context, auth: ClientAuth) -> None:
    flags = SSL.VERIFY_PEER | SSL.VERIFY_CLIENT_ONCE
    if auth.ca_file is None:
        context.set_verify(flags, _accept_anything)
    else:
        if auth.required:
            flags |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        context.load_verify_locations(os.fspath(auth.ca_file))
        # Tell clients (browsers pick a certificate by it) which CAs we accept.
        for authority in x509.load_pem_x509_certificates(Path(auth.ca_file).read_bytes()):
            context.add_client_ca(authority)
        context.set_verify(flags, _verify_chain)
        context.set_verify_depth(_CLIENT_VERIFY_DEPTH)
    _CLIENT_AUTH[context] = auth


def client_auth_of(connection: SSL.Connection) -> ClientAuth | None:
    """How the context serving C{connection} asks for client certificates."""
    return _CLIENT_AUTH.get(connection.get_context())


def verified_peer_certificate(connection: SSL.Connection) -> x509.Certificate | None:
    """
    The client certificate of C{connection} when it was verified against a
    CA (``ClientAuth.ca_file``), else None: no certificate, or one that was
    only requested for display.  With ``ClientAuth`` verifying, OpenSSL
    completes no handshake with a certificate that fails verification, so
    a certificate present on such a connection is a verified one (resumed
    sessions keep the certificate verified in their full handshake).
    """
    auth = client_auth_of(connection)
    if auth is None or auth.ca_file is None:
        return None
    return connection.get_peer_certificate(as_cryptography=True)


# ---------------------------------------------------------------- key log


class KeyLog:
    """
    Appends TLS secrets in the NSS key log format (what Wireshark reads) to
    one file, shared by every context of the process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # 0600: these lines decrypt every connection they describe.
        descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._file = os.fdopen(descriptor, "ab", buffering=0)
        self._broken = False

    def __call__(self, connection: SSL.Connection, line: bytes) -> None:
        # OpenSSL calls this inside the handshake, where an exception
        # would fail the connection (see _callbacks): a debugging aid that
        # cannot write (disk full) says so once and stops instead.
        if self._broken:
            return
        try:
            # Unbuffered, one write per line: lines never interleave or wait.
            self._file.write(line + b"\n")
        except OSError as error:
            self._broken = True
            _log.warn(
                "cannot append to the TLS key log {path} ({reason}): key logging stopped",
                path=self.path, reason=error.strerror or type(error).__name__,
            )

    def install(self, context: SSL.Context) -> None:
        context.set_keylog_callback(self)


_KEYLOGS: dict[Path, KeyLog | None] = {}


def keylog_from_environment() -> KeyLog | None:
    """
    The key log ``SSLKEYLOGFILE`` names, or None when it is unset.  Opt-in
    debugging only: the first use logs a warning, since anyone who can read
    the file can decrypt the traffic.  A file that cannot be opened logs
    why, once, and disables the key log.
    """
    value = os.environ.get(KEYLOG_ENV, "")
    if not value:
        return None
    path = Path(value).expanduser().absolute()
    if path in _KEYLOGS:
        return _KEYLOGS[path]
    keylog: KeyLog | None
    try:
        keylog = KeyLog(path)
    except OSError as error:
        keylog = None
        _log.warn(
            "{variable} is set but {path} cannot be opened ({reason}): no TLS key log",
            variable=KEYLOG_ENV, path=path, reason=error.strerror or type(error).__name__,
        )
    else:
        _log.warn(
            "WARNING: {variable} is set: TLS session secrets are appended to {path}; anyone "
            "who reads it can decrypt this server's traffic (for debugging only)",
            variable=KEYLOG_ENV, path=path,
        )
    _KEYLOGS[path] = keylog
    return keylog


# ---------------------------------------------------------------- contexts


def server_context(
    cert_file: Path | str,
    key: Path | str | PrivateKey,
    *,
    profile: Profile = "intermediate",
    alpn: Sequence[bytes] = (),
    client_auth: ClientAuth | None = None,
    keylog: KeyLog | Literal["environment"] | None = "environment",
) -> SSL.Context:
    """
    Build a server ``SSL.Context`` for one certificate chain and key.

    @param cert_file: PEM, leaf first, then intermediates.
    @param key: a PEM private key file, or a key already loaded with
        ``cryptography`` (how an encrypted key gets here: decrypt it first,
        e.g. with ``membio_transport.certs.read_private_key``).
    @param alpn: protocols to offer, in server preference order.
    @param client_auth: ask for (and maybe require and verify) client
        certificates.
    @param keylog: where to log TLS secrets; by default what
        ``SSLKEYLOGFILE`` names, if anything.
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
    if client_auth is not None:
        _configure_client_auth(context, client_auth)
    if keylog == "environment":
        keylog = keylog_from_environment()
    if keylog is not None:
        keylog.install(context)
    return context


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLSOptions:
    """
    A connection creator around one shared server context, for
    `MemoryBIOTLSFactory` (or Twisted's factory, which accepts it too).

    @ivar context: the context of new connections.  Replacing it (a
        certificate reload) changes what new connections get; a connection
        keeps the context it was made with until it ends.
    @cvar factory_policy: what a `MemoryBIOTLSFactory` built on this
        creator does where Twisted's layer has no opinion (handshake
        timeout, plain HTTP...): the hardened settings, like the context.
        Keywords given to the factory still win.
    """

    factory_policy: FactoryPolicy = HARDENED

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self.context, None)
