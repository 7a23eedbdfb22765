# -*- test-case-name: tests.test_config -*-
"""
YAML in, a tree of mappings and lists that remember where each key sits.

PyYAML's C{safe_load} forgets positions and lets a repeated key silently
replace the first; a gateway config read that way can name no line, and
C{timeout} written twice under one route takes whichever came last.  This
module composes the node graph itself, keeps the line of every key and list
item, and reports each repeated key (with both lines) as a problem, in the
same key-path language as the parser (L{txgateway.config.errors}).
"""

from __future__ import annotations

from typing import Any

import yaml

from txgateway.config.errors import ConfigError, Problem, itemPath, keyPath

__all__ = ["YAMLMap", "YAMLSeq", "lines", "loadYAML", "positioned"]

_MERGE = "tag:yaml.org,2002:merge"


class YAMLMap(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of each key."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.lines: dict[Any, int] = {}


class YAMLSeq(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.lines: list[int] = []


def lines(value: Any) -> dict[Any, int]:
    """The key -> line table of a mapping read from YAML (empty for one built in code)."""
    return getattr(value, "lines", {})


class _Composer:
    """Turns one document's node graph into L{YAMLMap}/L{YAMLSeq}, collecting repeated keys."""

    def __init__(self, loader: yaml.SafeLoader) -> None:
        self.loader = loader
        self.problems: list[Problem] = []

    def convert(self, node: yaml.Node, path: str) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            s = YAMLSeq(self.convert(v, itemPath(path, i, self.nameOf(v))) for i, v in enumerate(node.value))
            s.line = node.start_mark.line + 1
            s.lines = [v.start_mark.line + 1 for v in node.value]
            return s
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.MappingNode, path: str) -> YAMLMap:
        self.checkRepeats(node, path)
        # Merged keys (<<: *defaults) come first, so the keys written here win, as YAML says.
        self.loader.flatten_mapping(node)
        m = YAMLMap()
        m.line = node.start_mark.line + 1
        for knode, vnode in node.value:
            key = self.key(knode)
            try:
                m[key] = self.convert(vnode, keyPath(path, key))
            except TypeError:  # an unhashable key: a mapping or list used as a key
                self.problems.append(Problem(path, knode.start_mark.line + 1, "a key must be a plain word",
                                             knode.start_mark.column + 1))
                continue
            m.lines[key] = knode.start_mark.line + 1
        return m

    def key(self, knode: yaml.Node) -> Any:
        # Keys stay the text the user wrote: YAML 1.1 would read `on:` as True.
        return knode.value if isinstance(knode, yaml.ScalarNode) else self.loader.construct_object(knode, deep=True)

    def checkRepeats(self, node: yaml.MappingNode, path: str) -> None:
        """A key written twice in one mapping is a mistake; name both places."""
        seen: dict[str, yaml.Node] = {}
        for knode, _ in node.value:
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == _MERGE:
                continue
            first = seen.setdefault(knode.value, knode)
            if first is not knode:
                mark = knode.start_mark
                self.problems.append(Problem(
                    keyPath(path, knode.value), mark.line + 1,
                    f"is written twice, on line {first.start_mark.line + 1} and on line {mark.line + 1} "
                    "(remove one: YAML would silently keep only the last)", mark.column + 1))

    def nameOf(self, node: yaml.Node) -> Any:
        """The C{name:} of a list item that is a mapping (a route), for its key path."""
        if not isinstance(node, yaml.MappingNode):
            return None
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.value == "name" and isinstance(vnode, yaml.ScalarNode):
                try:
                    return self.loader.construct_object(vnode)
                except yaml.YAMLError:
                    return None
        return None


def loadYAML(text: str, source: str) -> tuple[Any, list[Problem]]:
    """
    Parse one YAML document; return the tree and the repeated keys found in it.

    A syntax error raises L{ConfigError} at once (nothing after it can be
    trusted), naming the line and column where the mistake is.
    """
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters at once
    except yaml.YAMLError as e:
        raise ConfigError([_syntaxProblem(e, text)], source) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return YAMLMap(), []
        composer = _Composer(loader)
        return composer.convert(node, ""), composer.problems
    except yaml.YAMLError as e:
        raise ConfigError([_syntaxProblem(e, text)], source) from None
    finally:
        loader.dispose()


def _syntaxProblem(e: yaml.YAMLError, text: str) -> Problem:
    """
    Where a YAML error is, as a user would point at it.

    PyYAML reports where it gave up (C{problem_mark}) and the construct it was
    reading (C{context_mark}).  For an unclosed quote or bracket it gives up at
    the end of the file or on a later line, far from the mistake: then the
    place to look is where the quote or bracket was opened, and the message
    says both.
    """
    problem = getattr(e, "problem", None) or str(e)
    context = getattr(e, "context", None)
    at = getattr(e, "problem_mark", None)
    opened = getattr(e, "context_mark", None)
    if at is None and isinstance(e, yaml.reader.ReaderError):
        before = text[: e.position]
        return Problem("", before.count("\n") + 1, f"not valid YAML: {e.reason}",
                       e.position - (before.rfind("\n") + 1) + 1)
    if at is None:
        return Problem("", None, f"not valid YAML: {problem}")
    if (opened is not None and context is not None and ("quoted" in context or "flow" in context)
            and (at.line > opened.line or "end of stream" in problem)):
        return Problem("", opened.line + 1,
                       f"not valid YAML: {context.replace('while scanning ', '').replace('while parsing ', '')} "
                       f"opened here is not closed ({problem} on line {at.line + 1}, column {at.column + 1})",
                       opened.column + 1)
    if context is not None and problem.startswith("but "):  # "expected a single document ..., but found another"
        problem = f"{context}, {problem}"
    return Problem("", at.line + 1, f"not valid YAML: {problem}", at.column + 1)


def positioned(value: Any) -> Any:
    """Plain dicts and lists (built in code, e.g. from the environment) as a tree the parser reads."""
    if isinstance(value, dict):
        m = YAMLMap({k: positioned(v) for k, v in value.items()})
        m.lines = {}
        return m
    if isinstance(value, list):
        s = YAMLSeq(positioned(v) for v in value)
        s.lines = [0] * len(s)
        return s
    return value
