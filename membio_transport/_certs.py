"""Server certificates for the zero-config ``twistd membio-https`` plugin.

``twistd -n membio-https`` has to serve HTTPS on a fresh machine where nobody has a
certificate at hand, yet whatever it serves must pass strict verifiers (Python's ``ssl``
with ``VERIFY_X509_STRICT``, ``openssl verify -x509_strict``, curl, browsers) once the user
has trusted it.  This module makes such certificates, keeps them in a private state
directory, reuses and renews them across restarts, and validates certificates the user
brings along with ``--cert``/``--key``.

Two ways of generating are offered:

``local-ca`` (the default)
    A ten-year local root (CA:TRUE, pathlen:0) signs short-lived leaves.  The user trusts
    the root once; leaves rotate every few weeks without any new trust step.  This is the
    default because a trusted root is what every trust store expects: Firefox will not
    import a CA:FALSE certificate as an authority, and Chromium rejects a CA:FALSE
    certificate trusted as an anchor (NSS trust "C") with a non-skippable error.
``self-signed``
    A single CA:FALSE certificate that is its own trust anchor.  OpenSSL (so Python's
    ``ssl`` and curl) accepts it under strict verification, but every renewal needs the
    user to trust the new certificate again, and NSS needs the "CP" trust flags for it.

The local root's private key can sign certificates for any name: anyone who can read the
state directory could impersonate any site to a user who trusted the root, which is why
the directory is kept at mode 0700 and key files at 0600.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import getpass
import ipaddress
import os
import re
import secrets
import shlex
import socket
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "DEFAULT_MODE",
    "CertificateError",
    "KeyType",
    "Mode",
    "ServerCertificate",
    "default_cert_dir",
    "default_hostnames",
    "ensure_certificate",
    "generate_leaf",
    "generate_private_key",
    "generate_root_ca",
    "load_certificate",
    "normalize_name",
    "read_private_key",
    "renewal_time",
]

Mode: TypeAlias = Literal["self-signed", "local-ca"]
KeyType: TypeAlias = Literal["ecdsa", "rsa"]
GeneratedKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# The key types OpenSSL.SSL.Context.use_privatekey accepts.
ServerKey: TypeAlias = (
    dsa.DSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
    | rsa.RSAPrivateKey
)
# See the module docstring: trust once, rotate leaves freely, accepted by every browser.
DEFAULT_MODE: Final[Mode] = "local-ca"

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
# Each renewal of a self-signed certificate needs a new trust step, so make them rare.
SELF_SIGNED_LIFETIME: Final = datetime.timedelta(days=365)
# Apple platforms reject server certificates valid for longer than this, even ones
# issued by a root the user added.
MAX_LEAF_LIFETIME: Final = datetime.timedelta(days=825)
# Renew in the last third of the lifetime: a 30-day leaf renews with 10 days left, so a
# server restarted at least every 20 days never serves an expired certificate ...
RENEW_FRACTION: Final = 3
# ... but no earlier than this before expiry, so a year-long self-signed certificate
# (each renewal needs re-trusting) is not replaced four months early.
MAX_RENEW_MARGIN: Final = datetime.timedelta(days=30)

# Named after the distribution, so users can tell what the directory is for.
STATE_DIR_NAME: Final = "membio-transport"
# Nobody else may list, read or replace our keys.
STATE_DIR_MODE: Final = 0o700
KEY_FILE_MODE: Final = 0o600
# Certificates are public; 0644 lets other local users (and update-ca-certificates) copy them.
CERT_FILE_MODE: Final = 0o644
# We write our keys 0600, so any group/other bit means someone changed them.
STATE_KEY_FORBIDDEN_BITS: Final = 0o077
# A user's own key may be group-readable (Debian's ssl-cert group convention, 0640), but
# never readable or writable by everybody.
USER_KEY_FORBIDDEN_BITS: Final = 0o007

ROOT_CERT_FILE: Final = "local-ca.pem"
ROOT_KEY_FILE: Final = "local-ca-key.pem"
LEAF_CERT_FILE: Final = "server.pem"
LEAF_KEY_FILE: Final = "server-key.pem"
SELF_SIGNED_CERT_FILE: Final = "self-signed.pem"
SELF_SIGNED_KEY_FILE: Final = "self-signed-key.pem"
# Two servers starting at once must not both generate and overwrite each other's files.
LOCK_FILE: Final = ".lock"

# Always in the certificate: what local clients type, and the loopback addresses.
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
# RFC 5280 upper bound for a commonName.
MAX_COMMON_NAME_LENGTH: Final = 64
# RFC 1035 limit for a whole name.
MAX_DNS_NAME_LENGTH: Final = 253
# One label: RFC 1123 letters, digits and inner hyphens, plus the underscores that real
# host names carry and that clients accept.
DNS_LABEL: Final = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class CertificateError(Exception):
    """A certificate or key cannot be used; the message is one actionable line."""


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate ready to serve, and what a user needs to know to trust it."""

    cert_path: Path  # PEM: leaf first, then any chain
    key_path: Path  # PEM private key, 0600 when generated
    trust_path: Path  # what users trust: the self-signed certificate itself, or the local root
    fingerprint_sha256: str  # of the leaf, "AB:CD:..."
    names: tuple[str, ...]  # DNS names and IP addresses in the leaf's subjectAltName
    not_after: datetime.datetime  # leaf expiry, timezone-aware UTC
    generated: bool  # True when this call created or renewed the leaf
    # When ensure_certificate() will next replace the leaf; None for the user's own files.
    renew_after: datetime.datetime | None = None
    # True when this call created the file in trust_path, so users must (re-)trust it.
    new_trust_anchor: bool = False
    # False when the anchor is a CA:FALSE certificate, which NSS must trust as a peer too.
    trust_anchor_is_ca: bool = True

    def summary(self) -> list[str]:
        """Log lines identifying the certificate being served."""
        return [
            f"TLS certificate {self.cert_path} for {', '.join(self.names) or '(no names)'}",
            f"  SHA-256 fingerprint {self.fingerprint_sha256}",
            f"  valid until {self.not_after:%Y-%m-%d %H:%M:%S} UTC",
        ]

    def trust_instructions(self, url: str | int) -> list[str]:
        """Log lines telling a user how to trust ``trust_path``, for ``url`` or a port."""
        if isinstance(url, int):
            url = f"https://localhost:{url}/"
        path = shlex.quote(str(self.trust_path))
        what = "local CA root" if self.trust_anchor_is_ca else "self-signed certificate"
        # Chromium needs the "P" (trusted peer) flag to accept a CA:FALSE certificate as
        # its own anchor, Firefox needs "C"; a real root wants "C" alone.
        nss_flags = "C,," if self.trust_anchor_is_ca else "CP,,"
        return [
            *self.summary(),
            f"To trust it, trust the {what} {self.trust_path}:",
            f"  curl:    curl --cacert {path} {shlex.quote(url)}",
            f"  Python:  SSL_CERT_FILE={path} python3 ...  "
            f"or ssl.create_default_context(cafile={str(self.trust_path)!r})",
            f"  Debian/Ubuntu system store: sudo cp {path} "
            "/usr/local/share/ca-certificates/membio.crt && sudo update-ca-certificates",
            f'  Chromium (NSS): certutil -d sql:$HOME/.pki/nssdb -A -t "{nss_flags}" '
            f"-n membio -i {path}",
            *_firefox_instructions(path, nss_flags, self.trust_anchor_is_ca),
        ]


def _firefox_instructions(path: str, nss_flags: str, is_ca: bool) -> list[str]:
    if is_ca:
        return [
            "  Firefox: Settings > Privacy & Security > Certificates > View Certificates > "
            f"Authorities > Import {path}, tick 'Trust this CA to identify websites'",
        ]
    # Firefox's import dialog refuses CA:FALSE certificates as authorities.
    return [
        f'  Firefox: certutil -d sql:PROFILE_DIR -A -t "{nss_flags}" -n membio -i {path} '
        "(PROFILE_DIR from about:profiles, Firefox closed)",
    ]


def default_cert_dir() -> Path:
    """``$XDG_STATE_HOME/membio-transport``, else ``~/.local/state/membio-transport``.

    Certificates and keys are state, not configuration, in XDG terms.  Root gets its own
    home's directory too: a system-wide location would need packaging decisions (owner,
    backups) that a zero-config development server should not make.
    """
    state_home = os.environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if state_home and os.path.isabs(state_home):
        return Path(state_home) / STATE_DIR_NAME
    return Path.home() / ".local" / "state" / STATE_DIR_NAME


def default_hostnames() -> tuple[str, ...]:
    """Loopback names plus this machine's host name, when it has a usable one."""
    names = list(LOOPBACK_NAMES)
    hostname = _usable_hostname(socket.gethostname())
    if hostname is not None and hostname not in names:
        names.append(hostname)
    return tuple(names)


def _usable_hostname(raw: str) -> str | None:
    # A zero-config server must not refuse to start because of an empty or odd host name.
    try:
        return normalize_name(raw)
    except CertificateError:
        return None


def normalize_name(raw: str) -> str:
    """The canonical subjectAltName form of a host name or IP address.

    Raises CertificateError for anything a certificate cannot carry.
    """
    text = raw.strip().rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]  # URL-style IPv6 literal
    if not text:
        raise CertificateError(f"invalid host name {raw!r}: it is empty")
    address = _parse_ip(text)
    if address is not None:
        return str(address)
    return _normalize_dns_name(raw, text)


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise CertificateError(f"invalid host name {text!r}: a certificate cannot hold a zone")
    return address


def _normalize_dns_name(raw: str, text: str) -> str:
    try:
        # SAN dNSName entries must be ASCII: internationalized names go in as A-labels
        # (the standard library's IDNA 2003 codec; such names are rare on a dev server).
        name = text.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise CertificateError(f"invalid host name {raw!r}: not a valid DNS name") from None
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 2:
        labels = labels[1:]
    if len(name) > MAX_DNS_NAME_LENGTH or not all(DNS_LABEL.match(label) for label in labels):
        raise CertificateError(f"invalid host name {raw!r}: not a valid DNS name")
    return name


def _requested_names(hostnames: Sequence[str]) -> tuple[str, ...]:
    if isinstance(hostnames, str):
        raise TypeError("hostnames must be a sequence of names, not a single str")
    names = (*default_hostnames(), *(normalize_name(name) for name in hostnames))
    return tuple(dict.fromkeys(names))  # drop duplicates, keep the order


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
    start = _utc_now(now)
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
    start = _utc_now(now)
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
        address = _parse_ip(name)
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


def _utc_now(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    # X.509 times have whole seconds; dropping the rest makes comparisons exact.
    return now.astimezone(datetime.UTC).replace(microsecond=0)


def _san_names(cert: x509.Certificate) -> tuple[str, ...]:
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


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _lifetime(cert: x509.Certificate) -> datetime.timedelta:
    return cert.not_valid_after_utc - cert.not_valid_before_utc - CLOCK_SKEW_ALLOWANCE


def renewal_time(cert: x509.Certificate) -> datetime.datetime:
    """When ensure_certificate() stops reusing ``cert`` (see RENEW_FRACTION)."""
    margin = min(_lifetime(cert) / RENEW_FRACTION, MAX_RENEW_MARGIN)
    return cert.not_valid_after_utc - margin


def _public_key_bytes(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    return _public_key_bytes(cert) == _public_key_bytes(key)


def _is_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _key_type_of(key: PrivateKeyTypes) -> KeyType | None:
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ECDSA_CURVE):
        return "ecdsa"
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size >= RSA_KEY_SIZE:
        return "rsa"
    return None


def _pem_key(key: GeneratedKey) -> bytes:
    # Unencrypted: the server must start unattended; file permissions protect the key.
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _check_key_permissions(path: Path, forbidden_bits: int) -> None:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as error:
        raise CertificateError(f"cannot read key file {path}: {_reason(error)}") from None
    if mode & forbidden_bits:
        raise CertificateError(
            f"{path} is {_access(mode & forbidden_bits)} by other users (mode {mode:04o}); "
            f"run: chmod 600 {shlex.quote(str(path))}"
        )


def _access(bits: int) -> str:
    if bits & 0o044:
        return "readable"
    return "writable" if bits & 0o022 else "accessible"


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


# ------------------------------------------------------------------ the state directory


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: GeneratedKey


def _prepare_state_dir(directory: Path) -> Path:
    # Absolute, because the trust commands we print are run from other directories.
    directory = Path(directory).expanduser().absolute()
    try:
        directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        info = os.stat(directory)
    except OSError as error:
        raise CertificateError(
            f"cannot create certificate directory {directory}: {_reason(error)}"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise CertificateError(f"certificate directory {directory} is not a directory")
    if info.st_uid != os.geteuid():
        raise CertificateError(
            f"certificate directory {directory} belongs to uid {info.st_uid}, not to you "
            f"(uid {os.geteuid()}); choose a directory of your own"
        )
    if stat.S_IMODE(info.st_mode) & ~STATE_DIR_MODE:
        _tighten(directory)
    return directory


def _tighten(directory: Path) -> None:
    # It is ours, so fixing it beats refusing (umask 002 makes 0775 directories on many
    # systems).  Key contents were protected by their own 0600 mode; files that others
    # may have planted meanwhile are caught by _check_owner before we use them.
    try:
        os.chmod(directory, STATE_DIR_MODE)
    except OSError as error:
        raise CertificateError(f"cannot chmod 700 {directory}: {_reason(error)}") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, KEY_FILE_MODE)
    except OSError as error:
        raise CertificateError(f"cannot open lock file {path}: {_reason(error)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` so that readers see the old or the new content, never a mix."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        # Created with its final mode, so a key is never readable by others, not even briefly.
        fd = os.open(temporary, flags, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits a certificate should have
            with open(fd, "wb", closefd=False) as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
        finally:
            os.close(fd)
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CertificateError(f"cannot write {path}: {_reason(error)}") from None


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself survive a crash, not just the file's content.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store(pair: _Pair, cert_path: Path, key_path: Path) -> None:
    # Key first: a crash in between leaves a mismatched pair, which the next start replaces.
    _write_atomically(key_path, _pem_key(pair.key), KEY_FILE_MODE)
    _write_atomically(cert_path, _pem_cert(pair.cert), CERT_FILE_MODE)


def _check_owner(path: Path) -> None:
    # Someone who could write to the directory before we tightened it may have planted a
    # root of their own; root would read it despite its 0600 mode, and trust it.
    with contextlib.suppress(FileNotFoundError):
        owner = os.stat(path).st_uid
        if owner != os.geteuid():
            raise CertificateError(
                f"{path} belongs to uid {owner}, not to you (uid {os.geteuid()}); "
                "someone else may have put it there: check it, then remove it"
            )


def _load_stored(cert_path: Path, key_path: Path) -> _Pair | None:
    """Our own earlier pair, or None when it is missing, damaged or mismatched."""
    if not key_path.exists():
        return None
    _check_owner(cert_path)
    _check_owner(key_path)
    _check_key_permissions(key_path, STATE_KEY_FORBIDDEN_BITS)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return None  # ours to regenerate: a damaged file is no reason to refuse to start
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    if not _key_matches(cert, key):
        return None
    return _Pair(cert, key)


# ------------------------------------------------------------------------- the policy


@dataclass(frozen=True)
class _Request:
    names: tuple[str, ...]
    key_type: KeyType
    lifetime: datetime.timedelta
    now: datetime.datetime


def _leaf_is_reusable(leaf: _Pair, request: _Request, issuer: x509.Certificate) -> bool:
    cert = leaf.cert
    return (
        _key_type_of(leaf.key) == request.key_type
        and cert.not_valid_before_utc <= request.now < renewal_time(cert)
        and set(_san_names(cert)) == set(request.names)
        # A shorter requested lifetime takes effect now, not after the old leaf runs out.
        and _lifetime(cert) <= request.lifetime
        and _is_issued_by(cert, issuer)
    )


def _root_is_reusable(root: _Pair, request: _Request) -> bool:
    cert = root.cert
    return (
        _is_ca(cert)
        and _is_issued_by(cert, cert)
        and cert.not_valid_before_utc <= request.now
        # Regenerate once a full-length leaf would outlive the root.
        and request.now + request.lifetime <= cert.not_valid_after_utc
    )


def _ensure_local_ca(directory: Path, request: _Request) -> ServerCertificate:
    root_cert_path, root_key_path = directory / ROOT_CERT_FILE, directory / ROOT_KEY_FILE
    cert_path, key_path = directory / LEAF_CERT_FILE, directory / LEAF_KEY_FILE
    root = _load_stored(root_cert_path, root_key_path)
    new_root = root is None or not _root_is_reusable(root, request)
    if root is None or new_root:
        root = _Pair(*generate_root_ca(request.key_type, now=request.now))
        _store(root, root_cert_path, root_key_path)
    leaf = _load_stored(cert_path, key_path)
    generated = leaf is None or not _leaf_is_reusable(leaf, request, root.cert)
    if leaf is None or generated:
        leaf = _Pair(
            *generate_leaf(
                request.names,
                request.key_type,
                issuer=(root.cert, root.key),
                now=request.now,
                lifetime=request.lifetime,
            )
        )
        _store(leaf, cert_path, key_path)
    return _describe(leaf.cert, cert_path, key_path, root_cert_path, generated, new_root)


def _ensure_self_signed(directory: Path, request: _Request) -> ServerCertificate:
    cert_path, key_path = directory / SELF_SIGNED_CERT_FILE, directory / SELF_SIGNED_KEY_FILE
    leaf = _load_stored(cert_path, key_path)
    generated = leaf is None or not _leaf_is_reusable(leaf, request, leaf.cert)
    if leaf is None or generated:
        leaf = _Pair(
            *generate_leaf(
                request.names, request.key_type, now=request.now, lifetime=request.lifetime
            )
        )
        _store(leaf, cert_path, key_path)
    return _describe(leaf.cert, cert_path, key_path, cert_path, generated, generated)


def _describe(
    leaf: x509.Certificate,
    cert_path: Path,
    key_path: Path,
    trust_path: Path,
    generated: bool,
    new_trust_anchor: bool,
) -> ServerCertificate:
    return ServerCertificate(
        cert_path=cert_path,
        key_path=key_path,
        trust_path=trust_path,
        fingerprint_sha256=_fingerprint(leaf),
        names=_san_names(leaf),
        not_after=leaf.not_valid_after_utc,
        generated=generated,
        renew_after=renewal_time(leaf),
        new_trust_anchor=new_trust_anchor,
        trust_anchor_is_ca=trust_path != cert_path,
    )


def _checked_lifetime(mode: Mode, lifetime: datetime.timedelta | None) -> datetime.timedelta:
    if lifetime is None:
        return LOCAL_CA_LEAF_LIFETIME if mode == "local-ca" else SELF_SIGNED_LIFETIME
    if not datetime.timedelta(0) < lifetime <= MAX_LEAF_LIFETIME:
        raise CertificateError(
            f"certificate lifetime must be more than 0 and at most {MAX_LEAF_LIFETIME.days} days"
        )
    return lifetime


def ensure_certificate(
    cert_dir: Path | None = None,
    hostnames: Sequence[str] = (),
    *,
    mode: Mode = DEFAULT_MODE,
    key_type: KeyType = "ecdsa",
    leaf_lifetime: datetime.timedelta | None = None,
    now: datetime.datetime | None = None,
) -> ServerCertificate:
    """A server certificate in ``cert_dir``, reused when still good, else (re)generated.

    The certificate covers default_hostnames() plus ``hostnames``.  It is replaced when it
    enters the last third of its lifetime (at most MAX_RENEW_MARGIN before expiry), when
    the names or key type change, or when its files are damaged.  ``leaf_lifetime``
    defaults to 30 days for "local-ca" and 365 days for "self-signed".  In "local-ca" mode
    the root is kept until a full-length leaf would outlive it; its key type is the one
    asked for when it was created.

    Raises CertificateError with a one-line message when the directory or a key file is
    unsafe or cannot be written.
    """
    if mode not in ("local-ca", "self-signed"):
        raise CertificateError(
            f"unknown certificate mode {mode!r}: use 'local-ca' or 'self-signed'"
        )
    if key_type not in ("ecdsa", "rsa"):
        raise CertificateError(f"unknown key type {key_type!r}: use 'ecdsa' or 'rsa'")
    request = _Request(
        names=_requested_names(hostnames),
        key_type=key_type,
        lifetime=_checked_lifetime(mode, leaf_lifetime),
        now=_utc_now(now),
    )
    directory = _prepare_state_dir(default_cert_dir() if cert_dir is None else cert_dir)
    with _locked(directory):
        if mode == "local-ca":
            return _ensure_local_ca(directory, request)
        return _ensure_self_signed(directory, request)


# ------------------------------------------------------------ the user's own certificate


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
    moment = _utc_now(now)
    chain = _parse_chain(cert_file, _read_user_file(cert_file, "certificate"))
    key = read_private_key(key_file, password)
    if not _key_matches(chain[0], key):
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
        fingerprint_sha256=_fingerprint(leaf),
        names=_san_names(leaf),
        not_after=leaf.not_valid_after_utc,
        generated=False,
        trust_anchor_is_ca=_is_ca(chain[-1]),
    )


def read_private_key(key_file: Path, password: bytes | None = None) -> ServerKey:
    """The user's PEM private key, for ``OpenSSL.SSL.Context.use_privatekey``.

    The plugin needs this only for an encrypted key: ``use_privatekey_file`` would need
    pyOpenSSL's deprecated password callback.  Raises CertificateError naming the file.
    """
    data = _read_user_file(key_file, "key")
    _check_key_permissions(key_file, USER_KEY_FORBIDDEN_BITS)
    key = _parse_key(key_file, data, password)
    if not isinstance(key, ServerKey):
        raise CertificateError(f"{key_file} holds a {type(key).__name__}, which cannot sign TLS")
    return key


def _read_user_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise CertificateError(f"cannot read {what} file {path}: {_reason(error)}") from None


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
