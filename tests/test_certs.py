"""Tests for membio_transport.certs: generated, stored, renewed and user-supplied certificates.

Every test works in tmp_path with a fixed host name; nothing touches the real home directory.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from membio_transport import certs as _certs
from membio_transport.certs import (
    KEY_PASSWORD_ENV,
    CertificateError,
    ServerCertificate,
    check_key_passwords,
    default_cert_dir,
    default_hostnames,
    ensure_certificate,
    generate_leaf,
    generate_root_ca,
    key_for_openssl,
    key_is_encrypted,
    load_certificate,
    read_key_password,
    read_private_key,
)

OPENSSL = "/usr/bin/openssl"
MODES = ("local-ca", "self-signed")
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "devbox")


@pytest.fixture(scope="module")
def rsa_state(tmp_path_factory: pytest.TempPathFactory) -> ServerCertificate:
    # RSA 3072 generation is slow: one root and one leaf for the whole module.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "gethostname", lambda: "devbox")
        return ensure_certificate(tmp_path_factory.mktemp("rsa") / "state", key_type="rsa")


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _strict_client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    # The anchor must be accepted on its own merits, not as a partial chain (3.13 default).
    context.verify_flags &= ~getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0)
    return context


def _server_context(cert: ServerCertificate) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert.cert_path), str(cert.key_path))
    return context


def _handshake_in_memory(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext, server_hostname: str
) -> None:
    """Run a TLS handshake through ssl.MemoryBIO pairs; raises what the client raises."""
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(client_in, client_out, server_hostname=server_hostname)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for role, end in (("client", client), ("server", server)):
            if not done[role]:
                try:
                    end.do_handshake()
                    done[role] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(client_out.read())
        client_in.write(server_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def _openssl_verify(cert: ServerCertificate, *target: str) -> subprocess.CompletedProcess[str]:
    command = [OPENSSL, "verify", "-x509_strict", "-purpose", "sslserver", *target]
    command += ["-CAfile", str(cert.trust_path), str(cert.cert_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


# ---------------------------------------------------------------- names and directories


def test_default_hostnames_are_loopback_names_plus_the_machine_name() -> None:
    assert default_hostnames() == ("localhost", "127.0.0.1", "::1", "devbox")


@pytest.mark.parametrize("hostname", ["", "   ", "localhost", "LOCALHOST.", "bad host!"])
def test_default_hostnames_skip_an_empty_localhost_or_unusable_machine_name(
    monkeypatch: pytest.MonkeyPatch, hostname: str
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: hostname)
    assert default_hostnames() == ("localhost", "127.0.0.1", "::1")


def test_default_cert_dir_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_cert_dir() == tmp_path / "state" / "membio-transport"


@pytest.mark.parametrize("xdg_state_home", [None, "", "relative/state"])
def test_default_cert_dir_falls_back_to_local_state_in_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, xdg_state_home: str | None
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    if xdg_state_home is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg_state_home)
    assert default_cert_dir() == tmp_path / ".local" / "state" / "membio-transport"


def test_ensure_certificate_without_a_directory_uses_the_default_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    cert = ensure_certificate()
    assert cert.cert_path.parent == tmp_path / "membio-transport"


def test_state_directory_is_private_keys_owner_only_and_certificates_world_readable(
    tmp_path: Path,
) -> None:
    state = tmp_path / "deep" / "state"
    old_umask = os.umask(0o077)  # must not strip the certificates' read bits
    try:
        cert = ensure_certificate(state)
    finally:
        os.umask(old_umask)
    assert _mode(state) == 0o700
    assert _mode(cert.key_path) == 0o600
    assert _mode(state / "local-ca-key.pem") == 0o600
    assert _mode(cert.cert_path) == 0o644
    assert _mode(cert.trust_path) == 0o644


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    ensure_certificate(tmp_path / "state", mode="local-ca")
    ensure_certificate(tmp_path / "state", mode="self-signed")
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == [
        ".lock",
        "local-ca-key.pem",
        "local-ca.pem",
        "self-signed-key.pem",
        "self-signed.pem",
        "server-key.pem",
        "server.pem",
    ]


def test_existing_state_directory_open_to_others_is_tightened(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    ensure_certificate(state)
    assert _mode(state) == 0o700


def test_state_directory_owned_by_someone_else_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    owner = state.stat().st_uid
    monkeypatch.setattr(os, "geteuid", lambda: owner + 1)
    with pytest.raises(CertificateError, match=f"{state} belongs to uid {owner}"):
        ensure_certificate(state)


def test_state_directory_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(CertificateError, match="state"):
        ensure_certificate(tmp_path / "state")


@pytest.mark.parametrize("mode", MODES)
def test_world_readable_key_in_the_state_directory_is_refused(tmp_path: Path, mode: str) -> None:
    cert = ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    cert.key_path.chmod(0o644)
    expected = (
        f"{cert.key_path} is readable by other users (mode 0644); run: chmod 600 {cert.key_path}"
    )
    with pytest.raises(CertificateError) as raised:
        ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    assert str(raised.value) == expected


def test_group_writable_root_key_is_refused(tmp_path: Path) -> None:
    ensure_certificate(tmp_path)
    (tmp_path / "local-ca-key.pem").chmod(0o620)
    with pytest.raises(CertificateError, match=re.escape("writable by other users (mode 0620)")):
        ensure_certificate(tmp_path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
@pytest.mark.parametrize("planted", ["local-ca.pem", "local-ca-key.pem"])
def test_stored_file_planted_by_another_user_is_refused(tmp_path: Path, planted: str) -> None:
    ensure_certificate(tmp_path)
    os.chown(tmp_path / planted, 4242, -1)
    with pytest.raises(
        CertificateError, match=re.escape(f"{tmp_path / planted} belongs to uid 4242")
    ):
        ensure_certificate(tmp_path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.TEST.", "example.test"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:0DB8:0:0:0:0:0:2", "2001:db8::2"),
        ("192.0.2.1", "192.0.2.1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("*.dev.example", "*.dev.example"),
        # IDNA 2008 with the UTS 46 mapping, as browsers and service_identity encode
        # names; Python's codec (IDNA 2003) would make it fass.example, another host.
        ("faß.example", "xn--fa-hia.example"),
        ("FAß.Example", "xn--fa-hia.example"),
        ("*.faß.example", "*.xn--fa-hia.example"),
        ("xn--fa-hia.example", "xn--fa-hia.example"),
        ("\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.test", "example.test"),  # full-width EXAMPLE
        ("_acme.example", "_acme.example"),  # ASCII names keep their underscores
    ],
)
def test_requested_names_are_normalized(tmp_path: Path, raw: str, expected: str) -> None:
    cert = ensure_certificate(tmp_path, [raw])
    assert cert.names == (*default_hostnames(), expected)


def test_requested_names_already_in_the_defaults_are_not_repeated(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path, ["[::1]", "0:0:0:0:0:0:0:1", "LocalHost.", "devbox"])
    assert cert.names == default_hostnames()


@pytest.mark.parametrize(
    "bad",
    [
        "", "two words", "-leading.example", "fe80::1%eth0", "a" * 64,
        "xn--zz.example",  # an A-label that does not decode
        "a\u200db.example",  # a zero-width joiner IDNA 2008 refuses in that position
        "*.com",
    ],
)
def test_invalid_requested_names_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(CertificateError, match="invalid host name"):
        ensure_certificate(tmp_path, [bad])


def test_a_single_string_of_hostnames_is_a_type_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        ensure_certificate(tmp_path, "example.test")


@pytest.mark.parametrize("lifetime", [datetime.timedelta(0), 900 * DAY])
def test_unreasonable_leaf_lifetime_is_refused(
    tmp_path: Path, lifetime: datetime.timedelta
) -> None:
    with pytest.raises(CertificateError, match="lifetime"):
        ensure_certificate(tmp_path, leaf_lifetime=lifetime)


# ----------------------------------------------------------------- certificate contents


def test_local_ca_leaf_has_the_extensions_strict_clients_require(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path, ["example.test", "192.0.2.7"], now=T0)
    leaf, root = _load_cert(cert.cert_path), _load_cert(cert.trust_path)
    assert leaf.version is x509.Version.v3
    assert leaf.not_valid_before_utc == T0 - datetime.timedelta(hours=1)
    assert leaf.not_valid_after_utc == cert.not_after == T0 + 30 * DAY
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)

    extensions = leaf.extensions
    basic = extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not usage.value.key_encipherment and not usage.value.key_cert_sign
    eku = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "devbox", "example.test"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == [
        "127.0.0.1",
        "::1",
        "192.0.2.7",
    ]
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == root_ski.digest
    assert extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert cert.names == ("localhost", "127.0.0.1", "::1", "devbox", "example.test", "192.0.2.7")


def test_local_ca_root_is_a_ten_year_ca_that_can_only_sign_leaves(tmp_path: Path) -> None:
    root = _load_cert(ensure_certificate(tmp_path, now=T0).trust_path)
    basic = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    assert root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert root.not_valid_after_utc == T0 + 3650 * DAY
    assert root.issuer == root.subject


def test_self_signed_certificate_is_its_own_issuer_with_ca_false(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path, mode="self-signed", now=T0)
    leaf = _load_cert(cert.cert_path)
    assert cert.trust_path == cert.cert_path
    assert leaf.issuer == leaf.subject
    leaf.verify_directly_issued_by(leaf)
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_after == T0 + 365 * DAY


def test_serial_numbers_are_random(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path / "a", mode="self-signed")
    second = ensure_certificate(tmp_path / "b", mode="self-signed")
    assert _load_cert(first.cert_path).serial_number != _load_cert(second.cert_path).serial_number


def test_fingerprint_is_colon_separated_sha256_of_the_leaf(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path)
    digest = _load_cert(cert.cert_path).fingerprint(hashes.SHA256())
    assert cert.fingerprint_sha256 == ":".join(f"{byte:02X}" for byte in digest)


def test_rsa_mode_makes_3072_bit_keys_with_key_encipherment(rsa_state: ServerCertificate) -> None:
    leaf, root = _load_cert(rsa_state.cert_path), _load_cert(rsa_state.trust_path)
    for cert in (leaf, root):
        public_key = cert.public_key()
        assert isinstance(public_key, rsa.RSAPublicKey)
        assert public_key.key_size == 3072
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment


# -------------------------------------------------------------------- reuse and renewal


@pytest.mark.parametrize("mode", MODES)
def test_second_call_reuses_the_same_certificate(tmp_path: Path, mode: str) -> None:
    first = ensure_certificate(tmp_path, ["example.test"], mode=mode)  # type: ignore[arg-type]
    second = ensure_certificate(tmp_path, ["EXAMPLE.test"], mode=mode)  # type: ignore[arg-type]
    assert first.generated and first.new_trust_anchor
    assert not second.generated and not second.new_trust_anchor
    assert second.fingerprint_sha256 == first.fingerprint_sha256


def test_local_ca_leaf_is_renewed_when_a_third_of_its_lifetime_remains(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, now=T0)
    assert first.renew_after == first.not_after - 10 * DAY
    still_fresh = ensure_certificate(tmp_path, now=first.not_after - 11 * DAY)
    assert still_fresh.fingerprint_sha256 == first.fingerprint_sha256
    renewal_time = first.not_after - 9 * DAY
    renewed = ensure_certificate(tmp_path, now=renewal_time)
    assert renewed.generated
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256
    assert renewed.not_after == renewal_time + 30 * DAY


def test_long_self_signed_certificate_is_renewed_only_in_its_last_month(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, mode="self-signed", now=T0)
    kept = ensure_certificate(tmp_path, mode="self-signed", now=first.not_after - 31 * DAY)
    assert not kept.generated
    renewed = ensure_certificate(tmp_path, mode="self-signed", now=first.not_after - 29 * DAY)
    assert renewed.generated and renewed.new_trust_anchor


def test_expired_leaf_is_replaced(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, now=T0)
    later = ensure_certificate(tmp_path, now=first.not_after + DAY)
    assert later.generated and later.not_after > first.not_after + DAY


def test_local_ca_root_stays_the_same_across_leaf_renewals(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, now=T0)
    root_pem = first.trust_path.read_bytes()
    renewed = ensure_certificate(tmp_path, now=first.not_after - DAY)
    assert renewed.generated and not renewed.new_trust_anchor
    assert renewed.trust_path.read_bytes() == root_pem
    _load_cert(renewed.cert_path).verify_directly_issued_by(_load_cert(renewed.trust_path))


def test_local_ca_root_is_replaced_when_a_full_leaf_would_outlive_it(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path, now=T0)
    root_pem = first.trust_path.read_bytes()
    near_root_expiry = T0 + 3650 * DAY - 29 * DAY
    renewed = ensure_certificate(tmp_path, now=near_root_expiry)
    assert renewed.new_trust_anchor and renewed.generated
    assert renewed.trust_path.read_bytes() != root_pem


@pytest.mark.parametrize("mode", MODES)
def test_certificate_is_renewed_when_requested_names_change(tmp_path: Path, mode: str) -> None:
    first = ensure_certificate(tmp_path, ["a.example"], mode=mode)  # type: ignore[arg-type]
    second = ensure_certificate(tmp_path, ["b.example"], mode=mode)  # type: ignore[arg-type]
    assert second.generated
    assert "b.example" in second.names and "a.example" not in second.names
    third = ensure_certificate(tmp_path, [], mode=mode)  # type: ignore[arg-type]
    assert third.generated and third.names == default_hostnames()
    assert first.fingerprint_sha256 != second.fingerprint_sha256 != third.fingerprint_sha256


def test_certificate_is_renewed_when_the_machine_name_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ensure_certificate(tmp_path)
    monkeypatch.setattr(socket, "gethostname", lambda: "newbox")
    renewed = ensure_certificate(tmp_path)
    assert renewed.generated and "newbox" in renewed.names and "devbox" not in renewed.names


def test_shorter_requested_lifetime_replaces_a_longer_leaf(tmp_path: Path) -> None:
    ensure_certificate(tmp_path, now=T0)
    shorter = ensure_certificate(tmp_path, leaf_lifetime=2 * DAY, now=T0)
    assert shorter.generated and shorter.not_after == T0 + 2 * DAY
    longer_request = ensure_certificate(tmp_path, now=T0)
    assert not longer_request.generated


def test_damaged_leaf_file_is_regenerated_under_the_same_root(tmp_path: Path) -> None:
    first = ensure_certificate(tmp_path)
    root_pem = first.trust_path.read_bytes()
    first.cert_path.write_text("garbage")
    repaired = ensure_certificate(tmp_path)
    assert repaired.generated and not repaired.new_trust_anchor
    assert repaired.trust_path.read_bytes() == root_pem


def test_switching_key_type_replaces_the_leaf_but_keeps_the_root(
    rsa_state: ServerCertificate, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    shutil.copytree(rsa_state.cert_path.parent, state)
    switched = ensure_certificate(state, key_type="ecdsa")
    assert switched.generated and not switched.new_trust_anchor
    assert isinstance(_load_cert(switched.cert_path).public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(_load_cert(switched.trust_path).public_key(), rsa.RSAPublicKey)


def test_concurrent_callers_end_up_with_one_certificate(tmp_path: Path) -> None:
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda _: ensure_certificate(tmp_path / "state"), range(2)))
    assert results[0].fingerprint_sha256 == results[1].fingerprint_sha256
    assert sorted(r.generated for r in results) == [False, True]


# ----------------------------------------------------------------- strict verification


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", "::1", "devbox"])
def test_generated_certificate_is_accepted_by_python_strict_verification(
    tmp_path: Path, mode: str, server_hostname: str
) -> None:
    cert = ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    client = _strict_client_context(cert.trust_path)
    assert client.verify_flags & ssl.VERIFY_X509_STRICT
    _handshake_in_memory(client, _server_context(cert), server_hostname)


@pytest.mark.parametrize("mode", MODES)
def test_python_verification_still_rejects_a_name_not_in_the_certificate(
    tmp_path: Path, mode: str
) -> None:
    cert = ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        _handshake_in_memory(
            _strict_client_context(cert.trust_path), _server_context(cert), "other.example"
        )


def test_rsa_certificate_is_accepted_by_python_strict_verification(
    rsa_state: ServerCertificate,
) -> None:
    client = _strict_client_context(rsa_state.trust_path)
    _handshake_in_memory(client, _server_context(rsa_state), "localhost")


@pytest.mark.parametrize("mode", MODES)
def test_generated_certificate_passes_openssl_strict_verify(tmp_path: Path, mode: str) -> None:
    cert = ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    by_name = _openssl_verify(cert, "-verify_hostname", "localhost")
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.strip() == f"{cert.cert_path}: OK"
    by_ip = _openssl_verify(cert, "-verify_ip", "127.0.0.1")
    assert by_ip.returncode == 0, by_ip.stderr


def test_rsa_certificate_passes_openssl_strict_verify(rsa_state: ServerCertificate) -> None:
    result = _openssl_verify(rsa_state, "-verify_hostname", "localhost")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("mode", MODES)
def test_generated_files_load_into_a_pyopenssl_context(tmp_path: Path, mode: str) -> None:
    cert = ensure_certificate(tmp_path, mode=mode)  # type: ignore[arg-type]
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(cert.cert_path))
    context.use_privatekey_file(str(cert.key_path))
    context.check_privatekey()


def test_rsa_files_load_into_a_pyopenssl_context(rsa_state: ServerCertificate) -> None:
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(rsa_state.cert_path))
    context.use_privatekey_file(str(rsa_state.key_path))
    context.check_privatekey()


@dataclass
class _LoopbackServer:
    port: int
    thread: threading.Thread


@pytest.fixture(params=MODES)
def loopback_https(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ServerCertificate, _LoopbackServer]]:
    """A one-connection HTTPS server on 127.0.0.1 serving a generated certificate."""
    cert = ensure_certificate(tmp_path, mode=request.param)
    context = _server_context(cert)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve_one() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(10)
            with context.wrap_socket(raw, server_side=True) as tls:
                if tls.recv(4096):
                    tls.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                tls.unwrap()  # close_notify: OpenSSL 3 clients treat a bare EOF as an error
        except OSError:
            pass  # the client decides the test; a refused handshake is its business

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    yield cert, _LoopbackServer(listener.getsockname()[1], thread)
    thread.join(timeout=10)
    listener.close()


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_with_cacert_accepts_the_generated_certificate(
    loopback_https: tuple[ServerCertificate, _LoopbackServer],
) -> None:
    cert, server = loopback_https
    url = f"https://localhost:{server.port}/"
    # The exact command from the trust instructions, with localhost pinned to IPv4.
    command_line = next(line for line in cert.trust_instructions(url) if "curl --cacert" in line)
    assert command_line.split("curl:", 1)[1].split() == [
        "curl",
        "--cacert",
        str(cert.trust_path),
        url,
    ]
    result = subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--cacert",
            str(cert.trust_path),
            "--resolve",
            f"localhost:{server.port}:127.0.0.1",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr


@pytest.mark.integration
def test_openssl_s_client_verifies_the_served_chain_strictly(
    loopback_https: tuple[ServerCertificate, _LoopbackServer],
) -> None:
    cert, server = loopback_https
    result = subprocess.run(
        [
            OPENSSL,
            "s_client",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-servername",
            "localhost",
            "-verify_return_error",
            "-x509_strict",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            str(cert.trust_path),
        ],
        input="GET / HTTP/1.0\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Verify return code: 0 (ok)" in result.stdout


# ----------------------------------------------------------------- trust instructions


@pytest.mark.parametrize(("mode", "nss_flags"), [("local-ca", "C,,"), ("self-signed", "CP,,")])
def test_trust_instructions_give_exact_commands_for_the_trust_file(
    tmp_path: Path, mode: str, nss_flags: str
) -> None:
    cert = ensure_certificate(tmp_path / "my state", mode=mode)  # type: ignore[arg-type]
    quoted = f"'{cert.trust_path}'"  # the space in the directory name needs shell quoting
    lines = cert.trust_instructions(8443)
    text = "\n".join(lines)
    assert cert.fingerprint_sha256 in text
    assert ", ".join(cert.names) in text
    assert f"{cert.not_after:%Y-%m-%d %H:%M:%S} UTC" in text
    assert f"curl --cacert {quoted} https://localhost:8443/" in text
    assert f"SSL_CERT_FILE={quoted}" in text
    assert f"ssl.create_default_context(cafile={str(cert.trust_path)!r})" in text
    assert (
        f"sudo cp {quoted} /usr/local/share/ca-certificates/membio.crt"
        " && sudo update-ca-certificates" in text
    )
    assert f'certutil -d sql:$HOME/.pki/nssdb -A -t "{nss_flags}" -n membio -i {quoted}' in text
    assert "Firefox" in text
    assert all("\n" not in line for line in lines)


def test_trust_instructions_accept_a_full_url(tmp_path: Path) -> None:
    cert = ensure_certificate(tmp_path)
    text = "\n".join(cert.trust_instructions("https://devbox:9443/app"))
    assert f"curl --cacert {cert.trust_path} https://devbox:9443/app" in text


# --------------------------------------------------------- the user's own certificate


@dataclass
class _UserFiles:
    cert: Path
    key: Path
    leaf: x509.Certificate


def _write_key(
    path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, password: bytes | None = None
) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.NoEncryption()
        if password is None
        else serialization.BestAvailableEncryption(password)
    )
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    path.chmod(0o600)


@pytest.fixture
def user_files(tmp_path: Path) -> _UserFiles:
    """A CA-issued leaf with its chain in one file and its key, as a user would bring them."""
    root, root_key = generate_root_ca(now=T0)
    leaf, key = generate_leaf(["app.example"], issuer=(root, root_key), now=T0)
    cert_file = tmp_path / "fullchain.pem"
    cert_file.write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, root))
    )
    key_file = tmp_path / "privkey.pem"
    _write_key(key_file, key)
    return _UserFiles(cert_file, key_file, leaf)


def test_user_certificate_with_chain_is_loaded_and_described(user_files: _UserFiles) -> None:
    cert = load_certificate(user_files.cert, user_files.key, now=T0 + DAY)
    assert cert.cert_path == user_files.cert and cert.key_path == user_files.key
    assert cert.trust_path == user_files.cert
    assert cert.names == ("app.example",)
    assert cert.not_after == user_files.leaf.not_valid_after_utc
    assert not cert.generated and cert.renew_after is None
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(cert.cert_path))
    context.use_privatekey_file(str(cert.key_path))
    context.check_privatekey()


def test_user_key_in_a_combined_pem_file_is_loaded(user_files: _UserFiles, tmp_path: Path) -> None:
    combined = tmp_path / "combined.pem"
    combined.write_bytes(user_files.cert.read_bytes() + user_files.key.read_bytes())
    combined.chmod(0o600)
    assert load_certificate(combined, combined, now=T0 + DAY).names == ("app.example",)


def test_encrypted_user_key_is_loaded_with_its_password(
    user_files: _UserFiles, tmp_path: Path
) -> None:
    key = serialization.load_pem_private_key(user_files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = tmp_path / "encrypted.pem"
    _write_key(encrypted, key, b"s3cret")
    cert = load_certificate(user_files.cert, encrypted, b"s3cret", now=T0 + DAY)
    # What the plugin does with such a key (use_privatekey_file would need a password
    # callback, which pyOpenSSL deprecates).
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.use_certificate_chain_file(str(cert.cert_path))
    context.use_privatekey(read_private_key(cert.key_path, b"s3cret"))
    context.check_privatekey()


@pytest.mark.parametrize("how", ["--key-password-file FILE", "keyPasswordFile="])
def test_one_password_rule_for_every_entry_point(
    user_files: _UserFiles, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Where the password comes from, and the one error each entry point words its own way."""
    key = serialization.load_pem_private_key(user_files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = tmp_path / "encrypted.pem"
    _write_key(encrypted, key, b"s3cret")
    monkeypatch.delenv(KEY_PASSWORD_ENV, raising=False)
    assert key_is_encrypted(encrypted) and not key_is_encrypted(user_files.key)
    assert not key_is_encrypted(tmp_path / "missing.pem")
    with pytest.raises(CertificateError) as missing:
        check_key_passwords([user_files.key, encrypted], None, how)
    assert str(missing.value) == (
        f"{encrypted} is encrypted: give its password with {how} or the "
        "MEMBIO_KEY_PASSWORD environment variable"
    )
    check_key_passwords([encrypted], b"anything", how)  # a password is there: load decides
    check_key_passwords([user_files.key], None, how)
    # The first line of the file, else the environment, else nothing.
    password_file = tmp_path / "password"
    password_file.write_bytes(b"s3cret\nsecond line\n")
    assert read_key_password(password_file) == b"s3cret"
    assert read_key_password(None) is None
    monkeypatch.setenv(KEY_PASSWORD_ENV, "from-env")
    assert read_key_password(None) == b"from-env"
    assert read_key_password(password_file) == b"s3cret"
    with pytest.raises(CertificateError, match=r"cannot read key password file .*missing"):
        read_key_password(tmp_path / "missing")
    # OpenSSL gets a plain key as its file, an encrypted one decrypted in memory.
    assert key_for_openssl(user_files.key, None) == user_files.key
    decrypted = key_for_openssl(encrypted, b"s3cret")
    assert isinstance(decrypted, ec.EllipticCurvePrivateKey)
    with pytest.raises(CertificateError, match="wrong password"):
        key_for_openssl(encrypted, b"guess")


def test_group_readable_user_key_is_accepted(user_files: _UserFiles) -> None:
    user_files.key.chmod(0o640)  # Debian's ssl-cert group convention
    load_certificate(user_files.cert, user_files.key, now=T0 + DAY)


def _assert_one_line_naming(error: CertificateError, path: Path, *words: str) -> None:
    message = str(error)
    assert str(path) in message
    assert "\n" not in message and "Traceback" not in message
    for word in words:
        assert word in message


def test_wrong_password_names_the_key_file(user_files: _UserFiles, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(user_files.key.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    encrypted = tmp_path / "encrypted.pem"
    _write_key(encrypted, key, b"s3cret")
    with pytest.raises(CertificateError) as wrong:
        load_certificate(user_files.cert, encrypted, b"guess", now=T0 + DAY)
    _assert_one_line_naming(wrong.value, encrypted, "wrong password")
    with pytest.raises(CertificateError) as missing:
        load_certificate(user_files.cert, encrypted, now=T0 + DAY)
    _assert_one_line_naming(missing.value, encrypted, "encrypted")


def test_key_that_does_not_match_the_certificate_is_refused(
    user_files: _UserFiles, tmp_path: Path
) -> None:
    other = tmp_path / "other-key.pem"
    _write_key(other, ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, other, now=T0 + DAY)
    _assert_one_line_naming(raised.value, other, "not the private key", str(user_files.cert))


def test_expired_user_certificate_is_refused(user_files: _UserFiles) -> None:
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, user_files.key, now=T0 + 31 * DAY)
    _assert_one_line_naming(raised.value, user_files.cert, "expired on")


def test_not_yet_valid_user_certificate_is_refused(user_files: _UserFiles) -> None:
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, user_files.key, now=T0 - DAY)
    _assert_one_line_naming(raised.value, user_files.cert, "not valid before")


@pytest.mark.parametrize("which", ["cert", "key"])
def test_missing_user_file_is_refused(user_files: _UserFiles, which: str) -> None:
    missing = user_files.cert.parent / "missing.pem"
    cert, key = (missing, user_files.key) if which == "cert" else (user_files.cert, missing)
    with pytest.raises(CertificateError) as raised:
        load_certificate(cert, key, now=T0 + DAY)
    _assert_one_line_naming(raised.value, missing, "No such file")


def test_directory_given_as_a_user_file_is_refused(user_files: _UserFiles) -> None:
    directory = user_files.cert.parent
    with pytest.raises(CertificateError) as raised:
        load_certificate(directory, user_files.key, now=T0 + DAY)
    _assert_one_line_naming(raised.value, directory, "cannot read")


def test_unreadable_user_file_is_refused(
    user_files: _UserFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    user_files.cert.chmod(0)
    if os.geteuid() == 0:
        # Root reads files whatever their mode: make the kernel's answer for
        # an ordinary user happen anyway.
        real_read = Path.read_bytes

        def read_bytes(path: Path) -> bytes:
            if path == user_files.cert:
                raise PermissionError(13, "Permission denied", str(path))
            return real_read(path)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, user_files.key, now=T0 + DAY)
    _assert_one_line_naming(raised.value, user_files.cert, "Permission denied")


BROKEN_CONTENTS = {
    "text": b"this is not a certificate\n",
    "empty": b"",
    "der": bytes.fromhex("3082010a02820101"),
    "damaged pem": b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
}


@pytest.mark.parametrize("content", BROKEN_CONTENTS.values(), ids=BROKEN_CONTENTS.keys())
def test_garbage_certificate_file_is_refused(
    user_files: _UserFiles, tmp_path: Path, content: bytes
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(content)
    with pytest.raises(CertificateError) as raised:
        load_certificate(garbage, user_files.key, now=T0 + DAY)
    _assert_one_line_naming(raised.value, garbage)


BROKEN_KEYS = {
    "text": b"this is not a key\n",
    "der": bytes.fromhex("308187020100"),
    "damaged pem": b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    "certificate instead": None,
}


@pytest.mark.parametrize("content", BROKEN_KEYS.values(), ids=BROKEN_KEYS.keys())
def test_garbage_key_file_is_refused(
    user_files: _UserFiles, tmp_path: Path, content: bytes | None
) -> None:
    garbage = tmp_path / "garbage-key.pem"
    garbage.write_bytes(user_files.cert.read_bytes() if content is None else content)
    garbage.chmod(0o600)
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, garbage, now=T0 + DAY)
    _assert_one_line_naming(raised.value, garbage)


def test_der_certificate_error_tells_how_to_convert(user_files: _UserFiles, tmp_path: Path) -> None:
    der = tmp_path / "cert.der"
    der.write_bytes(user_files.leaf.public_bytes(serialization.Encoding.DER))
    with pytest.raises(CertificateError, match="openssl x509 -inform DER"):
        load_certificate(der, user_files.key, now=T0 + DAY)


def test_world_readable_user_key_is_refused(user_files: _UserFiles) -> None:
    user_files.key.chmod(0o644)
    with pytest.raises(CertificateError) as raised:
        load_certificate(user_files.cert, user_files.key, now=T0 + DAY)
    assert str(raised.value) == (
        f"{user_files.key} is readable by other users (mode 0644); run: chmod 600 {user_files.key}"
    )


def test_self_signed_user_certificate_gets_peer_trust_instructions(tmp_path: Path) -> None:
    leaf, key = generate_leaf(["localhost"], now=T0)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    _write_key(key_file, key)
    cert = load_certificate(cert_file, key_file, now=T0)
    assert not cert.trust_anchor_is_ca
    assert any('-t "CP,,"' in line for line in cert.trust_instructions(443))


def test_module_constants_describe_the_documented_policy() -> None:
    assert _certs.DEFAULT_MODE == "local-ca"
    assert _certs.LOCAL_CA_LEAF_LIFETIME == 30 * DAY
    assert _certs.ROOT_LIFETIME == 3650 * DAY
