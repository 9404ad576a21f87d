"""
A scripted IRC client over TLS: Twisted's ``IRCClient`` on a ``membio:``
client endpoint, which verifies the server's certificate and name.

It registers, joins a channel, says its line once someone else is there,
and exits 0 when it has heard a line containing ``--expect`` (1 after
``--timeout`` seconds otherwise).  Two of them make a conversation:

    CA=$HOME/.local/state/membio-transport/local-ca.pem
    python examples/irc_client.py --nick alice --password secret \\
        --server "membio:host=localhost:port=6697:caFile=$CA" \\
        --channel '#tls' --say 'hello from alice' --expect 'hello from bob'
    python examples/irc_client.py --nick bob --password secret \\
        --server "membio:host=localhost:port=6697:caFile=$CA" \\
        --channel '#tls' --say 'hello from bob' --expect 'hello from alice'
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import clientFromString
from twisted.words.protocols import irc


class ScriptedClient(irc.IRCClient):
    def __init__(self, args: argparse.Namespace, done: defer.Deferred[None]) -> None:
        self.nickname = args.nick
        self.password = args.password
        self.args = args
        self.done = done
        self.said = False
        self.heard = False

    def signedOn(self) -> None:
        print(f"{self.nickname}: registered", flush=True)
        self.join(self.args.channel)

    def joined(self, channel: str) -> None:
        print(f"{self.nickname}: joined {channel}", flush=True)

    def irc_RPL_NAMREPLY(self, prefix: str, params: list[str]) -> None:
        # params: [me, "=", channel, "nick1 nick2 ..."]
        others = [n.lstrip("@+") for n in params[3].split() if n.lstrip("@+") != self.nickname]
        if others:
            self.say_once()

    def userJoined(self, user: str, channel: str) -> None:
        self.say_once()

    def say_once(self) -> None:
        if not self.said:
            self.said = True
            self.say(self.args.channel, self.args.say)
            self.finish_if_done()

    def privmsg(self, user: str, channel: str, message: str) -> None:
        print(f"{self.nickname}: <{user.split('!')[0]}> {message}", flush=True)
        if self.args.expect in message:
            self.heard = True
            self.finish_if_done()

    def finish_if_done(self) -> None:
        if self.said and self.heard:
            self.quit("bye")

    def connectionLost(self, reason: Any = None) -> None:
        irc.IRCClient.connectionLost(self, reason)
        if not self.done.called:
            if self.said and self.heard:
                self.done.callback(None)
            else:
                self.done.errback(Exception(f"disconnected: {reason.getErrorMessage()}"))


async def main(reactor: Any, args: argparse.Namespace) -> None:
    done: defer.Deferred[None] = defer.Deferred()
    done.addTimeout(args.timeout, reactor)
    endpoint = clientFromString(reactor, args.server)
    factory = protocol.Factory.forProtocol(lambda: ScriptedClient(args, done))
    await endpoint.connect(factory)
    await done


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="client endpoint, e.g. membio:host=...")
    parser.add_argument("--nick", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--channel", default="#tls")
    parser.add_argument("--say", required=True)
    parser.add_argument("--expect", required=True)
    parser.add_argument("--timeout", type=float, default=20.0)
    arguments = parser.parse_args(sys.argv[1:])
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, arguments)))
