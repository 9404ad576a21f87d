"""
The conformance run: Twisted's own TLS tests, as installed, against our classes.

Twisted's test modules for its TLS layer are loaded from the installed
Twisted and run with ``TLSMemoryBIOFactory`` and ``TLSMemoryBIOProtocol``
replaced by `MemoryBIOTLSFactory` and `MemoryBIOTLSProtocol` everywhere
Twisted looks them up: the test modules' own globals, and the modules
through which the reactor (``listenSSL``, ``connectSSL``, ``startTLS``), the
endpoints (``wrapClientTLS``, ``ssl:``, ``tls:``) and the SNI helpers build
their factories.  Nothing of Twisted's is copied here; a newer Twisted
brings its newer tests.

The substitution is in force only while one of these tests runs (so the
parity suite, in the same process, still gets Twisted's real classes), and
`check_substitution` fails the run if some module still holds Twisted's
class, which would make a test pass for the wrong reason.  Two things help
the run itself and change nothing that is tested: ``KeyPair.generate``
hands out keys from a pool made once (`_KEY_POOL_SIZE`), and legacy log
observers a test leaves behind are removed after it.

`EXCLUDED` lists the tests that cannot pass with a different class, each
with its reason: it reads private attributes of Twisted's class, or it
asserts a behaviour in the README's table of deliberate differences.  An
entry that no longer matches a test fails the run too, so the list stays
true.

Run it with trial (``python -m twisted.trial tests.twisted_conformance``,
which ``tests/run.sh`` does) or with pytest (``tests/test_twisted_conformance.py``
collects the same cases); both end with one line, ``twisted conformance:
N passed, M excluded``.  Where Twisted's tests are built per reactor
(``ReactorBuilder``), every reactor that can run here gets its own copy.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import Any, Final
from unittest import TestCase as PyUnitTestCase

from twisted.internet._sslverify import KeyPair
from twisted.trial import unittest as trial_unittest

from membio_transport import MemoryBIOTLSFactory, MemoryBIOTLSProtocol

__all__ = [
    "EXCLUDED",
    "MODULES",
    "check_substitution",
    "conformance_cases",
    "substituted",
    "summary_line",
    "testSuite",
]

#: Twisted's TLS test modules, and which of their test classes (or, with
#: ``Class.prefix``, which methods of a class) belong to the run; None
#: takes every class.
MODULES: Final[Mapping[str, tuple[str, ...] | None]] = {
    "twisted.protocols.test.test_tls": None,
    "twisted.internet.test.test_tls": None,
    "twisted.test.test_sslverify": None,
    # test_endpoints covers every kind of endpoint: its TLS tests only.
    "twisted.internet.test.test_endpoints": (
        "SSL4EndpointsTests",
        "TLSEndpointsTests",
        "SSLClientStringTests",
        "WrapClientTLSParserTests",
        "WrapClientTLSTests",
        "ServerStringTests.test_ssl",
        "ServerStringTests.test_tls",
    ),
}

#: Where Twisted looks up its TLS classes at run time, besides the test
#: modules themselves.  ``posixbase`` (listenSSL, connectSSL) reaches the
#: factory through the ``twisted.protocols.tls`` module, so patching that
#: module's attribute covers it; `check_substitution` verifies it.
_TWISTED_LOOKUPS: Final = (
    "twisted.protocols.tls",
    "twisted.internet._newtls",
    "twisted.internet.endpoints",
    "twisted.protocols._sni",
)

_REPLACEMENTS: Final = {
    "TLSMemoryBIOFactory": MemoryBIOTLSFactory,
    "TLSMemoryBIOProtocol": MemoryBIOTLSProtocol,
}

_PRIVATE = "reads a private attribute of Twisted's class"
_DIFFERENCE = "asserts a deliberate difference (README)"

#: Tests that cannot pass with another class, by the class (or, for tests
#: built per reactor, the mixin) that defines them.  Each reason is checked
#: by reading the test; a test that only needs a public equivalent of a
#: private attribute names the equivalent ours offers.
EXCLUDED: Final[Mapping[str, Mapping[str, str]]] = {
    "twisted.protocols.test.test_tls": {
        "TLSMemoryBIOTests.test_connectionLostOnlyAfterUnderlyingCloses": (
            f"{_PRIVATE}: calls _tlsShutdownFinished"
        ),
        "TLSMemoryBIOTests.test_errorWriting": (
            f"{_PRIVATE}: replaces _tlsConnection to make its send() fail"
        ),
        "TLSMemoryBIOTests.test_loseConnectionTwice": (
            f"{_PRIVATE}: wraps _shutdownTLS to count its calls"
        ),
        "TLSMemoryBIOTests.test_loseConnectionAfterConnectionLost": (
            f"{_PRIVATE}: wraps _shutdownTLS to count its calls"
        ),
        "TLSProducerTests.test_streamingProducerPausedInNormalMode": (
            f"{_PRIVATE}: _producer._producerPaused of its _ProducerMembrane"
        ),
        "TLSProducerTests.test_streamingProducerResumedInNormalMode": (
            f"{_PRIVATE}: _producer._producerPaused of its _ProducerMembrane"
        ),
        "TLSProducerTests.test_streamingProducerPausedInWriteBlockedOnReadMode": (
            f"{_PRIVATE}: _producer._producerPaused of its _ProducerMembrane"
        ),
        "TLSProducerTests.test_streamingProducerResumedInWriteBlockedOnReadMode": (
            f"{_PRIVATE}: _producer._producerPaused of its _ProducerMembrane"
        ),
        "TLSProducerTests.test_streamingProducerBothTransportsDecideToPause": (
            f"{_DIFFERENCE}: a producer paused both by the transport and by TLS resumes "
            "when the transport resumes (ours waits for both)"
        ),
        "TLSProducerTests.test_nonStreamingProducer": (
            f"{_PRIVATE}: the _PullToPush adapter behind its _ProducerMembrane "
            "(ours registers a pull producer with the transport as it is)"
        ),
    },
    "twisted.internet.test.test_endpoints": {
        "ServerStringTests.test_tls": (
            f"{_PRIVATE}: _tlsConnection (ours: getHandle(), as on Twisted's)"
        ),
        "WrapClientTLSParserTests.test_tlsWithDefaults": (
            f"{_PRIVATE}: the factory's _creatorCallable (ours: connection_for)"
        ),
        "WrapClientTLSParserTests.test_utf8Encoding": (
            f"{_PRIVATE}: the factory's _creatorCallable (ours: connection_for)"
        ),
    },
}

#: How a test this run excludes says so (trial and pytest report it as a skip).
EXCLUDED_PREFIX: Final = "excluded from the conformance run: "

#: Short names for the copies of each module's classes.
_LABELS: Final = {
    "twisted.protocols.test.test_tls": "protocols_tls",
    "twisted.internet.test.test_tls": "internet_tls",
    "twisted.test.test_sslverify": "sslverify",
    "twisted.internet.test.test_endpoints": "endpoints",
}

#: Distinct RSA keys handed out in turn by `KeyPair.generate` during the
#: run.  test_sslverify makes four fresh 2048-bit keys for each of its ~50
#: option tests (setUp) and at most two more in a test: generating them,
#: and validating them again for every certificate they sign, took 40 of
#: the run's 55 seconds and tests nothing of ours.  Sixteen keys keep every
#: test's keys distinct from each other.
_KEY_POOL_SIZE: Final = 16


# -- the substitution ------------------------------------------------------------


def _modules() -> list[ModuleType]:
    return [importlib.import_module(name) for name in (*_TWISTED_LOOKUPS, *MODULES)]


@contextlib.contextmanager
def substituted() -> Iterator[None]:
    """Twisted's TLS classes replaced by ours wherever Twisted looks them up."""
    saved: list[tuple[Any, str, object]] = []
    for module in _modules():
        for name, ours in _REPLACEMENTS.items():
            if name in vars(module):
                saved.append((module, name, vars(module)[name]))
                setattr(module, name, ours)
    saved.append((KeyPair, "generate", _generate))
    KeyPair.generate = classmethod(_pooled_key)  # type: ignore[assignment]
    try:
        yield
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


#: OpenSSL's EVP_PKEY_RSA, KeyPair.generate's default kind (crypto.TYPE_RSA).
_RSA: Final = 6
_key_pool: dict[int, list[Any]] = {}
_key_turn = [0]
_generate = vars(KeyPair)["generate"]


def _pooled_key(cls: Any, kind: int = _RSA, size: int = 2048) -> Any:
    """`KeyPair.generate`, from a pool of RSA keys made once (see `_KEY_POOL_SIZE`)."""
    if kind != _RSA:
        return _generate.__func__(cls, kind, size)
    from cryptography.hazmat.primitives.asymmetric import rsa
    from OpenSSL import crypto

    pool = _key_pool.get(size)
    if pool is None:
        pool = _key_pool[size] = [
            rsa.generate_private_key(public_exponent=65537, key_size=size)
            for _ in range(_KEY_POOL_SIZE)
        ]
    _key_turn[0] += 1
    twin = pool[_key_turn[0] % len(pool)]
    # A fresh object each time: no test can change another's key.
    fresh = crypto.PKey.from_cryptography_key(twin)
    fresh.__class__ = _PooledKey
    fresh.twin = twin
    return cls(fresh)


def _pooled_key_class() -> type:
    from OpenSSL import crypto

    class PooledKey(crypto.PKey):
        """
        A key of the pool, which keeps its ``cryptography`` form: Twisted
        asks for it to sign every certificate, and turning an RSA key into
        one validates the key again (80 ms each time).
        """

        twin: Any = None

        def to_cryptography_key(self) -> Any:
            return self.twin

    return PooledKey


_PooledKey: Final = _pooled_key_class()


@contextlib.contextmanager
def _no_leaked_log_observers() -> Iterator[None]:
    """
    Remove the legacy log observers a test added and left behind.  Under
    pytest every later test shares them: Twisted's test_connectionLostLogMsg
    adds its observer twice and removes it once, and a legacy observer drops
    the ``message`` field of every new-style event it sees, which other
    tests read.
    """
    from twisted.python import log

    before = list(log.theLogPublisher.observers)
    try:
        yield
    finally:
        for observer in log.theLogPublisher.observers:
            if observer not in before:
                log.removeObserver(observer)


def check_substitution() -> None:
    """
    Fail if, with the substitution in force, a loaded ``twisted`` module
    still holds Twisted's factory or protocol class under its own name.

    @raise RuntimeError: naming the module and the name.
    """
    from twisted.internet import posixbase
    from twisted.protocols import tls

    originals = {id(vars(tls)[name]): name for name in _REPLACEMENTS}
    with substituted():
        if posixbase.tls is not tls:
            raise RuntimeError("twisted.internet.posixbase no longer reaches TLS through "
                               "twisted.protocols.tls: add its lookup to _TWISTED_LOOKUPS")
        for module_name, module in list(sys.modules.items()):
            if module is None or not module_name.startswith("twisted."):
                continue
            for attribute, value in list(vars(module).items()):
                if id(value) in originals and attribute in _REPLACEMENTS:
                    raise RuntimeError(
                        f"{module_name}.{attribute} is still Twisted's {originals[id(value)]}: "
                        "add the module to _TWISTED_LOOKUPS"
                    )


# -- the cases -----------------------------------------------------------------------


def _selected(module: ModuleType, selection: tuple[str, ...] | None) -> list[tuple[type, str]]:
    """(test class, method-name prefix) pairs of C{module} that belong to the run."""
    classes = [
        value for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, PyUnitTestCase)
        and value.__module__ == module.__name__
    ]
    if selection is None:
        return [(cls, "test") for cls in classes]
    chosen = []
    for entry in selection:
        class_name, _, prefix = entry.partition(".")
        chosen += [(cls, prefix or "test") for cls in classes if cls.__name__ == class_name]
    return chosen


def _runs_here(cls: type) -> bool:
    """
    False for a per-reactor copy whose reactor is not available on this
    machine (GTK, Cocoa, Windows...): Twisted would only skip it.
    """
    if not hasattr(cls, "_reactors"):
        return True
    return "reactorFactory" in vars(cls) and "skip" not in vars(cls)


def _exclusion(cls: type, method: str) -> tuple[tuple[str, str], str] | None:
    """The EXCLUDED entry for C{cls}'s C{method}, found by any class it comes from."""
    for base in cls.__mro__:
        name = f"{base.__name__}.{method}"
        reason = EXCLUDED.get(base.__module__, {}).get(name)
        if reason is not None:
            return (base.__module__, name), reason
    return None


def _excluded(reason: str) -> Any:
    def excluded(self: Any) -> None:
        raise trial_unittest.SkipTest(EXCLUDED_PREFIX + reason)

    excluded.skip = EXCLUDED_PREFIX + reason  # type: ignore[attr-defined]
    return excluded


def _conformance_class(
    original: type, prefix: str, label: str
) -> tuple[type, list[tuple[str, str]], int]:
    """
    Our copy of one of Twisted's test classes: the substitution around each
    test, excluded tests marked.  Returns it, the EXCLUDED keys it used and
    its number of excluded tests.
    """
    methods = sorted(
        name for name in dir(original)
        if name.startswith(prefix) and name.startswith("test")
        and callable(getattr(original, name))
    )
    namespace: dict[str, Any] = {"__module__": __name__, "conformance_methods": methods}
    used: list[tuple[str, str]] = []
    excluded = 0
    for name in methods:
        found = _exclusion(original, name)
        if found is not None:
            used.append(found[0])
            namespace[name] = _excluded(found[1])
            excluded += 1
    if prefix != "test":
        # Only some methods of this class belong to the run; pytest's
        # loader skips what is not callable.
        for name in dir(original):
            if name.startswith("test") and name not in methods:
                namespace[name] = None

    def run(self: Any, result: Any) -> Any:
        with substituted(), _no_leaked_log_observers():
            return original.run(self, result)

    namespace["run"] = run
    copy = type(f"{label}_{original.__name__}", (original,), namespace)
    return copy, used, excluded


def conformance_cases() -> tuple[dict[str, type], int]:
    """
    Every test class of the run by name, and how many tests are excluded.

    @raise RuntimeError: the substitution misses a module, or an EXCLUDED
        entry no longer names a test.
    """
    check_substitution()
    cases: dict[str, type] = {}
    used: set[tuple[str, str]] = set()
    excluded = 0
    for module_name, selection in MODULES.items():
        module = importlib.import_module(module_name)
        label = _LABELS[module_name]
        for cls, prefix in _selected(module, selection):
            if not _runs_here(cls):
                continue
            copy, keys, count = _conformance_class(cls, prefix, label)
            cases[copy.__name__] = copy
            used.update(keys)
            excluded += count
    stale = {(module, name) for module, names in EXCLUDED.items() for name in names} - used
    if stale:
        raise RuntimeError(f"EXCLUDED names tests that no longer exist: {sorted(stale)}")
    return cases, excluded


# -- trial -----------------------------------------------------------------------------


def summary_line(passed: int, excluded: int, failed: int = 0) -> str:
    """The run's one-line summary, the same under trial and pytest."""
    line = f"twisted conformance: {passed} passed, {excluded} excluded"
    return f"{line}, {failed} failed" if failed else line


class _Summarized(trial_unittest.TestSuite):  # type: ignore[misc]
    """The whole run, ending with its one-line summary."""

    excluded = 0

    def run(self, result: Any) -> Any:
        outcome = super().run(result)
        passed = getattr(result, "successes", 0)
        failed = len(getattr(result, "failures", ())) + len(getattr(result, "errors", ()))
        print("\n" + summary_line(passed, self.excluded, failed), flush=True)
        return outcome


def testSuite() -> trial_unittest.TestSuite:
    """What trial runs for ``python -m twisted.trial tests.twisted_conformance``."""
    cases, excluded = conformance_cases()
    suite = _Summarized(
        [case(name) for case in cases.values() for name in case.conformance_methods]
    )
    suite.excluded = excluded
    return suite
