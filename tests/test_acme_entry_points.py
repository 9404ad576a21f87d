"""
Public certificates from every entry point, as real processes against a real ACME CA
(pebble and pebble-challtestsrv on loopback, see ``_pebble``).

``twistd membio-https``, ``twistd membio-tls`` and a ``membio:`` endpoint under
``twistd words`` are started with the ACME settings of the shared table, listening on
the port where pebble validates tls-alpn-01 (a public CA uses 443); ``--workers 2``
answers http-01 on pebble's http-01 port through ``--redirect-http``.  Each obtained
certificate is verified by Python's ``ssl`` (strict) and curl against pebble's issuing
root, for the requested name.  Then: a restart reuses the stored certificate (no
order), a short-lived certificate is renewed in the running process while a
connection stays open, and the preflight refuses what only a new command line can fix
(terms not agreed, a URL that is no ACME directory) in one line, while an unreachable
CA leaves the server serving its local certificate and retrying.

Every wait polls a log line or a port and is bounded; pebble runs without its
validation sleeps (``PEBBLE_VA_NOSLEEP``), so an order takes about a second.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.endpoints import quoteStringArgument

from ._deploy_helpers import backend, echo_handler, membio_tls_command
from ._pebble import PebbleCA, needs_pebble, running_pebble
from ._plugin_helpers import (
    IRCClient,
    Server,
    free_port,
    run_to_completion,
    running,
    subprocess_env,
    twistd_command,
)

pytestmark = [pytest.mark.integration, needs_pebble]

CURL = shutil.which("curl")
#: An order against pebble without validation sleeps takes about a second; the
#: rest is a cold twistd start on a busy two-core machine.
ORDER_TIMEOUT = 30.0
#: pebble's terms of service (its directory's meta.termsOfService).
PEBBLE_TERMS = "data:text/plain,Do%20what%20thou%20wilt"


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PebbleCA]:
    yield from running_pebble(tmp_path_factory.mktemp("pebble-entry-points"))


@pytest.fixture
def short_pebble(tmp_path: Path) -> Iterator[PebbleCA]:
    """Pebble issuing 9-second certificates: renewal is due 6 seconds after issue."""
    yield from running_pebble(tmp_path / "pebble-short", validity_seconds=9)


def unique_name(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}.example.test"


def acme_options(ca: PebbleCA, name: str, cert_dir: Path, *extra: str) -> list[str]:
    """The command-line options of a real host's, pointed at pebble."""
    return [
        "--acme-directory", ca.directory_url, "--acme-directory-ca", str(ca.ca_file),
        "--acme-agree-tos", "--acme-email", "ops@example.org",
        "--hostname", name, "--cert-dir", str(cert_dir), *extra,
    ]  # fmt: skip


def installed(server: Server, name: str, count: int = 1, timeout: float = ORDER_TIMEOUT) -> str:
    """Wait for the C{count}th ACME certificate installed; its fingerprint."""
    pattern = (
        rf"certificates reloaded \(ACME certificate for {re.escape(name)} installed\): "
        r"new connections get SHA-256 ([0-9A-F:]{95})"
    )
    deadline = time.monotonic() + timeout
    while len(found := re.findall(pattern, server.stdout)) < count:
        assert server.process.poll() is None, server.describe()
        assert time.monotonic() < deadline, f"no certificate {count} installed\n{server.describe()}"
        time.sleep(0.05)
    return str(found[count - 1])


def root_of(ca: PebbleCA, directory: Path) -> Path:
    path = directory / f"pebble-root-{uuid.uuid4().hex[:6]}.pem"
    path.write_bytes(ca.root_pem())
    return path


def strict_context(root: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(root))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def fingerprint_of(tls: ssl.SSLSocket) -> str:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).digest().hex(":").upper()


def https_get(port: int, name: str, root: Path) -> tuple[bytes, str]:
    """GET / with Python's ssl, verifying C{name} strictly against C{root}."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        strict_context(root).wrap_socket(raw, server_hostname=name) as tls,
    ):
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
        return data, fingerprint_of(tls)


def curl_get(port: int, name: str, root: Path) -> str:
    assert CURL is not None
    argv = [
        CURL, "--silent", "--show-error", "--fail", "--max-time", "10",
        "--cacert", str(root), "--resolve", f"{name}:{port}:127.0.0.1",
        f"https://{name}:{port}/",
    ]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def membio_https(ca: PebbleCA, *options: str) -> list[str]:
    return [
        *twistd_command(), "-n", "--pidfile=", "membio-https",
        "--port", str(ca.tls_port), "--interface", "127.0.0.1", *options,
    ]  # fmt: skip


def ordered_lines(text: str, *patterns: str) -> None:
    """Each pattern matches a line of C{text}, in this order."""
    position = 0
    for pattern in patterns:
        match = re.compile(pattern, re.MULTILINE).search(text, position)
        assert match, f"no {pattern!r} after position {position} in:\n{text}"
        position = match.end()


# ------------------------------------------------------------------ membio-https


def test_membio_https_gets_serves_and_reuses_a_public_certificate(
    pebble: PebbleCA, tmp_path: Path
) -> None:
    name = unique_name("www")
    cert_dir = tmp_path / "state"
    env = subprocess_env(tmp_path / "home")
    command = membio_https(pebble, *acme_options(pebble, name, cert_dir))
    orders = pebble.orders()
    with running(command, tmp_path / "first", env, "https") as server:
        fingerprint = installed(server, name)
        root = root_of(pebble, tmp_path)
        data, served = https_get(pebble.tls_port, name, root)
        assert served == fingerprint and data.startswith(b"HTTP/1.1 200"), data[:200]
        if CURL is not None:
            assert "TLS works" in curl_get(pebble.tls_port, name, root)
        log = server.stdout
    assert pebble.orders() == orders + 1
    # What the log says at each step, in order (the README quotes these lines).
    ordered_lines(
        log,
        rf"ACME: certificate for {re.escape(name)} from {re.escape(pebble.directory_url)}, "
        r"answering tls-alpn-01 on this TLS port; state in .*/state/acme$",
        r"ACME: no certificate stored yet: serving the generated local certificate",
        r"ready: open https://",
        rf"ACME: ordering a certificate for {re.escape(name)} .*\(none stored yet\); "
        "answering tls-alpn-01$",
        rf"ACME: served the tls-alpn-01 challenge certificate for {re.escape(name)}",
        rf"ACME: new certificate for {re.escape(name)} .*\(none stored yet; took [\d.]+ s\), "
        r"valid until .* UTC, renewal from .* UTC$",
        rf"certificates reloaded \(ACME certificate for {re.escape(name)} installed\)",
    )
    assert "Traceback" not in log
    # The files: one certificate folder, keys 0600.
    chains = list((cert_dir / "acme" / "certificates").glob("*/fullchain.pem"))
    assert len(chains) == 1 and (chains[0].parent / "key.pem").stat().st_mode & 0o077 == 0

    # A restart serves the stored certificate from the first connection on: no order.
    with running(command, tmp_path / "second", env, "https") as server:
        server.wait_for_log(r"ready: open https://")
        _, served = https_get(pebble.tls_port, name, root)
        assert served == fingerprint
        server.wait_for_log(rf"ACME: using the stored certificate for {re.escape(name)}")
        assert re.search(
            r"using the ACME certificate: TLS certificate .*/state/acme/certificates/"
            rf"{re.escape(name)}-[0-9a-f]{{12}}/fullchain\.pem for {re.escape(name)}$",
            server.stdout, re.MULTILINE,
        ), server.stdout
        assert "no certificate stored yet" not in server.stdout
        assert "ACME: ordering" not in server.stdout
    assert pebble.orders() == orders + 1


def test_membio_https_renews_in_the_running_process(
    short_pebble: PebbleCA, tmp_path: Path
) -> None:
    ca = short_pebble
    name = unique_name("renew")
    env = subprocess_env(tmp_path / "home")
    command = membio_https(ca, *acme_options(ca, name, tmp_path / "state"))
    with running(command, tmp_path, env, "https") as server:
        first = installed(server, name)
        root = root_of(ca, tmp_path)
        raw = socket.create_connection(("127.0.0.1", ca.tls_port), timeout=10)
        with strict_context(root).wrap_socket(raw, server_hostname=name) as kept:
            assert fingerprint_of(kept) == first
            # Renewal is due two thirds into the 9-second lifetime (or when ARI says).
            second = installed(server, name, count=2)
            assert second != first
            # The connection made before the renewal carries on.
            kept.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
            assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        # New connections get the renewed one (or a later renewal: each lasts 9 s).
        _, served = https_get(ca.tls_port, name, root)
        assert served != first
        assert re.search(
            rf"ACME: ordering a certificate for {re.escape(name)} .*\(renewal due since ",
            server.stdout,
        ), server.stdout


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_membio_https_workers_order_once_and_answer_in_any_worker(
    pebble: PebbleCA, tmp_path: Path, challenge: str
) -> None:
    name = unique_name("workers")
    env = subprocess_env(tmp_path / "home")
    options = acme_options(
        pebble, name, tmp_path / "state", "--acme-challenges", challenge,
        "--redirect-http", str(pebble.http_port), "--workers", "2",
    )  # fmt: skip
    orders = pebble.orders()
    with running(membio_https(pebble, *options), tmp_path, env, "https") as server:
        fingerprint = installed(server, name)
        # The parent's reload forks workers with the new context.
        server.wait_for_log(r"TLS context reloaded: replacing 2 worker\(s\)")
        server.wait_for_log(r"worker 1 started \(pid \d+\)(?:.|\n)*worker 1 started")
        root = root_of(pebble, tmp_path)
        for _ in range(6):
            data, served = https_get(pebble.tls_port, name, root)
            assert served == fingerprint and data.startswith(b"HTTP/1.1 200")
        log = server.stdout
    assert pebble.orders() == orders + 1
    assert log.count("ACME: ordering a certificate") == 1
    # A worker answered the CA from the challenge files the parent wrote: only workers
    # serve (the parent binds the sockets and serves nothing).
    answered = {
        "http-01": "ACME: answered the http-01 challenge",
        "tls-alpn-01": f"ACME: served the tls-alpn-01 challenge certificate for {name}",
    }
    assert answered[challenge] in log, log
    assert "Traceback" not in log + server.stderr


# ------------------------------------------------------------------ membio-tls


def test_membio_tls_gets_a_public_certificate(pebble: PebbleCA, tmp_path: Path) -> None:
    name = unique_name("relay")
    env = subprocess_env(tmp_path / "home")
    with backend(echo_handler) as echo:
        command = membio_tls_command(
            twistd_command(), "--port", str(pebble.tls_port), "--interface", "127.0.0.1",
            "--backend", echo.endpoint, *acme_options(pebble, name, tmp_path / "state"),
        )  # fmt: skip
        with running(command, tmp_path, env, "tls") as server:
            fingerprint = installed(server, name)
            root = root_of(pebble, tmp_path)
            raw = socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=10)
            with strict_context(root).wrap_socket(raw, server_hostname=name) as tls:
                assert fingerprint_of(tls) == fingerprint
                tls.sendall(b"relayed over an ACME certificate\n")
                echoed = b""
                while not echoed.endswith(b"\n"):
                    chunk = tls.recv(65536)
                    assert chunk, "the relay closed"
                    echoed += chunk
                assert echoed == b"relayed over an ACME certificate\n"
            assert "ACME: served the tls-alpn-01 challenge certificate" in server.stdout
    # The CA's validation connections never reached the backend: only ours did.
    assert len(echo.records) == 1, echo.records


# ------------------------------------------------------------------ membio: under twistd words


def test_membio_endpoint_under_twistd_words_serves_irc_with_a_public_certificate(
    pebble: PebbleCA, tmp_path: Path
) -> None:
    name = unique_name("irc")
    keys = {
        "interface": "127.0.0.1",
        "acme": "ops@example.org",  # the spelling: acme= is the contact address
        "acmeDirectory": pebble.directory_url,
        "acmeDirectoryCA": str(pebble.ca_file),
        "acmeAgreeTOS": "yes",
        "hostname": name,
        "certDir": str(tmp_path / "state"),
    }
    description = f"membio:{pebble.tls_port}:" + ":".join(
        f"{key}={quoteStringArgument(value)}" for key, value in keys.items()
    )
    command = [
        *twistd_command(), "-n", "--pidfile=", "words", "--irc-port", description,
        "--auth", "memory:alice:secret:bob:secret",
    ]  # fmt: skip
    with running(command, tmp_path, subprocess_env(tmp_path / "home"), "words") as server:
        fingerprint = installed(server, name)
        root = root_of(pebble, tmp_path)
        alice = IRCClient(pebble.tls_port, root, "alice", "secret", host=name)
        bob = IRCClient(pebble.tls_port, root, "bob", "secret", host=name)
        try:
            assert fingerprint_of(alice.sock) == fingerprint
            alice.expect(r" 001 alice ")
            bob.expect(r" 001 bob ")
            bob.send("PRIVMSG alice :over a public certificate")
            assert alice.expect(r"PRIVMSG alice :over a public certificate$").startswith(":bob!")
        finally:
            alice.close()
            bob.close()
        assert "Traceback" not in server.stdout + server.stderr


# ------------------------------------------------------------------ preflight


def test_without_agreeing_to_the_terms_start_up_is_refused_naming_them(
    pebble: PebbleCA, tmp_path: Path
) -> None:
    name = unique_name("tos")
    options = [option for option in acme_options(pebble, name, tmp_path / "state")
               if option != "--acme-agree-tos"]
    result = run_to_completion(
        membio_https(pebble, *options), tmp_path, subprocess_env(tmp_path / "home")
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0] == (
        f"twistd membio-https: error: the ACME CA {pebble.directory_url} requires agreeing "
        f"to its terms of service before the first order: read {PEBBLE_TERMS}, then add "
        "--acme-agree-tos"
    )
    assert not (tmp_path / "state" / "acme" / "accounts").exists()  # nothing registered


def test_a_url_that_is_not_an_acme_directory_is_refused_at_start_up(
    pebble: PebbleCA, tmp_path: Path
) -> None:
    url = f"{pebble.management_url}/roots/0"
    options = acme_options(pebble, unique_name("url"), tmp_path / "state")
    options[1] = url
    result = run_to_completion(
        membio_https(pebble, *options), tmp_path, subprocess_env(tmp_path / "home")
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        f"twistd membio-https: error: {url} is not an ACME directory (HTTP 200"
    ), result.stderr
    assert (
        "give --acme-directory (acmeDirectory= in a membio: endpoint) the CA's directory URL"
    ) in result.stderr


def test_an_unreachable_ca_keeps_the_local_certificate_and_retries(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens there
    url = f"https://127.0.0.1:{closed}/dir"
    cert_dir = tmp_path / "state"
    command = [
        *twistd_command(), "-n", "--pidfile=", "membio-https", "--port", "0",
        "--interface", "127.0.0.1", "--acme-directory", url, "--acme-agree-tos",
        "--hostname", "down.example.test", "--cert-dir", str(cert_dir),
    ]  # fmt: skip
    with running(command, tmp_path, subprocess_env(tmp_path / "home"), "https") as server:
        port = int(server.wait_for_log(r"ready: open https://[^\s/]+:(\d+)/").group(1))
        server.wait_for_log(
            r"ACME: the CA cannot be reached now \(cannot reach the ACME CA "
            rf"{re.escape(url)} \(Connection refused\); check the URL and this machine's "
            r"network\); serving the certificate below meanwhile and retrying with backoff"
        )
        server.wait_for_log(
            r"ACME: no certificate for down\.example\.test \(attempt 1\): cannot reach the "
            r"ACME CA .*; next attempt in \d+ min"
        )
        # Serving the generated local certificate, for the public name too.
        local = ssl.create_default_context(cafile=str(cert_dir / "local-ca.pem"))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            local.wrap_socket(raw, server_hostname="down.example.test"),
        ):
            pass
        assert server.process.poll() is None
