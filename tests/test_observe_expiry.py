"""
Certificate expiry warnings on a fake clock, with certificates made by the
package's own X.509 helpers: 20 days, 5 days and 12 hours left, and
already expired; each threshold once per certificate, again for a new one.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher

from membio_transport.certs import ServerCertificate, generate_leaf
from membio_transport.observe import CHECK_INTERVAL, ExpiryWatch

#: The fake clock's "now": any fixed moment works.
NOW = datetime.datetime(2030, 6, 1, 12, 0, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def served(path: Path, names: list[str], left: datetime.timedelta) -> ServerCertificate:
    """A real certificate, valid until NOW + C{left}, written to C{path}."""
    lifetime = datetime.timedelta(days=90)
    certificate, _key = generate_leaf(names, now=NOW + left - lifetime, lifetime=lifetime)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    loaded = x509.load_pem_x509_certificate(path.read_bytes())
    digest = hashlib.sha256(loaded.public_bytes(serialization.Encoding.DER)).hexdigest()
    return ServerCertificate(
        cert_path=path, key_path=path.with_suffix(".key"), trust_path=path,
        fingerprint_sha256=digest, names=tuple(names),
        not_after=loaded.not_valid_after_utc, generated=False,
    )


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    seen: list[LogEvent] = []

    def keep(event: LogEvent) -> None:
        if event.get("log_namespace") == "membio_transport.observe":
            seen.append(event)

    globalLogPublisher.addObserver(keep)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(keep)


def clock_at(moment: datetime.datetime) -> Clock:
    clock = Clock()
    clock.advance(moment.timestamp())
    return clock


def advance(clock: Clock, seconds: float) -> None:
    """
    Let C{seconds} pass call by call: ``Clock.advance`` alone runs every
    call due with the clock already at the end.
    """
    end = clock.seconds() + seconds
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= end]
        if not due:
            break
        clock.advance(max(min(due) - clock.seconds(), 0))
    clock.advance(end - clock.seconds())


def lines(events: list[LogEvent]) -> list[tuple[str, str, str]]:
    """(level, event name, file name) of each line, and empties the list."""
    found = [
        (event["log_level"].name, event["event_name"], Path(event["file"]).name)
        for event in events
    ]
    events.clear()
    return found


def test_each_certificate_gets_one_line_per_threshold(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    certificates = [
        served(tmp_path / "twenty.pem", ["twenty.test"], 20 * DAY),
        served(tmp_path / "five.pem", ["five.test", "www.five.test"], 5 * DAY),
        served(tmp_path / "half.pem", ["half.test"], datetime.timedelta(hours=12)),
        served(tmp_path / "gone.pem", ["gone.test"], -2 * DAY),
        served(tmp_path / "fine.pem", ["fine.test"], 60 * DAY),
    ]
    clock = clock_at(NOW)
    watch = ExpiryWatch(lambda: certificates, clock=clock)
    watch.startService()
    try:
        assert lines(events) == [
            ("warn", "certificate_expiring", "twenty.pem"),
            ("warn", "certificate_expiring", "five.pem"),
            ("warn", "certificate_expiring", "half.pem"),
            ("error", "certificate_expired", "gone.pem"),
        ]
        # Each line says which file, which names, and how long is left.
        # (Checked on a fresh watch: the record is per watch.)
        fresh = ExpiryWatch(lambda: certificates[1:2], clock=clock)
        fresh.check()
        (five,) = events
        text = formatEvent(five)
        assert str(tmp_path / "five.pem") in text and "five.test, www.five.test" in text
        assert "expires in 5 days" in text and "renew it" in text
        assert five["days_left"] == 5 and five["log_level"] is LogLevel.warn
        events.clear()

        # 12 hours later: half.pem expired (a check is due exactly then).
        advance(clock, 12 * 3600)
        assert lines(events) == [("error", "certificate_expired", "half.pem")]
        # The daily checks say nothing new until a threshold is crossed.
        advance(clock, CHECK_INTERVAL)
        assert lines(events) == []
        # Day 4: five.pem has one day left.
        advance(clock, 3 * 86400 - 12 * 3600 - 1)
        assert lines(events) == []
        advance(clock, 1)
        assert lines(events) == [("warn", "certificate_expiring", "five.pem")]
        # Day 5: five.pem expired; day 13: twenty.pem has a week left; day
        # 19 one day; day 20 expired.
        advance(clock, 9 * 86400)
        assert lines(events) == [
            ("error", "certificate_expired", "five.pem"),
            ("warn", "certificate_expiring", "twenty.pem"),
        ]
        advance(clock, 6 * 86400)
        assert lines(events) == [("warn", "certificate_expiring", "twenty.pem")]
        advance(clock, 86400)
        assert lines(events) == [("error", "certificate_expired", "twenty.pem")]
        # Expired ones are not reported again, day after day.
        for _ in range(10):
            advance(clock, CHECK_INTERVAL)
        assert [name for _, _, name in lines(events)] == ["fine.pem"], "30 days left now"
    finally:
        watch.stopService()
    assert clock.getDelayedCalls() == []


def test_a_replaced_certificate_starts_a_new_record(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    path = tmp_path / "site.pem"
    current = [served(path, ["site.test"], 5 * DAY)]
    clock = clock_at(NOW)
    watch = ExpiryWatch(lambda: current, clock=clock)
    watch.startService()
    try:
        assert lines(events) == [("warn", "certificate_expiring", "site.pem")]
        advance(clock, CHECK_INTERVAL)
        assert lines(events) == []
        # The operator installs a new certificate in the same file... that
        # also expires soon: a new record, so a new warning.
        current[:] = [served(path, ["site.test"], 6 * DAY)]
        watch.check()
        assert lines(events) == [("warn", "certificate_expiring", "site.pem")]
        # A healthy replacement (valid until NOW + 90 days; the clock is at
        # NOW + 1 day): nothing to say, and its 30-day warning comes in due time.
        current[:] = [served(path, ["site.test"], 90 * DAY)]
        watch.check()
        assert lines(events) == []
        advance(clock, 58 * 86400)
        assert lines(events) == []
        advance(clock, 86400)
        assert lines(events) == [("warn", "certificate_expiring", "site.pem")]
    finally:
        watch.stopService()


def test_a_generated_certificate_is_quiet_until_its_renewal_is_overdue(
    tmp_path: Path, events: list[LogEvent]
) -> None:
    leaf = served(tmp_path / "server.pem", ["localhost"], 20 * DAY)
    generated = ServerCertificate(
        **{**leaf.__dict__, "generated": True, "renew_after": NOW + 10 * DAY},
    )
    clock = clock_at(NOW)
    watch = ExpiryWatch(lambda: [generated], clock=clock)
    watch.startService()
    try:
        assert lines(events) == [], "a 30-day leaf renewed in-process is no news"
        advance(clock, 10 * 86400)
        (event,) = events
        assert event["event_name"] == "certificate_expiring"
        assert "renewal is overdue" in formatEvent(event)
    finally:
        watch.stopService()


def test_a_broken_source_is_logged_and_the_checks_go_on(events: list[LogEvent]) -> None:
    calls = []

    def broken() -> list[ServerCertificate]:
        calls.append(1)
        raise RuntimeError("the source is broken")

    clock = clock_at(NOW)
    watch = ExpiryWatch(broken, clock=clock)
    watch.startService()
    try:
        (event,) = events
        assert event["event_name"] == "certificate_expiry_check_failed"
        advance(clock, CHECK_INTERVAL)
        assert len(calls) == 2
    finally:
        watch.stopService()


def test_thresholds_must_go_from_the_longest_to_the_shortest() -> None:
    with pytest.raises(ValueError, match="longest"):
        ExpiryWatch(list, thresholds=(DAY, 7 * DAY))
