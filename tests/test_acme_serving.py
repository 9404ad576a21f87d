"""
The ACME settings and their wiring into the serving layer, without a CA: the rows of the
settings table and their one-line refusals (spelled as flags or as ``membio:`` keys),
`TLSServing` with ``acme`` (the stored certificate served from the start, the
tls-alpn-01 responder on every context it builds and rebuilds, the gate in front of the
application, the http-01 root, a delivered certificate installed for new connections),
and the two fork hazards of ``--workers``: an order lock and a challenge board's lock
inherited by a worker forked in the middle of an order.

The same against a real CA, from every entry point, is ``test_acme_entry_points.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from membio_transport.acme import (
    ACME_TLS_ALPN_PROTOCOL,
    LETS_ENCRYPT_DIRECTORY,
    ChallengeBoard,
    ChallengeGate,
    HTTP01Resource,
)
from membio_transport.acme._store import AcmeStore
from membio_transport.certs import generate_leaf, generate_root_ca, pem_cert
from membio_transport.serving import (
    SETTINGS,
    SettingError,
    TLSServing,
    flag_of,
    key_of,
    parse_values,
)

from ._engines import pyopenssl_handshake
from ._plugin_helpers import private_home

__all__ = ["private_home"]

pytestmark = pytest.mark.usefixtures("private_home")

URL = "https://acme.example.test/dir"
KEY_AUTH = "token.thumbprint"


def flags(**values: Any) -> Any:
    """Settings as twistd command lines give them."""
    texts = {name: value if isinstance(value, list) else [value] for name, value in values.items()}
    return parse_values("membio-https", texts, flag_of)


def keys(**values: Any) -> Any:
    """Settings as a membio: endpoint string gives them."""
    texts = {name: value if isinstance(value, list) else [value] for name, value in values.items()}
    return parse_values("membio:", texts, lambda name: f"{key_of(name)}=")


# ------------------------------------------------------------------ the table's rows


def test_the_acme_rows_derive_their_flags_and_keys() -> None:
    names = ("acme_email", "acme_directory", "acme_agree_tos", "acme_directory_ca")
    assert [(flag_of(n), key_of(n)) for n in names] == [
        ("--acme-email", "acmeEmail"),
        ("--acme-directory", "acmeDirectory"),
        ("--acme-agree-tos", "acmeAgreeTOS"),
        ("--acme-directory-ca", "acmeDirectoryCA"),
    ]
    (email,) = [row for row in SETTINGS if row.name == "acme_email"]
    assert email.key_aliases == ("acme",)  # membio:6697:acme=me@example.org:...


def test_a_contact_address_alone_asks_lets_encrypt() -> None:
    for settings in (
        flags(acme_email="me@example.org", hostname="example.org"),
        keys(acme_email="me@example.org", hostname="example.org"),
        parse_values(
            "membio:", {"acme_email": ["me@example.org"], "hostname": ["example.org"]},
            lambda name: "acme=" if name == "acme_email" else f"{key_of(name)}=",
        ),
    ):
        assert settings.acme and settings.acme_directory is None
    off = flags(hostname="example.org")
    assert not off.acme


def test_a_contact_address_alone_is_served_from_lets_encrypt(tmp_path: Path) -> None:
    settings = flags(acme_email="me@example.org", hostname="example.org", acme_agree_tos="yes")
    serving = _serving(tmp_path, settings)
    assert serving.acme is not None
    assert serving.acme.config.directory_url == LETS_ENCRYPT_DIRECTORY
    assert serving.acme.config.email == "me@example.org"


def test_the_directory_takes_a_well_known_name_or_a_url_and_turns_acme_on() -> None:
    chosen = flags(acme_directory="letsencrypt", hostname="example.org")
    assert chosen.acme and chosen.acme_directory == LETS_ENCRYPT_DIRECTORY
    staging = flags(acme_directory="letsencrypt-staging", hostname="example.org").acme_directory
    assert staging == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert flags(acme_directory=URL, hostname="example.org").acme_directory == URL
    with pytest.raises(SettingError) as raised:
        flags(acme_directory="http://acme.example.test/dir", hostname="example.org")
    assert str(raised.value) == (
        "--acme-directory 'http://acme.example.test/dir': give letsencrypt or "
        "letsencrypt-staging, or the CA's ACME directory URL (https://...)"
    )
    with pytest.raises(SettingError, match=r"^acmeDirectory='le': give letsencrypt"):
        keys(acme_directory="le", hostname="example.org")


@pytest.mark.parametrize(
    ("values", "by_flag", "by_key"),
    [
        (
            {"acme_agree_tos": "yes"},
            "--acme-agree-tos needs --acme-email (public certificates from Let's Encrypt) "
            "or --acme-directory (from another ACME CA)",
            "acmeAgreeTOS needs acmeEmail (public certificates from Let's Encrypt) or "
            "acmeDirectory (from another ACME CA)",
        ),
        (
            {"acme_challenges": "http-01"},
            "--acme-challenges needs --acme-email",
            "acmeChallenges needs acmeEmail",
        ),
        (
            {"acme_email": "me@example.org"},
            "--acme-email needs --hostname: the public DNS name(s) of this server to get the "
            "certificate for, e.g. --hostname example.org",
            "acmeEmail needs hostname: the public DNS name(s) of this server to get the "
            "certificate for, e.g. hostname=example.org",
        ),
        (
            {"acme_directory": URL},
            "--acme-directory needs --hostname",
            "acmeDirectory needs hostname",
        ),
        (
            {"acme_directory": URL, "hostname": "example.org", "cert": "/etc/tls/chain.pem"},
            "--acme-directory gets the certificate from an ACME CA; --cert serves your own: "
            "give one or the other",
            "acmeDirectory gets the certificate from an ACME CA; cert serves your own: give "
            "one or the other",
        ),
        (
            {"hostname": "example.org", "acme_email": "me@a@b"},
            "--acme-email 'me@a@b' is not one e-mail address",
            "acmeEmail='me@a@b' is not one e-mail address",
        ),
        (
            {"acme_directory": URL, "hostname": "example.org", "acme_challenges": "dns-01"},
            "--acme-challenges 'dns-01': use tls-alpn-01 and/or http-01, comma-separated "
            "(dns-01 is not supported)",
            "acmeChallenges='dns-01': use tls-alpn-01 and/or http-01, comma-separated "
            "(dns-01 is not supported)",
        ),
    ],
)
def test_acme_mistakes_are_one_line_spelled_as_typed(
    values: dict[str, str], by_flag: str, by_key: str
) -> None:
    for parse, expected in ((flags, by_flag), (keys, by_key)):
        with pytest.raises(SettingError) as raised:
            parse(**values)
        assert str(raised.value).startswith(expected), str(raised.value)


def test_a_missing_directory_ca_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingError, match=r"^acmeDirectoryCA='.*nowhere.pem': no such file$"):
        keys(
            acme_directory=URL, hostname="example.org",
            acme_directory_ca=str(tmp_path / "nowhere.pem"),
        )  # fmt: skip


def _clock() -> Clock:
    """A test clock at the real time: certificates are judged by it."""
    clock = Clock()
    clock.advance(time.time())
    return clock


def _serving(tmp_path: Path, settings: Any, **options: Any) -> TLSServing:
    return TLSServing(
        settings.replace(cert_dir=tmp_path / "state"), clock=_clock(), acme_preflight=False,
        **options,
    )  # fmt: skip


def test_names_a_public_ca_cannot_validate_are_refused_in_the_user_s_spelling(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingError) as raised:
        _serving(tmp_path, keys(acme_directory=URL, hostname="10.0.0.1", acme_agree_tos="yes"))
    assert str(raised.value) == (
        "hostname=10.0.0.1: public CAs issue ACME certificates for DNS names here, not IP "
        "addresses"
    )
    with pytest.raises(SettingError, match=r"^--hostname intranet: not a public DNS name"):
        _serving(tmp_path, flags(acme_directory=URL, hostname="intranet", acme_agree_tos="yes"))


def test_http_01_needs_the_plain_http_listener(tmp_path: Path) -> None:
    settings = flags(acme_directory=URL, hostname="example.org", acme_challenges="http-01")
    with pytest.raises(SettingError) as raised:
        _serving(tmp_path, settings)
    assert str(raised.value) == (
        "--acme-challenges 'http-01': http-01 is answered on port 80, which only "
        "membio-https --redirect-http serves; use tls-alpn-01 (answered on this TLS port)"
    )
    serving = _serving(tmp_path, settings, http01=True)
    fallback = Resource()
    root = serving.http_resource(fallback)
    assert isinstance(root, HTTP01Resource) and root.fallback is fallback
    assert root.board is serving.acme.board  # type: ignore[union-attr]


# ------------------------------------------------------------------ TLSServing with acme


def _peer(client: SSL.Connection) -> x509.Certificate:
    cert = client.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    return cert


def _store_certificate(state: Path, names: tuple[str, ...], days: int = 60) -> str:
    """A certificate in the ACME store, as the manager leaves one; its fingerprint."""
    root = generate_root_ca()
    leaf, key = generate_leaf(
        list(names), issuer=root, lifetime=datetime.timedelta(days=days)
    )
    stored = AcmeStore(state / "acme").save_certificate(
        URL, names, pem_cert(leaf) + pem_cert(root[0]), key,  # type: ignore[arg-type]
        now=datetime.datetime.now(datetime.UTC),
    )  # fmt: skip
    return stored.fingerprint_sha256


def test_without_a_stored_certificate_the_local_one_is_served_and_challenges_answered(
    tmp_path: Path,
) -> None:
    settings = flags(
        acme_directory=URL, hostname="www.example.org", acme_agree_tos="yes", alpn="h2"
    )
    serving = _serving(tmp_path, settings)
    assert serving.acme is not None and not serving.own_certificate
    assert "www.example.org" in serving.certificate.names  # the local leaf names it too
    serving.acme.board.publish_tls_alpn("www.example.org", KEY_AUTH)
    for _ in range(2):  # as built, then as rebuilt by a reload (the context hook)
        context = serving.source.options.context
        client = pyopenssl_handshake(context, b"www.example.org", [ACME_TLS_ALPN_PROTOCOL])
        assert client.get_alpn_proto_negotiated() == ACME_TLS_ALPN_PROTOCOL
        assert _peer(client).extensions.get_extension_for_oid(
            x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
        )
        # Everyone else gets the configured protocols and the served certificate.
        ordinary = pyopenssl_handshake(context, b"www.example.org", [b"http/1.1", b"h2"])
        assert ordinary.get_alpn_proto_negotiated() == b"h2"
        assert "www.example.org" in [
            name.value for name in _peer(ordinary).extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        ]
        assert serving.source.reload("test")
    assert serving.acme.responder.answered == 2


def test_a_stored_certificate_is_served_from_the_start(tmp_path: Path) -> None:
    names = ("www.example.org", "example.org")
    fingerprint = _store_certificate(tmp_path / "state", names)
    settings = flags(acme_directory=URL, hostname=list(names), acme_agree_tos="yes")
    serving = _serving(tmp_path, settings)
    assert serving.certificate.fingerprint_sha256 == fingerprint
    assert serving.own_certificate
    assert not (tmp_path / "state" / "local-ca.pem").exists()  # no local CA needed


def test_a_delivered_certificate_is_installed_for_new_connections(tmp_path: Path) -> None:
    settings = flags(acme_directory=URL, hostname="www.example.org", acme_agree_tos="yes")
    serving = _serving(tmp_path, settings)
    acme = serving.acme
    assert acme is not None
    local = serving.certificate.fingerprint_sha256
    fingerprint = _store_certificate(tmp_path / "state", ("www.example.org",))
    delivered = acme.stored()
    assert delivered is not None
    reloads = serving.source.reloads
    acme._deliver(delivered)
    assert serving.certificate.fingerprint_sha256 == fingerprint != local
    assert serving.source.reloads == reloads + 1 and serving.own_certificate
    acme._deliver(delivered)  # the same again (the manager's first check): nothing to do
    assert serving.source.reloads == reloads + 1
    # The files are read again at each reload: a renewal written in place is picked up.
    renewed = _store_certificate(tmp_path / "state", ("www.example.org",))
    assert serving.source.reload("files changed")
    assert serving.certificate.fingerprint_sha256 == renewed


class _Endpoint:
    def __init__(self) -> None:
        self.factory: Any = None

    def listen(self, factory: Any) -> Any:
        self.factory = factory
        return succeed(self)

    def stopListening(self) -> None:
        pass

    def getHost(self) -> None:
        return None


def test_the_application_sits_behind_the_challenge_gate(tmp_path: Path) -> None:
    settings = flags(acme_directory=URL, hostname="www.example.org", acme_agree_tos="yes")
    serving = _serving(tmp_path, settings)
    inner = _Endpoint()
    application = Factory.forProtocol(Protocol)
    serving.wrap(inner, lifecycle=False).listen(application)
    gate = inner.factory.wrappedFactory
    assert isinstance(gate, ChallengeGate) and gate.wrappedFactory is application
    # Without acme, nothing in between.
    plain = TLSServing(flags(cert_dir=str(tmp_path / "plain")), clock=_clock())
    inner = _Endpoint()
    plain.wrap(inner, lifecycle=False).listen(application)
    assert inner.factory.wrappedFactory is application


# ------------------------------------------------------------------ fork hazards (--workers)


def _wait_for_exit(pid: int, timeout: float = 10.0) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


def _lock_is_free(path: Path) -> bool:
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def test_a_worker_forked_during_an_order_does_not_keep_the_order_lock(tmp_path: Path) -> None:
    store = AcmeStore(tmp_path / "acme")
    with store.order_lock(threading.Event(), lambda holder: None):
        pid = os.fork()
        if pid == 0:  # the worker: lives on, as workers do
            time.sleep(6)
            os._exit(0)
    try:
        # The parent let go: the lock is free although the worker still runs (once the
        # worker has closed its inherited copy, which it does first thing after the fork).
        deadline = time.monotonic() + 3
        while not _lock_is_free(tmp_path / "acme" / ".order.lock"):
            assert time.monotonic() < deadline, "the forked worker still holds the order lock"
            time.sleep(0.02)
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)  # still running
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


@contextlib.contextmanager
def _held(lock: Any) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def test_a_worker_forked_while_the_board_is_locked_still_answers(tmp_path: Path) -> None:
    board = ChallengeBoard(tmp_path / "challenges")
    board.publish_tls_alpn("memory.example.org", KEY_AUTH)
    # The ordering thread is publishing (holds the lock) at the moment of the fork.
    with _held(board._lock):
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                on_file = board.tls_alpn_certificate("memory.example.org")
                board.withdraw_tls_alpn("memory.example.org")  # as the parent will
                gone = board.tls_alpn_certificate("memory.example.org")
                status = 0 if on_file is not None and gone is None else 2
            finally:
                os._exit(status)
    assert _wait_for_exit(pid) == 0  # None: it hung on the inherited lock


def test_a_forked_worker_forgets_answers_the_parent_withdraws() -> None:
    board = ChallengeBoard()  # memory only
    board.publish_http01("tok", KEY_AUTH)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if board.http01_answer("tok") is None else 3)
    assert _wait_for_exit(pid) == 0
    assert board.http01_answer("tok") == KEY_AUTH.encode()  # the parent keeps its own


def test_the_readme_s_acme_table_names_every_acme_setting() -> None:
    from membio_transport.serving import SETTINGS

    from ._readme import table

    documented = {row["setting"].strip("`") for row in table("Public certificates (ACME)")}
    acme_rows = {row.name for row in SETTINGS if row.name.startswith("acme")}
    assert acme_rows <= documented and "hostname" in documented


@pytest.mark.parametrize(
    ("setting", "value"), [("acme_email", "me@example.org"), ("acme_directory", "letsencrypt")]
)
def test_without_the_acme_extra_acme_is_one_line_naming_it(setting: str, value: str) -> None:
    import subprocess
    import sys

    program = (
        "import sys\n"
        "sys.modules['acme'] = None  # as on an install without membio-transport[acme]\n"
        "from membio_transport.serving import SettingError, flag_of, parse_values\n"
        "try:\n"
        f"    parse_values('membio-https', {{'{setting}': ['{value}'],"
        " 'hostname': ['example.org']}, flag_of)\n"
        "except SettingError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout == (
        "public certificates need the ACME libraries (acme is missing): "
        "pip install 'membio-transport[acme]'\n"
    ), result.stdout + result.stderr
