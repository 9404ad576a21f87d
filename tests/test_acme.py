"""
The ACME layer without a CA: challenge certificates, the board, the responders, the
renewal and backoff policy, the error lines, the configuration checks, and the manager's
schedule driven by a fake clock and a fake session.

The same pieces against a real CA are in ``test_acme_pebble.py``.
"""

from __future__ import annotations

import datetime
import hashlib
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwk import JWKEC
from OpenSSL import SSL
from twisted.internet import protocol, reactor, task, threads
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from membio_transport import MemoryBIOTLSFactory
from membio_transport.acme import (
    ACME_TLS_ALPN_PROTOCOL,
    AccountUnknown,
    AcmeConfig,
    AcmeConfigError,
    AcmeManager,
    CAUnreachable,
    ChallengeBoard,
    ChallengeFailed,
    ChallengeGate,
    ChallengeUnreachable,
    HTTP01Resource,
    NameNotResolved,
    NameRefused,
    RateLimited,
    TermsNotAgreed,
    TLSALPNResponder,
    is_challenge_connection,
    key_authorization,
    tls_alpn_challenge_certificate,
)
from membio_transport.acme._client import _parse_retry_after
from membio_transport.acme._errors import CAProblem, from_problem
from membio_transport.acme._policy import renewal_time, retry_delay
from membio_transport.certs import ensure_certificate
from membio_transport.tls import ServerTLSOptions, server_context

from ._engines import pyopenssl_handshake

T0 = datetime.datetime(2026, 3, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
URL = "https://acme.example/directory"
KEY_AUTH = "token-abc.thumbprint-xyz"


# ------------------------------------------------------------ challenge certificates


def test_challenge_certificate_follows_rfc_8737() -> None:
    challenge = tls_alpn_challenge_certificate("www.example.org", KEY_AUTH, now=T0)
    cert = challenge.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["www.example.org"]
    extension = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert extension.critical
    digest = hashlib.sha256(KEY_AUTH.encode()).digest()
    assert extension.value.value == b"\x04\x20" + digest  # DER OCTET STRING (32 bytes)
    assert cert.not_valid_before_utc < T0 < cert.not_valid_after_utc
    again = challenge.from_pem("www.example.org", challenge.to_pem())
    assert again is not None and again.certificate == cert
    assert again.key.private_numbers() == challenge.key.private_numbers()


def test_key_authorization_is_token_dot_thumbprint() -> None:
    key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    thumbprint = key.thumbprint(hash_function=hashes.SHA256)
    import base64

    expected = base64.urlsafe_b64encode(thumbprint).rstrip(b"=").decode()
    assert key_authorization("tok", key) == f"tok.{expected}"


# ------------------------------------------------------------------------ the board


def test_board_shares_answers_through_its_directory(tmp_path: Path) -> None:
    ordering, serving = ChallengeBoard(tmp_path / "ch"), ChallengeBoard(tmp_path / "ch")
    ordering.publish_tls_alpn("www.example.org", KEY_AUTH)
    ordering.publish_http01("tok_en-1", KEY_AUTH)
    found = serving.tls_alpn_certificate("WWW.example.org.")
    assert found is not None and found.name == "www.example.org"
    assert serving.http01_answer("tok_en-1") == KEY_AUTH.encode()
    for path in (tmp_path / "ch").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    ordering.withdraw_tls_alpn("www.example.org")
    ordering.withdraw_http01("tok_en-1")
    assert serving.tls_alpn_certificate("www.example.org") is None
    assert serving.http01_answer("tok_en-1") is None


def test_board_lookups_refuse_paths(tmp_path: Path) -> None:
    board = ChallengeBoard(tmp_path / "ch")
    (tmp_path / "secret").write_bytes(b"not for you")
    assert board.http01_answer("../../secret") is None
    assert board.tls_alpn_certificate("../secret") is None
    with pytest.raises(ValueError):
        board.publish_http01("a/b", KEY_AUTH)


# ----------------------------------------------------------------- the ALPN hook


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[SSL.Context, TLSALPNResponder, x509.Certificate]]:
    local = ensure_certificate(tmp_path)
    board = ChallengeBoard()
    responder = TLSALPNResponder(board)
    context = server_context(local.cert_path, local.key_path, alpn=[b"h2", b"http/1.1"])
    responder.install(context, [b"h2", b"http/1.1"])
    board.publish_tls_alpn("www.example.org", KEY_AUTH)
    yield context, responder, x509.load_pem_x509_certificate(local.cert_path.read_bytes())


def _peer(client: SSL.Connection) -> x509.Certificate:
    cert = client.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    return cert


def test_responder_serves_the_challenge_certificate_to_acme_tls_1(served: Any) -> None:
    context, responder, _ = served
    client = pyopenssl_handshake(context, b"www.example.org", [ACME_TLS_ALPN_PROTOCOL])
    assert client.get_alpn_proto_negotiated() == ACME_TLS_ALPN_PROTOCOL
    peer = _peer(client)
    assert peer.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31"))
    assert responder.answered == 1


def test_responder_leaves_ordinary_clients_alone(served: Any) -> None:
    context, responder, local = served
    client = pyopenssl_handshake(context, b"www.example.org", [b"http/1.1", b"h2"])
    assert client.get_alpn_proto_negotiated() == b"h2"
    assert _peer(client) == local
    # acme-tls/1 for a name with no pending challenge: the normal certificate, no ALPN.
    client = pyopenssl_handshake(context, b"other.example.org", [ACME_TLS_ALPN_PROTOCOL])
    assert client.get_alpn_proto_negotiated() == b""
    assert _peer(client) == local and responder.answered == 0


class _Counting(protocol.Factory):
    def __init__(self) -> None:
        self.built = 0
        self.events: list[str] = []

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        self.built += 1
        events = self.events

        class Echo(protocol.Protocol):
            def connectionMade(self) -> None:
                events.append("made")

            def dataReceived(self, data: bytes) -> None:
                self.transport.write(data)  # type: ignore[union-attr]

            def connectionLost(self, reason: Any = None) -> None:
                events.append("lost")

        return Echo()


def _tls_client(port: int, alpn: list[str], name: str) -> tuple[str | None, bytes]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(alpn)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        chosen = tls.selected_alpn_protocol()
        if chosen != "acme-tls/1":
            tls.sendall(b"ping")
        try:
            data = tls.recv(100)
        except (ssl.SSLError, OSError):
            data = b""
        if data:
            tls.unwrap()  # close_notify: a half-close the application cannot take
        return chosen, data


@pytest.mark.integration
@pytest_twisted.ensureDeferred
async def test_gate_keeps_challenge_connections_from_the_application(
    served: Any, failures: list[LogEvent]
) -> None:
    context, responder, _ = served
    app = _Counting()
    assert responder.answered == 0
    gate = ChallengeGate(app)
    port = reactor.listenTCP(  # type: ignore[attr-defined]
        0, MemoryBIOTLSFactory(ServerTLSOptions(context), False, gate), interface="127.0.0.1"
    )
    try:
        number = port.getHost().port
        chosen, data = await threads.deferToThread(
            _tls_client, number, ["acme-tls/1"], "www.example.org"
        )
        assert (chosen, data) == ("acme-tls/1", b"")  # closed by the server, no data
        assert gate.challenges_closed == responder.answered == 1 and app.built == 0
        chosen, data = await threads.deferToThread(
            _tls_client, number, ["http/1.1"], "www.example.org"
        )
        assert (chosen, data) == ("http/1.1", b"ping")
        await eventually(lambda: "lost" in app.events, 5)
        assert app.built == 1 and app.events == ["made", "lost"]
        assert failures == []
    finally:
        await port.stopListening()


@pytest.fixture
def failures() -> Iterator[list[LogEvent]]:
    """Log events carrying a failure (tracebacks), from anywhere."""
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def eventually(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await task.deferLater(reactor, 0.02, lambda: None)  # type: ignore[arg-type]


def test_is_challenge_connection() -> None:
    class Transport:
        negotiatedProtocol: bytes | None = None

    transport = Transport()
    assert not is_challenge_connection(transport)
    transport.negotiatedProtocol = b"acme-tls/1"
    assert is_challenge_connection(transport)
    assert not is_challenge_connection(object())


# ---------------------------------------------------------------- the http-01 resource


class _Fallback(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"fallback " + b"/".join(request.postpath)


def _render(resource: Resource, path: str, method: bytes = b"GET") -> DummyRequest:
    request = DummyRequest(path.strip("/").encode().split(b"/"))
    request.method = method
    body = resource.render(request)
    if isinstance(body, bytes):
        request.write(body)
    return request


def test_http01_resource_answers_pending_tokens_only() -> None:
    board = ChallengeBoard()
    board.publish_http01("tok", KEY_AUTH)
    resource = HTTP01Resource(board, _Fallback())
    request = _render(resource, "/.well-known/acme-challenge/tok")
    assert b"".join(request.written) == KEY_AUTH.encode()
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/octet-stream"]
    assert _render(resource, "/.well-known/acme-challenge/nope").responseCode == 404
    assert _render(resource, "/.well-known/acme-challenge/tok/x").responseCode == 404
    assert _render(resource, "/.well-known/acme-challenge/tok", b"POST").responseCode == 405
    assert b"".join(_render(resource, "/some/page").written) == b"fallback some/page"
    assert _render(HTTP01Resource(board), "/some/page").responseCode == 404
    assert resource.answered == 1


# ------------------------------------------------------------------- the policy


def _cert(not_before: datetime.datetime, lifetime: datetime.timedelta, serial: int) -> Any:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_before + lifetime)
        .sign(key, hashes.SHA256())
    )


def test_renewal_at_two_thirds_with_stable_jitter() -> None:
    times = [renewal_time(_cert(T0, 90 * DAY, serial)) for serial in range(1, 40)]
    assert all(T0 + 57 * DAY <= when <= T0 + 60 * DAY for when in times)
    assert len(set(times)) > 30  # spread
    assert renewal_time(_cert(T0, 90 * DAY, 7)) == renewal_time(_cert(T0, 90 * DAY, 7))


def test_retry_delay_doubles_and_is_bounded() -> None:
    delays = [retry_delay(n, initial=2, maximum=60) for n in range(1, 9)]
    assert delays == [2, 4, 8, 16, 32, 60, 60, 60]
    assert retry_delay(10_000, initial=2, maximum=60) == 60
    assert retry_delay(1, initial=2, maximum=60, not_before=3600) == 3600


def test_retry_after_forms() -> None:
    assert _parse_retry_after("120", T0) == T0 + datetime.timedelta(seconds=120)
    parsed = _parse_retry_after("Sun, 01 Mar 2026 13:00:00 GMT", T0)
    assert parsed == T0 + datetime.timedelta(hours=1)
    assert _parse_retry_after("soon", T0) is None and _parse_retry_after(None, T0) is None


# ------------------------------------------------------------------ error lines


def _problem(kind: str, detail: str, **extra: Any) -> messages.Error:
    return messages.Error(typ=f"urn:ietf:params:acme:error:{kind}", detail=detail, **extra)


@pytest.mark.parametrize(
    ("kind", "cls", "advice"),
    [
        ("dns", NameNotResolved, "DNS A/AAAA record"),
        ("connection", ChallengeUnreachable, "open that port"),
        ("incorrectResponse", ChallengeFailed, "another server"),
        ("rejectedIdentifier", NameRefused, "remove or fix"),
        ("caa", NameRefused, "CAA"),
        ("accountDoesNotExist", AccountUnknown, "registering"),
        ("serverInternal", CAProblem, "serverInternal"),
    ],
)
def test_problem_documents_become_one_actionable_line(
    kind: str, cls: type[Exception], advice: str
) -> None:
    error = from_problem(
        _problem(kind, "the CA's own\nwords"),
        directory_url=URL,
        name="www.example.org",
        challenge="tls-alpn-01",
        port=443,
    )
    line = str(error)
    assert type(error) is cls
    assert "\n" not in line and "the CA's own words" in line and advice in line


def test_rate_limit_says_until_when() -> None:
    until = T0 + datetime.timedelta(hours=3)
    error = from_problem(
        _problem("rateLimited", "too many certificates"), directory_url=URL, retry_at=until
    )
    assert isinstance(error, RateLimited) and error.retry_at == until and error.retry
    assert "until 2026-03-01 15:00:00 UTC: too many certificates" in str(error)


def test_long_details_are_cut() -> None:
    error = from_problem(_problem("serverInternal", "x" * 5000), directory_url=URL)
    assert len(str(error)) < 600


# ---------------------------------------------------------- configuration checks


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"names": ()}, "at least one --hostname"),
        ({"names": ("192.0.2.1",)}, "not IP addresses"),
        ({"names": ("*.example.org",)}, "dns-01"),
        ({"names": ("intranet",)}, "no dot"),
        ({"names": ("bad name.org",)}, "not a valid DNS name"),
        ({"directory_url": "http://acme.example/dir"}, "https://"),
        ({"email": "not-an-address"}, "not one e-mail address"),
        ({"challenges": ("dns-01",)}, "dns-01"),
        ({"directory_ca": Path("/nonexistent/ca.pem")}, "no such file"),
    ],
)
def test_configuration_mistakes_are_one_line(settings: dict[str, Any], message: str) -> None:
    values: dict[str, Any] = {"names": ("www.example.org",), **settings}
    with pytest.raises(AcmeConfigError, match=message):
        AcmeConfig(**values)


def test_configuration_normalizes_names() -> None:
    config = AcmeConfig(names=("WWW.Example.org.", "www.example.org", "api.example.org"))
    assert config.names == ("www.example.org", "api.example.org")


# ------------------------------------------------- the manager, on a fake clock


class _CA:
    """Signs whatever key it is given; certificates as a real CA would issue them."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake ACME CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(T0 - 3650 * DAY)
            .not_valid_after(T0 + 3650 * DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, names: Sequence[str], key: Any, now: datetime.datetime, lifetime: datetime.timedelta
    ) -> bytes:
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + lifetime)
            .add_extension(
                x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.cert))


class _Net:
    bad_nonces = 0


class FakeSession:
    """Stands in for AcmeSession: scripted failures, then certificates from _CA."""

    def __init__(self, clock: task.Clock, lifetime: datetime.timedelta = 90 * DAY) -> None:
        self.clock = clock
        self.ca = _CA()
        self.lifetime = lifetime
        self.net = _Net()
        self.failures: list[Exception] = []
        self.orders = 0
        self.registered = 0
        self.forgotten = 0
        self.suggestion: datetime.datetime | None = None

    def use_account(self, store: Any, email: Any, agree_tos: bool) -> str:
        self.registered += 1
        return "registered" if self.registered == 1 else "stored"

    def forget_account(self, store: Any, email: Any) -> None:
        self.forgotten += 1

    def order(self, names: Sequence[str], key: Any, preference: Any, board: Any) -> bytes:
        self.orders += 1
        if self.failures:
            raise self.failures.pop(0)
        now = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)
        return self.ca.issue(names, key, now, self.lifetime)

    def suggested_renewal(self, chain: bytes) -> datetime.datetime | None:
        return self.suggestion


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "membio_transport.acme":
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


class Rig:
    def __init__(self, tmp_path: Path, **config: Any) -> None:
        self.clock = task.Clock()
        self.clock.advance(T0.timestamp())
        self.session = FakeSession(self.clock)
        self.served: list[Any] = []
        settings: dict[str, Any] = {
            "names": ("www.example.org",),
            "agree_tos": True,
            "state_dir": tmp_path / "acme",
            "retry_initial": 60.0,
            "retry_maximum": 3600.0,
        }
        settings.update(config)
        self.manager = AcmeManager(
            AcmeConfig(**settings),
            self.served.append,
            clock=self.clock,
            threaded=False,
            session_factory=lambda config, cancelled: self.session,  # type: ignore[arg-type,return-value]
        )

    def now(self) -> datetime.datetime:
        return datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.UTC)

    def start(self) -> None:
        self.manager.startService()
        self.clock.advance(0)


def test_manager_orders_then_renews_at_two_thirds(tmp_path: Path, log_lines: list[str]) -> None:
    rig = Rig(tmp_path)
    rig.start()
    assert len(rig.served) == 1 and rig.session.orders == 1
    first = x509.load_pem_x509_certificate(rig.served[0].cert_path.read_bytes())
    assert rig.manager.next_check == renewal_time(first) or rig.manager.next_check == rig.now() + (
        datetime.timedelta(seconds=12 * 3600)
    )
    # Checks every 12 hours until renewal is due: no order before, one at the time.
    while rig.now() < renewal_time(first) - datetime.timedelta(hours=12):
        rig.clock.advance(12 * 3600)
    assert rig.session.orders == 1
    rig.clock.advance(13 * 3600)
    assert rig.session.orders == 2 and len(rig.served) == 2
    assert rig.served[1].fingerprint_sha256 != rig.served[0].fingerprint_sha256
    assert any("ACME: new certificate for www.example.org" in line for line in log_lines)
    assert all("\n" not in line and "Traceback" not in line for line in log_lines)


def test_manager_backs_off_and_recovers(tmp_path: Path, log_lines: list[str]) -> None:
    rig = Rig(tmp_path)
    rig.session.failures = [CAUnreachable("cannot reach the ACME CA") for _ in range(8)]
    rig.start()
    waits = []
    for _ in range(8):
        assert rig.manager.next_check is not None
        waits.append((rig.manager.next_check - rig.now()).total_seconds())
        rig.clock.advance(waits[-1])
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert len(rig.served) == 1 and rig.manager.counters.failures == 0
    assert sum("next attempt in" in line for line in log_lines) == 8
    assert all("\n" not in line for line in log_lines)


def test_manager_waits_for_a_rate_limit(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    until = T0 + datetime.timedelta(hours=5)
    rig.session.failures = [RateLimited("rate limited", retry_at=until)]
    rig.start()
    assert rig.manager.next_check == until


def test_manager_stops_retrying_configuration_errors(tmp_path: Path, log_lines: list[str]) -> None:
    rig = Rig(tmp_path)
    rig.session.failures = [TermsNotAgreed(URL, "https://ca.example/terms")]
    rig.start()
    assert rig.manager.next_check is None and rig.clock.getDelayedCalls() == []
    assert any("https://ca.example/terms" in line and "not retrying" in line for line in log_lines)


def test_manager_reports_unexpected_errors_in_one_line(
    tmp_path: Path, log_lines: list[str]
) -> None:
    rig = Rig(tmp_path)
    rig.session.failures = [KeyError("surprise")]
    rig.start()
    assert rig.manager.next_check is not None
    assert any("unexpected KeyError" in line for line in log_lines)
    assert all("Traceback" not in line for line in log_lines)


def test_manager_survives_a_failing_callback(tmp_path: Path, log_lines: list[str]) -> None:
    rig = Rig(tmp_path)

    def broken(certificate: Any) -> None:
        raise RuntimeError("context build failed")

    rig.manager.on_certificate = broken
    rig.start()
    assert rig.manager.current is not None and rig.manager.next_check is not None
    assert any("context build failed" in line for line in log_lines)


def test_manager_registers_again_when_the_ca_forgot_the_account(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.session.failures = [AccountUnknown("does not know our account")]
    rig.start()
    assert rig.session.forgotten == 1 and rig.session.orders == 2 and len(rig.served) == 1


def test_manager_follows_the_cas_renewal_information(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.session.suggestion = T0 + 3 * DAY
    rig.start()
    while rig.now() < T0 + 3 * DAY:
        assert rig.session.orders == 1
        assert rig.manager.next_check is not None
        rig.clock.advance((rig.manager.next_check - rig.now()).total_seconds())
    # Renewed at the suggested time, not at two thirds of the 90 days.
    assert rig.now() == T0 + 3 * DAY and rig.session.orders == 2


def test_manager_reuses_the_stored_certificate(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.start()
    rig.manager.stopService()
    again = Rig(tmp_path)
    again.clock.advance(DAY.total_seconds())
    assert again.manager.stored() == rig.served[0]
    again.start()
    assert again.session.orders == 0
    assert again.served[0].fingerprint_sha256 == rig.served[0].fingerprint_sha256


def test_order_lock_lets_one_holder_at_a_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    store = rig.manager.store
    waited: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.order_lock(threading.Event(), waited.append):
            inside.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(5)
    stop = threading.Event()
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    from membio_transport.acme import OrderCancelled

    with pytest.raises(OrderCancelled), store.order_lock(stop, waited.append):
        pass
    assert time.monotonic() - started < 3
    assert waited and waited[0].startswith("pid ")
    release.set()
    holder.join(5)
