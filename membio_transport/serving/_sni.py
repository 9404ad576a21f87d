"""
Several certificates on one listener, chosen by the name the client asks for.

A client names the host it wants in the ClientHello (SNI).  OpenSSL calls
the default context's servername callback before it picks a cipher or a
certificate; the callback here looks the name up and moves the connection
to that certificate's context with ``Connection.set_context``.  Clients
that send no name, or a name no certificate covers, get the default
certificate.

Every context of the set is built with the same settings (profile, ALPN,
client verification, key log): an SNI switch replaces the certificate, the
trust store for client certificates and the ALPN callback, but the
protocol versions, ciphers and groups stay those of the default context.

Names come from the files (``--sni-dir`` holds ``<hostname>.pem``, with the
key inside or in ``<hostname>.key``; ``*.example.test.pem`` is a wildcard)
and from the certificates' subjectAltName DNS entries.  An exact name beats
a wildcard; among equals, a file's own name beats a subjectAltName, and the
default certificate beats the others.  A wildcard covers exactly one label,
as in certificates (RFC 6125): ``*.example.test`` matches
``www.example.test``, not ``example.test`` nor ``a.b.example.test``.

Where the certificates come from, and how a reload builds a whole new set
the same way, is ``_source``'s business.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from cryptography import x509
from OpenSSL import SSL

from ..certs import (
    CertificateError,
    ServerCertificate,
    is_ip_address,
    normalize_name,
    os_reason,
)

__all__ = ["CertificateFiles", "CertificateSet", "dns_names", "load_client_ca", "scan_sni_dir"]

#: Certificate files in an SNI directory: ``<hostname>.pem``.
CERT_SUFFIX: Final = ".pem"
#: Their separate keys, when not inside the ``.pem``: ``<hostname>.key``.
KEY_SUFFIX: Final = ".key"


@dataclass(frozen=True)
class CertificateFiles:
    """One certificate to serve: its chain, its key, and the name its file gives it."""

    cert: Path
    key: Path | None = None  # None: the key is in the chain file
    name: str | None = None  # from the file name, for --sni-dir files


def scan_sni_dir(directory: Path) -> list[CertificateFiles]:
    """
    The certificates in C{directory}: every ``<hostname>.pem``, paired with
    ``<hostname>.key`` when that exists, in name order.

    @raise CertificateError: the directory cannot be read, or a file name
        is not a host name.
    """
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        reason = os_reason(error)
        raise CertificateError(f"cannot read --sni-dir {directory}: {reason}") from None
    found = []
    for path in entries:
        if path.suffix != CERT_SUFFIX or path.name.startswith("."):
            continue
        stem = path.name[: -len(CERT_SUFFIX)]
        try:
            name = normalize_name(stem)
        except CertificateError:
            raise CertificateError(
                f"{path}: files in --sni-dir are named <hostname>{CERT_SUFFIX} (e.g. "
                f"www.example.com{CERT_SUFFIX}, *.example.com{CERT_SUFFIX}); "
                f"{stem!r} is not a host name"
            ) from None
        key = path.with_name(stem + KEY_SUFFIX)
        found.append(CertificateFiles(path, key if key.exists() else None, name))
    return found


def load_client_ca(path: Path) -> list[x509.Certificate]:
    """
    The CA certificates in C{path}, checked before OpenSSL sees the file.

    @raise CertificateError: unreadable, or no PEM certificate in it.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        reason = os_reason(error)
        raise CertificateError(f"cannot read --client-ca {path}: {reason}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(
            f"--client-ca {path} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)"
        ) from None


def dns_names(certificate: ServerCertificate) -> list[str]:
    # SNI carries host names only, never IP addresses (RFC 6066, 3).
    names = []
    for name in certificate.names:
        try:
            normalize_name(name)
        except CertificateError:
            continue
        if not is_ip_address(name):
            names.append(name.lower())
    return names


@dataclass
class CertificateSet:
    """
    Built contexts for a default certificate and any number of others,
    with the SNI callback that chooses among them installed on the default
    context once there is a choice (`install_sni_callback`).
    """

    default: ServerCertificate
    context: SSL.Context
    others: list[tuple[ServerCertificate, SSL.Context]] = field(default_factory=list)
    _exact: dict[str, SSL.Context] = field(default_factory=dict)
    _wildcard: dict[str, SSL.Context] = field(default_factory=dict)

    def install_sni_callback(self) -> None:
        """
        Choose a context by server name, if there is any other to choose:
        the callback runs inside every handshake (11 us measured), for
        nothing when one certificate serves every name.
        """
        if self.others:
            self.context.set_tlsext_servername_callback(self._server_name)

    def add_name(self, name: str, context: SSL.Context) -> None:
        """Serve C{context} for C{name}, unless a name added earlier claims it."""
        name = name.lower().rstrip(".")
        if name.startswith("*."):
            self._wildcard.setdefault(name[2:], context)
        else:
            self._exact.setdefault(name, context)

    def context_for(self, server_name: str) -> SSL.Context:
        """The context for a client asking for C{server_name}."""
        name = server_name.lower().rstrip(".")
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        _, dot, parent = name.partition(".")
        if dot and "." in parent:
            wildcard = self._wildcard.get(parent)
            if wildcard is not None:
                return wildcard
        return self.context

    def _server_name(self, connection: SSL.Connection) -> None:
        raw = connection.get_servername()
        if not raw:
            return
        chosen = self.context_for(raw.decode("ascii", "replace"))
        if chosen is not connection.get_context():
            connection.set_context(chosen)

    def contexts(self) -> list[SSL.Context]:
        """Every context of the set, the default first."""
        return [self.context, *(context for _, context in self.others)]

    def names(self) -> Iterator[tuple[str, ServerCertificate]]:
        """Each name a client can ask for, with the certificate it gets."""
        by_context = {id(context): cert for cert, context in self.others}
        by_context[id(self.context)] = self.default
        for name, context in self._exact.items():
            yield name, by_context[id(context)]
        for suffix, context in self._wildcard.items():
            yield f"*.{suffix}", by_context[id(context)]

    def summary(self) -> list[str]:
        """Log lines: the default certificate, and which names get which other one."""
        lines = [f"default certificate SHA-256 {self.default.fingerprint_sha256}"]
        if self.others:
            for cert, _ in self.others:
                served = [name for name, owner in self.names() if owner is cert]
                lines.append(
                    f"SNI {', '.join(served) or '(no names left)'}: {cert.cert_path} "
                    f"SHA-256 {cert.fingerprint_sha256}"
                )
        return lines
