"""One ACME conversation with a CA, blocking: directory, account, order, certificate.

Built on ``acme`` (certbot's client library) and ``josepy``.  Every call here blocks on
the network, so the manager runs them in a thread of its own, never on the reactor
thread; `AcmeSession` owns one ``requests`` session and is used from that one thread.

What we add to ``acme``:

- badNonce (RFC 8555 section 6.5): ``acme`` retries a rejected nonce once; a CA may
  reject the fresh one too (pebble rejects a configurable share of good nonces), so
  `_Network.post` retries a bounded number of rounds.
- Retry-After of a problem response (a 429 rateLimited) is lost in ``acme``'s exception;
  `_Network` keeps the last response's header so the error can say until when.
- tls-alpn-01, which ``acme`` 5 no longer models: the challenge arrives as an
  ``UnrecognizedChallenge``; answering any challenge is a POST of ``{}`` to its URL, and
  the certificate comes from ``_challengecert``.
- Polling that honours Retry-After, stops when the manager stops, and never sleeps a
  fixed second first; errors become the one-line ``AcmeError`` subclasses.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import threading
import time
from collections.abc import Iterator, Sequence
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Final, Literal

import requests
from acme import challenges, client, messages
from acme import errors as acme_errors
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.errors import DeserializationError
from josepy.jwa import ES256

from ._board import ChallengeBoard
from ._challengecert import key_authorization
from ._errors import (
    AcmeError,
    CAProblem,
    CAUnreachable,
    ChallengeFailed,
    ExternalAccountRequired,
    NotAnAcmeDirectory,
    OrderCancelled,
    TermsNotAgreed,
    from_problem,
)
from ._store import AccountRecord, AcmeStore

__all__ = ["CHALLENGE_TYPES", "AcmeSession", "ChallengeType"]

ChallengeType = Literal["tls-alpn-01", "http-01"]
CHALLENGE_TYPES: Final[tuple[ChallengeType, ...]] = ("tls-alpn-01", "http-01")
# Where a public CA validates each challenge; named in error messages.
CHALLENGE_PORTS: Final[dict[str, int]] = {"tls-alpn-01": 443, "http-01": 80}
# The directory fields RFC 8555 section 7.1.1 makes mandatory for what we do.
REQUIRED_DIRECTORY_FIELDS: Final = ("newNonce", "newAccount", "newOrder")
# Per HTTP request: a CA that has not answered in this long is not going to.
NETWORK_TIMEOUT: Final = 30
# badNonce rounds per POST, each of which is two attempts inside acme: with pebble
# rejecting half of all good nonces, 16 attempts fail together once in 65,000 POSTs.
MAX_NONCE_ROUNDS: Final = 8
# Polling authorizations and orders: start quickly (a CA often validates within a
# second), back off to this, and take a longer Retry-After from the CA up to the maximum.
FIRST_POLL_SECONDS: Final = 0.25
MAX_POLL_SECONDS: Final = 10.0
# Whole validations and finalizations that take longer than this have gone wrong
# (Let's Encrypt finishes both in seconds); the order is retried later.
VALIDATION_TIMEOUT: Final = 180.0
FINALIZE_TIMEOUT: Final = 180.0
USER_AGENT: Final = "membio-transport (acme-python)"
# urllib3 nests the operating system's words deep inside its exception texts.
_ERRNO: Final = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)")
_VERIFY_FAILED: Final = re.compile(r"(certificate verify failed: [^'\"()]+)")


class _Ready(challenges.KeyAuthorizationChallengeResponse):
    """RFC 8555 section 7.5.1: "I am ready", a POST of ``{}`` to the challenge URL.

    A key-authorization response serializes to ``{}`` (acme drops the field), and unlike
    an empty object it is not mistaken for a POST-as-GET.  ``typ`` is never sent.
    """

    typ = "ready"


class _Network(client.ClientNetwork):
    """acme's transport, with bounded badNonce retries, Retry-After and cancellation."""

    def __init__(self, cancelled: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cancelled = cancelled
        self.retry_after: str | None = None
        self.bad_nonces = 0  # rejected nonces seen, for the tests and the curious

    def _send_request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if self.cancelled.is_set():
            raise OrderCancelled("stopped")
        response = super()._send_request(method, url, *args, **kwargs)
        self.retry_after = response.headers.get("Retry-After")
        if response.status_code == 400 and b"badNonce" in response.content:
            self.bad_nonces += 1
        return response

    def post(self, *args: Any, **kwargs: Any) -> requests.Response:
        for round_ in range(MAX_NONCE_ROUNDS):
            try:
                return super().post(*args, **kwargs)
            except messages.Error as error:
                if error.code != "badNonce" or round_ == MAX_NONCE_ROUNDS - 1:
                    raise
        raise AssertionError("unreachable")  # the loop returns or raises


def _parse_retry_after(value: str | None, now: datetime.datetime) -> datetime.datetime | None:
    """RFC 9110 section 10.2.3: seconds, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return now + datetime.timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=datetime.UTC)


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class AcmeSession:
    """Talks to one ACME directory for one account; blocking, for one thread.

    @param ca_file: PEM certificates to trust for the directory's own HTTPS (a private
        CA such as pebble or step-ca), instead of the system's trust store.
    @param cancelled: set by the manager when it stops; every request and wait checks it.
    @param timeout: seconds per HTTP request.
    """

    def __init__(
        self,
        directory_url: str,
        *,
        cancelled: threading.Event,
        ca_file: Path | None = None,
        timeout: float = NETWORK_TIMEOUT,
    ) -> None:
        self.directory_url = directory_url
        self.cancelled = cancelled
        self.timeout = timeout
        self.net = _Network(cancelled, alg=ES256, user_agent=USER_AGENT, timeout=timeout)
        if ca_file is not None:
            # requests takes a CA bundle path where acme declares a bool.
            setattr(self.net, "verify_ssl", str(ca_file))  # noqa: B010
        self._directory: messages.Directory | None = None
        self._client: client.ClientV2 | None = None

    # -- errors --------------------------------------------------------------------

    @contextlib.contextmanager
    def _translated(self, **where: Any) -> Iterator[None]:
        """The one place acme's and requests' exceptions become one-line AcmeErrors."""
        url = self.directory_url
        try:
            yield
        except AcmeError:
            raise
        except messages.Error as problem:
            retry_at = _parse_retry_after(self.net.retry_after, _utcnow())
            raise from_problem(problem, directory_url=url, retry_at=retry_at, **where) from None
        except requests.exceptions.SSLError as error:
            raise CAUnreachable(
                f"cannot verify the TLS certificate of the ACME CA {url} "
                f"({_network_reason(error)}); "
                "for a private CA, trust its certificate with --acme-directory-ca FILE"
            ) from None
        except requests.exceptions.RequestException as error:
            raise CAUnreachable(
                f"cannot reach the ACME CA {url} ({_network_reason(error)}); check the URL and "
                "this machine's network"
            ) from None
        except acme_errors.TimeoutError:
            raise CAProblem(f"the ACME CA {url} did not finish in time") from None
        except (acme_errors.Error, DeserializationError, ValueError, KeyError) as error:
            raise CAProblem(f"unexpected answer from the ACME CA {url}: {_reason(error)}") from None

    # -- the directory and the account --------------------------------------------

    def directory(self) -> messages.Directory:
        """The CA's directory (fetched once per session), checked to be one."""
        if self._directory is not None:
            return self._directory
        url = self.directory_url
        with self._translated():
            response = self.net.session.get(
                url,
                timeout=self.timeout,
                verify=self.net.verify_ssl,
                headers={"User-Agent": USER_AGENT},
            )
        what = (
            f"HTTP {response.status_code}, "
            f"{response.headers.get('Content-Type', 'no content type')}"
        )
        if response.status_code >= 500:
            raise CAUnreachable(f"the ACME CA {url} is failing ({what})")
        try:
            document = response.json() if response.ok else None
        except ValueError:
            document = None
        missing = [
            field
            for field in REQUIRED_DIRECTORY_FIELDS
            if not isinstance(document, dict) or not isinstance(document.get(field), str)
        ]
        if missing:
            raise NotAnAcmeDirectory(
                f"{url} is not an ACME directory ({what}, no {'/'.join(missing)}); give "
                "--acme-directory (acmeDirectory= in a membio: endpoint) the CA's directory "
                "URL, e.g. "
                "https://acme-v02.api.letsencrypt.org/directory"
            )
        assert isinstance(document, dict)
        with self._translated():
            self._directory = messages.Directory.from_json(document)
        self._client = client.ClientV2(self._directory, self.net)
        return self._directory

    def terms_of_service(self) -> str | None:
        """The CA's terms-of-service URL, if it has terms."""
        meta = getattr(self.directory(), "meta", None)
        terms = getattr(meta, "terms_of_service", None)
        return terms if isinstance(terms, str) else None

    @property
    def client(self) -> client.ClientV2:
        if self._client is None:
            self.directory()
        assert self._client is not None
        return self._client

    def use_account(
        self, store: AcmeStore, email: str | None, agree_tos: bool
    ) -> Literal["stored", "registered"]:
        """Sign requests with the stored account, registering it first when needed.

        Raises TermsNotAgreed before registering when the CA has terms and nobody agreed.
        """
        record = store.load_account(self.directory_url, email)
        self.net.key = record.key
        if record.uri is not None:
            self.net.account = messages.RegistrationResource(
                uri=record.uri, body=messages.Registration()
            )
            return "stored"
        self._register(store, email, agree_tos, record)
        return "registered"

    def _register(
        self, store: AcmeStore, email: str | None, agree_tos: bool, record: AccountRecord
    ) -> None:
        terms = self.terms_of_service()
        # Terms agreed when this key registered before still count after the CA lost the
        # account (a test CA restarting); new terms need a new agreement.
        agreed = agree_tos or (terms is not None and terms == record.terms_of_service)
        if terms is not None and not agreed:
            raise TermsNotAgreed(self.directory_url, terms)
        meta = getattr(self.directory(), "meta", None)
        if getattr(meta, "external_account_required", False):
            raise ExternalAccountRequired(
                f"the ACME CA {self.directory_url} requires external account binding, "
                "which membio-transport does not support yet"
            )
        registration = messages.NewRegistration.from_data(
            email=email, terms_of_service_agreed=True if terms is not None else None
        )
        self.net.account = None
        with self._translated():
            try:
                regr = self.client.new_account(registration)
                uri = regr.uri
            except acme_errors.ConflictError as existing:
                uri = existing.location  # this key is registered already
        self.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        store.save_registration(self.directory_url, email, uri, terms)

    def forget_account(self, store: AcmeStore, email: str | None) -> None:
        """The CA no longer knows our account (accountDoesNotExist): register again."""
        store.save_registration(self.directory_url, email, None, None)
        self.net.account = None

    # -- orders --------------------------------------------------------------------

    def order(
        self,
        names: Sequence[str],
        key: ec.EllipticCurvePrivateKey,
        preference: Sequence[ChallengeType],
        board: ChallengeBoard,
    ) -> bytes:
        """Order a certificate for ``names`` and the public half of ``key``.

        Answers each pending authorization with the first type in ``preference`` the CA
        offers, publishing the answers on ``board`` only while the CA validates.
        Returns the full chain, PEM, leaf first.
        """
        csr = _csr(names, key)
        with self._translated(name=", ".join(names)):
            order = self.client.new_order(csr)
        published: list[tuple[ChallengeType, str]] = []
        try:
            pending = []
            for authzr in order.authorizations:
                status = authzr.body.status
                if status == messages.STATUS_VALID:
                    continue  # the CA remembers an earlier validation of this name
                name = authzr.body.identifier.value
                if status != messages.STATUS_PENDING:
                    raise CAProblem(
                        f"the ACME CA {self.directory_url} holds the authorization for "
                        f"{name} in state {status}; the next attempt places a new order"
                    )
                challb, kind = self._choose(authzr, preference)
                token = challb.chall.to_partial_json().get("token")
                if not isinstance(token, str):
                    raise CAProblem(f"the {kind} challenge for {name} carries no token")
                assert self.net.key is not None
                answer = key_authorization(token, self.net.key)
                if kind == "tls-alpn-01":
                    board.publish_tls_alpn(name, answer)
                    published.append((kind, name))
                else:
                    board.publish_http01(token, answer)
                    published.append((kind, token))
                pending.append((authzr, challb, kind, answer))
            for authzr, challb, kind, answer in pending:
                with self._translated(name=authzr.body.identifier.value, challenge=kind):
                    self.client.answer_challenge(challb, _Ready(key_authorization=answer))
            for authzr, _challb, kind, _answer in pending:
                self._await_validation(authzr, kind)
        finally:
            for kind, which in published:
                if kind == "tls-alpn-01":
                    board.withdraw_tls_alpn(which)
                else:
                    board.withdraw_http01(which)
        return self._finalize(order)

    def _choose(
        self, authzr: messages.AuthorizationResource, preference: Sequence[ChallengeType]
    ) -> tuple[messages.ChallengeBody, ChallengeType]:
        offered = {
            challb.chall.to_partial_json().get("type"): challb for challb in authzr.body.challenges
        }
        for kind in preference:
            if kind in offered:
                return offered[kind], kind
        name = authzr.body.identifier.value
        raise CAProblem(
            f"the ACME CA {self.directory_url} offers {', '.join(sorted(map(str, offered)))} "
            f"for {name}, none of which is enabled here ({', '.join(preference)})"
        )

    def _await_validation(self, authzr: messages.AuthorizationResource, kind: str) -> None:
        name = authzr.body.identifier.value
        deadline = time.monotonic() + VALIDATION_TIMEOUT
        delay = FIRST_POLL_SECONDS
        while True:
            self._wait(delay)
            with self._translated(name=name, challenge=kind):
                authzr, response = self.client.poll(authzr)
            status = authzr.body.status
            if status == messages.STATUS_VALID:
                return
            if status not in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                raise self._validation_error(authzr, kind)
            if time.monotonic() > deadline:
                raise CAProblem(
                    f"the ACME CA {self.directory_url} did not validate {name} within "
                    f"{VALIDATION_TIMEOUT:.0f} s"
                )
            delay = self._next_delay(delay, response)

    def _validation_error(self, authzr: messages.AuthorizationResource, kind: str) -> AcmeError:
        name = authzr.body.identifier.value
        port = CHALLENGE_PORTS.get(kind)
        for challb in authzr.body.challenges:
            if challb.error is not None:
                return from_problem(
                    challb.error,
                    directory_url=self.directory_url,
                    name=name,
                    challenge=kind,
                    port=port,
                )
        return ChallengeFailed(
            f"the ACME CA {self.directory_url} did not accept the {kind} challenge for "
            f"{name} (authorization {authzr.body.status}) and gave no reason"
        )

    def _finalize(self, order: messages.OrderResource) -> bytes:
        with self._translated():
            order = self.client.begin_finalization(order)
        deadline = time.monotonic() + FINALIZE_TIMEOUT
        delay = FIRST_POLL_SECONDS
        body = order.body
        while body.status != messages.STATUS_VALID or body.certificate is None:
            if body.status == messages.STATUS_INVALID:
                if body.error is not None:
                    raise from_problem(body.error, directory_url=self.directory_url)
                raise CAProblem(f"the ACME CA {self.directory_url} refused to issue (no reason)")
            if time.monotonic() > deadline:
                raise CAProblem(
                    f"the ACME CA {self.directory_url} did not issue within "
                    f"{FINALIZE_TIMEOUT:.0f} s"
                )
            self._wait(delay)
            with self._translated():
                response = self._post_as_get(order.uri)
                body = messages.Order.from_json(response.json())
            delay = self._next_delay(delay, response)
        with self._translated():
            chain = self._post_as_get(body.certificate).content
        return chain

    def _post_as_get(self, url: str) -> requests.Response:
        # RFC 8555 section 6.3: a signed POST with an empty payload (acme sends b"" for None).
        return self.net.post(url, None, new_nonce_url=self.directory().newNonce)

    def _next_delay(self, delay: float, response: requests.Response) -> float:
        asked = _parse_retry_after(response.headers.get("Retry-After"), _utcnow())
        wanted = (asked - _utcnow()).total_seconds() if asked is not None else delay * 2
        return min(max(wanted, FIRST_POLL_SECONDS), MAX_POLL_SECONDS)

    def _wait(self, seconds: float) -> None:
        if self.cancelled.wait(seconds):
            raise OrderCancelled("stopped")

    # -- renewal information (RFC 9773) --------------------------------------------

    def suggested_renewal(self, chain_pem: bytes) -> datetime.datetime | None:
        """The CA's suggested renewal time (ARI), or None when it offers none."""
        try:
            if "renewalInfo" not in self.directory().to_partial_json():
                return None
        except AcmeError:
            return None
        try:
            with self._translated():
                when, _next_check = self.client.renewal_time(chain_pem)
        except AcmeError:
            return None  # ARI is advice: without it, our own schedule applies
        if when is None:
            return None
        return when if when.tzinfo is not None else when.astimezone(datetime.UTC)


def _csr(names: Sequence[str], key: ec.EllipticCurvePrivateKey) -> bytes:
    # RFC 8555 section 7.4: names in the subjectAltName; the subject may stay empty.
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM)


def _network_reason(error: requests.exceptions.RequestException) -> str:
    """The part of a requests/urllib3 error a person needs ("Connection refused")."""
    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time"
    text = str(error)
    for pattern in (_VERIFY_FAILED, _ERRNO):
        found = pattern.search(text)
        if found:
            return found.group(1).strip()
    return _reason(error)


def _reason(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(error).__name__)
