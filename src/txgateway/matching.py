# -*- test-case-name: tests.test_edge_matching -*-
"""
A route's pattern matchers (C{path_regex}, C{query}, C{client_ip}) and its C{rewrite_regex}.

Compiled once, when the route is (see L{txgateway.routing.CompiledRoute});
per request they cost one attribute test for a route without them.  The
route table runs them last, after the path index, the host, the headers:
a pattern is the dearest matcher, so it only sees the few candidates the
cheap ones left.  Patterns run on RE2 (see L{txgateway.http.patterns}).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from txgateway.http.addresses import AddressSet
from txgateway.http.patterns import Pattern, compilePattern

if TYPE_CHECKING:
    from txgateway.config.schema import MatchConfig, RewriteRegex

__all__ = ["EdgeMatchers", "PathRewrite"]

_NO_QUERY: Mapping[str, list[str]] = {}


class EdgeMatchers:
    """The matchers of one route that are not path keys, host, headers or methods."""

    __slots__ = ("pathRegex", "query", "clients", "count", "config")

    def __init__(self, config: MatchConfig) -> None:
        self.config = config
        self.pathRegex: Pattern | None = compilePattern(config.path_regex) if config.path_regex else None
        self.query: tuple[tuple[str, str, str, Pattern | None], ...] = tuple(
            (q.name, q.kind, q.value, compilePattern(q.value) if q.kind == "regex" else None) for q in config.query)
        self.clients = AddressSet(config.client_ip) if config.client_ip else None
        self.count = (self.pathRegex is not None) + len(self.query) + (self.clients is not None)

    @classmethod
    def forConfig(cls, config: MatchConfig) -> EdgeMatchers | None:
        """The route's matchers, or None when it has none (the usual case)."""
        if config.path_regex is None and not config.query and not config.client_ip:
            return None
        return cls(config)

    @staticmethod
    def parseQuery(query: bytes | None) -> Mapping[str, list[str]]:
        """A request's query as name -> values, decoded once per request that needs it."""
        if not query:
            return _NO_QUERY
        out: dict[str, list[str]] = {}
        for k, v in parse_qsl(query.decode("latin-1"), keep_blank_values=True, max_num_fields=200):
            out.setdefault(k, []).append(v)
        return out

    def matches(self, path: str, query: Mapping[str, list[str]] | None, clientIP: str) -> bool:
        if self.clients is not None and clientIP not in self.clients:
            return False
        for name, kind, want, pattern in self.query:
            values = (query or _NO_QUERY).get(name)
            if values is None:
                return False
            if kind == "value" and want not in values:
                return False
            if pattern is not None and not any(pattern.fullmatch(v) for v in values):
                return False
        return self.pathRegex is None or self.pathRegex.fullmatch(path) is not None

    def misses(self, path: str, query: Mapping[str, list[str]], clientIP: str) -> Iterator[str]:
        """For C{check --explain}: which matchers do not hold."""
        if self.clients is not None and clientIP not in self.clients:
            yield f"client {clientIP or '(none)'} is not in client_ip"
        for name, kind, want, pattern in self.query:
            values = query.get(name)
            if values is None:
                yield f"query parameter {name} is absent"
            elif kind == "value" and want not in values:
                yield f"query parameter {name} is not {want!r}"
            elif pattern is not None and not any(pattern.fullmatch(v) for v in values):
                yield f"query parameter {name} does not match {want!r}"
        if self.pathRegex is not None and self.pathRegex.fullmatch(path) is None:
            yield f"path does not match path_regex {self.config.path_regex!r}"

    def describe(self) -> list[str]:
        c = self.config
        parts = [f"path_regex={c.path_regex}"] if c.path_regex else []
        parts += [f"query {q.name}" + ("" if q.kind == "present" else f"{'~' if q.kind == 'regex' else '='}{q.value}")
                  for q in c.query]
        if c.client_ip:
            parts.append("client_ip=" + ",".join(str(n) for n in c.client_ip))
        return parts


class PathRewrite:
    """C{rewrite_regex}: every match of the pattern in the path replaced (C{\\1}, C{\\g<name>} refer to groups)."""

    __slots__ = ("pattern", "replacement")

    def __init__(self, config: RewriteRegex) -> None:
        self.pattern = compilePattern(config.pattern)
        self.replacement = config.replacement

    def apply(self, path: str) -> str:
        out = self.pattern.sub(self.replacement, path)
        # The backend always gets an origin-form path: one leading slash.
        return "/" + out.lstrip("/")
