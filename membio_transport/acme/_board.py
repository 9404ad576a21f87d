"""The pending challenges: where the ordering side posts answers and the serving side reads.

An order runs in a worker thread of the process that orders; the answers are needed by
whatever serves the ports the CA connects to: the reactor thread of the same process,
or, with ``--workers``, other processes forked before the order began.  So the board
keeps answers in memory and, when given a directory, also as files there, written
atomically with mode 0600; a lookup that misses in memory reads the file.  Lookups
happen only for a client offering ``acme-tls/1`` or asking for
``/.well-known/acme-challenge/``, never on an ordinary connection.

Lookups take untrusted input (an SNI name, a URL path segment): both are checked
against the alphabet of a DNS name or a base64url token before they touch the file
system.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import threading
import weakref
from pathlib import Path
from typing import Final

from ..certs import KEY_FILE_MODE, prepare_state_dir, write_atomically
from ._challengecert import ChallengeCertificate, tls_alpn_challenge_certificate

__all__ = ["ChallengeBoard"]

# What a normalized DNS name (our --hostname values, lower-case A-labels) can contain.
_NAME: Final = re.compile(r"^[a-z0-9_-]+(?:\.[a-z0-9_-]+)*$")
# RFC 8555 section 8.1: tokens are base64url without padding, >= 128 bits of entropy;
# 128 characters bound what a request can make us look up.
_TOKEN: Final = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
TLS_ALPN_DIR: Final = "tls-alpn-01"
HTTP01_DIR: Final = "http-01"


#: Every board of this process, for `_after_fork`.
_BOARDS: weakref.WeakSet[ChallengeBoard] = weakref.WeakSet()


def _after_fork() -> None:
    """In a forked child (a ``--workers`` worker): fresh locks, answers from the files only.

    The ordering thread of the parent may hold a board's lock at the moment of the fork;
    the child's copy would then stay locked forever and hang the first validation it
    answers.  Answers the parent had in memory are dropped too: the parent withdraws them
    from its own memory and from the files, never from the child's memory.
    """
    for board in list(_BOARDS):
        board._lock = threading.Lock()
        board._tls_alpn.clear()
        board._http01.clear()


os.register_at_fork(after_in_child=_after_fork)


class ChallengeBoard:
    """Answers to pending challenges, by name (tls-alpn-01) and by token (http-01).

    @param directory: share the answers with other processes through this directory
        (made 0700); None keeps them in this process only.
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._tls_alpn: dict[str, ChallengeCertificate] = {}
        self._http01: dict[str, bytes] = {}
        # Publishing happens in the ordering thread, lookups in the reactor thread.
        self._lock = threading.Lock()
        _BOARDS.add(self)

    # -- the ordering side ---------------------------------------------------------

    def publish_tls_alpn(self, name: str, key_authorization: str) -> ChallengeCertificate:
        """Serve the challenge certificate for ``name`` to ``acme-tls/1`` clients."""
        if not _NAME.match(name):
            raise ValueError(f"not a normalized DNS name: {name!r}")
        challenge = tls_alpn_challenge_certificate(name, key_authorization)
        with self._lock:
            self._tls_alpn[name] = challenge
        if self.directory is not None:
            folder = self._folder(TLS_ALPN_DIR)
            write_atomically(folder / f"{name}.pem", challenge.to_pem(), KEY_FILE_MODE)
        return challenge

    def publish_http01(self, token: str, key_authorization: str) -> None:
        """Answer ``GET /.well-known/acme-challenge/<token>`` with the key authorization."""
        if not _TOKEN.match(token):
            raise ValueError(f"not an ACME token: {token!r}")
        answer = key_authorization.encode("ascii")
        with self._lock:
            self._http01[token] = answer
        if self.directory is not None:
            folder = self._folder(HTTP01_DIR)
            write_atomically(folder / token, answer, KEY_FILE_MODE)

    def withdraw_tls_alpn(self, name: str) -> None:
        """Stop serving ``name``'s challenge certificate (the order has moved on)."""
        with self._lock:
            self._tls_alpn.pop(name, None)
        self._unlink(TLS_ALPN_DIR, f"{name}.pem")

    def withdraw_http01(self, token: str) -> None:
        """Stop answering ``token``."""
        with self._lock:
            self._http01.pop(token, None)
        self._unlink(HTTP01_DIR, token)

    def clear(self) -> None:
        """Forget every answer, including files a crashed process left behind."""
        with self._lock:
            self._tls_alpn.clear()
            self._http01.clear()
        if self.directory is not None:
            for sub in (TLS_ALPN_DIR, HTTP01_DIR):
                shutil.rmtree(self.directory / sub, ignore_errors=True)

    def _folder(self, sub: str) -> Path:
        assert self.directory is not None
        # One level at a time: mkdir(parents=True) would make the parents with the umask.
        return prepare_state_dir(prepare_state_dir(self.directory) / sub)

    def _unlink(self, sub: str, file: str) -> None:
        if self.directory is not None:
            with contextlib.suppress(OSError):
                (self.directory / sub / file).unlink()

    # -- the serving side ----------------------------------------------------------

    def tls_alpn_certificate(self, server_name: str) -> ChallengeCertificate | None:
        """The challenge certificate for an SNI name, or None when none is pending."""
        name = server_name.lower().rstrip(".")
        with self._lock:
            found = self._tls_alpn.get(name)
        if found is not None or self.directory is None or not _NAME.match(name):
            return found
        data = self._read(TLS_ALPN_DIR, f"{name}.pem")
        return None if data is None else ChallengeCertificate.from_pem(name, data)

    def http01_answer(self, token: str) -> bytes | None:
        """The key authorization for ``token``, or None when none is pending."""
        with self._lock:
            found = self._http01.get(token)
        if found is not None or self.directory is None or not _TOKEN.match(token):
            return found
        return self._read(HTTP01_DIR, token)

    def _read(self, sub: str, file: str) -> bytes | None:
        assert self.directory is not None
        try:
            return (self.directory / sub / file).read_bytes()
        except OSError:
            return None
