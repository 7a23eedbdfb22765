# -*- test-case-name: tests.test_config -*-
"""
The parser's plumbing: known keys, conversions and problems with key paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from txgateway.config.errors import Invalid, Problem, itemPath, keyPath
from txgateway.config.fields import endpointBuildProblem, endpointProblem, yamlText
from txgateway.config.source import YAMLMap, YAMLSeq, lines
from txgateway.config.values import headerName, headerValue, string, urlPath

__all__ = ["ParserBase"]

T = TypeVar("T")


class ParserBase:
    """
    Walks the YAML tree, collecting every problem rather than stopping at the first.

    The sections of the file are parsed by subclasses, one module per area
    (L{txgateway.config.parser_server} and its siblings); this class holds
    what they share: reading a mapping against its known keys, converting a
    value, and recording a problem with its key path and line.
    """

    def __init__(self, baseDir: Path) -> None:
        self.baseDir = baseDir
        self.problems: list[Problem] = []

    def problem(self, path: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(path, line, message))

    def mapping(self, value: Any, path: str, line: int | None, known: Iterable[str]) -> YAMLMap | None:
        if value is None:
            return YAMLMap()
        if not isinstance(value, dict):
            self.problem(path, line, "must be a mapping")
            return None
        known = set(known)
        m = value if isinstance(value, YAMLMap) else YAMLMap(value)
        for key in m:
            if key not in known:
                self.problem(keyPath(path, key), m.lines.get(key), f"unknown key (expected one of: {', '.join(sorted(known))})")
        return m

    def get(self, m: YAMLMap, key: str, path: str, conv: Callable[[Any], T], default: T) -> T:
        if key not in m or m[key] is None:
            return default
        try:
            return conv(m[key])
        except Invalid as e:
            self.problem(keyPath(path, key), m.lines.get(key), str(e))
            return default

    def required(self, m: YAMLMap, key: str, path: str, line: int | None) -> Any:
        if key not in m or m[key] is None:
            self.problem(keyPath(path, key), line, "is required")
            return None
        return m[key]

    def seq(self, m: YAMLMap, key: str, path: str, conv: Callable[[Any], T]) -> tuple[T, ...]:
        value = m.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = YAMLSeq([value])
            value.lines = [m.lines.get(key, 0)]
        if not isinstance(value, list):
            self.problem(keyPath(path, key), m.lines.get(key), "must be a list")
            return ()
        lines = getattr(value, "lines", [m.lines.get(key)] * len(value))
        out: list[T] = []
        for i, item in enumerate(value):
            try:
                out.append(conv(item))
            except Invalid as e:
                self.problem(itemPath(keyPath(path, key), i), lines[i], str(e))
        return tuple(out)

    def child(self, m: YAMLMap, key: str) -> tuple[Any, int | None]:
        return m.get(key), m.lines.get(key, m.line)

    def file(self, value: Any) -> Path:
        p = Path(string(value))
        return p if p.is_absolute() else self.baseDir / p

    def readFile(self, m: YAMLMap, key: str, path: str) -> bytes | None:
        if m.get(key) is None:
            return None
        try:
            return self.file(m[key]).read_bytes()
        except (OSError, Invalid) as e:
            self.problem(keyPath(path, key), m.lines.get(key), f"cannot read {m[key]!r}: {getattr(e, 'strerror', None) or e}")
            return None

    # -- sections


    def headerPairs(self, m: YAMLMap, path: str, notAMapping: str) -> list[tuple[str, str]]:
        """C{m["headers"]}: a mapping of header name to value, each checked (a match's, a direct answer's)."""
        headers: list[tuple[str, str]] = []
        hv = m.get("headers")
        if hv is None:
            return headers
        if not isinstance(hv, dict):
            self.problem(keyPath(path, "headers"), m.lines.get("headers"), notAMapping)
            return headers
        for k, v in hv.items():
            try:
                headers.append((headerName(k), headerValue(yamlText(v))))
            except Invalid as e:
                self.problem(keyPath(keyPath(path, "headers"), k), lines(hv).get(k), str(e))
        return headers

    def optionalPath(self, m: YAMLMap, key: str, path: str, default: str | None) -> str | None:
        """A path the gateway answers itself, or C{None} when the key says C{null} or C{false}."""
        if key in m and (m[key] is None or m[key] is False):
            return None
        return self.get(m, key, path, urlPath, default)

    def checkEndpoint(self, description: str, path: str, line: int | None) -> None:
        """A listener the gateway could not open is a config error, not a traceback at start-up."""
        why = endpointProblem(description) or endpointBuildProblem(description)
        if why is not None:
            self.problem(path, line, why)
