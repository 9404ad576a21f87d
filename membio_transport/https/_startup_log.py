"""
What ``twistd membio-https`` logs once it listens: where it serves (the URLs
a browser can use, given the names the certificate covers), the TLS settings
and what is served, and the certificate in use and how to trust a generated
one.  `StartupLog` is mixed into `HTTPSService`, which decides when to say
it; the wording lives here, apart from the listening.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from typing import Final

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from ..certs import is_ip_address
from ..serving import DEFAULT_PORT
from ..tls import format_host, format_host_port
from ._plan import Plan

#: The namespace of the HTTPS server's own lines.
log = Logger(namespace="membio_transport.https")

#: What the log lines are tagged with.
SYSTEM: Final = "membio-https"


class StartupLog:
    """The start-up log lines of a service with a `Plan` whose listeners listen."""

    plan: Plan

    def _announce(self) -> None:
        plan = self.plan
        urls: list[str] = []
        lines: list[str] = []
        listening: list[str] = []  # the listener of each of the first lines
        for listener in plan.listeners:
            if listener.port is None:
                continue
            listener_urls, where = self._urls(listener.port)
            listening.append(where)
            urls += [url for url in listener_urls if url not in urls]
            if listener.port_option == "--port" and _is_loopback(plan.interface):
                where += " (this machine only: --interface 0.0.0.0 or :: serves the network)"
            lines.append(f"HTTPS on {where}")
        lines.append(
            f"TLS profile {plan.profile}, ALPN "
            f"{', '.join(p.decode() for p in plan.alpn) or 'none'}; serving {plan.content}"
        )
        lines += plan.notes
        redirect = plan.redirect
        if redirect is not None and redirect.port is not None:
            lines.append(f"plain HTTP on {self._where(redirect.port)} redirects to HTTPS")
        certificate = plan.certificate
        first_url = urls[0] if urls else f"https://localhost:{DEFAULT_PORT}/"
        if plan.generated_in is None:
            lines += [f"using {plan.own_label}: {line.strip()}" for line in certificate.summary()]
        else:
            state = "generated a new" if certificate.generated else "reusing the"
            lines.append(f"{state} certificate in {plan.generated_in}")
            if certificate.new_trust_anchor:
                lines.append(
                    f"new trust anchor {certificate.trust_path}: clients must trust it once"
                )
            lines += certificate.trust_instructions(first_url)
        lines += [f"ready: open {url}" for url in urls] or ["ready (no TCP listener)"]
        for index, line in enumerate(lines):
            if index < len(listening):
                log.info(
                    "{line}", line=line, log_system=SYSTEM, event_name="listening",
                    listener=listening[index],
                )
            else:
                log.info("{line}", line=line, log_system=SYSTEM, event_name="startup")

    def _where(self, port: IListeningPort) -> str:
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        if isinstance(host, str) and isinstance(number, int):
            return format_host_port(host, number)
        name = getattr(address, "name", None)
        if name is not None:
            path = os.fsdecode(name)
            return f"UNIX socket {path} (curl --unix-socket {shlex.quote(path)} https://localhost/)"
        return str(address)

    def _urls(self, port: IListeningPort) -> tuple[list[str], str]:
        address = port.getHost()
        host, number = getattr(address, "host", None), getattr(address, "port", None)
        where = self._where(port)
        if not isinstance(host, str) or not isinstance(number, int):
            return [], where
        suffix = "" if number == 443 else f":{number}"
        return [f"https://{name}{suffix}/" for name in _browse_names(host, self.plan)], where


def _browse_names(host: str, plan: Plan) -> list[str]:
    """Names a browser can use for C{host} that the certificate covers."""
    names = list(plan.certificate.names)
    dns = [name for name in names if not is_ip_address(name) and not name.startswith("*.")]
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return [host]
    chosen: list[str] = []
    if address.is_loopback or address.is_unspecified:
        if "localhost" in names:
            chosen.append("localhost")
        if address.is_unspecified:
            chosen += [name for name in dns if name != "localhost"]
    elif str(address) in names:
        chosen.append(format_host(str(address)))
    if not chosen:
        # The certificate names none of our addresses (your own certificate
        # for a public name): its first name, which must resolve to us.
        chosen = dns[:1] or [format_host(str(address))]
    return chosen


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False
