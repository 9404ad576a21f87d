"""
``twistd membio-https``: options, messages, and real server processes checked
with curl, Python's ssl, openssl s_client and headless Chromium; the
``membio:`` endpoint under ``twistd web`` and ``twistd words`` (IRC).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from twisted.internet.endpoints import quoteStringArgument
from twisted.internet.error import CannotListenError
from twisted.web.test.requesthelper import DummyRequest

from membio_transport.https import RedirectToHTTPS, default_alpn, prefers_html, tap
from membio_transport.serving import Listener, exit_status_one, listen_error

from ._plugin_helpers import (  # noqa: F401 (private_home is a fixture)
    HTTPS_READY,
    TAC_IRC,
    TLS_ON_LOOPBACK,
    IRCClient,
    Server,
    fingerprint_from_log,
    listening_port,
    peer_fingerprint,
    private_home,
    run_to_completion,
    running,
    subprocess_env,
    twistd_command,
)

READY = r"ready: open (https://\S+)"


pytestmark = pytest.mark.usefixtures("private_home")


def _options(*arguments: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(arguments))
    return options


def _error_of(*arguments: str) -> str:
    with pytest.raises(SystemExit) as raised:
        _options(*arguments)
    message = str(raised.value.code)
    assert "\n" not in message and "Traceback" not in message, message
    assert message.startswith("twistd membio-https: error: "), message
    return message


# --------------------------------------------------------------------- plugin


def test_drop_in_registers_lazily(tmp_path: Path) -> None:
    """
    twistd lists membio-https and finds both membio: parsers without importing
    any of the package's heavy modules.
    """
    script = textwrap.dedent(
        """
        import sys
        from twisted.application.service import IServiceMaker
        from twisted.internet.interfaces import (
            IStreamClientEndpointStringParserWithReactor, IStreamServerEndpointStringParser)
        from twisted.plugin import getPlugins
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "membio-https"]
        servers = [p for p in getPlugins(IStreamServerEndpointStringParser)
                   if p.prefix == "membio"]
        clients = [p for p in getPlugins(IStreamClientEndpointStringParserWithReactor)
                   if p.prefix == "membio"]
        loaded = sorted(m for m in sys.modules if m.startswith("membio_transport"))
        print(len(makers), len(servers), len(clients), loaded)
        """
    )
    result = run_to_completion(
        [sys.executable, "-c", script], tmp_path, subprocess_env(tmp_path / "home")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 1 1 []", result.stdout
    assert not (Path(__file__).parent.parent / "twisted" / "__init__.py").exists()
    assert not (Path(__file__).parent.parent / "twisted" / "plugins" / "__init__.py").exists()


def test_help_explains_every_option(tmp_path: Path) -> None:
    usage = tap.Options().getUsage()
    for option in (
        "--port", "--interface", "--listen", "--cert", "--key", "--key-password-file",
        "--cert-dir", "--hostname", "--path", "--redirect-http", "--profile",
        "--request-client-cert", "MEMBIO_KEY_PASSWORD", "Examples:",
    ):
        assert option in usage
    assert "[default: 8443" in usage and "[default: 127.0.0.1]" in usage


# --------------------------------------------------------------------- options


def test_defaults_serve_localhost_8443_with_a_generated_certificate(tmp_path: Path) -> None:
    options = _options("--cert-dir", str(tmp_path / "certs"))
    assert options["port"] == 8443 and options["interface"] == "127.0.0.1"
    assert [listener.label for listener in options["listeners"]] == ["127.0.0.1:8443"]
    certificate = options["certificate"]
    assert {"localhost", "127.0.0.1", "::1"} <= set(certificate.names)
    assert certificate.trust_path.name == "local-ca.pem"
    assert stat.S_IMODE(os.stat(tmp_path / "certs").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(certificate.key_path).st_mode) == 0o600


def test_listen_replaces_port_unless_port_is_given(tmp_path: Path) -> None:
    certs = str(tmp_path / "certs")
    only = _options("--cert-dir", certs, "--listen", "tcp:0:interface=127.0.0.1")
    assert [listener.label for listener in only["listeners"]] == ["tcp:0:interface=127.0.0.1"]
    both = _options("--cert-dir", certs, "--listen", "unix:x.sock", "--port", "0")
    assert [listener.label for listener in both["listeners"]] == ["127.0.0.1:0", "unix:x.sock"]


def test_hostnames_and_a_specific_interface_go_into_the_certificate(tmp_path: Path) -> None:
    options = _options(
        "--cert-dir", str(tmp_path / "certs"), "--hostname", "a.example,b.example",
        "--hostname", "192.0.2.1", "--interface", "::",
    )
    assert {"a.example", "b.example", "192.0.2.1"} <= set(options["certificate"].names)
    other = _options("--cert-dir", str(tmp_path / "c2"), "--interface", "198.51.100.7")
    assert "198.51.100.7" in other["certificate"].names


@dataclass
class _Files:
    cert: Path
    key: Path
    encrypted: Path
    other_key: Path


@pytest.fixture
def user_files(tmp_path: Path) -> _Files:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from membio_transport.certs import ensure_certificate

    generated = ensure_certificate(tmp_path / "gen", ())
    key = serialization.load_pem_private_key(generated.key_path.read_bytes(), None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    other = tmp_path / "other-key.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    for path in (encrypted, other):
        path.chmod(0o600)
    return _Files(generated.cert_path, generated.key_path, encrypted, other)


def test_own_certificate_with_password_file_or_environment(
    user_files: _Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    options = _options(
        "--cert", str(user_files.cert), "--key", str(user_files.encrypted),
        "--key-password-file", str(password),
    )
    assert options["certificate"].cert_path == user_files.cert
    monkeypatch.setenv("MEMBIO_KEY_PASSWORD", "s3cret")
    _options("--cert", str(user_files.cert), "--key", str(user_files.encrypted))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--cert", "/nonexistent/cert.pem"], "cannot read certificate file /nonexistent"),
        (["--key", "k.pem"], "--key needs --cert"),
        (["--key-password-file", "p"], "--key-password-file applies to --key"),
        (["--port", "https"], "--port 'https' is not a port number"),
        (["--port", "70000"], "--port 70000 is out of range"),
        (["--interface", "example.com"], "--interface 'example.com' is not an IP address"),
        (["--profile", "old"], "--profile 'old' is unknown"),
        (["--path", "/nonexistent/dir"], "--path /nonexistent/dir does not exist"),
        (["--listen", "ssl:8443"], "ssl: is a TLS endpoint already"),
        (["--listen", "bogus:1"], "--listen bogus:1: Unknown endpoint type"),
        (["--redirect-http", "http"], "--redirect-http http: Unknown endpoint type"),
        (["--bogus"], "option --bogus not recognized (see: twistd membio-https --help)"),
    ],
)
def test_usage_errors_are_one_line(arguments: list[str], expected: str) -> None:
    assert expected in _error_of(*arguments)


def test_certificate_errors_are_one_line(user_files: _Files, tmp_path: Path) -> None:
    cert, key = str(user_files.cert), str(user_files.key)
    message = _error_of("--cert", cert, "--key", str(user_files.encrypted))
    assert "is encrypted: give its password with --key-password-file" in message
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    message = _error_of(
        "--cert", cert, "--key", str(user_files.encrypted), "--key-password-file", str(wrong)
    )
    assert "wrong password" in message
    message = _error_of("--cert", cert, "--key", str(user_files.other_key))
    assert "is not the private key of the certificate" in message
    message = _error_of("--cert", cert, "--key", key, "--hostname", "x.example")
    assert "--hostname applies to generated certificates" in message
    readable = tmp_path / "readable-key.pem"
    shutil.copy(user_files.key, readable)
    readable.chmod(0o644)
    message = _error_of("--cert", cert, "--key", str(readable))
    assert f"chmod 600 {readable}" in message
    assert "see: " not in message, "no --help hint for a file problem"


# --------------------------------------------------------------------- messages


def _listener(label: str = "127.0.0.1:443", option: str = "--port") -> Listener:
    return Listener(label, None, option)  # type: ignore[arg-type]


def test_listen_error_messages_say_why_and_what_to_do() -> None:
    def refused(code: int, port: int = 443) -> str:
        error = CannotListenError("127.0.0.1", port, OSError(code, os.strerror(code)))
        return listen_error(error, _listener(f"127.0.0.1:{port}"))

    privileged = refused(errno.EACCES)
    assert privileged.startswith("cannot listen on 127.0.0.1:443: permission denied")
    assert "--port 8443" in privileged and "CAP_NET_BIND_SERVICE" in privileged
    assert "net.ipv4.ip_unprivileged_port_start=443" in privileged
    in_use = refused(errno.EADDRINUSE, 8443)
    assert "already in use" in in_use and "choose another --port" in in_use
    assert "does not belong to this machine" in refused(errno.EADDRNOTAVAIL, 8443)
    for message in (privileged, in_use):
        assert "\n" not in message


class _SlowEndpoint:
    """An endpoint whose listen() fires later, as tor: or le: endpoints do."""

    def __init__(self) -> None:
        from twisted.internet.defer import Deferred

        self.listening: Deferred[object] = Deferred()

    def listen(self, factory: object) -> object:
        return self.listening


class _FakePort:
    def getHost(self) -> object:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", 4443)

    def stopListening(self) -> None:
        pass


class _FakeReactor:
    stopped = False

    def stop(self) -> None:
        self.stopped = True


def _slow_service(tmp_path: Path) -> tuple[tap.HTTPSService, _SlowEndpoint, list[object]]:
    options = _options("--cert-dir", str(tmp_path / "certs"), "--port", "4443")
    service = tap.makeService(options)
    slow = _SlowEndpoint()
    service.plan.listeners[0].endpoint = slow  # type: ignore[assignment]
    hooks: list[object] = []
    service._given_reactor = _FakeReactor()
    service._exit_status_hook = hooks.append
    return service, slow, hooks


def test_late_listen_failure_stops_with_one_line_and_status_1(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from twisted.logger import globalLogPublisher

    service, slow, hooks = _slow_service(tmp_path)
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        service.privilegedStartService()
        service.startService()
        assert not service._reactor.stopped
        slow.listening.errback(
            CannotListenError("127.0.0.1", 4443, OSError(errno.EADDRINUSE, "in use"))
        )
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert service._reactor.stopped and hooks == [exit_status_one]
    # (Twisted also copies critical events to stderr while logging is not started.)
    ours = [
        line for line in capfd.readouterr().err.splitlines()
        if line.startswith("twistd membio-https: error: ")
    ]
    assert len(ours) == 1 and "cannot listen on 127.0.0.1:4443: the address is" in ours[0]
    assert any(event.get("log_level") is not None and "already in use" in str(
        event.get("message")) for event in logged)
    assert not any("ready:" in str(event.get("line", "")) for event in logged)


def test_late_listen_success_announces(tmp_path: Path) -> None:
    from twisted.logger import globalLogPublisher

    service, slow, hooks = _slow_service(tmp_path)
    logged: list[dict[str, object]] = []
    globalLogPublisher.addObserver(logged.append)
    try:
        service.privilegedStartService()
        service.startService()
        assert not any("ready:" in str(event.get("line", "")) for event in logged)
        slow.listening.callback(_FakePort())
    finally:
        globalLogPublisher.removeObserver(logged.append)
        service.stopService()
    lines = [str(event["line"]) for event in logged if "line" in event]
    assert "ready: open https://localhost:4443/" in lines
    assert not service._reactor.stopped and hooks == []


def test_http2_is_offered_only_when_twisted_web_can_speak_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twisted.web import http

    monkeypatch.setattr(http, "H2_ENABLED", False, raising=False)
    assert default_alpn() == [b"http/1.1"]
    monkeypatch.setattr(http, "H2_ENABLED", True, raising=False)
    assert default_alpn() == [b"h2", b"http/1.1"]


def test_the_page_finds_tls_under_http1_and_http2_channels() -> None:
    from types import SimpleNamespace

    from OpenSSL import SSL

    from membio_transport.https import find_tls_connection

    connection = SSL.Connection(SSL.Context(SSL.TLS_METHOD), None)
    tls = SimpleNamespace(getHandle=lambda: connection)
    tcp = SimpleNamespace(getHandle=lambda: object())
    http1 = SimpleNamespace(channel=SimpleNamespace(transport=tls))
    http2 = SimpleNamespace(channel=SimpleNamespace(_conn=SimpleNamespace(transport=tls)))
    plain = SimpleNamespace(channel=SimpleNamespace(transport=tcp))
    assert find_tls_connection(http1) is connection  # type: ignore[arg-type]
    assert find_tls_connection(http2) is connection  # type: ignore[arg-type]
    assert find_tls_connection(plain) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (None, False),
        ("*/*", False),  # curl
        ("text/plain", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),  # browsers
        ("text/html;q=0.5, text/plain", False),
        ("text/*;q=0.3, text/html;q=0.7", True),
        ("text/html;q=0", False),
        ("application/json", False),
    ],
)
def test_html_only_for_clients_that_prefer_it(accept: str | None, html: bool) -> None:
    assert prefers_html(accept) is html


@pytest.mark.parametrize(
    ("method", "host", "location", "code"),
    [
        (b"GET", b"example.com:8080", "https://example.com:8443/a/b?c=d", 301),
        (b"HEAD", b"[::1]:8080", "https://[::1]:8443/a/b?c=d", 301),
        (b"POST", b"127.0.0.1", "https://127.0.0.1:8443/a/b?c=d", 308),
        (b"GET", b"evil.example/\r\nX: y", "https://localhost:8443/a/b?c=d", 301),
        (b"GET", None, "https://localhost:8443/a/b?c=d", 301),
    ],
)
def test_redirect_keeps_host_path_and_query(
    method: bytes, host: bytes | None, location: str, code: int
) -> None:
    resource = RedirectToHTTPS("localhost")
    resource.https_port = 8443
    request = DummyRequest([b"a", b"b"])
    request.method = method
    request.uri = b"/a/b?c=d"
    if host is not None:
        request.requestHeaders.setRawHeaders(b"host", [host])
    body = resource.render(request)
    assert request.responseCode == code
    assert request.responseHeaders.getRawHeaders(b"location") == [location.encode()]
    assert (body == b"") is (method == b"HEAD")


# --------------------------------------------------------------------- real servers


def _membio_https(*arguments: str) -> list[str]:
    return [*twistd_command(), "--nodaemon", "--pidfile=", "membio-https", *arguments]


@dataclass
class _Running:
    server: Server
    port: int
    url: str
    cert_dir: Path
    home: Path

    @property
    def ca(self) -> Path:
        return self.cert_dir / "local-ca.pem"


@pytest.fixture(scope="module")
def https_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Running]:
    base = tmp_path_factory.mktemp("https")
    home, cert_dir = base / "home", base / "certs"
    command = _membio_https(
        "--port", "0", "--interface", "127.0.0.1", "--cert-dir", str(cert_dir)
    )
    with running(command, base, subprocess_env(home)) as server:
        port = listening_port(server, HTTPS_READY)
        url = server.wait_for_log(READY).group(1)
        yield _Running(server, port, url, cert_dir, home)


def _curl(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "10", *arguments],
        capture_output=True, text=True, timeout=20, check=False,
    )


@pytest.mark.integration
def test_start_up_log_tells_where_and_how_to_trust(https_server: _Running) -> None:
    log = https_server.server.stdout
    port = https_server.port
    assert https_server.url == f"https://localhost:{port}/"
    assert f"HTTPS on 127.0.0.1:{port} (this machine only" in log
    assert "generated a new certificate in" in log
    assert re.search(r"TLS certificate \S+server\.pem for localhost, 127\.0\.0\.1, ::1", log)
    assert re.search(r"valid until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", log)
    fingerprint_from_log(log)
    assert f"curl --cacert {https_server.ca} https://localhost:{port}/" in log
    assert "certutil -d sql:$HOME/.pki/nssdb" in log
    assert "Traceback" not in log and https_server.server.stderr == ""


@pytest.mark.integration
def test_curl_verifies_and_gets_text_or_html(https_server: _Running) -> None:
    page = _curl("--cacert", str(https_server.ca), https_server.url)
    assert page.returncode == 0, page.stderr
    text = page.stdout
    assert text.startswith("TLS works")
    assert re.search(r"TLS version:\s+TLSv1\.3", text)
    assert re.search(r"Cipher:\s+TLS_\w+ \(\d+ bits\)", text)
    assert re.search(r"Key exchange group:\s+\S+", text)
    assert re.search(r"SNI server name:\s+localhost", text)
    # The test extras bring h2, so twisted.web speaks HTTP/2 and curl takes it.
    assert re.search(r"ALPN protocol:\s+h2", text)
    assert re.search(r"HTTP version:\s+HTTP/2", text)
    assert re.search(r"Client certificate:\s+none", text)
    http11 = _curl("--cacert", str(https_server.ca), "--http1.1", https_server.url)
    assert re.search(r"ALPN protocol:\s+http/1\.1", http11.stdout), http11.stderr
    tls12 = _curl("--cacert", str(https_server.ca), "--tls-max", "1.2", https_server.url)
    assert re.search(r"TLS version:\s+TLSv1\.2", tls12.stdout), tls12.stderr
    assert re.search(r"Cipher:\s+ECDHE-ECDSA-\S+-(GCM|POLY1305)", tls12.stdout)
    html = _curl(
        "--cacert", str(https_server.ca), "-H", "Accept: text/html", "-D", "-",
        f"https://127.0.0.1:{https_server.port}/",
    )
    assert "content-type: text/html; charset=utf-8" in html.stdout.lower()
    assert "<h1>TLS works</h1>" in html.stdout and "<td>TLSv1.3</td>" in html.stdout
    untrusted = _curl(https_server.url)
    assert untrusted.returncode == 60, "curl must not trust it without --cacert"


@pytest.mark.integration
def test_python_ssl_strict_verification(https_server: _Running) -> None:
    context = ssl.create_default_context(cafile=str(https_server.ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    for host in ("localhost", "127.0.0.1"):
        url = f"https://{host}:{https_server.port}/"
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            body = response.read().decode()
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert re.search(r"TLS version:\s+TLSv1\.3", body)
        expected_sni = "localhost" if host == "localhost" else "none"
        assert re.search(rf"SNI server name:\s+{expected_sni}", body)


@pytest.mark.integration
def test_openssl_s_client_verifies_strictly(https_server: _Running) -> None:
    result = subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{https_server.port}",
            "-servername", "localhost", "-verify_hostname", "localhost", "-x509_strict",
            "-verify_return_error", "-CAfile", str(https_server.ca), "-ign_eof",
        ],
        input="GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        capture_output=True, text=True, timeout=20, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "TLS works" in result.stdout


@pytest.mark.integration
def test_state_directory_and_keys_are_private(https_server: _Running) -> None:
    assert stat.S_IMODE(os.stat(https_server.cert_dir).st_mode) == 0o700
    keys = sorted(https_server.cert_dir.glob("*key*.pem"))
    assert keys, list(https_server.cert_dir.iterdir())
    for key in keys:
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _dump_dom(browser: str, home: Path, url: str) -> str:
    profile = home / "profile"
    shutil.rmtree(profile, ignore_errors=True)
    result = subprocess.run(
        [
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--dump-dom", url,
        ],
        env={**subprocess_env(home), "HOME": str(home)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    return result.stdout


@pytest.mark.integration
def test_chromium_loads_the_page_once_the_ca_is_trusted(
    https_server: _Running, tmp_path: Path
) -> None:
    browser = _chromium()
    if browser is None or shutil.which("certutil") is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs chromium and certutil (Debian: chromium libnss3-tools)")
        pytest.skip("chromium or certutil (libnss3-tools) is not installed")
    home = tmp_path / "browser-home"
    untrusted = _dump_dom(browser, home, https_server.url)
    assert "TLS works" not in untrusted, "an untrusted certificate must not load"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for command in (
        ["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"],
        ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "membio", "-i",
         str(https_server.ca)],
    ):
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    dom = _dump_dom(browser, home, https_server.url)
    assert "<h1>TLS works</h1>" in dom, dom[:2000]
    assert re.search(r"<th>TLS version</th><td>TLSv1\.3</td>", dom)
    assert re.search(r"<th>SNI server name</th><td>localhost</td>", dom)
    # twisted.web speaks HTTP/2 here (the test extras bring h2), and so does Chromium.
    assert re.search(r"<th>ALPN protocol</th><td>h2</td>", dom)


@pytest.mark.integration
def test_restart_reuses_the_certificate_and_serves_files_and_redirects(
    tmp_path: Path,
) -> None:
    home, cert_dir = tmp_path / "home", tmp_path / "certs"
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_text("hello over TLS\n")
    env = subprocess_env(home)
    with running(
        _membio_https("--port", "0", "--cert-dir", str(cert_dir)), tmp_path, env, "first"
    ) as first:
        port = listening_port(first, HTTPS_READY)
        before = peer_fingerprint(port, cert_dir / "local-ca.pem")
        assert before == fingerprint_from_log(first.stdout)
    # twistd ends itself with the signal it got, as Twisted does.
    assert first.process.returncode in (0, -15), first.describe()
    arguments = ["--port", "0", "--cert-dir", str(cert_dir), "--path", str(site)]
    with running(
        _membio_https(*arguments, "--redirect-http", "0"), tmp_path, env, "second"
    ) as second:
        port = listening_port(second, HTTPS_READY)
        plain = listening_port(second, r"plain HTTP on 127\.0\.0\.1:(\d+) redirects to HTTPS")
        log = second.stdout
        assert "reusing the certificate in" in log and fingerprint_from_log(log) == before
        assert peer_fingerprint(port, cert_dir / "local-ca.pem") == before
        assert f"plain HTTP on 127.0.0.1:{plain} redirects to HTTPS" in log
        ca = str(cert_dir / "local-ca.pem")
        page = _curl("--cacert", ca, f"https://localhost:{port}/hello.txt")
        assert page.stdout == "hello over TLS\n", page.stderr
        moved = _curl("-D", "-", "-o", "/dev/null", f"http://localhost:{plain}/hello.txt?x=1")
        assert moved.stdout.startswith("HTTP/1.1 301"), moved.stdout
        assert f"Location: https://localhost:{port}/hello.txt?x=1" in moved.stdout
        followed = _curl("--cacert", ca, "-L", f"http://127.0.0.1:{plain}/hello.txt")
        assert followed.stdout == "hello over TLS\n", followed.stderr


@pytest.mark.integration
def test_python_m_runs_the_plugin_with_listen_and_client_certificates(tmp_path: Path) -> None:
    home, cert_dir = tmp_path / "home", tmp_path / "certs"
    sock = tmp_path / "web.sock"
    command = [
        sys.executable, "-m", "membio_transport", "--port", "0", "--cert-dir",
        str(cert_dir), "--listen", f"unix:{quoteStringArgument(str(sock))}",
        "--request-client-cert",
    ]
    from membio_transport.certs import ensure_certificate

    client = ensure_certificate(tmp_path / "client-certs", ("curl-client.example",))
    with running(command, tmp_path, subprocess_env(home)) as server:
        port = listening_port(server, HTTPS_READY)
        assert f"HTTPS on UNIX socket {sock}" in server.stdout
        ca = str(cert_dir / "local-ca.pem")
        over_unix = _curl("--cacert", ca, "--unix-socket", str(sock), "https://localhost/")
        assert re.search(r"TLS version:\s+TLSv1\.3", over_unix.stdout), over_unix.stderr
        assert re.search(r"Client certificate:\s+none presented", over_unix.stdout)
        over_tcp = _curl(
            "--cacert", ca, "--cert", str(client.cert_path), "--key", str(client.key_path),
            f"https://localhost:{port}/",
        )
        assert over_tcp.stdout.startswith("TLS works"), over_tcp.stderr
        assert re.search(
            rf"Client certificate:\s+CN=localhost, .*SHA-256 {client.fingerprint_sha256}",
            over_tcp.stdout,
        ), over_tcp.stdout
    assert not (tmp_path / "twistd.pid").exists()


# --------------------------------------------------------------------- bad configuration


def _assert_one_line_failure(result: subprocess.CompletedProcess[str], expected: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, output
    assert lines[0].startswith("twistd membio-https: error: "), output
    assert expected in lines[0], output


@pytest.mark.integration
def test_bad_files_end_with_one_line(tmp_path: Path, user_files: _Files) -> None:
    env = subprocess_env(tmp_path / "home")
    missing = run_to_completion(_membio_https("--cert", str(tmp_path / "nope.pem")), tmp_path, env)
    _assert_one_line_failure(missing, f"cannot read certificate file {tmp_path / 'nope.pem'}")
    assert missing.stdout == "", "no twistd help text"
    readable = tmp_path / "readable-key.pem"
    shutil.copy(user_files.key, readable)
    readable.chmod(0o644)
    loose = run_to_completion(
        _membio_https("--cert", str(user_files.cert), "--key", str(readable)), tmp_path, env
    )
    _assert_one_line_failure(loose, "is readable by other users (mode 0644)")


@pytest.mark.integration
def test_port_in_use_ends_with_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_to_completion(
            _membio_https("--port", str(port), "--cert-dir", str(tmp_path / "certs")),
            tmp_path, subprocess_env(tmp_path / "home"),
        )
    _assert_one_line_failure(result, f"cannot listen on 127.0.0.1:{port}: the address is already")
    assert "choose another --port" in result.stderr


@pytest.mark.integration
def test_privileged_port_without_privileges_ends_with_one_line(tmp_path: Path) -> None:
    command = _membio_https("--port", "443", "--cert-dir", str(tmp_path / "certs"))
    if os.geteuid() == 0:
        # Root binds low ports through CAP_NET_BIND_SERVICE: take it away, as
        # for an ordinary user (the interpreter may live where others cannot run it).
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to drop CAP_NET_BIND_SERVICE")
        command = [setpriv, "--bounding-set=-net_bind_service", *command]
    result = run_to_completion(command, tmp_path, subprocess_env(tmp_path / "home"))
    unprivileged = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if unprivileged <= 443 and "permission denied" not in result.stderr:
        pytest.skip("this machine lets everybody bind port 443")
    _assert_one_line_failure(result, "cannot listen on 127.0.0.1:443: permission denied")
    assert "--port 8443" in result.stderr and "CAP_NET_BIND_SERVICE" in result.stderr


# --------------------------------------------------------------------- membio: in other plugins


@pytest.mark.integration
def test_twistd_web_listen_membio(tmp_path: Path) -> None:
    home, cert_dir = tmp_path / "home", tmp_path / "certs"
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>served by twistd web</p>\n")
    description = f"membio:0:interface=127.0.0.1:certDir={quoteStringArgument(str(cert_dir))}"
    command = [*twistd_command(), "-n", "--pidfile=", "web", "--listen", description,
               "--path", str(site)]
    with running(command, tmp_path, subprocess_env(home)) as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        context = ssl.create_default_context(cafile=str(cert_dir / "local-ca.pem"))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        with urllib.request.urlopen(
            f"https://localhost:{port}/", context=context, timeout=10
        ) as response:
            assert response.read() == b"<p>served by twistd web</p>\n"
        assert fingerprint_from_log(server.stdout) == peer_fingerprint(
            port, cert_dir / "local-ca.pem"
        )


def _irc_endpoint(port: int, cert_dir: Path) -> str:
    return f"membio:{port}:interface=127.0.0.1:certDir={quoteStringArgument(str(cert_dir))}"


@pytest.mark.integration
def test_irc_over_twistd_words_with_membio(tmp_path: Path) -> None:
    home, cert_dir = tmp_path / "home", tmp_path / "certs"
    command = [
        *twistd_command(), "-n", "--pidfile=", "words", "--irc-port",
        _irc_endpoint(0, cert_dir), "--auth", "memory:alice:pa:bob:pb",
    ]
    with running(command, tmp_path, subprocess_env(home)) as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        ca = cert_dir / "local-ca.pem"
        alice, bob = IRCClient(port, ca, "alice", "pa"), IRCClient(port, ca, "bob", "pb")
        try:
            alice.expect(r" 001 alice ")
            bob.expect(r" 001 bob ")
            alice.send("PRIVMSG bob :hello bob, over TLS")
            assert "hello bob, over TLS" in bob.expect(r"PRIVMSG bob :")
            bob.send("PRIVMSG alice :hi alice")
            assert alice.expect(r"PRIVMSG alice :").startswith(":bob!")
        finally:
            alice.close()
            bob.close()


@pytest.mark.integration
def test_irc_channel_over_a_tac_with_membio(tmp_path: Path) -> None:
    home, cert_dir = tmp_path / "home", tmp_path / "certs"
    tac = tmp_path / "irc.tac"
    tac.write_text(TAC_IRC)
    env = subprocess_env(home, MEMBIO_TEST_ENDPOINT=_irc_endpoint(0, cert_dir))
    command = [*twistd_command(), "-n", "--pidfile=", "-y", str(tac)]
    with running(command, tmp_path, env) as server:
        port = listening_port(server, TLS_ON_LOOPBACK)
        ca = cert_dir / "local-ca.pem"
        alice, bob = IRCClient(port, ca, "alice", "pa"), IRCClient(port, ca, "bob", "pb")
        try:
            alice.expect(r" 001 alice ")
            bob.expect(r" 001 bob ")
            alice.send("JOIN #membio")
            alice.expect(r" 366 alice #membio ")
            bob.send("JOIN #membio")
            bob.expect(r" 366 bob #membio ")
            alice.send("PRIVMSG #membio :hello channel")
            assert bob.expect(r"PRIVMSG #membio :").endswith(":hello channel")
            bob.send("PRIVMSG alice :private reply")
            assert alice.expect(r"PRIVMSG alice :").endswith(":private reply")
        finally:
            alice.close()
            bob.close()


@pytest.mark.integration
def test_an_internationalized_name_verifies_with_curl_and_python(tmp_path: Path) -> None:
    """
    IDNA 2008 end to end: ``--hostname faß.example`` puts ``xn--fa-hia.example``
    in the certificate, the name curl (libidn2) and Python's ssl, given the
    IDNA 2008 A-label, verify.  Python's own codec (IDNA 2003) would say
    ``fass.example``: another host, which the certificate rightly does not name.
    """
    import idna

    cert_dir = tmp_path / "certs"
    command = _membio_https("--port", "0", "--cert-dir", str(cert_dir), "--hostname", "faß.example")
    with running(command, tmp_path, subprocess_env(tmp_path / "home"), "idna") as server:
        port = listening_port(server, HTTPS_READY)
        assert "xn--fa-hia.example" in server.stdout
        ca = cert_dir / "local-ca.pem"
        a_label = idna.encode("faß.example", uts46=True).decode("ascii")
        assert a_label == "xn--fa-hia.example" != "faß.example".encode("idna").decode()
        page = _curl(
            "--cacert", str(ca), "--resolve", f"{a_label}:{port}:127.0.0.1",
            f"https://faß.example:{port}/",
        )
        assert page.returncode == 0, page.stderr
        assert "TLS" in page.stdout
        context = ssl.create_default_context(cafile=str(ca))
        context.verify_flags |= ssl.VERIFY_X509_STRICT
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=a_label) as tls:
            assert tls.getpeercert() is not None
        with pytest.raises(ssl.SSLCertVerificationError), socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as raw, context.wrap_socket(raw, server_hostname="faß.example"):
            pass  # Python encodes the U-label with IDNA 2003: fass.example
