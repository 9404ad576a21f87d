"""
The one table of TLS-serving settings, for every entry point.

Each `Setting` has one name (``client_ca``); its command-line flag
(``--client-ca``) and its ``membio:`` endpoint key (``clientCA=``) derive
from that name, so the three entry points cannot drift apart: ``membio:``,
``twistd membio-https`` and ``twistd membio-tls`` accept the whole table
(`SETTINGS`), parse each value with the same function, and word its errors
with what the user typed (`SettingError`).  The README's tables are checked
against this one (``tests/test_settings.py``).

Only the keys Twisted's own ``ssl:`` endpoint uses keep aliases
(``certKey=`` and ``privateKey=`` for ``cert=`` and ``key=``), and the short
``acme=`` for ``acmeEmail=`` (``membio:6697:acme=me@example.org:...``); options
that are not about TLS (``--port``, ``--path``, ``--backend``, ``--workers``)
belong to each app.  Parsing a command line or an endpoint string gives
`TLSSettings`, from which ``_server.TLSServing`` builds everything.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from ..certs import default_cert_dir
from ..tls import HARDENED_HANDSHAKE_TIMEOUT, PlainHTTPPolicy, Profile
from ._acme_settings import (
    check_acme,
    parse_acme,
    parse_challenges,
    parse_email,
    parse_existing_file,
)
from ._values import (
    SettingError,
    parse_alpn,
    parse_backlog,
    parse_client_cert,
    parse_count,
    parse_directory,
    parse_endpoint,
    parse_key_path,
    parse_log_format,
    parse_names,
    parse_path,
    parse_plain_http,
    parse_profile,
    parse_seconds_or_off,
    parse_switch,
)

__all__ = [
    "ENTRY_POINTS",
    "SETTINGS",
    "EntryPoint",
    "Setting",
    "TLSSettings",
    "flag_of",
    "key_of",
    "parse_values",
    "setting",
]

EntryPoint = Literal["membio:", "membio-https", "membio-tls"]
#: Every entry point that serves TLS, in the order the README lists them.
ENTRY_POINTS: Final[tuple[EntryPoint, ...]] = ("membio:", "membio-https", "membio-tls")

#: Seconds between two looks at the certificate files' mtimes.  A stat per
#: file every few seconds costs nothing, and a renewed certificate is in
#: service a few seconds after it is written.
DEFAULT_POLL_INTERVAL: Final = 5.0

#: Listen queue length: room for a burst of handshakes (Twisted's 50
#: overflows with 1,000 simultaneous clients, who then wait for SYN
#: retries).  nginx's value; the kernel caps it at net.core.somaxconn.
DEFAULT_BACKLOG: Final = 511

#: Words written in capitals inside an endpoint key, as Twisted's own keys
#: do (``caFile``, ``sslmethod``... and ``clientCA``, ``plainHTTP`` here).
_ACRONYMS: Final = frozenset({"alpn", "ca", "dns", "http", "ip", "sni", "tls", "tos", "url"})


def flag_of(name: str) -> str:
    """The command-line flag of a setting: ``client_ca`` -> ``--client-ca``."""
    return "--" + name.replace("_", "-")


def key_of(name: str) -> str:
    """
    The endpoint key of a setting: lowerCamelCase with known acronyms in
    capitals after the first word: ``client_ca`` -> ``clientCA``,
    ``key_password_file`` -> ``keyPasswordFile``, ``plain_http`` -> ``plainHTTP``.
    """
    first, *rest = name.split("_")
    return first + "".join(w.upper() if w in _ACRONYMS else w.capitalize() for w in rest)


# ------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Setting:
    """
    One row of the table.

    @ivar name: the Python name; the flag and the endpoint key derive from it.
    @ivar help: what it does, one sentence or two, without the default.
    @ivar default: what an entry point gets without it, in words (the README
        shows it, the help text ends with it).
    @ivar parse: text and spelling -> value, or `SettingError`.
    @ivar repeats: given several times on a command line; a comma-separated
        list in an endpoint key.
    @ivar switch: a flag without a value on a command line (``yes``/``no``
        in an endpoint key).
    @ivar short: a one-letter command-line alias.
    @ivar key_aliases: more endpoint keys: those of Twisted's ``ssl:``
        endpoint (``certKey=``), and ``acme=`` for the ACME contact address.
    @ivar entry_points: who takes it (every entry point, unless it makes no
        sense for one).
    """

    name: str
    help: str
    default: str
    parse: Callable[[str, str], Any]
    repeats: bool = False
    switch: bool = False
    short: str | None = None
    key_aliases: tuple[str, ...] = ()
    entry_points: tuple[EntryPoint, ...] = ENTRY_POINTS

    @property
    def flag(self) -> str:
        return flag_of(self.name)

    @property
    def key(self) -> str:
        return key_of(self.name)

    def help_text(self) -> str:
        """The help of a command line: what it does, then the default."""
        return f"{self.help} [default: {self.default}]"


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "cert",
        "PEM certificate chain (leaf first), with its key inside unless a key follows; "
        "repeat for more certificates chosen by SNI (the first is the default).",
        "a generated certificate", parse_path, repeats=True, short="c", key_aliases=("certKey",),
    ),
    Setting(
        "key",
        "PEM private key (mode 0600 or 0640) of the certificate before it.",
        "in the certificate file", parse_key_path, repeats=True, short="k",
        key_aliases=("privateKey",),
    ),
    Setting(
        "key_password_file",
        "File whose first line is the password of an encrypted key.",
        "$MEMBIO_KEY_PASSWORD", parse_path,
    ),
    Setting(
        "cert_dir",
        "Directory of the generated certificate and its local CA.",
        str(default_cert_dir()).replace(str(Path.home()), "~"), parse_path,
    ),
    Setting(
        "hostname",
        "Extra DNS name or IP address for the generated certificate (repeatable, or "
        "comma-separated); with acme, the public DNS names to get the certificate for.",
        "localhost, 127.0.0.1, ::1, this machine's name, a specific interface", parse_names,
        repeats=True,
    ),
    # -- public certificates (ACME, issue #12): _acme_settings, _acme ---------------
    Setting(
        "acme_email",
        "Get the certificate for the hostname names from an ACME CA (Let's Encrypt unless "
        "acme_directory says otherwise), serve it and renew it while running; the address is "
        "the account's contact for the CA. State in the cert_dir's acme/ folder.",
        "off: no public certificate", parse_email, key_aliases=("acme",),
    ),
    Setting(
        "acme_directory",
        "The ACME CA to get the certificate from: letsencrypt, letsencrypt-staging, or the "
        "CA's directory URL (https://...), e.g. a private step-ca or a test pebble; turns "
        "ACME on by itself too (no contact address then).",
        "letsencrypt, when acme_email is given", parse_acme,
    ),
    Setting(
        "acme_agree_tos",
        "Agree to the ACME CA's terms of service (required before the first order; the "
        "refusal without it names the terms' URL).",
        "off", parse_switch, switch=True,
    ),
    Setting(
        "acme_challenges",
        "ACME challenge types to answer, comma-separated, in preference order: tls-alpn-01 "
        "(on this TLS port, 443 for a public CA), http-01 (on port 80: membio-https "
        "--redirect-http only).",
        "tls-alpn-01", parse_challenges,
    ),
    Setting(
        "acme_directory_ca",
        "PEM file of CA certificates to trust for the ACME directory's own HTTPS (a private "
        "or test CA such as step-ca or pebble).",
        "the system's trust store", parse_existing_file,
    ),
    Setting(
        "sni_dir",
        "Directory of more certificates chosen by the name clients ask for (SNI): "
        "NAME.pem (chain, plus the key unless there is a NAME.key); *.example.com.pem is "
        "a wildcard.",
        "none", parse_directory,
    ),
    Setting(
        "profile",
        "TLS settings: intermediate (TLS 1.2 and 1.3, ECDHE with AES-GCM or "
        "ChaCha20-Poly1305) or modern (TLS 1.3 only).",
        "intermediate", parse_profile,
    ),
    Setting(
        "alpn",
        "ALPN protocols to offer, comma-separated, in preference order; none for no ALPN.",
        "h2,http/1.1 for membio-https (http/1.1 without HTTP/2 support), none elsewhere",
        parse_alpn,
    ),
    Setting(
        "client_ca",
        "Verify client certificates against the CA certificates in this PEM file (mutual "
        "TLS).",
        "no client certificates", parse_path,
    ),
    Setting(
        "client_cert",
        "With a client CA: required (no certificate, no connection) or optional.",
        "required", parse_client_cert,
    ),
    Setting(
        "request_client_cert",
        "Ask clients for a certificate without verifying it (membio-https shows it on its "
        "page; membio-tls passes it on in the PROXY v2 header).",
        "off", parse_switch, switch=True,
    ),
    Setting(
        "handshake_timeout",
        "Seconds a client has to complete its TLS handshake; 0 for no limit.",
        f"{HARDENED_HANDSHAKE_TIMEOUT:g}", parse_seconds_or_off,
    ),
    Setting(
        "idle_timeout",
        "Close connections that move no byte for this many seconds (with close_notify); 0 "
        "for no limit.",
        "0", parse_seconds_or_off,
    ),
    Setting(
        "max_connections",
        "Close new connections at once while this many are open.",
        "no limit", parse_count,
    ),
    Setting(
        "reload_interval",
        "Seconds between checks of the certificate files, which are reloaded for new "
        "connections when they change; 0: only on SIGHUP.",
        f"{DEFAULT_POLL_INTERVAL:g}", parse_seconds_or_off,
    ),
    Setting(
        "backlog",
        "Listen queue length of the TCP listeners (--port, tcp: and tcp6: endpoints without "
        "their own).",
        f"{DEFAULT_BACKLOG}; 1024 for the socket --workers share", parse_backlog,
    ),
    Setting(
        "plain_http",
        "What a client speaking plain HTTP to the TLS port gets: explain (a 400 naming the "
        "https:// URL), redirect (a 301 there), close, or off (every byte to OpenSSL).",
        "explain", parse_plain_http,
    ),
    # -- operations (issue #13): what the people running the server see
    Setting(
        "metrics",
        "Serve Prometheus metrics at /metrics on this Twisted server endpoint, e.g. "
        "tcp:9100:interface=127.0.0.1 (in a membio: key, its colons escaped as in "
        "endpoint=); with --workers, the sum over the workers.",
        "off", parse_endpoint,
    ),
    Setting(
        "log_format",
        "Log lines as text, or as json (one object per line, on standard output).",
        "text", parse_log_format, entry_points=("membio-https", "membio-tls"),
    ),
)

_BY_NAME: Final[Mapping[str, Setting]] = {row.name: row for row in SETTINGS}


def setting(name: str) -> Setting:
    """The row named C{name}."""
    return _BY_NAME[name]


# ------------------------------------------------------------------ parsed settings


@dataclass(frozen=True)
class TLSSettings:
    """
    One server's TLS settings, parsed: one attribute per row of the table,
    plus how the user spells each setting (for later error messages).

    ``cert`` and ``key`` are paired by position; a missing key (None) is
    inside its certificate's file.
    """

    entry_point: EntryPoint
    cert: tuple[Path, ...] = ()
    key: tuple[Path | None, ...] = ()
    key_password_file: Path | None = None
    cert_dir: Path | None = None
    hostname: tuple[str, ...] = ()
    acme_email: str | None = None
    acme_directory: str | None = None
    acme_agree_tos: bool = False
    acme_challenges: tuple[str, ...] = ()
    acme_directory_ca: Path | None = None
    sni_dir: Path | None = None
    profile: Profile = "intermediate"
    alpn: tuple[bytes, ...] = ()
    client_ca: Path | None = None
    client_cert: Literal["required", "optional"] | None = None
    request_client_cert: bool = False
    handshake_timeout: float | None = HARDENED_HANDSHAKE_TIMEOUT
    idle_timeout: float | None = None
    max_connections: int | None = None
    reload_interval: float | None = DEFAULT_POLL_INTERVAL
    backlog: int | None = None
    plain_http: PlainHTTPPolicy | None = "explain"
    metrics: str | None = None
    log_format: Literal["text", "json"] = "text"
    spell: Callable[[str], str] = field(default=flag_of, compare=False, repr=False)

    @property
    def acme(self) -> bool:
        """Public certificates are on: a contact address or a directory was given."""
        return self.acme_email is not None or self.acme_directory is not None

    @property
    def own_certificate(self) -> bool:
        """The user brings a certificate (no generated one)."""
        return bool(self.cert)

    def check(self) -> TLSSettings:
        """
        The rules between settings, before anything is loaded.

        @raise SettingError: one line naming the settings as the user spelled them.
        """
        spell = self.spell
        if any(self.key) and not self.cert:
            raise SettingError(
                f"{spell('key').rstrip('=')} needs {spell('cert').rstrip('=')} (the certificate "
                "for that key)"
            )
        check_acme(self)
        if self.cert:
            for name in ("cert_dir", "hostname"):
                if getattr(self, name):
                    raise SettingError(
                        f"{spell(name).rstrip('=')} applies to generated certificates, not "
                        f"to {spell('cert').rstrip('=')}"
                    )
        if (
            self.key_password_file is not None
            and not any(self.key)
            and not self.cert
            and self.sni_dir is None
        ):
            raise SettingError(
                f"{spell('key_password_file').rstrip('=')} applies to "
                f"{spell('key').rstrip('=')}, which was not given"
            )
        if self.client_ca is None:
            if self.client_cert is not None:
                raise SettingError(
                    f"{spell('client_cert').rstrip('=')} needs {spell('client_ca').rstrip('=')}"
                    " (the CAs to trust)"
                )
        elif self.request_client_cert:
            raise SettingError(
                f"{spell('request_client_cert').rstrip('=')} asks without verifying; with "
                f"{spell('client_ca').rstrip('=')} use {spell('client_cert')}"
                f"{'' if spell('client_cert').endswith('=') else ' '}optional instead"
            )
        return self

    def replace(self, **changes: Any) -> TLSSettings:
        return replace(self, **changes)


def parse_values(
    entry_point: EntryPoint,
    values: Mapping[str, Sequence[str]],
    spell: Callable[[str], str],
    defaults: Mapping[str, Any] | None = None,
) -> TLSSettings:
    """
    Parse the texts given for each setting (by name; several for a repeating
    one) into `TLSSettings`, with C{entry_point}'s defaults.

    @param spell: how the user spells a setting here (``--client-ca`` or
        ``clientCA=``), for error messages.
    @raise SettingError: a value or a combination is wrong.
    """
    parsed: dict[str, Any] = dict(defaults or {})
    for name, texts in values.items():
        row = _BY_NAME[name]
        if row.repeats:
            items: list[Any] = []
            for text in texts:
                value = row.parse(text, spell(name))
                items += value if isinstance(value, tuple) else [value]
            parsed[name] = tuple(items)
        elif texts:
            parsed[name] = row.parse(texts[-1], spell(name))
    cert_count = len(parsed.get("cert", ()))
    keys = parsed.get("key", ())
    parsed["key"] = tuple(keys) + (None,) * max(cert_count - len(keys), 0)
    return TLSSettings(entry_point=entry_point, spell=spell, **parsed).check()
