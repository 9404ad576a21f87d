"""
The four calls the engine makes per record, as cheaply as OpenSSL allows.

Once a session is established, a TLS layer over memory BIOs does four
things over and over: put ciphertext into the incoming BIO, read plaintext
out of ``SSL_read``, encrypt with ``SSL_write`` and drain the outgoing BIO.
Through pyOpenSSL's public methods each of those costs more in Python than
in OpenSSL for small records: every call re-checks three callback helpers
and calls ``SSL_get_error`` even when it succeeded, ``bio_read`` allocates
whatever size it is asked for (we must ask for a lot, so as not to miss
anything) and reports "empty" with an exception, and ``send`` writes at
most one 16 KiB record per call because pyOpenSSL turns on
``SSL_MODE_ENABLE_PARTIAL_WRITE`` for every connection.

`DirectRecordIO` makes the same OpenSSL calls through the binding pyOpenSSL
itself uses (``OpenSSL._util.lib``), with the handles of the pyOpenSSL
``Connection``: the success path is a C call and a copy; anything else is
handed to pyOpenSSL's own error translation, so callers see exactly the
exceptions pyOpenSSL would raise.  It also clears the partial-write mode on
its connection, so one ``SSL_write`` encrypts a whole 64 KiB write.  Those
handles and that translation are private to pyOpenSSL, so `record_io`
checks that every piece is present and otherwise returns
`PublicRecordIO`, which does the same through the public API.  The engine
cannot tell them apart; the tests run it over both.

Measured on the in-process benchmark's machine (2 vCPU EPYC, OpenSSL 4.0):
encrypting a 64 KiB write and draining it, 19-33 us through pyOpenSSL vs
14.5 us direct; a 100-byte write and drain, 2.7 us vs 1.4 us; one 16 KiB
record in and decrypted, 6.4 us vs 5.0 us.
"""

from __future__ import annotations

from typing import Any, Final, NoReturn, Protocol

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib

__all__ = ["DirectRecordIO", "PublicRecordIO", "RecordIO", "record_io"]

#: Largest plaintext one ``SSL_read`` returns: a TLS record carries at most
#: 16 KiB, and OpenSSL returns one record per call.
RECV_SIZE: Final = 16384

#: Largest write handed to one ``SSL_write`` (its length is a C int).
MAX_WRITE = (1 << 31) - 1

#: Size of each ``bio_read`` when the outgoing BIO cannot be asked how much
#: it holds: large, so that a burst usually leaves in one read.
_PUBLIC_BIO_READ_SIZE: Final = 256 * 1024


class RecordIO(Protocol):
    """What the engine needs from OpenSSL once the handshake is done."""

    #: Whether `release_buffers` can ever succeed.
    can_release: bool

    def feed(self, data: bytes) -> None:
        """Append ciphertext from the peer to the incoming BIO."""

    def read(self) -> bytes | None:
        """
        Decrypt the next record: plaintext, or None when OpenSSL needs more
        ciphertext first.  Raises what pyOpenSSL's ``recv`` raises otherwise
        (``ZeroReturnError`` for close_notify, ``SSL.Error`` on failure).
        """

    def write(self, data: bytes | memoryview) -> int:
        """
        Encrypt C{data}; return how much was taken before OpenSSL asked to
        read first (WantRead).  Whatever was not taken must be offered
        again, unchanged, later.  Raises ``SSL.Error`` on failure.
        """

    def drain(self) -> bytes:
        """Empty the outgoing BIO; C{b""} if it was empty."""

    def release_buffers(self) -> bool:
        """
        Give back the memory both BIOs grew to, if both are empty; True if
        that was done.
        """


class PublicRecordIO:
    """`RecordIO` through pyOpenSSL's public methods only."""

    __slots__ = ("_conn",)
    can_release = False

    def __init__(self, connection: SSL.Connection) -> None:
        self._conn = connection

    def feed(self, data: bytes) -> None:
        self._conn.bio_write(data)

    def read(self) -> bytes | None:
        try:
            return self._conn.recv(RECV_SIZE)
        except SSL.WantReadError:
            return None

    def write(self, data: bytes | memoryview) -> int:
        send = self._conn.send
        size = len(data)
        written = 0
        try:
            written = send(data if size <= MAX_WRITE else memoryview(data)[:MAX_WRITE])
            if written < size:
                # One record per call with partial writes on: walk a view
                # over the rest rather than slicing copies.
                view = memoryview(data)
                while written < size:
                    written += send(view[written : written + MAX_WRITE])
        except SSL.WantReadError:
            pass
        return written

    def drain(self) -> bytes:
        read = self._conn.bio_read
        try:
            first = read(_PUBLIC_BIO_READ_SIZE)
        except SSL.WantReadError:
            return b""
        if len(first) < _PUBLIC_BIO_READ_SIZE:
            # A short read proves the BIO empty without the exception an
            # extra read would raise.
            return first
        chunks = [first]
        while True:
            try:
                chunk = read(_PUBLIC_BIO_READ_SIZE)
            except SSL.WantReadError:
                break
            chunks.append(chunk)
            if len(chunk) < _PUBLIC_BIO_READ_SIZE:
                break
        return b"".join(chunks)

    def release_buffers(self) -> bool:
        # pyOpenSSL has no public call to replace a connection's BIOs.
        return False


# Bound once: each attribute lookup on the binding module costs as much as
# the C call it names, for small records.
_SSL_read: Any = getattr(_lib, "SSL_read", None)
_SSL_write: Any = getattr(_lib, "SSL_write", None)
_SSL_get_error: Any = getattr(_lib, "SSL_get_error", None)
_BIO_read: Any = getattr(_lib, "BIO_read", None)
_BIO_write: Any = getattr(_lib, "BIO_write", None)
_BIO_get_mem_data: Any = getattr(_lib, "BIO_get_mem_data", None)
_SSL_clear_mode: Any = getattr(_lib, "SSL_clear_mode", None)
_SSL_set_bio: Any = getattr(_lib, "SSL_set_bio", None)
_BIO_new: Any = getattr(_lib, "BIO_new", None)
_BIO_s_mem: Any = getattr(_lib, "BIO_s_mem", None)
_BIO_free: Any = getattr(_lib, "BIO_free", None)
_WANT_READ: Final = getattr(_lib, "SSL_ERROR_WANT_READ", 2)
_PARTIAL_WRITE: Final = getattr(_lib, "SSL_MODE_ENABLE_PARTIAL_WRITE", 1)
_NULL: Final = _ffi.NULL
_from_buffer = _ffi.from_buffer
_as_buffer = _ffi.buffer
# Plaintext and ciphertext are overwritten before they are read: no need
# to pay for zeroing.
_alloc = _ffi.new_allocator(should_clear_after_alloc=False)

_new_pointer = _ffi.new


class _Scratch:
    """
    Somewhere for BIO_read to put bytes that were already copied out: one
    buffer for the whole process, grown as needed.  Its contents are never
    read, so threads sharing it cannot corrupt anything.
    """

    __slots__ = ("buffer", "size")

    def __init__(self) -> None:
        self.size = 0
        self.buffer: Any = _NULL

    def __call__(self, size: int) -> Any:
        if size > self.size:
            self.size = max(size, 2 * self.size, 65536)
            self.buffer = _alloc("char[]", self.size)
        return self.buffer


_scratch = _Scratch()

_BINDING_COMPLETE: Final = None not in (
    _SSL_read, _SSL_write, _SSL_get_error, _BIO_read, _BIO_write, _BIO_get_mem_data,
    _SSL_clear_mode, _SSL_set_bio, _BIO_new, _BIO_s_mem, _BIO_free,
)


class DirectRecordIO:
    """`RecordIO` through OpenSSL's functions, on a pyOpenSSL connection's handles."""

    __slots__ = ("_conn", "_incoming", "_outgoing", "_ssl", "_where")
    can_release = True

    def __init__(self, connection: SSL.Connection) -> None:
        self._conn: Any = connection
        self._ssl = connection._ssl
        self._incoming = connection._into_ssl
        self._outgoing = connection._from_ssl
        # Where BIO_get_mem_data says the outgoing bytes are: one pointer
        # per connection rather than a cffi allocation per drain (two per
        # keep-alive request); not shared, since cffi lets go of the GIL
        # during the call.
        self._where = _new_pointer("char **")
        # All or nothing per SSL_write: one call for a 64 KiB write instead
        # of four.  A write refused midway is retried with the same buffer
        # (the engine's contract already), and OpenSSL resumes where it
        # stopped.
        _SSL_clear_mode(self._ssl, _PARTIAL_WRITE)

    def feed(self, data: bytes) -> None:
        # A memory BIO grows as needed: writing to it cannot fail short of
        # running out of memory, which pyOpenSSL's error path reports.
        if _BIO_write(self._incoming, data, len(data)) <= 0:
            self._conn.bio_write(data)

    def read(self) -> bytes | None:
        ssl = self._ssl
        buf = _alloc("char[]", RECV_SIZE)
        result = _SSL_read(ssl, buf, RECV_SIZE)
        if result > 0:
            data: bytes = _as_buffer(buf, result)[:]
            return data
        if _SSL_get_error(ssl, result) == _WANT_READ:
            return None
        return self._raise(result)

    def write(self, data: bytes | memoryview) -> int:
        ssl = self._ssl
        size = len(data)
        if size > MAX_WRITE:
            return self._write_in_pieces(data)
        # cffi passes a bytes object's own storage; other buffers need a view.
        result = _SSL_write(ssl, data if type(data) is bytes else _from_buffer(data), size)
        if result > 0:
            return size
        if _SSL_get_error(ssl, result) == _WANT_READ:
            return 0
        return self._raise(result)

    def _write_in_pieces(self, data: bytes | memoryview) -> int:
        # SSL_write takes an int length.  A piece refused with WantRead is
        # not counted, so the caller retries from its first byte.
        view = memoryview(data)
        written = 0
        while written < len(view):
            piece = view[written : written + MAX_WRITE]
            if self.write(piece) < len(piece):
                break
            written += len(piece)
        return written

    def drain(self) -> bytes:
        outgoing = self._outgoing
        # One copy straight out of the BIO's own buffer into the bytes we
        # return; the read that follows only consumes those bytes.  Reading
        # into a fresh buffer instead would malloc and free the size of the
        # whole burst each time, which for bursts past glibc's mmap
        # threshold costs page faults on every drain (measured: 1 MiB
        # drains ran at half the speed of 256 KiB ones).
        where = self._where
        pending = _BIO_get_mem_data(outgoing, where)
        if pending <= 0:
            return b""
        data: bytes = _as_buffer(where[0], pending)[:]
        scratch = _scratch
        # The buffer as it is when it is large enough: no Python call.
        _BIO_read(
            outgoing, scratch.buffer if pending <= scratch.size else scratch(pending), pending
        )
        return data

    def release_buffers(self) -> bool:
        """
        Swap both memory BIOs for new, empty ones.

        A memory BIO keeps the largest buffer it ever grew to: 1.4 KiB after
        a TLS 1.3 handshake (4.4 KiB when the client sent an ML-KEM key
        share), about 4/3 of the largest burst after traffic.  Only empty
        BIOs may go: their contents belong to the session.  SSL_set_bio
        frees the old pair; pyOpenSSL's own bio_* methods use the handles
        stored on the connection, so those move too.
        """
        incoming, outgoing = self._incoming, self._outgoing
        if _BIO_get_mem_data(incoming, _NULL) or _BIO_get_mem_data(outgoing, _NULL):
            return False
        new_in, new_out = _BIO_new(_BIO_s_mem()), _BIO_new(_BIO_s_mem())
        if new_in == _NULL or new_out == _NULL:
            for bio in (new_in, new_out):
                if bio != _NULL:
                    _BIO_free(bio)
            return False
        _SSL_set_bio(self._ssl, new_in, new_out)
        self._conn._into_ssl = self._incoming = new_in
        self._conn._from_ssl = self._outgoing = new_out
        return True

    def _raise(self, result: int) -> NoReturn:
        # pyOpenSSL's own translation: the exception its recv/send would
        # raise, callback problems (a verify callback that raised) first.
        self._conn._raise_ssl_error(self._ssl, result)
        raise SSL.Error([("membio_transport", "", f"OpenSSL call failed ({result})")])


def _direct_possible(connection: SSL.Connection) -> bool:
    return (
        _BINDING_COMPLETE
        and hasattr(connection, "_raise_ssl_error")
        and getattr(connection, "_into_ssl", None) is not None
        and getattr(connection, "_from_ssl", None) is not None
        and getattr(connection, "_ssl", None) is not None
    )


def record_io(connection: SSL.Connection, *, direct: bool = True) -> RecordIO:
    """
    The fastest `RecordIO` this pyOpenSSL allows for C{connection} (a
    memory-BIO connection); ``direct=False`` forces the public API.
    """
    if direct and _direct_possible(connection):
        return DirectRecordIO(connection)
    return PublicRecordIO(connection)
