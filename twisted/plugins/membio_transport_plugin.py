"""
Twisted drop-in for membio-transport.

* ``twistd membio-https``: a zero-config HTTPS server (``membio_transport.https.tap``).
* ``twistd membio-tls``: a TLS termination proxy to a plaintext backend
  (``membio_transport.proxy.tap``).
* ``membio:`` server and client endpoint descriptions
  (``membio_transport.serving._endpoint`` documents the syntax).

Twisted imports every drop-in whenever it looks for plugins (each ``twistd``
run, each unknown endpoint prefix), so this module imports nothing heavy:
the real code is loaded only when one of these plugins is used.

This directory must never get an ``__init__.py``: ``twisted.plugins`` is
Twisted's own package, extended through its search path.

The two apps own their process, so they also set what OpenSSL can only be
told before it starts (`one_ticket`): one TLS 1.3 session ticket per
handshake instead of two.  Nothing else here touches OpenSSL: ``twistd web
--listen membio:`` and a library's own factories keep OpenSSL's defaults.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import (
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

#: The OpenSSL configuration file that asks for one ticket (NumTickets = 1
#: in the ``system_default`` section), shipped in the package's directory.
ONE_TICKET_CONF = "one-ticket.cnf"

#: The binding every pyOpenSSL and cryptography call goes through: once it
#: is imported, OpenSSL has read its configuration for the process.
_OPENSSL_BINDING = "cryptography.hazmat.bindings._rust"


def one_ticket_conf() -> Path | None:
    """Where `ONE_TICKET_CONF` is, found without importing the package."""
    spec = importlib.util.find_spec("membio_transport")
    if spec is None or not spec.submodule_search_locations:
        return None
    for directory in spec.submodule_search_locations:
        conf = Path(directory) / ONE_TICKET_CONF
        if conf.is_file():
            return conf
    return None


@contextlib.contextmanager
def one_ticket() -> Iterator[bool]:
    """
    Have OpenSSL, if it starts inside this block, issue one TLS 1.3 ticket
    per full handshake instead of two.

    pyOpenSSL has no ``SSL_CTX_set_num_tickets``; OpenSSL's configuration
    file has the same setting, and the OpenSSL that cryptography bundles
    reads it (``OPENSSL_CONF``) once, when its binding is first imported.
    So this points ``OPENSSL_CONF`` at our file for the import of an app's
    code and puts the variable back afterwards, so that the processes the
    app starts see the environment it was given.  Workers are forked after
    that, so they issue one ticket too, and their shared context keeps
    resumption working across them.  Nothing is changed when OpenSSL has
    already started (the block yields False) or when ``OPENSSL_CONF`` is
    set: the operator's configuration file decides then.  Saves about 140k
    instructions (~25 us here) per full handshake: one ticket's encryption
    and record.
    """
    conf = one_ticket_conf()
    if conf is None or _OPENSSL_BINDING in sys.modules or "OPENSSL_CONF" in os.environ:
        yield False
        return
    os.environ["OPENSSL_CONF"] = str(conf)
    try:
        yield True
    finally:
        os.environ.pop("OPENSSL_CONF", None)


class _OwnProcessMaker(ServiceMaker):
    """
    An app that owns its process: its code, and with it OpenSSL, is loaded
    under `one_ticket` (twistd asks for ``options`` first, and only for the
    app it runs).
    """

    @property
    def options(self) -> Any:
        with one_ticket():
            return super().options

    @property
    def makeService(self) -> Any:
        with one_ticket():
            return super().makeService


membioHTTPS = _OwnProcessMaker(
    "membio-https",
    "membio_transport.https.tap",
    "HTTPS server with a generated, trusted-once certificate (membio-transport TLS)",
    "membio-https",
)

membioTLS = _OwnProcessMaker(
    "membio-tls",
    "membio_transport.proxy.tap",
    "TLS termination proxy: decrypt and relay to a plaintext backend (membio-transport TLS)",
    "membio-tls",
)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MembioServerParser:
    """``membio:PORT[:options]``: TLS on TCP or around another server endpoint."""

    prefix = "membio"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from membio_transport.serving import parse_server

        return parse_server(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _MembioClientParser:
    """``membio:host=H:port=P[:options]``: verified TLS client connections."""

    prefix = "membio"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from membio_transport.serving import parse_client

        return parse_client(reactor, *args, **kwargs)


membioServerEndpointParser = _MembioServerParser()
membioClientEndpointParser = _MembioClientParser()
