"""
Logs as one JSON object per line, for log pipelines (journald, Loki,
Elasticsearch, ``jq``).

Every event becomes one line with the same top-level fields, whose names
and meanings are a stable interface:

``time``
    ISO 8601, UTC, milliseconds (``2026-05-04T09:12:30.123Z``).
``level``
    ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
``event``
    A stable machine name for what happened (``tls_handshake_failed``,
    ``certificate_reloaded``, ``connection_refused_limit``, ``listening``...),
    from the ``event_name`` key of the log call; ``log`` for lines that have
    none (Twisted's own, say), ``exception`` for failures that have none.
``message``
    The line text mode would print, formatted.
``peer``, ``reason``, ``server_name``, ``listener``, ``system``, ``namespace``
    When the event has them.
``exception_type``, ``exception_message``, ``traceback``
    For ``log.failure``: one object, the traceback a field, not lines.
``fields``
    The event's other keys with simple values (strings, numbers, booleans,
    times, paths), named as in the log call: useful, but only the names
    above are promised to stay.

`json_log_observer` is a factory for ``twistd --logger``; `with_log_format`
lets an entry point of ours choose JSON from its own options.  Text mode is
Twisted's own and unchanged.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import PurePath
from typing import IO, Any, Final, Literal

from twisted.application.service import IService, MultiService
from twisted.logger import FileLogObserver, ILogObserver, LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure

__all__ = ["LogFormat", "format_json_event", "json_log_observer", "with_log_format"]

LogFormat = Literal["text", "json"]

#: Our level names: syslog's and Python's, which log tools know.
_LEVELS: Final = {
    LogLevel.debug: "debug",
    LogLevel.info: "info",
    LogLevel.warn: "warning",
    LogLevel.error: "error",
    LogLevel.critical: "critical",
}
#: Structured fields promised at the top level when present.
_TOP_LEVEL: Final = ("peer", "reason", "server_name", "listener")
#: Keys that are not fields of the event (Twisted's bookkeeping, legacy
#: log.msg keys, and the ones placed at the top level).
_NOT_FIELDS: Final = frozenset(
    {"format", "message", "isError", "system", "time", "failure", "why", "event_name",
     *_TOP_LEVEL}
)


def _time(event: LogEvent) -> str:
    when = event.get("log_time")
    moment = (
        datetime.datetime.fromtimestamp(when, datetime.UTC)
        if isinstance(when, (int, float))
        else datetime.datetime.now(datetime.UTC)
    )
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _simple(value: object) -> object:
    """C{value} if JSON shows it as is, its text for times and paths, else None."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (PurePath, datetime.timedelta)):
        return str(value)
    return None


def _exception_type(failure: Failure) -> str:
    kind = failure.type
    if not isinstance(kind, type):
        return str(kind)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def format_json_event(event: LogEvent) -> str:
    """One JSON object, on one line (no newline at the end), for C{event}."""
    failure = event.get("log_failure")
    if not isinstance(failure, Failure):
        failure = None
    level = event.get("log_level")
    name = event.get("event_name")
    try:
        message = formatEvent(event)
    except Exception:  # formatEvent reports its own errors in the text; be safe anyway
        message = str(event.get("log_format", ""))
    if not message and failure is not None:
        message = failure.getErrorMessage()
    record: dict[str, object] = {
        "time": _time(event),
        # LogLevel's constants are not instances of LogLevel: compare by identity.
        "level": next((text for known, text in _LEVELS.items() if level is known), "info"),
        "event": (
            name if isinstance(name, str) and name
            else "exception" if failure is not None else "log"
        ),
        "message": message,
    }
    for key in _TOP_LEVEL:
        value = _simple(event.get(key))
        if value is not None:
            record[key] = value
    system = event.get("log_system", event.get("system"))
    if isinstance(system, str) and system and system != "-":
        record["system"] = system
    namespace = event.get("log_namespace")
    if isinstance(namespace, str) and namespace:
        record["namespace"] = namespace
    if failure is not None:
        record["exception_type"] = _exception_type(failure)
        record["exception_message"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    fields: dict[str, object] = {}
    for key, value in event.items():
        if not isinstance(key, str) or key.startswith("log_") or key in _NOT_FIELDS:
            continue
        simple = _simple(value)
        if simple is not None and simple != message:  # "{line}" events say it once
            fields[key] = simple
    if fields:
        record["fields"] = fields
    return json.dumps(record, ensure_ascii=False, separators=(",", ":"))


def _line(event: LogEvent) -> str:
    return format_json_event(event) + "\n"


def json_log_observer(out: IO[Any] | None = None) -> ILogObserver:
    """
    A log observer writing one JSON object per line to C{out} (standard
    output by default: what ``twistd -n``, systemd and containers collect).

    For ``twistd --logger membio_transport.observe.json_log_observer``:
    twistd calls it with no argument before it redirects standard output
    into the log, so the real standard output is the one kept.
    """
    observer: ILogObserver = FileLogObserver(out if out is not None else sys.stdout, _line)
    return observer


class _JSONLogged(MultiService):
    """Sets the JSON observer as the application's log observer when twistd adds it."""

    def __init__(self, service: IService) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self.service = service
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd's AppLogger uses the application's ILogObserver component,
        # unless --logger names another; the application is our parent.
        set_component = getattr(parent, "setComponent", None)
        if set_component is not None:
            set_component(ILogObserver, json_log_observer())
        super().setServiceParent(parent)  # type: ignore[no-untyped-call]  # untyped in Twisted


def with_log_format(service: IService, log_format: LogFormat) -> IService:
    """
    C{service}, logging in C{log_format} once twistd runs it: what a
    plugin's ``makeService`` returns for ``--log-format json``.  ``text``
    leaves it as it is (twistd's own observer, ``--logfile``).
    """
    if log_format == "text":
        return service
    if log_format == "json":
        return _JSONLogged(service)
    raise ValueError(f"log format must be 'text' or 'json', not {log_format!r}")
