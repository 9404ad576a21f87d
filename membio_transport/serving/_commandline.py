"""
The settings table as twistd command-line options, for both apps.

`TLSOptions` is the base of ``membio-https``'s and ``membio-tls``'s
``Options``: every row of the table (``_settings``) becomes an option with
the row's flag and help, generated here, never written twice.  Values stay
the text the user typed until `TLSOptions.tls_settings` parses them all
with the table's parsers and checks them together, into `TLSSettings`.
It also gives both apps one way to fail: any mistake ends the program with
one line on standard error and exit status 1 (twistd would print its whole
help text first), with a pointer to ``--help`` only for a usage mistake.

Repeated ``--cert``/``--key`` pair up in order: each ``--key`` belongs to
the ``--cert`` before it (or, for the first one, after it: ``--key k --cert
c`` has always worked); a ``--cert`` with no ``--key`` holds its key itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from twisted.python import usage

from ..certs import CertificateError
from ._settings import (
    SETTINGS,
    EntryPoint,
    TLSSettings,
    flag_of,
    parse_values,
)
from ._values import SettingError

__all__ = ["ConfigurationError", "TLSOptions"]


def _option_name(name: str) -> str:
    return flag_of(name)[2:]


class ConfigurationError(usage.UsageError):
    """A mistake about the environment (files, certificates): no --help hint."""


class TLSOptions(usage.Options):
    """The TLS settings of the table, as options of a twistd command line."""

    #: Which entry point the options belong to (each app sets it).
    entry_point: ClassVar[EntryPoint]
    #: How users start it, for error messages (``python -m`` changes it).
    command: ClassVar[str]

    optParameters: ClassVar[list[list[Any]]] = [
        [_option_name(row.name), row.short, None, row.help_text()]
        for row in SETTINGS
        if not row.repeats and not row.switch
    ]
    optFlags: ClassVar[list[list[Any]]] = [
        [_option_name(row.name), row.short, row.help_text()]
        for row in SETTINGS
        if row.switch
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.python.usage is untyped
        #: The repeated options (--cert, --key, --hostname) in the order given.
        self["tls_repeats"] = []

    def command_name(self) -> str:
        """How the user started us: twistd, twist or python -m (for messages)."""
        parent = getattr(self, "parent", None)
        if parent is not None and ".twist." in f"{type(parent).__module__}.":
            return f"twist {self.entry_point}"
        return self.command

    def arguments(self, given: Sequence[str]) -> list[str]:
        """The command line as the parser is to see it (an app may rewrite it)."""
        return list(given)

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Parse, and turn any mistake into one line and exit status 1."""
        import sys

        arguments = self.arguments(sys.argv[1:] if options is None else options)
        command = self.command_name()
        try:
            super().parseOptions(arguments)  # type: ignore[no-untyped-call]  # untyped in Twisted
        except (SettingError, CertificateError, ConfigurationError) as error:
            raise SystemExit(f"{command}: error: {error}") from None
        except usage.UsageError as error:
            raise SystemExit(f"{command}: error: {error} (see: {command} --help)") from None

    def tls_settings(self, defaults: Mapping[str, Any] | None = None) -> TLSSettings:
        """
        Parse and check every TLS option given, with C{defaults} (this app's)
        for the ones that were not.

        @raise SettingError: one line naming the option.
        """
        values: dict[str, list[str]] = {}
        for row in SETTINGS:
            if row.repeats:
                continue
            given = self.get(_option_name(row.name))
            if row.switch:
                if given:
                    values[row.name] = ["yes"]
            elif given is not None:
                values[row.name] = [str(given)]
        hostnames = [text for name, text in self["tls_repeats"] if name == "hostname"]
        if hostnames:
            values["hostname"] = hostnames
        certs, keys = _pair_certificates(self["tls_repeats"])
        if certs:
            values["cert"] = certs
        if any(keys):
            values["key"] = keys if certs else [key for key in keys if key]
        return parse_values(self.entry_point, values, flag_of, defaults)


def _repeated(name: str) -> Any:
    def option(self: TLSOptions, value: str) -> None:
        self["tls_repeats"].append((name, value))

    option.__name__ = f"opt_{name}"
    option.__doc__ = next(row for row in SETTINGS if row.name == name).help_text()
    return option


for _row in SETTINGS:
    if _row.repeats:
        _option = _repeated(_row.name)
        setattr(TLSOptions, f"opt_{_row.name}", _option)
        if _row.short:
            setattr(TLSOptions, f"opt_{_row.short}", _option)  # the same: shown as -c, --cert


def _pair_certificates(given: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The --cert files and, by position, their --key files ("": in the cert's file)."""
    pairs: list[list[str]] = []
    waiting_key: str | None = None
    for kind, path in given:
        if kind == "cert":
            pairs.append([path, waiting_key or ""])
            waiting_key = None
        elif kind != "key":
            continue
        elif pairs and not pairs[-1][1]:
            pairs[-1][1] = path
        elif waiting_key is None and not pairs:
            waiting_key = path
        else:
            raise SettingError(f"--key {path}: give one --key per --cert, after it")
    if waiting_key is not None:
        return [], [waiting_key]  # the settings' check says: --key needs --cert
    return [cert for cert, _ in pairs], [key for _, key in pairs]
