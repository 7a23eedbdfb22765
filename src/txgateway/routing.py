"""
Routes: compiled once per config, matched per request.

Matching is a handful of dict look-ups, not a scan: exact paths sit in one
dict, prefixes in another keyed by the prefix itself, and a request path is
walked from its longest segment-prefix to the root.  Within one prefix the
routes are already sorted by precedence, so the first full match wins.

Precedence (the same wherever a route sits in the file): exact path over any
prefix, longer prefix over shorter, then more matchers (host, headers,
methods) over fewer, then the earlier route.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .config import RouteConfig

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers


class PathError(ValueError):
    """A request path that cannot be routed safely; answered with 400."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _pctRepl(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    if byte in _UNRESERVED:
        return bytes((byte,))
    return b"%" + m.group(1).upper()


def normalizePath(raw: bytes) -> str:
    """
    The one canonical form of a request path (RFC 3986 §6.2.2).

    Unreserved characters are percent-decoded, other escapes upper-cased
    (never decoded: C{%2F} stays data, not a separator), duplicate slashes
    merged and dot segments resolved.  A path that climbs above the root is
    refused rather than clamped, so C{/public/../../admin} cannot pose as
    anything.  Idempotent: normalising a normalised path changes nothing.
    """
    if not raw.startswith(b"/"):
        raise PathError("the request path must start with '/'")
    if b"%" in raw:
        for i in range(len(raw)):
            if raw[i] == 0x25 and (i + 2 >= len(raw) or raw[i + 1] not in _HEX or raw[i + 2] not in _HEX):
                raise PathError("malformed percent-encoding in the path")
        raw = _PCT.sub(_pctRepl, raw)
    if b"/." not in raw and b"//" not in raw:
        return raw.decode("latin-1")
    out: list[bytes] = []
    segments = raw.split(b"/")[1:]
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == b"" and i != last:
            continue
        if seg == b".":
            if i == last:
                out.append(b"")
            continue
        if seg == b"..":
            if not out or out == [b""]:
                raise PathError("the path climbs above the root")
            out.pop()
            if i == last:
                out.append(b"")
            continue
        out.append(seg)
    return ("/" + "/".join(s.decode("latin-1") for s in out)) if out else "/"


def normalizeHost(value: bytes | str | None) -> str:
    """Lower case, port and trailing dot removed; C{''} when absent."""
    if not value:
        return ""
    host = value.decode("latin-1") if isinstance(value, bytes) else value
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


def _prefixKey(prefix: str) -> str:
    """C{/api/} and C{/api} match the same paths; the root prefix is C{''}."""
    return prefix.rstrip("/")


class CompiledRoute:
    """One route, ready to match, with its per-route chain attached later."""

    __slots__ = ("config", "name", "exact", "prefix", "host", "hostSuffix", "methods", "headers",
                 "matcherCount", "order", "chain", "cluster", "upstreamName", "_strip", "_rewrite")

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.name = config.name
        m = config.match
        self.exact = m.path
        self.prefix = _prefixKey(m.path_prefix) if m.path_prefix is not None else ("" if m.path is None else None)
        host = m.host
        self.host: str | None = None
        self.hostSuffix: str | None = None
        if host is not None:
            if host.startswith("*."):
                self.hostSuffix = host[1:]
            else:
                self.host = host
        self.methods = frozenset(x.encode() for x in m.methods) or None
        if self.methods is not None and b"GET" in self.methods:
            self.methods = self.methods | {b"HEAD"}
        self.headers = tuple((k.encode(), v.encode()) for k, v in m.headers)
        self.matcherCount = (host is not None) + len(self.headers) + (self.methods is not None)
        self.order = (0 if self.exact is not None else 1, -len(self.exact or self.prefix or ""),
                      -self.matcherCount, config.index)
        self.chain: Any = None
        self.cluster: Any = None
        self.upstreamName = config.upstream
        self._strip = _prefixKey(config.strip_prefix) if config.strip_prefix else None
        self._rewrite = config.rewrite_prefix

    def matchesHost(self, host: str) -> bool:
        if self.host is not None:
            return host == self.host
        if self.hostSuffix is not None:
            return host.endswith(self.hostSuffix) and len(host) > len(self.hostSuffix)
        return True

    def matchesHeaders(self, headers: Headers) -> bool:
        for name, want in self.headers:
            values = headers.getRawHeaders(name)
            if not values:
                return False
            if want != b"*" and want not in values:
                return False
        return True

    def upstreamPath(self, path: str) -> str:
        """The path the backend sees: strip or rewrite the matched prefix."""
        if self._rewrite is not None and self.prefix is not None:
            rest = path[len(self.prefix):] if _segmentPrefix(path, self.prefix) else path
            base = self._rewrite.rstrip("/")
            if not rest:
                return self._rewrite
            return base + rest
        if self._strip is not None and _segmentPrefix(path, self._strip):
            return path[len(self._strip):] or "/"
        return path

    def describe(self) -> str:
        parts = []
        if self.exact is not None:
            parts.append(f"path={self.exact}")
        elif self.config.match.path_prefix is not None:
            parts.append(f"path_prefix={self.config.match.path_prefix}")
        if self.config.match.host:
            parts.append(f"host={self.config.match.host}")
        if self.methods:
            parts.append("methods=" + ",".join(sorted(self.config.match.methods)))
        for k, v in self.config.match.headers:
            parts.append(f"header {k}={v}")
        return " ".join(parts) or "(matches everything)"


def _segmentPrefix(path: str, prefix: str) -> bool:
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "")


@dataclass
class Match:
    route: CompiledRoute | None
    allowed: frozenset[bytes] | None = None  # set when only the method failed: answer 405


class RouteTable:
    """All routes of one config, indexed for matching."""

    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self.routes: tuple[CompiledRoute, ...] = tuple(sorted(routes, key=lambda r: r.order))
        self._exact: dict[str, list[CompiledRoute]] = {}
        self._prefix: dict[str, list[CompiledRoute]] = {}
        for r in self.routes:
            if r.exact is not None:
                self._exact.setdefault(r.exact, []).append(r)
            else:
                assert r.prefix is not None
                self._prefix.setdefault(r.prefix, []).append(r)

    def candidates(self, path: str) -> Iterable[CompiledRoute]:
        """Routes whose path matcher holds, most specific first."""
        exact = self._exact.get(path)
        if exact:
            yield from exact
        prefixes = self._prefix
        p = path.rstrip("/") if path != "/" else ""
        while True:
            group = prefixes.get(p)
            if group:
                yield from group
            if not p:
                return
            p = p[: p.rfind("/")]

    def match(self, method: bytes, host: str, path: str, headers: Headers) -> Match:
        allowed: set[bytes] | None = None
        for r in self.candidates(path):
            if not r.matchesHost(host) or not r.matchesHeaders(headers):
                continue
            if r.methods is not None and method not in r.methods:
                allowed = (allowed or set()) | r.methods
                continue
            return Match(r)
        return Match(None, frozenset(allowed) if allowed else None)

    def explain(self, method: bytes, host: str, path: str, headers: Headers) -> list[tuple[CompiledRoute, str]]:
        """For C{check --explain}: each route, in precedence order, and why it did or did not match."""
        winner = self.match(method, host, path, headers).route
        cands = set(map(id, self.candidates(path)))
        out = []
        for r in self.routes:
            if r is winner:
                why = "MATCHES (the most specific route that holds)"
            elif id(r) not in cands:
                why = "path does not match"
            elif not r.matchesHost(host):
                why = f"host {host!r} does not match"
            elif not r.matchesHeaders(headers):
                why = "a header matcher does not hold"
            elif r.methods is not None and method not in r.methods:
                why = f"method {method.decode()} not allowed"
            else:
                why = "matches, but a more specific route wins"
            out.append((r, why))
        return out


def compileRoutes(configs: Sequence[RouteConfig]) -> list[CompiledRoute]:
    return [CompiledRoute(c) for c in configs]
