"""
Where ``twistd membio-https`` and ``twistd membio-tls`` listen: checking
``--interface`` and port numbers, turning ``--listen`` descriptions and TCP
ports into server endpoints, and `Listener`, an endpoint together with
what messages call it.  Both plugins' options use it, so it belongs to
neither.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.python import usage

from ._settings import DEFAULT_BACKLOG

#: Unprivileged, and the customary alternative HTTPS port.
DEFAULT_PORT: Final = 8443
#: Only this machine can connect unless told otherwise: a development
#: server should not publish a directory to the whole network by surprise.
DEFAULT_INTERFACE: Final = "127.0.0.1"
#: Addresses that mean "every interface": they name no certificate host.
_WILDCARDS: Final = frozenset({"", "0.0.0.0", "::"})
#: Endpoint types that already do TLS: wrapping them again makes no sense.
TLS_PREFIXES: Final = frozenset({"ssl", "tls", "membio"})


def parse_interface(text: str) -> str:
    value = text.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    if value == "localhost":
        return "127.0.0.1"
    if value in ("", "*"):
        return "0.0.0.0"
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise usage.UsageError(
            f"--interface {text!r} is not an IP address; use e.g. 127.0.0.1 (this machine "
            "only), 0.0.0.0 (all IPv4 interfaces) or :: (all IPv4 and IPv6 interfaces)"
        ) from None


def parse_port(option: str, text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise usage.UsageError(f"{option} {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise usage.UsageError(f"{option} {port} is out of range (0-65535; 0 picks a free port)")
    return port


@dataclass
class Listener:
    """One listening endpoint and what to call it in messages."""

    label: str
    endpoint: IStreamServerEndpoint
    port_option: str  # the option to suggest changing when it cannot listen
    port: IListeningPort | None = None


def endpoint_from(
    reactor: Any, option: str, description: str, backlog: int = DEFAULT_BACKLOG
) -> IStreamServerEndpoint:
    """
    The server endpoint of a C{description} given with C{option}; ``tcp:``
    and ``tcp6:`` without their own ``backlog=`` get C{backlog}.

    @raise usage.UsageError: Twisted cannot parse it.
    """
    from twisted.internet.endpoints import serverFromString

    prefix = description.split(":", 1)[0].lower()
    if prefix in ("tcp", "tcp6") and "backlog=" not in description:
        description += f":backlog={backlog}"  # room for bursts (Twisted: 50)
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as error:
        raise usage.UsageError(f"{option} {description}: {error}") from None
    return endpoint


def tcp_endpoint(
    reactor: Any, interface: str, port: int, backlog: int = DEFAULT_BACKLOG
) -> IStreamServerEndpoint:
    """TCP on C{interface} (IPv6 if it is an IPv6 address) and C{port}."""
    from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint

    if ":" in interface:
        return TCP6ServerEndpoint(reactor, port, backlog, interface)
    return TCP4ServerEndpoint(reactor, port, backlog, interface)


def names_for_interface(interface: str) -> tuple[str, ...]:
    """
    The names a generated certificate needs for listening on C{interface}:
    a specific IP address is one (clients may connect to it by address);
    every interface (``0.0.0.0``, ``::``) names none.  The same rule for
    ``--interface`` and ``interface=``.
    """
    if interface in _WILDCARDS:
        return ()
    try:
        ipaddress.ip_address(interface)
    except ValueError:
        return ()
    return (interface,)
