"""
The one way an address is written (``membio_transport.tls._addresses``), in
every log line, message and URL of every layer.
"""

from __future__ import annotations

from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address, UNIXAddress

from membio_transport.tls import format_address, format_host, format_host_port


def test_ipv6_hosts_are_bracketed_wherever_a_port_follows() -> None:
    assert format_host("::1") == "[::1]"
    assert format_host("[::1]") == "[::1]"
    assert format_host("127.0.0.1") == "127.0.0.1"
    assert format_host("example.test") == "example.test"
    assert format_host_port("::", 443) == "[::]:443"
    assert format_host_port("127.0.0.1", "8443") == "127.0.0.1:8443"


def test_twisted_addresses() -> None:
    assert format_address(IPv4Address("TCP", "127.0.0.1", 51234)) == "127.0.0.1:51234"
    assert format_address(IPv6Address("TCP", "::1", 443)) == "[::1]:443"
    assert format_address(HostnameAddress(b"example.test", 443)) == "example.test:443"
    assert format_address(UNIXAddress("/run/app.sock")) == "/run/app.sock"
    assert format_address(UNIXAddress(None)) == "UNIXAddress(None)"  # an unnamed peer
    assert format_address("something else") == "something else"
