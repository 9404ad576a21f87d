"""http-01 on the plain-HTTP port: ``/.well-known/acme-challenge/<token>``.

The CA fetches ``http://<name>/.well-known/acme-challenge/<token>`` on port 80 and
expects the key authorization as the body (RFC 8555 section 8.3).  `HTTP01Resource`
answers pending tokens from the board and hands every other request to a fallback (on
``membio-https``, the ``--redirect-http`` redirect), so the one port-80 listener serves
both.  Unknown tokens get a 404 rather than the redirect: the CA must see a clear
failure, not an answer from the HTTPS site.
"""

from __future__ import annotations

from typing import Final

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request

from ._board import ChallengeBoard

__all__ = ["CHALLENGE_PATH", "HTTP01Resource"]

_log = Logger(namespace="membio_transport.acme")

# RFC 8555 section 8.3 (registered in RFC 8615's well-known URI registry).
CHALLENGE_PATH: Final = (b".well-known", b"acme-challenge")
# RFC 8555 8.3 fixes no media type; octet-stream keeps anything from re-encoding the body.
ANSWER_TYPE: Final = b"application/octet-stream"


class HTTP01Resource(Resource):
    """A site root answering http-01 validations, and ``fallback`` for everything else.

    @param fallback: the resource for other paths (a redirect, a static site); None
        answers them 404.
    @ivar answered: how many validation requests got a key authorization.
    """

    isLeaf = True

    def __init__(self, board: ChallengeBoard, fallback: IResource | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource is untyped
        self.board = board
        self.fallback = fallback
        self.answered = 0

    def render(self, request: Request) -> bytes | int:
        path = request.postpath or []
        if tuple(path[:2]) == CHALLENGE_PATH:
            return self._answer(request, path[2:])
        if self.fallback is None:
            return self._not_found(request)
        # A leaf root receives the whole path in postpath: traverse the fallback with it.
        target: IResource = getChildForRequest(self.fallback, request)
        answer: bytes | int = target.render(request)
        return answer

    def _answer(self, request: Request, rest: list[bytes]) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"Allow", b"GET, HEAD")
            return b""
        answer = None
        if len(rest) == 1:
            answer = self.board.http01_answer(rest[0].decode("ascii", "replace"))
        if answer is None:
            return self._not_found(request)
        self.answered += 1
        _log.info(
            "ACME: answered the http-01 challenge {token} (the CA is validating)",
            token=rest[0].decode("ascii", "replace"),
        )
        request.setHeader(b"Content-Type", ANSWER_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"Content-Length", b"%d" % len(answer))
        return b"" if request.method == b"HEAD" else answer

    @staticmethod
    def _not_found(request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"no such ACME challenge\n"
