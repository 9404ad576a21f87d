"""The state directory of generated certificates, and when to reuse or renew them.

``ensure_certificate`` keeps the zero-config certificates (see the ``certs`` face for the two
modes) in a private directory across restarts.  The local root's private key can sign
certificates for any name, so the directory is kept at mode 0700, key files at 0600, files
that others planted are refused, writes are atomic and two servers starting at once are
serialized by a lock.  The policy half decides whether a stored root and leaf are still
good (names, key type, lifetime, issuer) or must be generated again.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ._errors import CertificateError, check_key_permissions, os_reason
from ._hostnames import requested_names
from ._servercert import ServerCertificate
from ._x509 import (
    LOCAL_CA_LEAF_LIFETIME,
    GeneratedKey,
    KeyType,
    fingerprint,
    generate_leaf,
    generate_root_ca,
    is_ca,
    is_issued_by,
    key_matches,
    key_type_of,
    lifetime_of,
    pem_cert,
    pem_key,
    san_names,
    utc_now,
)

__all__ = [
    "CERT_FILE_MODE",
    "DEFAULT_MODE",
    "KEY_FILE_MODE",
    "Mode",
    "default_cert_dir",
    "ensure_certificate",
    "prepare_state_dir",
    "renewal_time",
    "write_atomically",
]

Mode: TypeAlias = Literal["self-signed", "local-ca"]
# See the certs face's docstring: trust once, rotate leaves freely, accepted by every browser.
DEFAULT_MODE: Final[Mode] = "local-ca"

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

ROOT_CERT_FILE: Final = "local-ca.pem"
ROOT_KEY_FILE: Final = "local-ca-key.pem"
LEAF_CERT_FILE: Final = "server.pem"
LEAF_KEY_FILE: Final = "server-key.pem"
SELF_SIGNED_CERT_FILE: Final = "self-signed.pem"
SELF_SIGNED_KEY_FILE: Final = "self-signed-key.pem"
# Two servers starting at once must not both generate and overwrite each other's files.
LOCK_FILE: Final = ".lock"


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


def renewal_time(cert: x509.Certificate) -> datetime.datetime:
    """When ensure_certificate() stops reusing ``cert`` (see RENEW_FRACTION)."""
    margin = min(lifetime_of(cert) / RENEW_FRACTION, MAX_RENEW_MARGIN)
    return cert.not_valid_after_utc - margin


# ------------------------------------------------------------------ the state directory


@dataclass(frozen=True)
class _Pair:
    cert: x509.Certificate
    key: GeneratedKey


def prepare_state_dir(directory: Path) -> Path:
    """``directory``, absolute, created 0700 if missing, refused if someone else owns it.

    Also used for the ACME state (``membio_transport.acme``), whose account keys need the
    same protection as the local root's key.  Raises CertificateError (one line).
    """
    # Absolute, because the trust commands we print are run from other directories.
    directory = Path(directory).expanduser().absolute()
    try:
        directory.mkdir(mode=STATE_DIR_MODE, parents=True, exist_ok=True)
        info = os.stat(directory)
    except OSError as error:
        raise CertificateError(
            f"cannot create certificate directory {directory}: {os_reason(error)}"
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
        raise CertificateError(f"cannot chmod 700 {directory}: {os_reason(error)}") from None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, KEY_FILE_MODE)
    except OSError as error:
        raise CertificateError(f"cannot open lock file {path}: {os_reason(error)}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomically(path: Path, data: bytes, mode: int) -> None:
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
        raise CertificateError(f"cannot write {path}: {os_reason(error)}") from None


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself survive a crash, not just the file's content.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store(pair: _Pair, cert_path: Path, key_path: Path) -> None:
    # Key first: a crash in between leaves a mismatched pair, which the next start replaces.
    write_atomically(key_path, pem_key(pair.key), KEY_FILE_MODE)
    write_atomically(cert_path, pem_cert(pair.cert), CERT_FILE_MODE)


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
    check_key_permissions(key_path, STATE_KEY_FORBIDDEN_BITS)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        return None  # ours to regenerate: a damaged file is no reason to refuse to start
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return None
    if not key_matches(cert, key):
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
        key_type_of(leaf.key) == request.key_type
        and cert.not_valid_before_utc <= request.now < renewal_time(cert)
        and set(san_names(cert)) == set(request.names)
        # A shorter requested lifetime takes effect now, not after the old leaf runs out.
        and lifetime_of(cert) <= request.lifetime
        and is_issued_by(cert, issuer)
    )


def _root_is_reusable(root: _Pair, request: _Request) -> bool:
    cert = root.cert
    return (
        is_ca(cert)
        and is_issued_by(cert, cert)
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
        fingerprint_sha256=fingerprint(leaf),
        names=san_names(leaf),
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
        names=requested_names(hostnames),
        key_type=key_type,
        lifetime=_checked_lifetime(mode, leaf_lifetime),
        now=utc_now(now),
    )
    directory = prepare_state_dir(default_cert_dir() if cert_dir is None else cert_dir)
    with _locked(directory):
        if mode == "local-ca":
            return _ensure_local_ca(directory, request)
        return _ensure_self_signed(directory, request)
