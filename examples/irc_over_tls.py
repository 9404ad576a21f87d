"""
An IRC server over TLS: Twisted's own ``IRCFactory``, wrapped in Python code.

``twistd words --irc-port membio:6697`` needs no code at all, but it cannot
create channels on request (and its ``--group`` option crashes on Python 3).
This script builds the same server by hand, with channels created on JOIN
and users given on the command line, and adds TLS by wrapping the factory
in ``MemoryBIOTLSFactory``, exactly as for any other Twisted factory:

    python examples/irc_over_tls.py --port 6697 \\
        --cert ~/.local/state/membio-transport/server.pem \\
        --key ~/.local/state/membio-transport/server-key.pem \\
        --user alice:secret --user bob:secret

Connect with ``examples/irc_client.py``, with ``openssl s_client``, or with
an IRC client that does not wait for capability negotiation, which Twisted's
server does not implement (irssi: ``/connect -nocap -tls -tls_cafile
~/.local/state/membio-transport/local-ca.pem localhost 6697 secret alice``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.cred import checkers, portal
from twisted.internet import defer, task
from twisted.words import service

from membio_transport import MemoryBIOTLSFactory, ServerTLSOptions, server_context


def irc_factory(users: list[str], name: str = "membio-irc") -> service.IRCFactory:
    """Twisted words' IRC server: an in-memory realm and a password checker."""
    realm = service.InMemoryWordsRealm(name)
    realm.createGroupOnRequest = True  # JOIN #anything creates the channel
    checker = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    for user in users:
        nick, _, password = user.partition(":")
        # IRC logs in with the nick and PASS as str: add them as str.
        checker.addUser(nick, password)
    return service.IRCFactory(realm, portal.Portal(realm, [checker]))


def main(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    # The package's hardened server settings (TLS 1.2+, AEAD ciphers, resumption).
    options = ServerTLSOptions(
        server_context(Path(args.cert).expanduser(), Path(args.key).expanduser())
    )
    tls = MemoryBIOTLSFactory(options, False, irc_factory(args.user))
    port = reactor.listenTCP(args.port, tls, interface=args.interface)
    print(f"IRC over TLS on {args.interface}:{port.getHost().port}", flush=True)
    return defer.Deferred()  # serve until interrupted


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=6697)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--cert", required=True, help="PEM certificate chain, leaf first")
    parser.add_argument("--key", required=True, help="PEM private key")
    parser.add_argument("--user", action="append", default=[], help="NICK:PASSWORD, repeatable")
    task.react(main, [parser.parse_args(sys.argv[1:])])
