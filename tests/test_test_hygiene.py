"""
The test suite's own rules (#17): no test module imports another test
module, and no test sets a private attribute to inject a fake.

What tests share lives in support modules (not named C{test_*}) or in the
public L{txgateway.testing}; a fake goes in through a constructor or
keyword argument, as a user's own tests would have to do it.  Both rules
are checked on the source with C{ast}, so a new test module is held to
them without being listed here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.support import parseSource

TESTS = Path(__file__).resolve().parent

# Modules under tests/ that hold shared helpers rather than tests.
SUPPORT = frozenset({"tests.e2e.harness", "tests.e2e.backend", "tests.redisserver", "tests.support"})


def moduleName(path: Path) -> str:
    parts = path.relative_to(TESTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def isTestModule(name: str) -> bool:
    return name.startswith("tests.") and name not in SUPPORT and name.rsplit(".", 1)[-1].startswith("test_")


def importedModules(tree: ast.Module, module: str, isPackage: bool = False) -> Iterator[tuple[int, str]]:
    """Every module C{module}'s source imports (C{from x import y} also names C{x.y}, which may be a module)."""
    package = module if isPackage else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:
                yield node.lineno, f"{source}.{alias.name}"


# Public attributes that the runtime builder owns: a cluster's upstream client
# and pool.  A test hands its fake client in with buildRuntime(clients=...) or
# GatewayService(clients=...) instead of swapping them after the build.
INJECTION_POINTS = frozenset({"agent", "pool"})


def isPrivate(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class _PrivateAssignments(ast.NodeVisitor):
    """
    Assignments to a private attribute (C{x._name = ...}, C{setattr(x,
    "_name", ...)}, C{self.patch(x, "_name", ...)}) of anything but C{self}
    (or C{cls}) inside a class the module itself defines; and to one of the
    L{INJECTION_POINTS} of anything but C{self}.
    """

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self.classDepth = 0

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.classDepth += 1
        self.generic_visit(node)
        self.classDepth -= 1

    def ownObject(self, node: ast.expr) -> bool:
        return self.classDepth > 0 and isinstance(node, ast.Name) and node.id in ("self", "cls")

    def target(self, node: ast.expr, lineno: int) -> None:
        if (isinstance(node, ast.Attribute) and (isPrivate(node.attr) or node.attr in INJECTION_POINTS)
                and not self.ownObject(node.value)):
            self.found.append((lineno, ast.unparse(node)))
        elif isinstance(node, (ast.Tuple, ast.List)):
            for element in node.elts:
                self.target(element, lineno)
        elif isinstance(node, ast.Starred):
            self.target(node.value, lineno)

    def visit_Assign(self, node: ast.Assign) -> None:
        for t in node.targets:
            self.target(t, node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.target(node.target, node.lineno)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.target(node.target, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        if name in ("setattr", "patch", "setitem") and len(node.args) >= 2:
            obj, attr = node.args[0], node.args[1]
            if (isinstance(attr, ast.Constant) and isinstance(attr.value, str) and isPrivate(attr.value)
                    and not self.ownObject(obj)):
                self.found.append((node.lineno, ast.unparse(node)[:120]))
        self.generic_visit(node)


def privateAssignments(tree: ast.Module) -> list[tuple[int, str]]:
    visitor = _PrivateAssignments()
    visitor.visit(tree)
    return visitor.found


def suiteSources() -> Iterator[tuple[Path, str, ast.Module]]:
    for path in sorted(TESTS.rglob("*.py")):
        yield path, moduleName(path), parseSource(path)


class SuiteHygieneTests(SynchronousTestCase):
    def test_noTestModuleImportsAnother(self) -> None:
        """A module under tests/ imports support modules and txgateway, never a test module."""
        found = []
        for path, module, tree in suiteSources():
            for lineno, imported in importedModules(tree, module, path.name == "__init__.py"):
                if isTestModule(imported) and imported != module:
                    found.append(f"{path.relative_to(TESTS.parent)}:{lineno}: imports {imported}")
        self.assertEqual(found, [], "move what is shared to tests/support.py or txgateway.testing")

    def test_noPrivateAttributeSet(self) -> None:
        """No test injects a fake by setting a private attribute of an object it did not make in its own class."""
        found = []
        for path, _, tree in suiteSources():
            found += [f"{path.relative_to(TESTS.parent)}:{lineno}: {text}" for lineno, text in privateAssignments(tree)]
        self.assertEqual(found, [], "give the code a public seam (a constructor or keyword argument)")

    def test_supportModulesExist(self) -> None:
        """Every module named as support exists, so a rename cannot quietly turn one into an unchecked name."""
        names = {module for _, module, _ in suiteSources()}
        self.assertEqual(SUPPORT - names, set())


class CheckerTests(SynchronousTestCase):
    """The two checks above catch what they say and pass what is allowed."""

    def test_importsOfTestModulesFound(self) -> None:
        source = ("from .test_a import x\nfrom tests.test_b import y\nimport tests.test_c\nfrom tests import test_d\n"
                  "from . import test_e\nfrom tests.support import z\nfrom .harness import w\n")
        imported = {name for _, name in importedModules(ast.parse(source), "tests.e2e.test_f")}
        tests = sorted(name for name in imported if isTestModule(name))
        self.assertEqual(tests, ["tests.e2e.test_a", "tests.e2e.test_e", "tests.test_b", "tests.test_c",
                                 "tests.test_d"])

    def test_privateAssignmentsFound(self) -> None:
        source = '''
cluster._agent = fake
cluster.agent = fake
a, service._build = 1, fake
service._count += 1
setattr(limiter, "_collect", fake)
self.patch(accesslog, "_now", fake)
def helper(self):
    self._x = 1

class Own:
    def __init__(self):
        self._state = 1
        self.public = 2
        self.agent = fake
        other._y = 3
    def f(self):
        self.__dict__ = {}
        self.patch(self, "_z", 1)
'''
        found = [text for _, text in privateAssignments(ast.parse(source))]
        self.assertEqual(found, ["cluster._agent", "cluster.agent", "service._build", "service._count",
                                 "setattr(limiter, '_collect', fake)", "self.patch(accesslog, '_now', fake)",
                                 "self._x", "other._y"])
