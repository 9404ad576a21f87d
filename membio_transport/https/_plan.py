"""
`Plan`: what `makeService` made of the options, in the form `HTTPSService`
and its start-up log use.  It has a module of its own so that the service
and the start-up log can both import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..certs import ServerCertificate
from ..serving import Listener
from ._web import default_alpn


@dataclass
class Plan:
    """The listeners, the certificate and what the start-up log says about them."""

    listeners: list[Listener]
    redirect: Listener | None
    certificate: ServerCertificate
    generated_in: Path | None
    profile: str
    content: str
    interface: str
    command: str
    daemon: bool
    alpn: list[bytes] = field(default_factory=default_alpn)
    #: Start-up log lines about the TLS settings (SNI, client certificates...).
    notes: list[str] = field(default_factory=list)
    #: What the log calls a certificate that is not generated ("the ACME certificate").
    own_label: str = "your certificate"
