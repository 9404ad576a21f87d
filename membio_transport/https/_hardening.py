"""
The hardening options of ``twistd membio-https``, kept out of ``tap`` so
that the command line stays readable there.

`HardeningOptions` is mixed into ``tap.Options``: several certificates
(repeated ``--cert``/``--key``, ``--sni-dir``), ``--alpn``, client
certificates (``--client-ca``, ``--client-cert``), ``--hsts``, limits
(``--handshake-timeout``, ``--max-connections``) and certificate reload
(``--reload-interval``; SIGHUP always works).  It checks them, and builds
what the service needs from them: the `TLSSetup`, the factory options,
the connection limit and the reloader.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final

from twisted.application.service import Service
from twisted.python import usage

from ..certs import ServerCertificate
from ..serving import (
    DEFAULT_POLL_INTERVAL,
    CertificateFiles,
    CertificateReloader,
    CertificateSet,
    ConnectionLimit,
    TLSSetup,
    load_client_ca,
)
from ..tls import HARDENED_HANDSHAKE_TIMEOUT, ClientAuth
from ._site import DEFAULT_HSTS_MAX_AGE

__all__ = ["HardeningOptions"]

#: ``--hsts`` alone: argv rewriting turns it into this.
_HSTS_ALONE: Final = "default"
#: ALPN protocols twisted.web serves (h2 only with the h2 package); it
#: refuses any other negotiated protocol, http/1.0 included.
_HTTP_PROTOCOLS: Final = ("h2", "http/1.1")


def default_alpn() -> list[bytes]:
    """HTTP/2 only when twisted.web can speak it (it needs the h2 package)."""
    return [b"h2", b"http/1.1"] if _h2_enabled() else [b"http/1.1"]


def _h2_enabled() -> bool:
    from twisted.web import http

    return bool(getattr(http, "H2_ENABLED", False))


def _number(option: str, text: str, *, integer: bool = False, low: float = 0) -> Any:
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise usage.UsageError(f"{option} {text!r} is not {kind}") from None
    if not math.isfinite(value) or value < low:
        raise usage.UsageError(f"{option} {text} must be {low:g} or more")
    return value


class HardeningOptions(usage.Options):
    """The base of ``tap.Options``: these options, their checks and what they build."""

    optParameters: ClassVar[list[list[Any]]] = [
        [
            "sni-dir", None, None,
            "Directory of extra certificates chosen by the name clients ask for (SNI): "
            "<hostname>.pem (chain, plus the key unless there is a <hostname>.key); "
            "*.example.com.pem is a wildcard. Others get the default certificate.",
        ],
        [
            "alpn", None, None,
            "ALPN protocols to offer, comma-separated, in preference order (h2, http/1.1; "
            "'none' for no ALPN) [default: h2,http/1.1 when Twisted has HTTP/2 support, "
            "else http/1.1].",
        ],
        [
            "client-ca", None, None,
            "Verify client certificates against the CA certificates in this PEM file "
            "(mutual TLS); the page shows the verified certificate.",
        ],
        [
            "client-cert", None, None,
            "With --client-ca: 'required' (no certificate, no connection) or 'optional' "
            "[default: required].",
        ],
        [
            "hsts", None, None,
            f"--hsts or --hsts=SECONDS: send Strict-Transport-Security with this max-age "
            f"[--hsts alone: {DEFAULT_HSTS_MAX_AGE}, two years]. Browsers remember it: "
            "not for names other servers use too (localhost).",
        ],
        [
            "handshake-timeout", None, f"{HARDENED_HANDSHAKE_TIMEOUT:g}",
            "Seconds a client has to complete its TLS handshake; 0 for no limit.",
        ],
        [
            "idle-timeout", None, "0",
            "Close connections that move no byte for this many seconds (with close_notify); "
            "0 for no limit.",
        ],
        [
            "max-connections", None, None,
            "Close new connections at once while this many are open [default: no limit].",
        ],
        [
            "reload-interval", None, f"{DEFAULT_POLL_INTERVAL:g}",
            "Seconds between checks of the certificate files for changes, which are then "
            "reloaded for new connections; 0: only on SIGHUP.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.python.usage is untyped
        self["cert_events"] = []
        self["cert"] = None
        self["key"] = None

    def opt_cert(self, path: str) -> None:
        """Your PEM certificate chain (leaf first), with its key inside unless --key follows; repeat --cert/--key for more certificates, chosen by SNI (the first is the default)."""  # noqa: E501
        self["cert_events"].append(("cert", path))

    def opt_key(self, path: str) -> None:
        """Your PEM private key (mode 0600 or 0640) for the --cert before it."""
        self["cert_events"].append(("key", path))

    opt_c = opt_cert
    opt_k = opt_key

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        import sys

        arguments = list(sys.argv[1:] if options is None else options)
        # --hsts takes an optional value, which getopt cannot express.
        arguments = [f"--hsts={_HSTS_ALONE}" if arg == "--hsts" else arg for arg in arguments]
        super().parseOptions(arguments)  # type: ignore[no-untyped-call]  # untyped in Twisted

    # -- checking -------------------------------------------------------------

    def check_hardening(self) -> None:
        """Check and convert the options of this mixin (no side effects)."""
        self._pair_certificates()
        hsts = self["hsts"]
        self["hsts_max_age"] = (
            None if hsts is None
            else DEFAULT_HSTS_MAX_AGE if hsts == _HSTS_ALONE
            else _number("--hsts", hsts, integer=True)
        )
        self["alpn_list"] = self._alpn()
        self["client_auth"] = self._client_auth()
        timeout = _number("--handshake-timeout", self["handshake-timeout"])
        self["handshake_timeout"] = timeout or None
        self["idle_timeout"] = _number("--idle-timeout", self["idle-timeout"]) or None
        maximum = self["max-connections"]
        self["max_connections"] = (
            None if maximum is None
            else _number("--max-connections", maximum, integer=True, low=1)
        )
        self["reload_interval"] = _number("--reload-interval", self["reload-interval"]) or None
        if self["sni-dir"] is not None:
            directory = Path(self["sni-dir"]).expanduser().absolute()
            if not directory.is_dir():
                raise usage.UsageError(f"--sni-dir {directory} is not a directory")
            self["sni-dir"] = directory

    def _pair_certificates(self) -> None:
        """
        Each --key belongs to the --cert before it (or, for the first one,
        after it: ``--key k --cert c`` has always worked); a --cert with no
        --key holds its key itself.
        """
        pairs: list[list[str | None]] = []
        waiting_key: str | None = None
        for kind, path in self["cert_events"]:
            if kind == "cert":
                pairs.append([path, waiting_key])
                waiting_key = None
            elif pairs and pairs[-1][1] is None:
                pairs[-1][1] = path
            elif waiting_key is None and not pairs:
                waiting_key = path
            else:
                raise usage.UsageError(f"--key {path}: give one --key per --cert, after it")
        if waiting_key is not None:
            self["key"] = waiting_key  # tap reports: --key needs --cert
        if pairs:
            self["cert"], self["key"] = pairs[0]
        self["cert_pairs"] = pairs

    def _alpn(self) -> list[bytes]:
        value = self["alpn"]
        if value is None:
            return default_alpn()
        names = [name.strip() for name in value.split(",") if name.strip()]
        if names == ["none"]:
            return []
        for name in names:
            if name not in _HTTP_PROTOCOLS:
                raise usage.UsageError(
                    f"--alpn {name!r}: this server speaks {', '.join(_HTTP_PROTOCOLS)}"
                )
            if name == "h2" and not _h2_enabled():
                raise usage.UsageError(
                    "--alpn h2: Twisted has no HTTP/2 support here; install it with "
                    "pip install 'twisted[http2]'"
                )
        if not names:
            raise usage.UsageError("--alpn needs at least one protocol, or 'none'")
        return [name.encode("ascii") for name in dict.fromkeys(names)]

    def _client_auth(self) -> ClientAuth | None:
        mode = self["client-cert"]
        if mode not in (None, "required", "optional"):
            raise usage.UsageError(f"--client-cert {mode!r}: use required or optional")
        ca = self["client-ca"]
        if ca is None:
            if mode is not None:
                raise usage.UsageError("--client-cert needs --client-ca (the CAs to trust)")
            return ClientAuth(None) if self["request-client-cert"] else None
        if self["request-client-cert"]:
            raise usage.UsageError(
                "--request-client-cert asks without verifying; with --client-ca use "
                "--client-cert optional instead"
            )
        path = Path(ca).expanduser().absolute()
        load_client_ca(path)  # CertificateError: tap reports it as a one-liner
        return ClientAuth(path, required=mode != "optional")

    # -- building ----------------------------------------------------------------

    def tls_setup(
        self, default: Callable[[], ServerCertificate], password: bytes | None
    ) -> TLSSetup:
        """Where every certificate comes from (the first --cert is C{default})."""
        extra = [
            CertificateFiles(Path(cert).expanduser().absolute(), _path(key))
            for cert, key in self["cert_pairs"][1:]
            if cert is not None
        ]
        return TLSSetup(
            default=default,
            extra=extra,
            sni_dir=self["sni-dir"],
            password=password,
            profile=self["profile"],
            alpn=self["alpn_list"],
            client_auth=self["client_auth"],
        )

    def connection_limit(self) -> ConnectionLimit | None:
        if self["max_connections"] is None:
            return None
        limit = self.get("_limit")
        if limit is None:
            limit = self["_limit"] = ConnectionLimit(
                self["max_connections"], log_system="membio-https"
            )
        return limit

    def factory_options(self) -> dict[str, Any]:
        """Keyword arguments for every MemoryBIOTLSFactory of the HTTPS listeners."""
        options: dict[str, Any] = {
            "handshake_timeout": self["handshake_timeout"],
            "idle_timeout": self["idle_timeout"],
        }
        limit = self.connection_limit()
        if limit is not None:
            options.update(limit.factory_options)
        return options

    def hardening_services(self) -> list[Service]:
        """The reloader: SIGHUP and file polling."""
        reloader = CertificateReloader(
            self["tls_setup"],
            self["tls_options"],
            self["certificates"],
            interval=self["reload_interval"],
            log_system="membio-https",
        )
        return [reloader]

    def hardening_summary(self) -> list[str]:
        """Start-up log lines describing these settings."""
        certificates: CertificateSet = self["certificates"]
        lines = certificates.summary()[1:]  # the default certificate is described anyway
        auth: ClientAuth | None = self["client_auth"]
        if auth is not None:
            lines.append(f"client certificates: {auth.describe()}")
        if self["hsts_max_age"] is not None:
            lines.append(f"Strict-Transport-Security: max-age={self['hsts_max_age']}")
        timeout = self["handshake_timeout"]
        limits = [f"handshake timeout {timeout:g}s" if timeout else "no handshake timeout"]
        if self["idle_timeout"] is not None:
            limits.append(f"idle timeout {self['idle_timeout']:g}s")
        if self["max_connections"] is not None:
            limits.append(f"at most {self['max_connections']} connections")
        interval = self["reload_interval"]
        limits.append(
            "certificates reloaded on SIGHUP"
            + (f" and checked for changes every {interval:g}s" if interval else "")
        )
        lines.append("; ".join(limits))
        return lines


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value).expanduser().absolute()
