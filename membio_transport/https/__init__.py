"""
``twistd membio-https``: the zero-config HTTPS server, an application of
the serving layer.

What this layer is for: the command line (``_options``), the service that
listens and logs where to browse (``_service``, ``_plan``,
``_startup_log``), the site with its security headers (``_site``), the page
describing the visitor's TLS connection (``_info_page``), the plain-HTTP
redirect (``_redirect``) and the HTTPS side of ``--workers``
(``_workers``).  ``tap`` is the module the plugin's ServiceMaker names.

What it may import: ``workers``, ``serving``, ``observe``, ``acme``,
``tls`` and ``certs`` through their faces; Twisted.  Never ``proxy``: the
two apps are siblings.
"""

from ._info_page import TLSInfoPage, connection_info, find_tls_connection, prefers_html
from ._redirect import RedirectToHTTPS
from ._site import DEFAULT_HSTS_MAX_AGE, SecureSite, hsts_header
from ._web import default_alpn
from .tap import HTTPSService, Options, makeService

__all__ = [
    "DEFAULT_HSTS_MAX_AGE",
    "HTTPSService",
    "Options",
    "RedirectToHTTPS",
    "SecureSite",
    "TLSInfoPage",
    "connection_info",
    "default_alpn",
    "find_tls_connection",
    "hsts_header",
    "makeService",
    "prefers_html",
]
