"""
The package's layers, held to their rules by reading every import.

Every module of ``membio_transport`` is parsed (not imported) and each of
its imports is resolved, wherever it is written: at module level, inside a
function (the lazy imports of the apps), or under ``TYPE_CHECKING``.  An
import that only a type checker runs still ties two modules together, so
it counts.  The rules (README, "Design"):

* no import circle anywhere in the package;
* a layer imports only the layers below it (`ALLOWED`): ``tls`` and
  ``certs`` nothing but themselves, ``serving`` never ``workers``,
  ``https`` or ``proxy``, the two apps never each other;
* another layer is reached through its face (``membio_transport.tls``) or a
  public module of it (``membio_transport.https.tap``), never through one
  of its private modules;
* no module imports a private name (``_x``) from another module: a name
  shared inside a subpackage loses its underscore instead;
* the sans-I/O core (the engine, its state table, its errors, its record
  I/O, and whatever they import) imports nothing from Twisted;
* each subpackage's face says in its docstring what the layer is for and
  what it may import.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "membio_transport"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

#: Layer -> the layers it may import (itself included).  An arrow down in
#: the README's layer graph is an entry here.
#:
#: ``serving`` -> ``acme``: public certificates are one more certificate source, and
#: the serving layer is where every entry point gets its certificates, so the serving
#: layer wires the ACME manager in (``serving/_acme.py``) and all three entry points
#: get it.  Never the other way round: ``acme`` hands over "a certificate to serve"
#: through a callback and knows nothing of listeners, contexts or settings.  ``acme``
#: is an optional extra, so the serving layer imports it only when ACME is asked for
#: (`test_the_optional_acme_layer_is_imported_only_when_asked_for`).
ALLOWED: dict[str, frozenset[str]] = {
    "tls": frozenset({"tls"}),
    "certs": frozenset({"certs"}),
    "acme": frozenset({"acme", "certs"}),
    "observe": frozenset({"observe", "tls", "certs"}),
    "serving": frozenset({"serving", "tls", "certs", "acme", "observe"}),
    "workers": frozenset({"workers", "serving", "tls", "certs", "acme", "observe"}),
    "https": frozenset({"https", "workers", "serving", "tls", "certs", "acme", "observe"}),
    "proxy": frozenset({"proxy", "workers", "serving", "tls", "certs", "acme", "observe"}),
}
#: The sans-I/O core: these and everything they import stay free of Twisted.
NO_TWISTED: tuple[str, ...] = tuple(
    f"{PACKAGE}.tls.{name}" for name in ("_engine", "_state", "_errors", "_record_io")
)


@dataclass(frozen=True)
class Import:
    """One imported module, or one name imported from a module."""

    source: str  # the importing module
    target: str  # the imported module (resolved)
    name: str | None  # the name taken from it (``from target import name``), if any
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@functools.cache
def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _resolve(source: str, is_package: bool, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    base = source.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([module] if module else [])])


@functools.cache
def _imports() -> tuple[Import, ...]:
    found: list[Import] = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [Import(name, alias.name, None, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                target = _resolve(name, is_package, node.module, node.level)
                found += [Import(name, target, alias.name, node.lineno) for alias in node.names]
    return tuple(found)


def _edges() -> Iterator[tuple[str, str, Import]]:
    """(importer, imported module) pairs inside the package."""
    modules = _modules()
    for item in _imports():
        if item.name is not None and f"{item.target}.{item.name}" in modules:
            yield item.source, f"{item.target}.{item.name}", item  # from a package import module
        elif item.target in modules:
            yield item.source, item.target, item


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def _where(item: Import) -> str:
    return f"{_modules()[item.source].relative_to(ROOT.parent)}:{item.line}"


def test_the_package_is_laid_out_in_the_layers_the_rules_name() -> None:
    subpackages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert subpackages == set(ALLOWED)
    loose = {path.name for path in ROOT.glob("*.py")}
    assert loose == {"__init__.py", "__main__.py"}, "every module belongs to a layer"


def test_there_is_no_import_circle() -> None:
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for source, target, _ in _edges():
        graph[source].add(target)
    circles = _strongly_connected(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(sorted(c)) for c in circles)


def _strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm: the components with more than one module, or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for source, target, item in _edges():
        importer, imported = _layer(source), _layer(target)
        if importer is None or imported is None:
            continue  # the top-level face and __main__ may use any layer
        if imported not in ALLOWED[importer]:
            wrong.append(f"{_where(item)}: {importer} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_other_layers_are_reached_through_their_faces() -> None:
    wrong = []
    for source, target, item in _edges():
        if _layer(source) == _layer(target):
            continue
        private = [part for part in target.split(".")[2:] if part.startswith("_")]
        if private:
            wrong.append(f"{_where(item)}: {source} imports {target}, a private module")
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_a_private_name_of_another() -> None:
    modules = _modules()
    wrong = [
        f"{_where(item)}: {item.source} takes {item.name} from {item.target}"
        for item in _imports()
        if item.target.startswith(PACKAGE)
        and item.name is not None
        and item.name.startswith("_")
        and f"{item.target}.{item.name}" not in modules
    ]
    assert not wrong, "\n".join(wrong)


def test_the_sans_io_core_imports_nothing_from_twisted() -> None:
    graph: dict[str, set[str]] = {module: set() for module in _modules()}
    for source, target, _ in _edges():
        graph[source].add(target)
    closure: set[str] = set()
    pending = list(NO_TWISTED)
    while pending:
        module = pending.pop()
        if module not in closure:
            closure.add(module)
            pending += graph[module]
    twisted = [
        f"{_where(item)}: {item.target}"
        for item in _imports()
        if item.source in closure and item.target.split(".")[0] in ("twisted", "zope")
    ]
    assert not twisted, "\n".join(twisted)
    assert closure >= set(NO_TWISTED)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_face_says_what_its_layer_is_for_and_may_import(layer: str) -> None:
    face = ROOT / layer / "__init__.py"
    docstring = ast.get_docstring(ast.parse(face.read_text())) or ""
    assert "What this layer is for" in docstring, face
    assert "What it may import" in docstring, face
    for other in set(ALLOWED) - ALLOWED[layer]:
        assert f"``{other}``" not in docstring.split("What it may import")[1].split(".")[0], (
            f"{layer}'s face lists {other} among what it may import"
        )


def test_the_optional_acme_layer_is_imported_only_when_asked_for() -> None:
    """A plain install (no ``[acme]`` extra) runs every entry point without ACME settings."""
    import subprocess
    import sys

    program = (
        "import sys\n"
        "import membio_transport, membio_transport.serving, membio_transport.https.tap\n"
        "import membio_transport.proxy.tap, membio_transport.workers\n"
        "from membio_transport.serving import flag_of, parse_values\n"
        "parse_values('membio-https', {'hostname': ['example.org']}, flag_of)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('acme', 'josepy')\n"
        "                or m.startswith('membio_transport.acme'))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


def test_a_circle_and_a_forbidden_edge_are_caught() -> None:
    """The checks above, on a made-up graph: they would see what they look for."""
    assert _strongly_connected({"a": {"b"}, "b": {"a"}, "c": set()}) == [{"a", "b"}]
    assert _strongly_connected({"a": {"a"}}) == [{"a"}]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []
    assert _resolve(f"{PACKAGE}.https._workers", False, "serving", 2) == f"{PACKAGE}.serving"
    assert _resolve(f"{PACKAGE}.tls", True, "_engine", 1) == f"{PACKAGE}.tls._engine"
    assert "serving" not in ALLOWED["tls"] and "proxy" not in ALLOWED["https"]
