"""
One TLS 1.3 session ticket per full handshake where this project owns the
process (``twistd membio-https``, ``twistd membio-tls``, their ``--workers``),
OpenSSL's two everywhere else (``twistd web --listen membio:``, a library's own
factories), and resumption with that one ticket (issue #14: the second
ticket cost ~140k instructions a handshake).  Real processes, counted by a
stdlib client that watches the NewSessionTicket messages arrive.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from twisted.internet.endpoints import quoteStringArgument

from ._deploy_helpers import backend, echo_handler, membio_tls_command
from ._plugin_helpers import (
    REPO,
    TLS_ON_LOOPBACK,
    listening_port,
    private_home,  # noqa: F401 (a fixture)
    running,
    subprocess_env,
    twistd_command,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("private_home")]

_NEW_SESSION_TICKET = 4  # the TLS handshake message type


class _Client:
    """A stdlib TLS 1.3 client that counts the NewSessionTicket messages it receives."""

    def __init__(self, ca: Path) -> None:
        self.context = ssl.create_default_context(cafile=str(ca))
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context._msg_callback = self._watch  # type: ignore[attr-defined]  # CPython's
        self.tickets = 0

    def _watch(self, *args: object) -> None:
        # (connection, direction, version, content type, message type, data)
        if args[1] == "read" and args[4] == _NEW_SESSION_TICKET:
            self.tickets += 1

    def get(
        self, port: int, session: ssl.SSLSession | None = None
    ) -> tuple[int, ssl.SSLSession | None, bool]:
        """One GET on a new connection: tickets received, the session, whether it resumed."""
        before = self.tickets
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                self.context.wrap_socket(raw, server_hostname="localhost",
                                         session=session) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            while tls.recv(65536):
                pass
            return self.tickets - before, tls.session, tls.session_reused


@contextmanager
def _https(tmp_path: Path, *extra: str) -> Iterator[tuple[int, Path]]:
    cert_dir = tmp_path / "certs"
    command = [
        *twistd_command(), "-n", "--pidfile=", "membio-https", "--port", "0",
        "--interface", "127.0.0.1", "--cert-dir", str(cert_dir), *extra,
    ]
    with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
        port = listening_port(server, r"ready: open https://localhost:(\d+)/")
        server.wait_for_port(port)
        yield port, cert_dir / "local-ca.pem"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
def test_membio_https_issues_one_ticket_and_resumes_with_it(
    tmp_path: Path, workers: list[str]
) -> None:
    with _https(tmp_path, *workers) as (port, ca):
        client = _Client(ca)
        tickets, session, resumed = client.get(port)
        assert (tickets, resumed) == (1, False)
        for _ in range(4):  # on whichever worker accepts it
            _, _, resumed = client.get(port, session)
            assert resumed


def test_membio_tls_issues_one_ticket(tmp_path: Path) -> None:
    cert_dir = tmp_path / "certs"
    with backend(echo_handler) as echo:
        command = membio_tls_command(
            twistd_command(), "--port", "0", "--interface", "127.0.0.1",
            "--backend", echo.endpoint, "--cert-dir", str(cert_dir),
        )
        with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
            port = listening_port(server, TLS_ON_LOOPBACK)
            server.wait_for_port(port)
            client = _Client(cert_dir / "local-ca.pem")
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    client.context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"ping")
                assert tls.recv(4) == b"ping"  # the tickets come before the first data
            assert client.tickets == 1


def test_twistd_web_with_the_membio_endpoint_keeps_openssls_two_tickets(tmp_path: Path) -> None:
    """Our plugin is imported by every twistd, but only our apps change OpenSSL's setting."""
    cert_dir = tmp_path / "certs"
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("hello\n")
    description = f"membio:0:interface=127.0.0.1:certDir={quoteStringArgument(str(cert_dir))}"
    command = [*twistd_command(), "-n", "--pidfile=", "web", "--listen", description,
               "--path", str(site)]
    with running(command, tmp_path, subprocess_env(tmp_path / "home")) as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        server.wait_for_port(port)
        tickets, _, _ = _Client(cert_dir / "local-ca.pem").get(port)
        assert tickets == 2


def test_an_operators_openssl_conf_is_left_to_decide(tmp_path: Path) -> None:
    """With OPENSSL_CONF set, that file decides; after the apps' import it is as it was."""
    code = (
        "import os, sys\n"
        "from twisted.plugins.membio_transport_plugin import membioHTTPS, one_ticket\n"
        "with one_ticket() as applied:\n"
        "    print(applied, os.environ.get('OPENSSL_CONF'))\n"
        "membioHTTPS.options\n"
        "print('after', os.environ.get('OPENSSL_CONF'))\n"
    )
    env = subprocess_env(tmp_path / "home")
    env.pop("OPENSSL_CONF", None)

    fresh = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=60, cwd=REPO, check=True).stdout.splitlines()
    assert fresh[0].startswith("True ") and fresh[0].endswith("one-ticket.cnf")
    assert fresh[1] == "after None"
    env["OPENSSL_CONF"] = os.devnull
    operator = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60, cwd=REPO, check=True).stdout.splitlines()
    assert operator == [f"False {os.devnull}", f"after {os.devnull}"]
