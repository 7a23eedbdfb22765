# -*- test-case-name: tests.test_config -*-
"""
What a rejected config says: each problem with its key path, line and column.

Key paths are written one way everywhere, by L{keyPath} and L{itemPath}:
C{upstreams.api.targets[1]}, and for a list item that has a name, the index
and the name in parentheses, C{routes[0](predict).match.path}.  The YAML
source, the parser and the environment all build paths with these two
functions, so a message from any of them reads the same.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigError", "Invalid", "Problem", "itemPath", "keyPath"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, where it is, and why."""

    path: str
    line: int | None
    message: str
    column: int | None = None

    def __str__(self) -> str:
        where = ""
        if self.line:
            where = f"line {self.line}, column {self.column}: " if self.column else f"line {self.line}: "
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(Exception):
    """A config was rejected; C{problems} lists every reason, not just the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(sorted(problems, key=lambda p: (p.line or 0, p.column or 0)))
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(p) for p in self.problems)


class Invalid(Exception):
    """Raised inside a value converter; the parser adds the key path and line."""


def keyPath(path: str, key: object) -> str:
    """C{path.key}, or C{key} at the top level."""
    return f"{path}.{key}" if path else str(key)


def itemPath(path: str, index: int, name: object = None) -> str:
    """
    C{path[index]}, or C{path[index](name)} when the item has a name.

    A name is a string or a number the user wrote (C{name: predict}); anything
    else (a mapping, a list, C{null}, C{true}) is left out rather than shown
    as Python would print it.
    """
    label = f"{path}[{index}]"
    if isinstance(name, bool) or not isinstance(name, (str, int, float)):
        return label
    text = str(name)
    return f"{label}({text})" if text else label

