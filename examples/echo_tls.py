"""
Wrap any Twisted Factory in TLS: an echo server and client.

The protocols below know nothing about TLS.  ``MemoryBIOTLSFactory`` wraps
their factories, on the server with the certificate's options and on the
client with ``optionsForClientTLS`` (which checks the server's name):

    python examples/echo_tls.py server --port 8007 \\
        --cert ~/.local/state/membio-transport/server.pem \\
        --key ~/.local/state/membio-transport/server-key.pem
    python examples/echo_tls.py client --port 8007 \\
        --ca ~/.local/state/membio-transport/local-ca.pem "hello, TLS"

(``twistd -n membio-https`` creates those three files on its first run;
any PEM certificate chain, key and CA work.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, ssl, task
from twisted.protocols.basic import LineReceiver

from membio_transport import MemoryBIOTLSFactory, ServerTLSOptions, server_context


class Echo(protocol.Protocol):
    """Sends back whatever it receives."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)


class EchoClient(LineReceiver):
    """Sends one line, prints the line that comes back, hangs up."""

    def connectionMade(self) -> None:
        self.sendLine(self.factory.message.encode())

    def lineReceived(self, line: bytes) -> None:
        print(f"echoed: {line.decode()}", flush=True)
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.factory.done.called:
            self.factory.done.callback(None)


def serve(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    # The package's hardened server settings (TLS 1.2+, AEAD ciphers, resumption).
    options = ServerTLSOptions(
        server_context(Path(args.cert).expanduser(), Path(args.key).expanduser())
    )
    plain = protocol.Factory.forProtocol(Echo)
    # The only TLS-specific line: wrap the factory, then listen as usual.
    port = reactor.listenTCP(args.port, MemoryBIOTLSFactory(options, False, plain),
                             interface=args.interface)
    print(f"echo server ready on {args.interface}:{port.getHost().port}", flush=True)
    return defer.Deferred()  # run until interrupted


def ask(reactor: Any, args: argparse.Namespace) -> defer.Deferred[None]:
    trust = ssl.Certificate.loadPEM(Path(args.ca).expanduser().read_bytes())
    options = ssl.optionsForClientTLS(args.host, trustRoot=trust)
    plain = protocol.ClientFactory.forProtocol(EchoClient)
    plain.message = args.message
    plain.done = defer.Deferred()
    reactor.connectTCP(args.connect, args.port, MemoryBIOTLSFactory(options, True, plain))
    return plain.done


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, default=8007)
    server.add_argument("--interface", default="127.0.0.1")
    server.add_argument("--cert", required=True)
    server.add_argument("--key", required=True)
    client = sub.add_parser("client")
    client.add_argument("--port", type=int, default=8007)
    client.add_argument("--connect", default="127.0.0.1", help="address to connect to")
    client.add_argument("--host", default="localhost", help="name the certificate must have")
    client.add_argument("--ca", required=True)
    client.add_argument("message")
    args = parser.parse_args(argv)
    task.react(serve if args.mode == "server" else ask, [args])


if __name__ == "__main__":
    main(sys.argv[1:])
