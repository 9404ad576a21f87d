"""What can go wrong while getting a certificate from an ACME CA, in one line each.

An operator meets these in a log, often weeks after setting the server up, so each error
is one line that names the CA's own explanation (the ``detail`` of its RFC 7807 problem
document) and says what to do.  The classes split by who has to act:

- the configuration (``TermsNotAgreed``, ``NotAnAcmeDirectory``,
  ``ExternalAccountRequired``): retrying cannot help until the command line changes, so
  ``retry`` is False;
- the machine or its DNS (``NameNotResolved``, ``ChallengeUnreachable``,
  ``ChallengeFailed``): fixable while the server runs, so it keeps retrying;
- the CA (``RateLimited``, ``NameRefused``, ``CAUnreachable``, ``CAProblem``).

``from_problem`` is the one place an ``acme.messages.Error`` becomes one of ours.  Nothing
here does I/O.
"""

from __future__ import annotations

import datetime
from typing import Final

from acme import messages

__all__ = [
    "AccountUnknown",
    "AcmeError",
    "CAProblem",
    "CAUnreachable",
    "ChallengeFailed",
    "ChallengeUnreachable",
    "ExternalAccountRequired",
    "NameNotResolved",
    "NameRefused",
    "NotAnAcmeDirectory",
    "OrderCancelled",
    "RateLimited",
    "TermsNotAgreed",
    "from_problem",
]

# RFC 8555 section 6.7: every standard problem type starts with this.
PROBLEM_PREFIX: Final = "urn:ietf:params:acme:error:"
# A problem document's detail is text from the CA; keep a hostile or broken CA from
# flooding the log with one giant line.
MAX_DETAIL_LENGTH: Final = 400


class AcmeError(Exception):
    """Getting a certificate failed; ``str()`` is one line saying what to do.

    @ivar retry: whether trying again later may succeed without a configuration change.
    @ivar retry_at: the earliest time the CA allows another attempt, when it said so.
    """

    retry: bool = True

    def __init__(self, message: str, *, retry_at: datetime.datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class TermsNotAgreed(AcmeError):
    """The CA has terms of service and nobody agreed to them (``--acme-agree-tos``)."""

    retry = False

    def __init__(self, directory_url: str, terms_url: str) -> None:
        super().__init__(
            f"the ACME CA {directory_url} requires agreeing to its terms of service before "
            f"the first order: read {terms_url}, then add --acme-agree-tos"
        )
        self.terms_url = terms_url


class NotAnAcmeDirectory(AcmeError):
    """The directory URL answers, but not with an ACME directory."""

    retry = False


class ExternalAccountRequired(AcmeError):
    """The CA wants external account binding (a key id and HMAC from the CA's website)."""

    retry = False


class CAUnreachable(AcmeError):
    """No answer from the CA (network, DNS, TLS trust, a 5xx page that is not ACME)."""


class CAProblem(AcmeError):
    """The CA answered with a problem document we have no better advice for."""


class RateLimited(AcmeError):
    """The CA refuses more requests of this kind until ``retry_at``."""


class NameRefused(AcmeError):
    """The CA will not issue for one of the names (policy, CAA, malformed, unsupported)."""

    retry = False


class NameNotResolved(AcmeError):
    """The CA found no address for a name: its DNS does not point anywhere yet."""


class ChallengeUnreachable(AcmeError):
    """The CA could not connect to the challenge port (firewall, NAT, nothing listening)."""


class ChallengeFailed(AcmeError):
    """The CA connected but got a wrong answer: the name points at another server."""


class AccountUnknown(AcmeError):
    """The CA no longer knows our account (a test CA restarted, or it was deactivated)."""


class OrderCancelled(AcmeError):
    """The manager stopped while an order was in progress; nothing to report."""


def _one_line(text: str | None) -> str:
    flat = " ".join((text or "").split())
    if len(flat) > MAX_DETAIL_LENGTH:
        flat = flat[: MAX_DETAIL_LENGTH - 3] + "..."
    return flat


def problem_type(problem: messages.Error) -> str:
    """The short type of a problem (``rateLimited``), or its whole URI when not standard."""
    typ = str(problem.typ or "")
    return typ[len(PROBLEM_PREFIX) :] if typ.startswith(PROBLEM_PREFIX) else typ


def _detail(problem: messages.Error) -> str:
    """The CA's own words, including the first subproblem's (RFC 8555 section 6.7.1)."""
    parts = [_one_line(problem.detail) or _one_line(problem.title) or problem_type(problem)]
    for sub in problem.subproblems or ():
        who = f"{sub.identifier.value}: " if sub.identifier is not None else ""
        parts.append(f"{who}{_one_line(sub.detail) or problem_type(sub)}")
        break  # one line: the first subproblem usually names the culprit
    return "; ".join(parts)


def from_problem(
    problem: messages.Error,
    *,
    directory_url: str,
    name: str | None = None,
    challenge: str | None = None,
    port: int | None = None,
    retry_at: datetime.datetime | None = None,
) -> AcmeError:
    """Our error for the CA's problem document, worded for the person who must act.

    @param name: the identifier being validated, when the problem came from a challenge.
    @param challenge: its type (``tls-alpn-01``, ``http-01``).
    @param port: the port the CA validates that challenge on (443 or 80 on a real CA).
    @param retry_at: from the response's ``Retry-After`` header.
    """
    kind = problem_type(problem)
    detail = _detail(problem)
    if problem.identifier is not None and name is None:
        name = problem.identifier.value
    where = f" {name}" if name else ""
    by = f" ({challenge})" if challenge else ""
    at_port = f"port {port}" if port else "the challenge port"
    if kind == "rateLimited":
        when = f"until {retry_at:%Y-%m-%d %H:%M:%S} UTC" if retry_at is not None else "for now"
        return RateLimited(
            f"the ACME CA rate-limits this request {when}: {detail}; the order is retried "
            "then, and restarting does not help (see the CA's rate-limit documentation)",
            retry_at=retry_at,
        )
    if kind in ("dns", "unknownHost"):
        return NameNotResolved(
            f"the ACME CA could not resolve{where}: {detail}; give the name a DNS A/AAAA "
            "record pointing at this server's public address",
            retry_at=retry_at,
        )
    if kind in ("connection", "tls"):
        return ChallengeUnreachable(
            f"the ACME CA could not reach{where} on {at_port}{by}: {detail}; open that port "
            "to the internet (firewall, NAT port forwarding) and make sure this server "
            "listens on it",
            retry_at=retry_at,
        )
    if kind in ("incorrectResponse", "unauthorized") and challenge is not None:
        return ChallengeFailed(
            f"the ACME CA reached{where} on {at_port}{by} but got the wrong answer: {detail}; "
            "the name's DNS may point at another server, or a proxy in front of this one "
            "answers instead",
            retry_at=retry_at,
        )
    refusals = ("rejectedIdentifier", "caa", "unsupportedIdentifier", "badCSR")
    # "malformed" means a name only when the CA tied it to one; otherwise it is a CA
    # problem (or our bug), reported as such.
    if kind in refusals or (kind == "malformed" and name):
        return NameRefused(
            f"the ACME CA refuses to issue for{where or ' these names'}: {detail}; remove or "
            "fix that --hostname (or the domain's CAA record)",
        )
    if kind == "accountDoesNotExist":
        return AccountUnknown(
            f"the ACME CA {directory_url} does not know our account any more: {detail}; "
            "registering the same key again"
        )
    if kind == "externalAccountRequired":
        return ExternalAccountRequired(
            f"the ACME CA {directory_url} requires external account binding, which "
            "membio-transport does not support yet; use a CA that does not (e.g. Let's "
            "Encrypt)",
        )
    return CAProblem(
        f"the ACME CA {directory_url} answered{where} with a problem ({kind}): {detail}",
        retry_at=retry_at,
    )
