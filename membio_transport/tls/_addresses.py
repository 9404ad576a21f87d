"""
How an address is written in log lines, messages and URLs: the one rule.

An IPv6 address is bracketed wherever a port (or a URL) follows it, so that
the colons of the address and the colon before the port cannot be confused:
``[::1]:443``, ``127.0.0.1:443``, ``https://[::1]:8443/``.  A UNIX socket
is its path.  Every layer formats addresses with these functions, from a
Twisted ``IAddress`` or from a host and a port.
"""

from __future__ import annotations

import os

__all__ = ["format_address", "format_host", "format_host_port"]


def format_host(host: str) -> str:
    """C{host} as it is written before a port or in a URL: IPv6 addresses in brackets."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def format_host_port(host: str, port: int | str) -> str:
    """``host:port``, with an IPv6 host in brackets: ``[::1]:443``."""
    return f"{format_host(host)}:{port}"


def format_address(address: object) -> str:
    """
    A Twisted address (``IPv4Address``, ``IPv6Address``, ``UNIXAddress``,
    ``HostnameAddress``...) in words: ``host:port``, a socket's path, or
    whatever the object says of itself.
    """
    host = getattr(address, "host", None) or getattr(address, "hostname", None)
    port = getattr(address, "port", None)
    if host is not None and port is not None:
        text = host.decode("ascii", "replace") if isinstance(host, bytes) else str(host)
        return format_host_port(text, port)
    name = getattr(address, "name", None)
    if isinstance(name, (str, bytes)):
        return os.fsdecode(name)
    return str(address)
