"""The names a server certificate covers, in the form a subjectAltName carries.

Zero-config certificates cover the loopback names and this machine's host name, plus what
the user asks for; every name is checked and normalized here (IP literals, IDNA 2008
A-labels, wildcard labels) so that a bad ``--hostname`` is one clear error, not a
certificate clients reject.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Sequence
from typing import Final

import idna

from ._errors import CertificateError

__all__ = [
    "LOOPBACK_NAMES",
    "default_hostnames",
    "is_ip_address",
    "normalize_name",
    "parse_ip",
    "requested_names",
]

# Always in the certificate: what local clients type, and the loopback addresses.
LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
# RFC 1035 limit for a whole name.
MAX_DNS_NAME_LENGTH: Final = 253
# One label: RFC 1123 letters, digits and inner hyphens, plus the underscores that real
# host names carry and that clients accept.
DNS_LABEL: Final = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


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
    address = parse_ip(text)
    if address is not None:
        return str(address)
    return _normalize_dns_name(raw, text)


def is_ip_address(name: str) -> bool:
    """Whether C{name} is an IPv4 or IPv6 address rather than a host name."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        raise CertificateError(f"invalid host name {text!r}: a certificate cannot hold a zone")
    return address


def _normalize_dns_name(raw: str, text: str) -> str:
    labels = text.split(".")
    wildcard = labels[0] == "*" and len(labels) > 2
    rest = ".".join(labels[1:] if wildcard else labels)
    try:
        ascii_labels = _a_labels(rest)
    except (idna.IDNAError, UnicodeError):
        raise CertificateError(f"invalid host name {raw!r}: not a valid DNS name") from None
    name = ".".join(["*", *ascii_labels] if wildcard else ascii_labels)
    if len(name) > MAX_DNS_NAME_LENGTH or not all(DNS_LABEL.match(lb) for lb in ascii_labels):
        raise CertificateError(f"invalid host name {raw!r}: not a valid DNS name")
    return name


def _a_labels(name: str) -> list[str]:
    """
    The labels of C{name} as a subjectAltName carries them (ASCII, lower case).

    An internationalized name becomes A-labels by IDNA 2008 with the UTS 46
    mapping (``faß.example`` -> ``xn--fa-hia.example``), as browsers, curl and
    service_identity encode it; Python's own ``idna`` codec is IDNA 2003,
    which would make it ``fass.example``, another host.  An ASCII name is
    taken as it is (real host names carry underscores, which IDNA refuses),
    except that an A-label must decode.
    """
    if not name.isascii():
        return idna.encode(name, uts46=True).decode("ascii").split(".")
    labels = name.lower().split(".")
    for label in labels:
        if label.startswith("xn--"):
            idna.decode(label)  # IDNAError for a malformed A-label
    return labels


def requested_names(hostnames: Sequence[str]) -> tuple[str, ...]:
    if isinstance(hostnames, str):
        raise TypeError("hostnames must be a sequence of names, not a single str")
    names = (*default_hostnames(), *(normalize_name(name) for name in hostnames))
    return tuple(dict.fromkeys(names))  # drop duplicates, keep the order
