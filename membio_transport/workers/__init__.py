"""
The pre-fork pool: one machine's cores serving one listening socket.

What this layer is for: ``--workers N`` and ``--grace`` for both apps.  The
parent binds the sockets and builds the TLS context, forks N workers that
adopt the sockets with fresh reactors, restarts the ones that die, replaces
them all after a certificate reload (so that they share the new context and
its session-ticket keys), and stops them gracefully (`WorkerPool`, with
``_fork`` for what a forked child must do first, ``_shared`` for which
listeners can be shared and how, and ``_cli`` for the command-line options
and binding the shared sockets with one-line errors).

What it may import: the ``serving`` layer (listeners and start-up errors)
and, below it, ``tls`` and ``certs``, through their faces; Twisted.  Never
``https`` or ``proxy``: both apps build on this pool, and neither is
special to it.
"""

from ._cli import WORKER_OPTIONS, close_shared, open_shared_sockets, parse_worker_options
from ._pool import (
    DEFAULT_GRACE,
    LISTEN_BACKLOG,
    MAX_WORKERS,
    AdoptedSocketEndpoint,
    ForkLink,
    WorkerPool,
    listening_socket,
)
from ._shared import SharedListener, SharingRefused, share

__all__ = [
    "DEFAULT_GRACE",
    "LISTEN_BACKLOG",
    "MAX_WORKERS",
    "WORKER_OPTIONS",
    "AdoptedSocketEndpoint",
    "ForkLink",
    "SharedListener",
    "SharingRefused",
    "WorkerPool",
    "close_shared",
    "listening_socket",
    "open_shared_sockets",
    "parse_worker_options",
    "share",
]
