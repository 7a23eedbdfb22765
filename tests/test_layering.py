"""
Twisted's internals in one place (#17): only modules under
C{src/txgateway/http/} may use a private name of Twisted, treq,
or prometheus-client; each such use is named in that module's
docstring.  One library release can then break the gateway in one package,
where the differential tests watch it, rather than in eight modules.

What counts as a use, found with C{ast} in every other module of
C{src/txgateway}:

  - importing a private module or name: C{import twisted.web._newclient},
    C{from twisted.web._newclient import X}, C{from twisted.web.http import _y};
  - a private attribute on a name imported from one of those libraries:
    C{http._something}, C{Headers._rawHeaders}, C{reactor._exitSignal};
  - a private attribute on any other object (C{self.reactor._exitSignal},
    C{getattr(publisher, "_observers")}) when the libraries' sources use that
    name and no module of txgateway defines it;
  - in a class that subclasses one of the libraries' classes,
    C{self._x}, C{super()._x} or C{def _x} for a private name of the
    libraries (overriding or reading their internals).

The attribute rules are heuristics (Python has no types to go by here): a
private name that txgateway also defines for itself is not caught on
arbitrary objects.  They catch every use there was when this test was
written.  L{ALLOWED} lists the uses that remain, each with its reason; an
entry that no longer matches a use fails L{PrivateNameTests.test_allowListIsCurrent}
so the list only shrinks.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support import parseSource

SRC = Path(__file__).resolve().parents[1] / "src" / "txgateway"
LIBRARIES = ("twisted", "treq", "prometheus_client")
# Where private names of those libraries may be used.
PRIVATE_USE_ALLOWED_UNDER = ("http/",)

# (module path relative to src/txgateway, private name): why it is still used there.
# Empty: every use is under http/, named in its module's docstring.
ALLOWED: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Use:
    module: str  # relative to src/txgateway
    line: int
    name: str
    how: str

    def __str__(self) -> str:
        return f"src/txgateway/{self.module}:{self.line}: {self.name} ({self.how})"


def _isPrivate(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _fromLibrary(dotted: str | None) -> bool:
    return dotted is not None and dotted.split(".")[0] in LIBRARIES


@cache
def libraryPrivateNames() -> frozenset[str]:
    """Every single-underscore identifier in the libraries' sources (their tests excepted)."""
    names: set[str] = set()
    for library in LIBRARIES:
        spec = importlib.util.find_spec(library)
        assert spec is not None and spec.origin is not None, library
        if spec.submodule_search_locations:
            files = [p for root in spec.submodule_search_locations for p in Path(root).rglob("*.py")
                     if "test" not in p.parts]
        else:
            files = [Path(spec.origin)]
        for f in files:
            names.update(re.findall(r"(?<!\w)(_[A-Za-z][A-Za-z0-9_]*)", f.read_text(errors="replace")))
    return frozenset(n for n in names if _isPrivate(n))


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(SRC.rglob("*.py")):
        yield path.relative_to(SRC).as_posix(), parseSource(path)



@cache
def ourPrivateNames() -> frozenset[str]:
    """Private names txgateway defines for itself: functions, classes, variables, attributes, slots."""
    names: set[str] = set()
    for _, tree in _modules():
        # Inside a subclass of a library class, a private name may be the library's own: not counted as ours.
        inLibraryClass = {id(n) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and _subclassesLibrary(c, tree)
                          for n in ast.walk(c) if n is not c}
        for node in ast.walk(tree):
            if id(node) in inLibraryClass:
                continue
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[0])
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                       for t in node.targets)):
                names.update(c.value for c in ast.walk(node.value)
                             if isinstance(c, ast.Constant) and isinstance(c.value, str))
    return frozenset(n for n in names if _isPrivate(n))


def _libraryNames(tree: ast.Module) -> dict[str, str]:
    """Local name -> the library module or object it was imported from."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _fromLibrary(alias.name):
                    bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _fromLibrary(node.module):
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _subclassesLibrary(cls: ast.ClassDef, tree: ast.Module) -> bool:
    bound = _libraryNames(tree)
    for base in cls.bases:
        root = base
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in bound:
            return True
    return False


@cache
def _basePrivateNames(dotted: str) -> frozenset[str]:
    """Private names in the source of a library class and of its library ancestors."""
    moduleName, _, attr = dotted.rpartition(".")
    try:
        base = getattr(importlib.import_module(moduleName), attr)
    except (ImportError, AttributeError):
        try:
            base = importlib.import_module(dotted)
        except ImportError:
            return frozenset()
    names: set[str] = set()
    for klass in getattr(base, "__mro__", ()):
        if _fromLibrary(getattr(klass, "__module__", None)):
            try:
                text = inspect.getsource(klass)
            except (OSError, TypeError):
                continue
            names.update(n for n in re.findall(r"(?<!\w)(_[A-Za-z][A-Za-z0-9_]*)", text) if _isPrivate(n))
    return frozenset(names)


def _inheritedPrivateNames(cls: ast.ClassDef, bound: dict[str, str]) -> frozenset[str]:
    names: set[str] = set()
    for base in cls.bases:
        parts: list[str] = []
        root: ast.expr = base
        while isinstance(root, ast.Attribute):
            parts.insert(0, root.attr)
            root = root.value
        if isinstance(root, ast.Name) and root.id in bound:
            names |= _basePrivateNames(".".join([bound[root.id], *parts]))
    return frozenset(names)


def privateUses(module: str, tree: ast.Module) -> list[Use]:
    """Every use of a library's private name in one module (see the module docstring)."""
    uses: list[Use] = []
    bound = _libraryNames(tree)
    stdlib = {alias.asname or alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names if alias.name.split(".")[0] in sys.stdlib_module_names}
    libraryPrivate = libraryPrivateNames()
    ours = ourPrivateNames()
    seen: set[int] = set()  # Attribute nodes already reported as part of a chain
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _fromLibrary(alias.name) and any(_isPrivate(p) for p in alias.name.split(".")):
                    uses.append(Use(module, node.lineno, alias.name, "private module imported"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _fromLibrary(node.module):
            assert node.module is not None
            if any(_isPrivate(p) for p in node.module.split(".")):
                uses.append(Use(module, node.lineno, node.module, "private module imported"))
            for alias in node.names:
                if _isPrivate(alias.name):
                    uses.append(Use(module, node.lineno, alias.name, f"private name imported from {node.module}"))
        elif isinstance(node, ast.Attribute) and id(node) not in seen:
            chain = [node]
            root: ast.expr = node.value
            while isinstance(root, ast.Attribute):
                chain.append(root)
                root = root.value
            seen.update(id(a) for a in chain)
            if isinstance(root, ast.Name) and root.id in stdlib:
                continue  # os._exit and the like: the standard library's own, not a library's internals
            if isinstance(root, ast.Name) and root.id in bound:
                for a in chain:
                    if _isPrivate(a.attr):
                        uses.append(Use(module, a.lineno, a.attr, f"attribute of {bound[root.id]}"))
                continue
            for a in chain:
                receiver = a.value
                onSelf = (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")) or (
                    isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name)
                    and receiver.func.id == "super")
                if _isPrivate(a.attr) and not onSelf and a.attr in libraryPrivate and a.attr not in ours:
                    uses.append(Use(module, a.lineno, a.attr, "private attribute the libraries define"))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2
              and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)):
            name = node.args[1].value
            if _isPrivate(name) and name in libraryPrivate and name not in ours:
                uses.append(Use(module, node.lineno, name, f"{node.func.id}() of a private attribute"))
    for cls in ast.walk(tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        inherited = _inheritedPrivateNames(cls, bound)
        for node in ast.walk(cls):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in inherited:
                uses.append(Use(module, node.lineno, node.name, f"overrides a private method in {cls.name}"))
            elif isinstance(node, ast.Attribute) and node.attr in inherited:
                receiver = node.value
                if (isinstance(receiver, ast.Name) and receiver.id in ("self", "cls")) or (
                        isinstance(receiver, ast.Call) and isinstance(receiver.func, ast.Name)
                        and receiver.func.id == "super"):
                    uses.append(Use(module, node.lineno, node.attr, f"library internals through self in {cls.name}"))
    return uses


def allUses() -> list[Use]:
    return [use for module, tree in _modules() if not module.startswith(PRIVATE_USE_ALLOWED_UNDER)
            for use in privateUses(module, tree)]


class PrivateNameTests(SynchronousTestCase):
    def test_noPrivateLibraryNamesOutsideHttp(self) -> None:
        """No module outside txgateway/http/ uses a private name of Twisted, treq or prometheus-client."""
        unexpected = [u for u in allUses() if (u.module, u.name) not in ALLOWED]
        self.assertEqual(unexpected, [], "private library names used outside src/txgateway/http/ "
                         "(move the use into http/ and name it in that module's docstring):\n"
                         + "\n".join(map(str, unexpected)))

    def test_allowListIsCurrent(self) -> None:
        """Every allow-list entry still matches a use: the list only shrinks."""
        used = {(u.module, u.name) for u in allUses()}
        self.assertEqual(sorted(set(ALLOWED) - used), [], "stale entries in tests/test_layering.py ALLOWED")


class DetectorTests(SynchronousTestCase):
    """The detector catches the shapes it is meant to catch (so an empty result means something)."""

    def uses(self, source: str) -> set[str]:
        return {u.name for u in privateUses("example.py", ast.parse(source))}

    def test_privateModulesAndNamesImported(self) -> None:
        self.assertEqual(self.uses("import twisted.web._newclient\n"), {"twisted.web._newclient"})
        self.assertEqual(self.uses("from twisted.web._newclient import HTTPParser\n"), {"twisted.web._newclient"})
        self.assertEqual(self.uses("from twisted.web.http import _IdentityTransferDecoder\n"),
                         {"_IdentityTransferDecoder"})
        self.assertEqual(self.uses("from twisted.web.http import Request\nimport os._x\n"), set())

    def test_attributesOfLibraryNames(self) -> None:
        self.assertEqual(self.uses("from twisted.web import http\nhttp._something\n"), {"_something"})
        self.assertEqual(self.uses("from twisted.web.http_headers import Headers\nHeaders._rawHeaders\n"),
                         {"_rawHeaders"})
        self.assertEqual(self.uses("from twisted.internet import reactor\nreactor._exitSignal = None\n"),
                         {"_exitSignal"})
        self.assertEqual(self.uses("from twisted.logger import globalLogPublisher as p\np._observers\n"),
                         {"_observers"})

    def test_libraryPrivatesOnOtherObjects(self) -> None:
        self.assertEqual(self.uses("def f(r):\n    r._exitSignal = None\n    getattr(r, '_exitSignal')\n"),
                         {"_exitSignal"})
        self.assertEqual(self.uses("class A:\n    def f(self):\n        return self._exitSignal\n"), set())

    def test_subclassInternals(self) -> None:
        source = ("from prometheus_client import Counter\n"
                  "class C(Counter):\n"
                  "    def _metric_init(self):\n"
                  "        super()._metric_init()\n"
                  "        self._value = 1\n")
        self.assertEqual(self.uses(source), {"_metric_init", "_value"})


# Modules that may pass MAX_LINES because they are pure tables (data, no
# logic): (module path relative to src/txgateway): why.  None today.
TABLES: dict[str, str] = {}
MAX_LINES = 400
_TAG = re.compile(r"^# -\*- test-case-name: ([\w.,]+) -\*-$")
TESTS = SRC.parents[1] / "tests"


def _defined(tree: ast.Module) -> set[str]:
    """The names a module binds at its top level (definitions, assignments, imports; inside C{if}/C{try} too)."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.If, ast.Try)):
            pending += node.body + node.orelse + getattr(node, "finalbody", [])
            for handler in getattr(node, "handlers", []):
                pending += handler.body
        else:
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def _declaredAll(tree: ast.Module) -> list[str] | None:
    """The strings of a top-level C{__all__ = [...]} (or annotated), or None when there is none."""
    for node in tree.body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and target.id == "__all__" and isinstance(value, (ast.List, ast.Tuple)):
            return [e.value for e in value.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return None


def declaredTests(source: str) -> list[str] | None:
    """The test modules a C{test-case-name} tag in the first lines names, as Twisted's modules carry it."""
    for line in source.splitlines()[:3]:
        m = _TAG.match(line)
        if m is not None:
            return m.group(1).split(",")
    return None


class ModuleShapeTests(SynchronousTestCase):
    """
    Every module states its public names (C{__all__}) and its tests (a
    C{test-case-name} tag, so C{trial --testmodule} and editors find them),
    and stays small enough to hold one concern (#17).
    """

    def test_everyModuleDeclaresAll(self) -> None:
        """Each module has an C{__all__}, and every name in it is bound in the module."""
        problems = []
        for module, tree in _modules():
            declared = _declaredAll(tree)
            if declared is None:
                problems.append(f"{module}: no __all__")
                continue
            missing = sorted(set(declared) - _defined(tree))
            if missing:
                problems.append(f"{module}: __all__ names {', '.join(missing)}, not defined there")
        self.assertEqual(problems, [])

    def test_everyModuleNamesItsTests(self) -> None:
        """Each module's first lines name its test modules, and those modules exist."""
        problems = []
        for path in sorted(SRC.rglob("*.py")):
            module = path.relative_to(SRC).as_posix()
            names = declaredTests(path.read_text())
            if names is None:
                problems.append(f"{module}: no '# -*- test-case-name: tests.test_x -*-' line")
                continue
            for name in names:
                if not (TESTS.parent / (name.replace(".", "/") + ".py")).is_file():
                    problems.append(f"{module}: test-case-name {name} is not a test module")
        self.assertEqual(problems, [])

    def test_noModuleOverLineLimit(self) -> None:
        """No module is over MAX_LINES lines, except the pure tables listed in TABLES."""
        over = []
        for path in sorted(SRC.rglob("*.py")):
            module = path.relative_to(SRC).as_posix()
            n = len(path.read_text().splitlines())
            if n > MAX_LINES and module not in TABLES:
                over.append(f"{module}: {n} lines (split it by concern, or list it in TABLES if it is a pure table)")
        self.assertEqual(over, [])

    def test_tablesListIsCurrent(self) -> None:
        """Every TABLES entry is still a module over the limit: the list only shrinks."""
        stale = [m for m in TABLES if not (SRC / m).is_file() or len((SRC / m).read_text().splitlines()) <= MAX_LINES]
        self.assertEqual(stale, [])

    def test_detectors(self) -> None:
        """The helpers read what they are meant to (so a pass means something)."""
        tree = ast.parse("import os\nfrom x import y as z\n__all__ = ['f', 'z', 'Q']\n"
                         "def f():\n    local = 1\nQ: int = 1\n")
        self.assertEqual(_declaredAll(tree), ["f", "z", "Q"])
        self.assertTrue({"os", "z", "f", "Q"} <= _defined(tree))
        self.assertNotIn("local", _defined(tree))
        self.assertIsNone(_declaredAll(ast.parse("x = 1\n")))
        self.assertEqual(declaredTests("# -*- test-case-name: tests.test_a,tests.e2e.test_b -*-\n"),
                         ["tests.test_a", "tests.e2e.test_b"])
        self.assertIsNone(declaredTests('"""doc"""\n'))


ARCHITECTURE = SRC.parents[1] / "docs" / "architecture.md"
SETUP_CFG = SRC.parents[1] / "setup.cfg"


def _layerNames() -> list[str]:
    """Every module or package named in setup.cfg's layers contract."""
    text = SETUP_CFG.read_text()
    block = text.split("[importlinter:contract:layers]", 1)[1].split("layers =", 1)[1].split("\n[", 1)[0]
    return [n for line in block.splitlines() for n in re.split(r"[:|\s]+", line.split("#")[0]) if n]


class ArchitecturePageTests(SynchronousTestCase):
    """docs/architecture.md stays the map of the tree: every module in its table, every layer in its picture."""

    def test_everyModuleInTheTable(self) -> None:
        lines = ARCHITECTURE.read_text().splitlines()
        rows = [line for line in lines if line.startswith("| `")]
        missing = []
        for path in sorted(SRC.rglob("*.py")):
            rel = path.relative_to(SRC).as_posix()
            if any(f"`{rel}`" in row for row in rows):
                continue
            # A grouped row: `pkg/` (`a`, `b`, ...) or `pkg/sub/` (`a`, ...).
            parent, stem = rel.rsplit("/", 1)[0] if "/" in rel else "", path.stem
            if parent and any(f"`{parent}/`" in row and f"`{stem}`" in row for row in rows):
                continue
            missing.append(rel)
        self.assertEqual(missing, [], "modules missing from docs/architecture.md's module table")

    def test_everyLayerInThePicture(self) -> None:
        text = ARCHITECTURE.read_text()
        picture = text.split("```", 2)[1]
        missing = [name for name in _layerNames() if not re.search(rf"(?<![\w.]){re.escape(name)}(?![\w.])", picture)]
        self.assertEqual(missing, [], "layers of setup.cfg missing from docs/architecture.md's picture")
