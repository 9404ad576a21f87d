"""
The certificate lifecycle of every entry point, as real processes: the
``membio:`` endpoint under ``twistd words`` (with IRC clients), ``twistd
membio-https`` and ``twistd membio-tls`` (with an echo backend).

For each: a certificate replaced on disk is served to new connections
without a restart while connections already open carry on; SIGHUP reloads
and never kills the process; and a generated leaf that enters its renewal
window while the process runs is renewed (a leaf made to live a dozen
seconds, so that its window opens during the test).  Then a program that
handles SIGHUP itself still sees its own handler run.

The in-process side (the source on a fake clock, the dispatcher, the
lifecycle counted over ports) is in ``test_serving.py``.
"""

from __future__ import annotations

import datetime
import os
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from twisted.internet.endpoints import quoteStringArgument

from membio_transport.certs import ensure_certificate

from ._abuse_helpers import Issued, client_context, issue, make_ca, read_response, request
from ._deploy_helpers import backend, echo_handler, membio_tls_command
from ._plugin_helpers import (
    HTTPS_READY,
    TLS_ON_LOOPBACK,
    IRCClient,
    Server,
    listening_port,
    peer_fingerprint,
    running,
    subprocess_env,
    twistd_command,
)

pytestmark = pytest.mark.integration

ENTRY_POINTS = ("membio:", "membio-https", "membio-tls")

#: How long the short-lived generated leaf lives: its renewal window (the
#: last third) opens 8 s after it is made, once the server surely runs.
SHORT_LIFE = datetime.timedelta(seconds=12)


class Conversation(Protocol):
    """A connection made before a reload, which must go on working after it."""

    def works(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class Served:
    server: Server
    port: int
    trust: Path
    entry: str

    def fingerprint(self) -> str:
        """What a new connection is served now (verified against C{trust})."""
        return peer_fingerprint(self.port, self.trust)

    def wait_for_reload(self, why: str, fingerprint: str, timeout: float = 20.0) -> None:
        self.server.wait_for_log(
            rf"certificates reloaded \({why}\): new connections get SHA-256 {fingerprint}",
            timeout,
        )

    def alive(self) -> bool:
        return self.server.process.poll() is None


# ------------------------------------------------------------------ the three entry points


class _IRC:
    """Alice stays connected over TLS; each check, Bob connects anew and writes to her."""

    def __init__(self, port: int, trust: Path) -> None:
        self.port, self.trust = port, trust
        self.alice = IRCClient(port, trust, "alice", "secret")
        self.alice.expect(r" 001 alice ")
        self.said = 0

    def works(self) -> None:
        self.said += 1
        bob = IRCClient(self.port, self.trust, "bob", "secret")
        try:
            bob.expect(r" 001 bob ")
            bob.send(f"PRIVMSG alice :message {self.said}")
            heard = self.alice.expect(rf"PRIVMSG alice :message {self.said}$")
            assert heard.startswith(":bob!"), heard
        finally:
            bob.close()

    def close(self) -> None:
        self.alice.close()


class _KeepAlive:
    """One HTTPS keep-alive connection: each check is one more request on it."""

    def __init__(self, port: int, trust: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = client_context(trust).wrap_socket(raw, server_hostname="localhost")

    def works(self) -> None:
        request(self.tls)
        assert read_response(self.tls)[0] == 200

    def close(self) -> None:
        self.tls.close()


class _Relayed:
    """One TLS connection through membio-tls to an echo backend."""

    def __init__(self, port: int, trust: Path) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.tls = client_context(trust).wrap_socket(raw, server_hostname="localhost")
        self.said = 0

    def works(self) -> None:
        self.said += 1
        message = b"message %d\n" % self.said
        self.tls.sendall(message)
        echoed = b""
        while len(echoed) < len(message):
            chunk = self.tls.recv(len(message) - len(echoed))
            assert chunk, "the relay closed the connection"
            echoed += chunk
        assert echoed == message

    def close(self) -> None:
        self.tls.close()


def conversation(served: Served) -> Conversation:
    kinds = {"membio:": _IRC, "membio-https": _KeepAlive, "membio-tls": _Relayed}
    return kinds[served.entry](served.port, served.trust)


@contextmanager
def serve(
    entry: str,
    tmp_path: Path,
    trust: Path,
    *,
    files: tuple[Path, Path] | None = None,
    cert_dir: Path | None = None,
    reload_interval: str = "0.2",
) -> Iterator[Served]:
    """Run C{entry} with the user's C{files} or a generated certificate in C{cert_dir}."""
    env = subprocess_env(tmp_path / "home")
    if entry == "membio:":
        keys = (
            [f"certKey={quoteStringArgument(str(files[0]))}",
             f"privateKey={quoteStringArgument(str(files[1]))}"]
            if files else [f"certDir={quoteStringArgument(str(cert_dir))}"]
        )
        description = ":".join(
            ["membio:0:interface=127.0.0.1", *keys, f"reloadInterval={reload_interval}"]
        )
        command = [
            *twistd_command(), "-n", "--pidfile=", "words", "--irc-port", description,
            "--auth", "memory:alice:secret:bob:secret",
        ]
        with running(command, tmp_path, env, "words") as server:
            yield Served(server, listening_port(server, TLS_ON_LOOPBACK), trust, entry)
        return
    options = (
        ["--cert", str(files[0]), "--key", str(files[1])]
        if files else ["--cert-dir", str(cert_dir)]
    )
    options += ["--port", "0", "--interface", "127.0.0.1", "--reload-interval", reload_interval]
    if entry == "membio-https":
        command = [*twistd_command(), "-n", "--pidfile=", "membio-https", *options]
        with running(command, tmp_path, env, "https") as server:
            yield Served(server, listening_port(server, HTTPS_READY), trust, entry)
        return
    with backend(echo_handler) as echo:
        command = membio_tls_command(twistd_command(), *options, "--backend", echo.endpoint)
        with running(command, tmp_path, env, "tls") as server:
            yield Served(server, listening_port(server, TLS_ON_LOOPBACK), trust, entry)


def _user_files(tmp_path: Path) -> tuple[Issued, Issued, Path, tuple[Path, Path]]:
    ca = make_ca("reload CA")
    trust = tmp_path / "ca.pem"
    trust.write_bytes(ca.cert_pem)
    first, second = issue(ca, ["localhost"]), issue(ca, ["localhost"])
    files = first.write(tmp_path / "tls", "server")
    return first, second, trust, files


def _replace(issued: Issued, files: tuple[Path, Path]) -> None:
    """As certbot does: the new files are renamed over the old ones, key first."""
    cert, key = files
    for path, data in ((key, issued.key_pem), (cert, issued.cert_pem)):
        temporary = path.with_name(f".{path.name}.new")
        temporary.write_bytes(data)
        temporary.chmod(0o600)
        os.replace(temporary, path)


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_replaced_certificate_is_served_to_new_connections(entry: str, tmp_path: Path) -> None:
    first, second, trust, files = _user_files(tmp_path)
    with serve(entry, tmp_path, trust, files=files) as served:
        assert served.fingerprint() == first.fingerprint
        before = conversation(served)
        try:
            before.works()
            _replace(second, files)
            served.wait_for_reload(r"[^)]*changed", second.fingerprint)
            assert served.fingerprint() == second.fingerprint
            # The connection made before the reload carries on with its certificate.
            before.works()
            before.works()
        finally:
            before.close()
        assert served.alive()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_sighup_reloads_and_never_kills(entry: str, tmp_path: Path) -> None:
    first, second, trust, files = _user_files(tmp_path)
    with serve(entry, tmp_path, trust, files=files, reload_interval="0") as served:
        before = conversation(served)
        try:
            _replace(second, files)
            time.sleep(0.5)  # no polling: nothing happens until the signal
            assert served.fingerprint() == first.fingerprint
            os.kill(served.server.process.pid, signal.SIGHUP)
            served.wait_for_reload("SIGHUP", second.fingerprint)
            assert served.fingerprint() == second.fingerprint
            before.works()
            # Again, with nothing changed: still alive, still serving.
            os.kill(served.server.process.pid, signal.SIGHUP)
            served.server.wait_for_log(rf"SHA-256 {second.fingerprint} \(unchanged\)")
            before.works()
        finally:
            before.close()
        assert served.alive(), served.server.describe()
        assert "Traceback" not in served.server.stdout + served.server.stderr


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_generated_leaf_is_renewed_in_the_running_process(entry: str, tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    short = ensure_certificate(cert_dir, (), leaf_lifetime=SHORT_LIFE)
    assert short.renew_after is not None
    trust = cert_dir / "local-ca.pem"
    with serve(entry, tmp_path, trust, cert_dir=cert_dir) as served:
        assert served.fingerprint() == short.fingerprint_sha256  # reused: not due yet
        before = conversation(served)
        try:
            served.server.wait_for_log(
                r"certificates reloaded \(the generated certificate is due for renewal\)",
                timeout=30,
            )
            renewed = served.fingerprint()  # verified by the same local root
            assert renewed != short.fingerprint_sha256
            assert datetime.datetime.now(datetime.UTC) >= short.renew_after
            before.works()
        finally:
            before.close()
        assert served.alive()


TAC_WITH_ITS_OWN_SIGHUP = """\
# A host program that handles SIGHUP itself, serving on a membio: endpoint.
import os
import signal

from twisted.application import service, strports
from twisted.internet import protocol


def rotate(number, frame):
    os.write(1, b"host program: its own SIGHUP handler ran\\n")


signal.signal(signal.SIGHUP, rotate)


class Echo(protocol.Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


application = service.Application("host")
strports.service(
    os.environ["MEMBIO_TEST_ENDPOINT"], protocol.Factory.forProtocol(Echo)
).setServiceParent(application)
"""


def test_a_host_programs_own_sighup_handler_still_runs(tmp_path: Path) -> None:
    _, second, trust, files = _user_files(tmp_path)
    tac = tmp_path / "host.tac"
    tac.write_text(TAC_WITH_ITS_OWN_SIGHUP)
    description = (
        f"membio:0:interface=127.0.0.1:certKey={quoteStringArgument(str(files[0]))}"
        f":privateKey={quoteStringArgument(str(files[1]))}:reloadInterval=0"
    )
    env = subprocess_env(tmp_path / "home", MEMBIO_TEST_ENDPOINT=description)
    command = [*twistd_command(), "-n", "--pidfile=", "-y", str(tac)]
    with running(command, tmp_path, env, "host") as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        _replace(second, files)
        for _ in range(2):
            os.kill(server.process.pid, signal.SIGHUP)
            server.wait_for_log(r"certificates reloaded \(SIGHUP\)")
        deadline = time.monotonic() + 10
        while server.stdout.count("its own SIGHUP handler ran") < 2:
            assert time.monotonic() < deadline, server.describe()
            time.sleep(0.05)
        assert server.stdout.count("certificates reloaded (SIGHUP)") == 2
        assert peer_fingerprint(port, trust) == second.fingerprint
        assert server.process.poll() is None


def test_sighup_kills_twistd_words_without_us(tmp_path: Path) -> None:
    """Why the dispatcher exists: the same program on tcp: dies of SIGHUP."""
    command = [
        *twistd_command(), "-n", "--pidfile=", "words", "--irc-port", "tcp:0:interface=127.0.0.1",
        "--auth", "memory:alice:secret",
    ]
    with running(command, tmp_path, subprocess_env(tmp_path / "home"), "plain") as server:
        server.wait_for_log(r"IRCFactory starting on (\d+)")
        os.kill(server.process.pid, signal.SIGHUP)
        with suppress(Exception):
            server.process.wait(10)
        assert server.process.returncode == -signal.SIGHUP
