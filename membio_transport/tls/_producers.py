"""
Producer plumbing: one application producer, two reasons to pause it.

An application producer registered with the TLS transport must pause when
the real transport's buffer is full *and* when the TLS engine is holding
too much plaintext (during the handshake, say).  `ProducerProxy` is what we
register with the real transport in its place: it counts both reasons and
only resumes the application's producer when neither holds.

Pull (non-streaming) producers keep their pull semantics: the real
transport asks the proxy for more whenever its buffer drains, and the
proxy passes the request on unless the TLS engine is full, in which case
it remembers and asks once the engine has room.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

__all__ = ["ProducerProxy"]


def _run(call: Callable[[], object]) -> None:
    call()


@implementer(IPushProducer)
class ProducerProxy:
    """Stands in for the application's producer at the real transport."""

    __slots__ = (
        "_batched", "_by_transport", "_missed_pull", "paused_for_tls", "producer", "streaming",
    )

    def __init__(
        self,
        producer: Any,
        streaming: bool,
        batched: Callable[[Callable[[], object]], None] | None = None,
    ) -> None:
        """
        @param batched: runs a pull (the producer writing its next chunk)
            so that everything it writes leaves as one burst.
        """
        self.producer = producer
        self.streaming = streaming
        self._batched = batched or _run
        self._by_transport = False
        #: Paused by `pause_for_tls` (read by the transport, which then
        #: looks at whether it may resume after each delivery).
        self.paused_for_tls = False
        self._missed_pull = False

    # -- called by the real transport ----------------------------------------

    def pauseProducing(self) -> None:
        if not self._by_transport:
            self._by_transport = True
            if not self.paused_for_tls:
                self.producer.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.streaming:
            # A pull: the transport wants the next chunk.
            if self.paused_for_tls:
                self._missed_pull = True
            else:
                self._batched(self.producer.resumeProducing)
            return
        if self._by_transport:
            self._by_transport = False
            if not self.paused_for_tls:
                self.producer.resumeProducing()

    def stopProducing(self) -> None:
        self.producer.stopProducing()

    # -- called by the TLS transport -----------------------------------------

    def pause_for_tls(self) -> None:
        if self.paused_for_tls:
            return
        self.paused_for_tls = True
        if self.streaming and not self._by_transport:
            self.producer.pauseProducing()

    def resume_for_tls(self) -> None:
        if not self.paused_for_tls:
            return
        self.paused_for_tls = False
        if not self.streaming:
            if self._missed_pull:
                self._missed_pull = False
                self._batched(self.producer.resumeProducing)
        elif not self._by_transport:
            self.producer.resumeProducing()
