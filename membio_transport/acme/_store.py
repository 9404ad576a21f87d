"""The ACME state directory: account keys, registrations, certificates, the order lock.

Layout under the state directory (by default ``$XDG_STATE_HOME/membio-transport/acme``)::

    .order.lock                               one process orders at a time (holder's pid)
    accounts/<ca-host>-<hash>/account-key.pem one account per (directory URL, e-mail), 0600
    accounts/<ca-host>-<hash>/account.json    its URL at the CA and the terms agreed to
    certificates/<first-name>-<hash>/fullchain.pem, key.pem
                                              one per (directory URL, set of names)
    challenges/                               answers shared with worker processes

The hashes keep staging and production apart (a staging certificate must never be served
for a production configuration) and two configurations for different name sets apart; the
readable prefixes are for the operator.  Directories are 0700 and keys 0600 and every
file is replaced atomically, through the certificate layer's helpers (``membio_transport.certs``).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwk import JWKEC

from ..certs import (
    CERT_FILE_MODE,
    KEY_FILE_MODE,
    CertificateError,
    ServerCertificate,
    generate_private_key,
    load_certificate,
    pem_key,
    prepare_state_dir,
    read_private_key,
    write_atomically,
)
from ._errors import AcmeError, OrderCancelled

__all__ = ["AccountRecord", "AcmeStateError", "AcmeStore"]

ACCOUNTS_DIR: Final = "accounts"
CERTIFICATES_DIR: Final = "certificates"
CHALLENGES_DIR: Final = "challenges"
ACCOUNT_KEY_FILE: Final = "account-key.pem"
ACCOUNT_FILE: Final = "account.json"
CHAIN_FILE: Final = "fullchain.pem"
KEY_FILE: Final = "key.pem"
LOCK_FILE: Final = ".order.lock"
# 12 hex digits (48 bits) of SHA-256: collisions between one machine's configurations
# are out of the question, and the directory names stay short.
HASH_DIGITS: Final = 12
# How often a process waiting for another one's order checks the lock (and whether it
# was asked to stop): orders take seconds, so a second is fine-grained enough.
LOCK_POLL_SECONDS: Final = 1.0
# A certificate whose notBefore is at most this far ahead of our clock counts as valid:
# the CA's clock may run a little ahead, and pebble does not backdate notBefore.
CLOCK_SKEW_ALLOWANCE: Final = datetime.timedelta(minutes=5)
_UNSAFE: Final = re.compile(r"[^a-z0-9._-]+")


class AcmeStateError(AcmeError):
    """The state directory or a file in it cannot be used (permissions, owner, disk)."""

    retry = False


@dataclass(frozen=True)
class AccountRecord:
    """An account key, and what we know about its registration at one CA."""

    key: JWKEC
    uri: str | None  # None: the key exists but was never registered (or the CA forgot it)
    terms_of_service: str | None  # the terms the registration agreed to


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:HASH_DIGITS]


def _label(text: str) -> str:
    return _UNSAFE.sub("_", text.lower()).strip("._")[:40] or "x"


class AcmeStore:
    """Files of one state directory; every method may raise AcmeStateError (one line)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def _dir(self, *parts: str) -> Path:
        path = self.root
        try:
            prepare_state_dir(path)
            for part in parts:
                path = prepare_state_dir(path / part)
        except CertificateError as error:
            raise AcmeStateError(str(error)) from None
        return path

    @property
    def challenges(self) -> Path:
        """Where a ChallengeBoard shares answers with worker processes."""
        return self._dir() / CHALLENGES_DIR

    # -- accounts ------------------------------------------------------------------

    def account_dir(self, directory_url: str, email: str | None) -> Path:
        """The folder of the account for this CA directory and contact address."""
        host = urlsplit(directory_url).netloc or "ca"
        name = f"{_label(host)}-{_digest(directory_url, email or '')}"
        return self._dir(ACCOUNTS_DIR, name)

    def load_account(self, directory_url: str, email: str | None) -> AccountRecord:
        """The stored account, or a new key saved before the CA ever sees it.

        Saving the key first means a crash after registering leaves a key the CA knows;
        registering it again returns the existing account.
        """
        folder = self.account_dir(directory_url, email)
        key_path = folder / ACCOUNT_KEY_FILE
        if key_path.exists():
            try:
                key = read_private_key(key_path)
            except CertificateError as error:
                raise AcmeStateError(f"ACME account key: {error}") from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise AcmeStateError(f"{key_path} is not an ECDSA key; move it away to start over")
        else:
            key = generate_private_key("ecdsa")
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            self._write(key_path, pem_key(key), KEY_FILE_MODE)
        uri, terms = self._read_registration(folder / ACCOUNT_FILE)
        return AccountRecord(JWKEC(key=key), uri, terms)

    def save_registration(
        self, directory_url: str, email: str | None, uri: str | None, terms: str | None
    ) -> None:
        """Remember the account URL (None forgets it) and the terms agreed to."""
        folder = self.account_dir(directory_url, email)
        record = {
            "directory": directory_url,
            "email": email,
            "uri": uri,
            "termsOfServiceAgreed": terms,
            "saved": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        data = (json.dumps(record, indent=2) + "\n").encode()
        self._write(folder / ACCOUNT_FILE, data, KEY_FILE_MODE)

    @staticmethod
    def _read_registration(path: Path) -> tuple[str | None, str | None]:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None, None  # never registered, or damaged: registering again is safe
        if not isinstance(record, dict):
            return None, None
        uri, terms = record.get("uri"), record.get("termsOfServiceAgreed")
        return (
            uri if isinstance(uri, str) else None,
            terms if isinstance(terms, str) else None,
        )

    # -- certificates --------------------------------------------------------------

    def certificate_dir(self, directory_url: str, names: Sequence[str]) -> Path:
        """The folder of the certificate for this CA directory and set of names."""
        key = _digest(directory_url, *sorted(names))
        return self._dir(CERTIFICATES_DIR, f"{_label(names[0])}-{key}")

    def load_certificate(
        self, directory_url: str, names: Sequence[str], now: datetime.datetime
    ) -> ServerCertificate | str:
        """The stored certificate, or why there is none to use (a short reason)."""
        folder = self.certificate_dir(directory_url, names)
        chain, key = folder / CHAIN_FILE, folder / KEY_FILE
        if not chain.exists() or not key.exists():
            return "none stored yet"
        try:
            stored = load_certificate(chain, key, now=_judged_at(chain, now))
        except CertificateError as error:
            return str(error)
        if set(stored.names) != set(names):
            return "its names differ"  # a hash collision or a hand-edited file
        return stored

    def save_certificate(
        self,
        directory_url: str,
        names: Sequence[str],
        chain_pem: bytes,
        key: ec.EllipticCurvePrivateKey,
        now: datetime.datetime,
    ) -> ServerCertificate:
        """Store a new chain and key atomically and describe them."""
        folder = self.certificate_dir(directory_url, names)
        # Key first: a crash in between leaves a mismatched pair, which
        # load_certificate refuses, so the next start orders again.
        self._write(folder / KEY_FILE, pem_key(key), KEY_FILE_MODE)
        self._write(folder / CHAIN_FILE, chain_pem, CERT_FILE_MODE)
        try:
            chain = folder / CHAIN_FILE
            return load_certificate(chain, folder / KEY_FILE, now=_judged_at(chain, now))
        except CertificateError as error:
            raise AcmeStateError(f"the certificate the CA issued is unusable: {error}") from None

    @staticmethod
    def _write(path: Path, data: bytes, mode: int) -> None:
        try:
            write_atomically(path, data, mode)
        except CertificateError as error:
            raise AcmeStateError(str(error)) from None

    # -- one process orders --------------------------------------------------------

    @contextlib.contextmanager
    def order_lock(
        self, cancelled: threading.Event, waiting: Callable[[str], None]
    ) -> Iterator[None]:
        """Hold the state directory's order lock, waiting for another process's order.

        Blocks the calling thread (never the reactor's); calls ``waiting(holder)`` once
        when another process has the lock; raises OrderCancelled when ``cancelled`` is set
        while waiting.  The lock is an ``flock`` on a file, released when the holder
        exits however it exits.
        """
        path = self._dir() / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            fd = os.open(path, flags, KEY_FILE_MODE)
        except OSError as error:
            raise AcmeStateError(f"cannot open {path}: {error.strerror}") from None
        try:
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told:
                        waiting(_holder(fd))
                        told = True
                    if cancelled.wait(LOCK_POLL_SECONDS):
                        raise OrderCancelled("stopped while waiting for the order lock") from None
            _HELD_LOCKS.add(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield
        finally:
            _HELD_LOCKS.discard(fd)
            os.close(fd)  # closing releases the lock


#: The order-lock descriptors this process holds now.  A process forked while one is held
#: (a ``--workers`` worker started during an order) would keep the ``flock`` alive after
#: the parent lets go, since the lock belongs to the open file description the two share:
#: the parent's next order would then wait for a worker that never orders.  The child
#: closes its copies at once (closing a duplicate releases nothing for the parent).
_HELD_LOCKS: set[int] = set()


def _close_inherited_locks() -> None:
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def _judged_at(chain: Path, now: datetime.datetime) -> datetime.datetime:
    """``now``, or the leaf's notBefore when that is only a clock skew ahead of it."""
    try:
        leaf = x509.load_pem_x509_certificate(chain.read_bytes())
    except (OSError, ValueError):
        return now  # load_certificate says what is wrong with the file
    start = leaf.not_valid_before_utc
    return start if now < start <= now + CLOCK_SKEW_ALLOWANCE else now


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"pid {text}" if text.isdigit() else "another process"
