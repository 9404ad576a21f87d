"""
Secure defaults of ``twistd membio-https``, proven against real server
processes with real clients (openssl s_client, curl, Python's ssl, a
pyOpenSSL client for groups the system OpenSSL lacks):

* the profiles: exactly the versions, suites and groups they promise;
* session resumption (TLS 1.2 ids and tickets, TLS 1.3 tickets);
* client-initiated renegotiation refused;
* HSTS and the security headers;
* SNI with exact and wildcard names, ALPN;
* client certificates (optional and required, a foreign CA refused);
* certificate reload on SIGHUP and on file change;
* the SSLKEYLOGFILE key log; the listen backlog.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib

from membio_transport.https import tap

from ._abuse_helpers import (
    Issued,
    MembioServer,
    client_context,
    curl,
    https_get,
    issue,
    make_ca,
    membio_https,
    negotiated,
    openssl_client,
    page_field,
    read_response,
    request,
    wait_until,
)
from ._serving_helpers import NoSignals

# --------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class PKI:
    directory: Path
    ca: Issued  # signs the SNI certificates
    ca_file: Path
    exact: Issued  # example.test
    wildcard: Issued  # *.wild.test
    rsa: Issued  # rsa.test, for the ECDHE-RSA suites and static-RSA refusal
    client_ca: Issued
    client_ca_file: Path
    client: Issued  # signed by client_ca
    stranger: Issued  # a client certificate from another CA
    sni_dir: Path


def _write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca("membio test server CA")
    client_ca = make_ca("membio test client CA")
    exact = issue(ca, ["example.test", "www.example.test"])
    wildcard = issue(ca, ["*.wild.test"])
    rsa = issue(ca, ["rsa.test"], kind="rsa")
    sni_dir = directory / "sni"
    exact.write(sni_dir, "example.test")
    wildcard.write(sni_dir, "*.wild.test", combined=True)
    rsa.write(sni_dir, "rsa.test")
    client = issue(client_ca, ["alice"], client=True)
    stranger = issue(make_ca("someone else's CA"), ["mallory"], client=True)
    for name, who in (("client", client), ("stranger", stranger)):
        who.write(directory, name)
    return PKI(
        directory, ca, _write_pem(directory / "ca.pem", ca.cert_pem), exact, wildcard, rsa,
        client_ca, _write_pem(directory / "client-ca.pem", client_ca.cert_pem), client,
        stranger, sni_dir,
    )


@pytest.fixture(scope="module")
def main_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[MembioServer]:
    """Intermediate profile, generated default certificate, SNI, optional mTLS, HSTS, key log."""
    directory = tmp_path_factory.mktemp("main")
    keylog = directory / "keys.log"
    with membio_https(
        directory, "--sni-dir", str(pki.sni_dir), "--client-ca", str(pki.client_ca_file),
        "--client-cert", "optional", "--hsts", "--alpn", "http/1.1",
        env={"SSLKEYLOGFILE": str(keylog)},
    ) as server:
        server.extra["keylog"] = keylog
        yield server


@pytest.fixture(scope="module")
def trusting(main_server: MembioServer, pki: PKI) -> ssl.SSLContext:
    """Trusts both the generated local CA and the SNI test CA."""
    context = client_context(main_server.ca)
    context.load_verify_locations(cafile=str(pki.ca_file))
    return context


def _s_client(server: MembioServer, *arguments: str, stdin: bytes = b"", **kw: object) -> str:
    return openssl_client(server.port, "-CAfile", str(server.ca), *arguments, stdin=stdin, **kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------- profiles

INTERMEDIATE_TLS12_ECDSA = (
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
)
INTERMEDIATE_TLS12_RSA = (
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305",
)
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


@pytest.mark.integration
def test_intermediate_accepts_each_ecdhe_aead_suite(main_server: MembioServer) -> None:
    for cipher in INTERMEDIATE_TLS12_ECDSA:
        out = _s_client(main_server, "-tls1_2", "-cipher", cipher)
        assert negotiated(out) == ("TLSv1.2", cipher), out
    for cipher in INTERMEDIATE_TLS12_RSA:  # the RSA certificate, chosen by SNI
        out = _s_client(main_server, "-tls1_2", "-cipher", cipher, servername="rsa.test")
        assert negotiated(out) == ("TLSv1.2", cipher), out
    for suite in TLS13_SUITES:
        out = _s_client(main_server, "-tls1_3", "-ciphersuites", suite)
        assert negotiated(out) == ("TLSv1.3", suite), out


@pytest.mark.parametrize(
    ("servername", "option", "cipher", "why"),
    [
        ("localhost", "-cipher", "ECDHE-ECDSA-AES128-SHA256", "CBC"),
        ("localhost", "-cipher", "ECDHE-ECDSA-AES256-SHA384", "CBC"),
        ("localhost", "-cipher", "ECDHE-ECDSA-AES128-SHA", "CBC with SHA-1"),
        ("rsa.test", "-cipher", "ECDHE-RSA-AES128-SHA", "CBC with SHA-1"),
        ("localhost", "-cipher", "ECDHE-ECDSA-AES128-CCM", "CCM"),
        ("rsa.test", "-cipher", "AES128-GCM-SHA256", "static RSA key exchange"),
        ("rsa.test", "-cipher", "AES256-SHA", "static RSA, CBC, SHA-1"),
        ("rsa.test", "-cipher", "DHE-RSA-AES128-GCM-SHA256", "finite-field DHE"),
        ("localhost", "-ciphersuites", "TLS_AES_128_CCM_SHA256", "TLS 1.3 CCM"),
        ("localhost", "-ciphersuites", "TLS_AES_128_CCM_8_SHA256", "TLS 1.3 CCM_8"),
    ],
)
@pytest.mark.integration
def test_intermediate_refuses_weak_suites(
    main_server: MembioServer, servername: str, option: str, cipher: str, why: str
) -> None:
    version = "-tls1_3" if option == "-ciphersuites" else "-tls1_2"
    # SECLEVEL=0: the client must really offer the suite, whatever its own policy.
    extra = ["-cipher", "ALL:@SECLEVEL=0"] if option == "-ciphersuites" else []
    if option == "-cipher":
        cipher += ":@SECLEVEL=0"
    out = _s_client(main_server, version, option, cipher, *extra, servername=servername)
    assert negotiated(out) is None, f"{why} suite {cipher} was accepted:\n{out}"
    assert "alert handshake failure" in out, out


@pytest.mark.integration
def test_intermediate_groups(main_server: MembioServer) -> None:
    # TLS 1.3: the ECDSA P-256 certificate constrains nothing.
    for group, shown in (("X25519", "X25519"), ("P-256", "prime256v1"), ("P-384", "secp384r1")):
        out = _s_client(main_server, "-tls1_3", "-groups", group)
        assert negotiated(out) is not None, out
        assert re.search(rf"(Server Temp Key|Negotiated TLS1.3 group): .*{shown}", out), out
    for group in ("X448", "P-521", "ffdhe2048", "ffdhe3072"):
        out = _s_client(main_server, "-tls1_3", "-groups", group)
        assert negotiated(out) is None, f"TLS 1.3 group {group} was accepted:\n{out}"
    # TLS 1.2 (the RSA certificate: an ECDSA one needs its own curve offered too).
    for group in ("X25519", "P-256", "P-384"):
        out = _s_client(main_server, "-tls1_2", "-groups", group, servername="rsa.test")
        assert negotiated(out) is not None, out
    for group in ("X448", "P-521", "ffdhe2048"):
        out = _s_client(main_server, "-tls1_2", "-groups", group, servername="rsa.test")
        assert negotiated(out) is None, f"TLS 1.2 group {group} was accepted:\n{out}"


def _pyopenssl_group(port: int, groups: str) -> str | None:
    """The group a pyOpenSSL client offering only C{groups} ends up with (None: refused)."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    if openssl_lib.SSL_CTX_set1_curves_list(context._context, groups.encode()) != 1:
        openssl_lib.ERR_clear_error()
        pytest.skip(f"the bundled OpenSSL has no {groups}")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # Blocking: pyOpenSSL on a socket with a timeout raises WantReadError.
        # The server's handshake timeout bounds the wait.
        sock.settimeout(None)
        connection = SSL.Connection(context, sock)
        connection.set_connect_state()
        connection.set_tlsext_host_name(b"localhost")
        try:
            connection.do_handshake()
        except SSL.Error:
            return None
        return connection.get_group_name()


@pytest.mark.integration
def test_intermediate_offers_the_hybrid_post_quantum_group(main_server: MembioServer) -> None:
    assert _pyopenssl_group(main_server.port, "X25519MLKEM768") == "X25519MLKEM768"
    assert _pyopenssl_group(main_server.port, "X25519MLKEM768:X25519") == "X25519MLKEM768"
    assert _pyopenssl_group(main_server.port, "SecP384r1MLKEM1024") is None


@pytest.mark.integration
def test_intermediate_versions(main_server: MembioServer) -> None:
    for version in ("-tls1", "-tls1_1"):
        out = _s_client(main_server, version, "-cipher", "ALL:@SECLEVEL=0")
        assert negotiated(out) is None, out
        assert "alert protocol version" in out, out
    context = client_context(main_server.ca)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():  # TLSv1_1 is deprecated: exactly the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        https_get(main_server.port, context)
    for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        response = https_get(main_server.port, client_context(main_server.ca, version=version))
        assert response.version == name


# Compression cannot be seen from outside here: neither the bundled OpenSSL
# nor the system's (whose `s_client -comp` reports "Compression: NONE" against
# any server) compresses, and OpenSSL sets OP_NO_COMPRESSION on every new
# context by default (since 1.1.0; pyOpenSSL cannot clear it).  What defends
# the claim is that our contexts ask for the bit themselves, so it stays off
# under an OpenSSL whose default differs.


def _option_bits(thing: SSL.Context | SSL.Connection) -> int:
    """OpenSSL option bits of a context or connection (setting none returns them)."""
    return thing.set_options(0)


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_server_contexts_turn_off_compression_and_client_renegotiation(
    tmp_path: Path, profile: str
) -> None:
    context = _context_of(tmp_path, profile)
    context_bits = _option_bits(context)  # before a connection freezes the context
    for bits in (context_bits, _option_bits(SSL.Connection(context, None))):
        assert bits & SSL.OP_NO_COMPRESSION, "compression (CRIME)"
        assert bits & SSL.OP_NO_RENEGOTIATION, "client-initiated renegotiation"


class _RecordingContext(SSL.Context):
    """A context that remembers which option bits its builder asked for."""

    requested = 0

    def set_options(self, options: int) -> int:
        self.requested |= options
        return super().set_options(options)


def test_server_contexts_ask_for_those_options_themselves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(SSL, "Context", _RecordingContext)
    context = _context_of(tmp_path)
    assert isinstance(context, _RecordingContext)
    assert context.requested & SSL.OP_NO_COMPRESSION
    assert context.requested & SSL.OP_NO_RENEGOTIATION


def _context_of(directory: Path, profile: str = "intermediate") -> SSL.Context:
    from membio_transport import server_context

    from ._pki import make_pki

    pki = make_pki("ecdsa")
    chain, key = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(pki.chain_pem)
    key.write_bytes(pki.key_pem)
    return server_context(chain, key, profile=profile, keylog=None)  # type: ignore[arg-type]


def test_a_server_context_refuses_renegotiation_even_where_openssl_would_allow_it(
    tmp_path: Path,
) -> None:
    """
    OpenSSL 3+ refuses a client's renegotiation unless the context sets
    ``SSL_OP_ALLOW_CLIENT_RENEGOTIATION``; ours refuses by its own option,
    so it stays refused whatever the OpenSSL default or that flag.  Bare
    pyOpenSSL connections on both sides: no engine adds anything.
    """
    from .test_engine import ALLOW_CLIENT_RENEGOTIATION, _bare_pair

    context = _context_of(tmp_path)
    context.set_options(ALLOW_CLIENT_RENEGOTIATION)
    context.set_max_proto_version(SSL.TLS1_2_VERSION)
    server = SSL.Connection(context, None)
    server.set_accept_state()
    client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
    client.set_connect_state()
    _bare_pair(server, client)
    assert client.get_protocol_version_name() == "TLSv1.2"
    assert client.renegotiate()
    with pytest.raises(SSL.Error, match="no renegotiation"):
        _bare_pair(server, client)


@pytest.fixture(scope="module")
def modern_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MembioServer]:
    directory = tmp_path_factory.mktemp("modern")
    with membio_https(directory, "--profile", "modern", "--alpn", "none") as server:
        yield server


@pytest.mark.integration
def test_modern_is_tls13_only(modern_server: MembioServer) -> None:
    assert "TLS profile modern" in modern_server.log
    out = _s_client(modern_server, "-tls1_2")
    assert negotiated(out) is None and "alert protocol version" in out, out
    with pytest.raises(ssl.SSLError, match=r"(?i)protocol.version|unsupported protocol"):
        https_get(
            modern_server.port, client_context(modern_server.ca, version=ssl.TLSVersion.TLSv1_2)
        )
    for suite in TLS13_SUITES:
        out = _s_client(modern_server, "-ciphersuites", suite)
        assert negotiated(out) == ("TLSv1.3", suite), out
    out = _s_client(modern_server, "-groups", "X448")
    assert negotiated(out) is None, out


# --------------------------------------------------------------------- resumption


@pytest.mark.parametrize(
    ("version", "ticket"),
    [("-tls1_3", True), ("-tls1_2", True), ("-tls1_2", False)],
    ids=["tls1.3-ticket", "tls1.2-ticket", "tls1.2-session-id"],
)
@pytest.mark.integration
def test_openssl_client_resumes(
    main_server: MembioServer, tmp_path: Path, version: str, ticket: bool
) -> None:
    session = tmp_path / "session.pem"
    options = [version] + ([] if ticket else ["-no_ticket"])
    # -ign_eof: wait for the server to close (HTTP/1.0), so TLS 1.3 tickets arrive.
    get = b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n"
    first = _s_client(main_server, *options, "-ign_eof", "-sess_out", str(session), stdin=get)
    assert "New, TLSv1." in first and "TLS works" in first, first
    assert session.exists(), first
    second = _s_client(main_server, *options, "-ign_eof", "-sess_in", str(session), stdin=get)
    expected = "TLSv1.3" if version == "-tls1_3" else "TLSv1.2"
    assert f"Reused, {expected}" in second, second
    assert "TLS works" in second, second


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.integration
def test_python_client_resumes(
    main_server: MembioServer, trusting: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    context = client_context(main_server.ca, version=version)
    first = https_get(main_server.port, context)
    assert not first.reused and first.session is not None
    second = https_get(main_server.port, context, session=first.session)
    assert second.reused, "the server did not resume the session"
    assert second.status == 200


@pytest.mark.integration
def test_client_initiated_renegotiation_is_refused(main_server: MembioServer) -> None:
    process = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{main_server.port}", "-servername",
         "localhost", "-CAfile", str(main_server.ca), "-tls1_2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdin is not None
        process.stdin.write(b"R\n")  # s_client's "renegotiate" command
        process.stdin.flush()
        output, _ = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)
    text = output.decode("utf-8", "replace")
    assert "RENEGOTIATING" in text, text
    assert "no renegotiation" in text, text
    assert https_get(main_server.port, client_context(main_server.ca)).status == 200


# --------------------------------------------------------------------- HTTP headers


@pytest.mark.integration
def test_hsts_and_security_headers(main_server: MembioServer) -> None:
    response = https_get(main_server.port, client_context(main_server.ca))
    headers = response.headers
    assert headers["strict-transport-security"] == "max-age=63072000"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["x-frame-options"] == "DENY"
    assert headers["server"] == "membio-https"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert "Strict-Transport-Security: max-age=63072000" in main_server.log
    missing = https_get(main_server.port, client_context(main_server.ca), path="/nope")
    assert missing.status == 404
    assert missing.headers["strict-transport-security"] == "max-age=63072000"
    assert "default-src 'none'" in missing.headers["content-security-policy"]


@pytest.mark.integration
def test_no_hsts_unless_asked_and_the_page_isolates_itself(modern_server: MembioServer) -> None:
    """Started without ``--hsts``: no Strict-Transport-Security; COOP and CORP on the page."""
    response = https_get(modern_server.port, client_context(modern_server.ca))
    headers = response.headers
    assert response.status == 200
    assert "strict-transport-security" not in headers, headers
    assert headers["cross-origin-opener-policy"] == "same-origin"
    assert headers["cross-origin-resource-policy"] == "same-origin"
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["server"] == "membio-https"
    assert "Strict-Transport-Security" not in modern_server.log


@pytest.mark.integration
def test_html_page_style_matches_its_csp_hash(main_server: MembioServer) -> None:
    import base64
    import hashlib

    context = client_context(main_server.ca)
    with socket.create_connection(("127.0.0.1", main_server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: text/html\r\n\r\n")
        status, headers, body = read_response(tls)
    assert status == 200 and headers["content-type"].startswith("text/html")
    style = re.search(rb"<style>(.*?)</style>", body, re.DOTALL)
    assert style is not None
    digest = base64.b64encode(hashlib.sha256(style.group(1)).digest()).decode()
    assert f"style-src 'sha256-{digest}'" in headers["content-security-policy"]


# --------------------------------------------------------------------- SNI and ALPN


@pytest.mark.integration
def test_sni_selects_certificates(
    main_server: MembioServer, pki: PKI, trusting: ssl.SSLContext
) -> None:
    default = https_get(main_server.port, trusting)
    cases = {
        "example.test": pki.exact.fingerprint,
        "www.example.test": pki.exact.fingerprint,  # from its subjectAltName
        "www.wild.test": pki.wildcard.fingerprint,
        "API.Wild.Test": pki.wildcard.fingerprint,  # names are case-insensitive
        "rsa.test": pki.rsa.fingerprint,
    }
    for name, expected in cases.items():
        response = https_get(main_server.port, trusting, host=name)
        assert response.peer_fingerprint == expected, name
        assert page_field(response.body, "SNI server name") == name
    # A wildcard covers one label only; unknown names and no SNI get the default.
    for name in ("a.b.wild.test", "wild.test", "unknown.test", None):
        relaxed = client_context(main_server.ca)
        relaxed.check_hostname = False
        relaxed.verify_mode = ssl.CERT_NONE
        response = https_get(main_server.port, relaxed, host=name)
        assert response.peer_fingerprint == default.peer_fingerprint, name
    out = openssl_client(main_server.port, "-CAfile", str(pki.ca_file), servername="www.wild.test")
    assert "subject=CN = *.wild.test" in out and "Verification: OK" in out, out
    assert re.search(r"SNI \*\.wild\.test: .*\*\.wild\.test\.pem SHA-256", main_server.log)


def _alpn_of(server: MembioServer, offered: list[str]) -> str | None:
    response = https_get(server.port, client_context(server.ca, alpn=offered))
    assert page_field(response.body, "ALPN protocol") == (response.alpn or "none negotiated")
    return response.alpn


@pytest.mark.integration
def test_alpn_is_configurable(main_server: MembioServer, modern_server: MembioServer) -> None:
    assert "ALPN http/1.1;" in main_server.log
    assert _alpn_of(main_server, ["h2", "http/1.1"]) == "http/1.1"
    assert _alpn_of(main_server, ["h2"]) is None  # nothing in common: no ALPN, served anyway
    assert "ALPN none;" in modern_server.log  # --alpn none
    assert _alpn_of(modern_server, ["http/1.1"]) is None


@pytest.mark.integration
def test_alpn_h2_when_twisted_speaks_it(tmp_path: Path) -> None:
    from twisted.web import http

    if not getattr(http, "H2_ENABLED", False):
        pytest.skip("twisted.web has no HTTP/2 here (pip install 'twisted[http2]')")
    with membio_https(tmp_path, "--alpn", "h2,http/1.1") as server:
        assert "ALPN h2, http/1.1;" in server.log
        context = client_context(server.ca, alpn=["http/1.1", "h2"])
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == "h2"  # the server's preference
        assert _alpn_of(server, ["http/1.1"]) == "http/1.1"
        page = curl("--http2", "--cacert", str(server.ca), f"https://localhost:{server.port}/")
        assert page.returncode == 0, page.stderr
        assert page_field(page.stdout.encode(), "ALPN protocol") == "h2"
        assert page_field(page.stdout.encode(), "HTTP version") == "HTTP/2"


# --------------------------------------------------------------------- client certificates


def _with_client_cert(context: ssl.SSLContext, pki: PKI, who: str) -> ssl.SSLContext:
    context.load_cert_chain(str(pki.directory / f"{who}.pem"), str(pki.directory / f"{who}.key"))
    return context


@pytest.mark.integration
def test_optional_client_certificate(main_server: MembioServer, pki: PKI) -> None:
    anonymous = https_get(main_server.port, client_context(main_server.ca))
    assert page_field(anonymous.body, "Client certificate").startswith("none presented")
    page = curl(
        "--cacert", str(main_server.ca), "--cert", str(pki.directory / "client.pem"),
        "--key", str(pki.directory / "client.key"), f"https://localhost:{main_server.port}/",
    )
    assert page.returncode == 0, page.stderr
    shown = page_field(page.stdout.encode(), "Client certificate")
    assert shown.startswith("CN=alice, issued by CN=membio test client CA"), shown
    assert pki.client.fingerprint in shown and "verified against" in shown, shown
    context = _with_client_cert(client_context(main_server.ca), pki, "stranger")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(main_server.port, context)
    main_server.wait_for_log(r"TLS handshake failed from 127\.0\.0\.1:\d+: .*")


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[MembioServer]:
    with membio_https(
        tmp_path_factory.mktemp("mtls"), "--client-ca", str(pki.client_ca_file),
        "--client-cert", "required",
    ) as server:
        yield server


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
@pytest.mark.integration
def test_required_client_certificate(
    mtls_server: MembioServer, pki: PKI, version: ssl.TLSVersion
) -> None:
    assert "client certificates: required, verified against" in mtls_server.log
    ok = https_get(
        mtls_server.port, _with_client_cert(client_context(mtls_server.ca, version=version),
                                             pki, "client"),
    )
    assert ok.status == 200
    assert "verified against" in page_field(ok.body, "Client certificate")
    failures = mtls_server.log.count("TLS handshake failed")
    with pytest.raises((ssl.SSLError, ConnectionError)) as none:
        https_get(mtls_server.port, client_context(mtls_server.ca, version=version))
    assert re.search("(?i)certificate|handshake", str(none.value)), none.value
    with pytest.raises((ssl.SSLError, ConnectionError)) as foreign:
        https_get(
            mtls_server.port,
            _with_client_cert(client_context(mtls_server.ca, version=version), pki, "stranger"),
        )
    assert re.search("(?i)unknown.ca|certificate", str(foreign.value)), foreign.value
    assert wait_until(lambda: mtls_server.log.count("TLS handshake failed") >= failures + 2, 5)
    lines = re.findall(r"TLS handshake failed from .*", mtls_server.log)[failures:]
    assert any("certificate" in line for line in lines), lines


@pytest.mark.integration
def test_required_client_certificate_with_curl(mtls_server: MembioServer, pki: PKI) -> None:
    url = f"https://localhost:{mtls_server.port}/"
    refused = curl("--cacert", str(mtls_server.ca), url)
    assert refused.returncode != 0, refused.stdout
    accepted = curl(
        "--cacert", str(mtls_server.ca), "--cert", str(pki.directory / "client.pem"),
        "--key", str(pki.directory / "client.key"), url,
    )
    assert accepted.returncode == 0, accepted.stderr
    assert "CN=alice" in page_field(accepted.stdout.encode(), "Client certificate")


# --------------------------------------------------------------------- key log


@pytest.mark.integration
def test_sslkeylogfile(main_server: MembioServer) -> None:
    keylog = main_server.extra["keylog"]
    assert isinstance(keylog, Path)
    assert re.search(r"WARNING: SSLKEYLOGFILE is set: .*keys\.log", main_server.log)
    https_get(main_server.port, client_context(main_server.ca, version=ssl.TLSVersion.TLSv1_3))
    https_get(main_server.port, client_context(main_server.ca, version=ssl.TLSVersion.TLSv1_2))
    assert wait_until(lambda: "CLIENT_RANDOM " in keylog.read_text(), 5)
    text = keylog.read_text()
    assert re.search(r"^CLIENT_HANDSHAKE_TRAFFIC_SECRET [0-9a-f]{64} [0-9a-f]+$", text, re.M)
    assert re.search(r"^CLIENT_TRAFFIC_SECRET_0 [0-9a-f]{64} [0-9a-f]+$", text, re.M)
    assert re.search(r"^CLIENT_RANDOM [0-9a-f]{64} [0-9a-f]{96}$", text, re.M)  # TLS 1.2
    assert keylog.stat().st_mode & 0o777 == 0o600


# --------------------------------------------------------------------- reload


def _keep_alive(server: MembioServer, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    request(tls)
    status, _, _ = read_response(tls)
    assert status == 200
    return tls


def _fingerprint_of(server: MembioServer, context: ssl.SSLContext) -> str:
    return https_get(server.port, context).peer_fingerprint


@pytest.mark.integration
def test_reload_on_sighup(tmp_path: Path) -> None:
    ca = make_ca("reload CA")
    ca_file = _write_pem(tmp_path / "ca.pem", ca.cert_pem)
    first, second, third = (issue(ca, ["localhost"]) for _ in range(3))
    directory = tmp_path / "tls"
    cert, key = first.write(directory, "server")
    with membio_https(
        tmp_path, "--cert", str(cert), "--key", str(key), "--reload-interval", "0", ca=ca_file
    ) as server:
        context = client_context(ca_file)
        assert _fingerprint_of(server, context) == first.fingerprint
        old = _keep_alive(server, context)
        try:
            second.write(directory, "server")
            os.kill(server.pid, signal.SIGHUP)
            server.wait_for_log(
                rf"certificates reloaded \(SIGHUP\): new connections get SHA-256 "
                rf"{second.fingerprint}"
            )
            assert _fingerprint_of(server, context) == second.fingerprint
            # The connection made before the reload goes on with its certificate.
            request(old)
            status, _, body = read_response(old)
            assert status == 200
            assert first.fingerprint in page_field(body, "Server certificate")

            # A damaged file: the second certificate stays, one line says why.
            cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n")
            os.kill(server.pid, signal.SIGHUP)
            line = server.wait_for_log(r"certificate reload \(SIGHUP\) failed.*").group(0)
            assert f"still serving SHA-256 {second.fingerprint}" in line
            assert str(cert) in line, line
            assert _fingerprint_of(server, context) == second.fingerprint
            # A key that belongs to another certificate: refused the same way.
            third.write(directory, "server")
            key.write_bytes(first.key_pem)
            os.kill(server.pid, signal.SIGHUP)
            failed = "certificate reload (SIGHUP) failed"
            assert wait_until(lambda: server.log.count(failed) == 2, 10)
            assert "is not the private key of the certificate" in server.log
            assert _fingerprint_of(server, context) == second.fingerprint
            request(old)
            assert read_response(old)[0] == 200
        finally:
            old.close()
        assert server.alive()


@pytest.mark.integration
def test_reload_when_files_change(tmp_path: Path) -> None:
    ca = make_ca("reload CA")
    ca_file = _write_pem(tmp_path / "ca.pem", ca.cert_pem)
    first, second = issue(ca, ["localhost"]), issue(ca, ["localhost"])
    directory, sni_dir = tmp_path / "tls", tmp_path / "sni"
    sni_dir.mkdir()
    cert, _ = first.write(directory, "server", combined=True)
    arguments = ["--cert", str(cert), "--sni-dir", str(sni_dir), "--reload-interval", "0.2"]
    with membio_https(tmp_path, *arguments, ca=ca_file) as server:
        context = client_context(ca_file)
        assert _fingerprint_of(server, context) == first.fingerprint
        cert.write_bytes(b"garbage")  # polled: one failure line, not one per poll
        server.wait_for_log(r"certificate reload \(.*server\.pem changed\) failed")
        second.write(directory, "server", combined=True)
        server.wait_for_log(rf"certificates reloaded \(.*changed\).*{second.fingerprint}")
        assert server.log.count("certificate reload (") == 1
        assert _fingerprint_of(server, context) == second.fingerprint
        # A certificate added to --sni-dir is served for its name.
        added = issue(ca, ["added.test"])
        added.write(sni_dir, "added.test")
        server.wait_for_log(r"certificates reloaded \(.*sni.*changed\).*1 SNI certificate")
        assert https_get(server.port, context, host="added.test").peer_fingerprint == (
            added.fingerprint
        )
        assert _fingerprint_of(server, context) == second.fingerprint


@pytest.mark.integration
def test_repeated_cert_and_key_pairs_select_by_sni(tmp_path: Path) -> None:
    ca = make_ca("pairs CA")
    ca_file = _write_pem(tmp_path / "ca.pem", ca.cert_pem)
    default, other = issue(ca, ["localhost"]), issue(ca, ["other.test", "*.other.test"], kind="rsa")
    default_cert, default_key = default.write(tmp_path, "default")
    other_cert, other_key = other.write(tmp_path, "other")
    with membio_https(
        tmp_path, "--cert", str(default_cert), "--key", str(default_key),
        "--cert", str(other_cert), "--key", str(other_key), ca=ca_file,
    ) as server:
        context = client_context(ca_file)
        assert https_get(server.port, context).peer_fingerprint == default.fingerprint
        for name in ("other.test", "www.other.test"):
            response = https_get(server.port, context, host=name)
            assert response.peer_fingerprint == other.fingerprint, name
        out = openssl_client(server.port, "-CAfile", str(ca_file), servername="other.test")
        assert "subject=CN = other.test" in out and "Verification: OK" in out, out
        assert re.search(r"SNI other\.test, \*\.other\.test: .*other\.pem", server.log)


# --------------------------------------------------------------------- listen backlog


@pytest.mark.integration
def test_listen_backlog_is_511(main_server: MembioServer) -> None:
    if shutil.which("ss") is None:
        pytest.skip("ss (Debian package iproute2) is not installed")
    listing = subprocess.run(
        ["ss", "-ltnH", f"sport = :{main_server.port}"], capture_output=True, text=True,
        timeout=10, check=False,
    )
    if listing.returncode != 0:
        pytest.skip(f"ss failed: {listing.stderr}")
    fields = listing.stdout.split()
    assert fields[0] == "LISTEN" and fields[2] == "511", listing.stdout


def test_listen_and_membio_endpoints_get_the_backlog_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from twisted.internet import reactor

    from membio_transport.serving import parse_server

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    options = tap.Options()
    options.parseOptions(["--listen", "tcp:0", "--listen", "tcp:0:backlog=7"])
    inner = [listener.endpoint.wrapped for listener in options["listeners"]]
    assert [endpoint._backlog for endpoint in inner] == [511, 7]
    endpoint = parse_server(reactor, "0", certDir=str(tmp_path / "certs"))
    assert endpoint.wrapped._backlog == 511  # type: ignore[attr-defined]


# --------------------------------------------------------------------- options


def _error_of(*arguments: str) -> str:
    options = tap.Options()
    with pytest.raises(SystemExit) as raised:
        options.parseOptions(list(arguments))
    message = str(raised.value.code)
    assert "\n" not in message and "Traceback" not in message, message
    return message


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--client-cert", "optional"], "--client-cert needs --client-ca"),
        (["--client-ca", "/nonexistent.pem"], "cannot read --client-ca /nonexistent.pem"),
        (["--client-cert", "maybe"], "use required or optional"),
        (["--alpn", "h2"], "no HTTP/2 support"),
        (["--alpn", "http/1.0"], "this server speaks"),
        (["--hsts=soon"], "--hsts 'soon' is not a whole number"),
        (["--hsts=-1"], "--hsts -1 must be 0 or more"),
        (["--handshake-timeout", "-1"], "must be 0 or more"),
        (["--max-connections", "0"], "must be 1 or more"),
        (["--sni-dir", "/nonexistent"], "is not a directory"),
        (["--key", "a.key", "--key", "b.key"], "one --key per --cert"),
    ],
)
def test_option_errors_are_one_line(
    arguments: list[str], expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    if arguments == ["--alpn", "h2"]:
        from twisted.web import http

        monkeypatch.setattr(http, "H2_ENABLED", False, raising=False)
    assert expected in _error_of(*arguments)


def test_certificate_pairs_and_bare_hsts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ca = make_ca("pairs CA")
    one, _ = issue(ca, ["one.test"]).write(tmp_path, "one", combined=True)
    two_cert, two_key = issue(ca, ["two.test"]).write(tmp_path, "two")
    options = tap.Options()
    options.parseOptions(
        ["--cert", str(one), "--cert", str(two_cert), "--key", str(two_key), "--hsts",
         "--port", "0"]
    )
    settings = options["settings"]
    assert (settings.cert, settings.key) == ((one, two_cert), (None, two_key))
    assert options["hsts_max_age"] == 63072000
    certificates = options["serving"].certificates
    assert certificates.default.names == ("one.test",)
    assert certificates.context_for("two.test") is certificates.others[0][1]
    assert certificates.context_for("three.test") is certificates.context
    options = tap.Options()
    options.parseOptions(["--hsts=0", "--cert-dir", str(tmp_path / "certs"), "--port", "0"])
    assert options["hsts_max_age"] == 0


# --------------------------------------------------------------------- in-process units


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, object]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield lines
    finally:
        globalLogPublisher.removeObserver(observe)


def test_connection_limit_logs_one_line_per_burst(log_lines: list[str]) -> None:
    from twisted.internet.task import Clock

    from membio_transport.serving import BURST_GAP, BURST_REPORT_EVERY, ConnectionLimit

    clock = Clock()
    limit = ConnectionLimit(2, clock=clock)
    limit.stats.active = 2
    for _ in range(5):
        assert not limit.admit()
        clock.advance(0.1)
    clock.advance(BURST_GAP)
    refused = [line for line in log_lines if "over --max-connections" in line]
    assert refused == ["refused 5 connection(s) over --max-connections 2 in 0.4s (5 since start)"]
    limit.stats.active = 1
    assert limit.admit()
    # A flood that never pauses is reported every BURST_REPORT_EVERY seconds.
    limit.stats.active = 2
    for _ in range(int(BURST_REPORT_EVERY * 2 / 0.5)):
        limit.admit()
        clock.advance(0.5)
    clock.advance(BURST_GAP * 2)
    refused = [line for line in log_lines if "over --max-connections" in line]
    assert len(refused) == 1 + 2, refused
    assert limit.refused == 5 + int(BURST_REPORT_EVERY * 2 / 0.5)
    limit.stop()


def test_reloader_polls_and_keeps_the_old_context_on_failure(
    tmp_path: Path, log_lines: list[str]
) -> None:
    from twisted.internet.task import Clock

    from membio_transport.serving import CertificateFiles, CertificateSource, UserCertificate

    ca = make_ca("unit CA")
    cert, key = issue(ca, ["localhost"]).write(tmp_path, "server")
    clock = Clock()
    clock.advance(time.time())  # the certificates' validity is checked at the source's clock
    reloader = CertificateSource(
        UserCertificate(CertificateFiles(cert, key)), interval=1.0, clock=clock,
        sighup=NoSignals(),
    )
    options = reloader.options
    reloader.startService()
    try:
        first = options.context
        clock.advance(1)
        assert options.context is first and reloader.reloads == 0  # nothing changed
        cert.write_bytes(b"not a certificate")
        clock.advance(1)
        clock.advance(1)
        clock.advance(1)
        assert options.context is first and reloader.failures == 1  # one try per change
        assert sum("certificate reload" in line for line in log_lines) == 1
        replacement = issue(ca, ["localhost"])
        replacement.write(tmp_path, "server")
        clock.advance(1)
        assert options.context is not first and reloader.reloads == 1
        assert replacement.fingerprint in log_lines[-1]
    finally:
        reloader.stopService()
    assert not clock.getDelayedCalls()


def test_sni_lookup_rules(tmp_path: Path) -> None:
    from membio_transport.serving import CertificateFiles, CertificateSource, UserCertificate

    ca = make_ca("unit CA")
    default_files = issue(ca, ["www.example.test", "localhost"]).write(tmp_path, "default")
    wild = issue(ca, ["*.example.test"]).write(tmp_path / "sni", "*.example.test")
    named = issue(ca, ["api.example.test"]).write(tmp_path / "sni", "api.example.test")
    default = UserCertificate(CertificateFiles(*default_files))
    built = CertificateSource(default, extra=[CertificateFiles(*named)]).current
    api = built.others[0][1]
    assert built.context_for("api.example.test") is api
    assert built.context_for("API.EXAMPLE.TEST.") is api
    assert built.context_for("www.example.test") is built.context
    built = CertificateSource(default, sni_dir=wild[0].parent).current
    by_file = {str(cert.cert_path): context for cert, context in built.others}
    wildcard = by_file[str(wild[0])]
    # The default certificate's exact name beats another file's wildcard.
    assert built.context_for("www.example.test") is built.context
    assert built.context_for("other.example.test") is wildcard
    assert built.context_for("a.b.example.test") is built.context
    assert built.context_for("example.test") is built.context
    assert built.context_for("api.example.test") is by_file[str(named[0])]
