"""What a certificate lookup hands back: ``ServerCertificate``.

Both ways of getting a certificate, generating one in the state directory
(``_store.ensure_certificate``) and loading the user's own files
(``_usercerts.load_certificate``), describe their result with this one class, so the
plugins log it and print trust instructions without caring where it came from.
"""

from __future__ import annotations

import datetime
import shlex
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ServerCertificate"]


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
