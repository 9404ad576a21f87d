"""
Certificates that expire when a test says: a local root, and leaves it
issues with a chosen time left (20 days, 5 days, 12 hours), written as the
files a server is given.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from membio_transport.certs import generate_leaf, generate_root_ca


@dataclass
class ExpiringCA:
    """A local root and the files of leaves it issued, in C{directory}."""

    directory: Path

    def __post_init__(self) -> None:
        self.root, self.root_key = generate_root_ca()
        self.ca = self.directory / "ca.pem"
        self.ca.write_bytes(self.root.public_bytes(serialization.Encoding.PEM))

    def leaf(
        self, name: str, left: datetime.timedelta, names: tuple[str, ...] = ("localhost",),
        folder: Path | None = None, key_inside: bool = False,
    ) -> tuple[Path, Path]:
        """A leaf for C{names} valid C{left} longer: (chain file, key file)."""
        lifetime = datetime.timedelta(days=90)
        now = datetime.datetime.now(datetime.UTC)
        certificate, key = generate_leaf(
            list(names), issuer=(self.root, self.root_key), now=now + left - lifetime,
            lifetime=lifetime,
        )
        folder = folder or self.directory
        folder.mkdir(parents=True, exist_ok=True)
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        chain = folder / f"{name}.pem"
        key_file = chain if key_inside else folder / f"{name}.key"
        chain.write_bytes(certificate.public_bytes(pem) + (key_pem if key_inside else b""))
        if not key_inside:
            key_file.write_bytes(key_pem)
        key_file.chmod(0o600)
        return chain, key_file
