# -*- test-case-name: tests.test_routing -*-
"""
Routes: compiled once per config, matched per request.

Matching is a handful of dict look-ups, not a scan: routes are grouped by
their path key (exact paths in one dict, prefixes in another, keyed by the
prefix itself) and, inside a group, indexed by exact host.  A request path
is walked from its longest segment-prefix to the root, and within each group
the routes are already sorted by precedence, so the first full match wins.

Precedence (the same wherever a route sits in the file): exact path over any
prefix, longer prefix over shorter, then more matchers (host, headers,
methods, path_regex, query, client_ip) over fewer, then the more specific
host (exact over wildcard, longer wildcard over shorter), then the earlier
route.

A C{path_regex} route sits in the group of its C{path_prefix} (the root
group without one), so the indexes stay; its pattern (and its C{query} and
C{client_ip} matchers) run only for the routes the indexes and the cheap
matchers left, i.e. after the exact and prefix candidates (see
L{EdgeMatchers}).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from txgateway.config import RouteConfig
from txgateway.http.paths import normalizeConfigPath
from txgateway.matching import EdgeMatchers, PathRewrite

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers

__all__ = ["CompiledRoute", "Match", "RouteTable", "compileRoutes"]


def _prefixKey(prefix: str) -> str:
    """C{/api/} and C{/api} match the same paths; the root prefix is C{''}."""
    return prefix.rstrip("/")


def _segmentPrefix(path: str, prefix: str) -> bool:
    return path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "")


class CompiledRoute:
    """One route, ready to match, with its per-route chain attached later."""

    __slots__ = ("config", "name", "exact", "prefix", "host", "hostSuffix", "methods", "headers",
                 "matcherCount", "order", "chain", "cluster", "upstreamName", "canary", "clusters", "preflight",
                 "allowEncodedSlash", "_strip", "_rewrite", "_rewriteBase", "edge", "pathRewrite")

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.name = config.name
        m = config.match
        # Normalised again here (config.py already does) so that a RouteConfig
        # built by hand, e.g. in a test, cannot hold a path no request matches.
        self.exact = normalizeConfigPath(m.path) if m.path is not None else None
        self.prefix: str | None = None
        if m.path_prefix is not None:
            self.prefix = _prefixKey(normalizeConfigPath(m.path_prefix))
        elif self.exact is None:
            self.prefix = ""
        host = m.host.lower().rstrip(".") if m.host is not None else None
        self.host: str | None = None
        self.hostSuffix: str | None = None
        if host is not None:
            if host.startswith("*."):
                self.hostSuffix = host[1:]
            elif ":" in host and not host.startswith("["):
                self.host = f"[{host}]"  # requests carry IPv6 literals bracketed
            else:
                self.host = host
        methods = frozenset(x.upper().encode() for x in m.methods)
        if b"GET" in methods:
            methods |= {b"HEAD"}
        self.methods: frozenset[bytes] | None = methods or None
        self.headers = tuple((k.encode("ascii"), v.encode("utf-8")) for k, v in m.headers)
        # path_regex, query and client_ip: None when the route has none, so
        # the request path pays one attribute test for them.
        self.edge = EdgeMatchers.forConfig(m)
        self.matcherCount = (host is not None) + len(self.headers) + (self.methods is not None) + (
            self.edge.count if self.edge is not None else 0)
        pathLength = len(self.exact) if self.exact is not None else len(self.prefix or "")
        hostRank = 0 if self.host is not None else (1 if self.hostSuffix is not None else 2)
        self.order = (0 if self.exact is not None else 1, -pathLength, -self.matcherCount,
                      hostRank, -len(self.hostSuffix or ""), config.index)
        # A route with CORS must see the browser's preflight even when its
        # methods do not list OPTIONS, or the preflight would fall through
        # to a less specific route that knows nothing of its CORS policy.
        self.preflight = config.cors is not None
        self.allowEncodedSlash = config.allow_encoded_slash
        self.chain: Any = None
        self.cluster: Any = None
        self.upstreamName = config.upstream
        # Issue 23: the route's splitter and mirror (txgateway.splitting), and
        # with a split the cluster of each of its upstreams.
        self.canary: Any = None
        self.clusters: dict[str, Any] = {}
        self._strip = _prefixKey(normalizeConfigPath(config.strip_prefix)) or None if config.strip_prefix else None
        self._rewrite = normalizeConfigPath(config.rewrite_prefix) if config.rewrite_prefix is not None else None
        self._rewriteBase = self._rewrite.rstrip("/") if self._rewrite is not None else ""
        self.pathRewrite = PathRewrite(config.rewrite_regex) if config.rewrite_regex is not None else None

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

    def matchesPath(self, path: str) -> bool:
        if self.exact is not None:
            return path == self.exact
        assert self.prefix is not None
        return _segmentPrefix(path, self.prefix)

    def allowsMethod(self, method: bytes, headers: Headers) -> bool:
        if self.methods is None or method in self.methods:
            return True
        return self.preflight and method == b"OPTIONS" and headers.hasHeader(b"access-control-request-method")

    def upstreamPath(self, path: str) -> str:
        """
        The path the backend sees.

        C{rewrite_prefix} replaces what the route matched (the exact path,
        or the prefix with the rest of the path kept); C{strip_prefix}
        removes a leading segment-prefix and leaves C{/} when nothing is left;
        C{rewrite_regex} replaces what its pattern finds.
        """
        if self.pathRewrite is not None:
            return self.pathRewrite.apply(path)
        if self._rewrite is not None:
            if self.exact is not None:
                return self._rewrite
            assert self.prefix is not None
            rest = path[len(self.prefix):]
            return self._rewriteBase + rest if rest else self._rewrite
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
        if self.edge is not None:
            parts.extend(self.edge.describe())
        return " ".join(parts) or "(matches everything)"

    def __repr__(self) -> str:
        return f"<CompiledRoute {self.name} {self.describe()}>"


class Match:
    """The outcome of matching: a route, or none and (for a 405) the methods that would have matched."""

    __slots__ = ("route", "allowed")

    def __init__(self, route: CompiledRoute | None, allowed: frozenset[bytes] | None = None) -> None:
        self.route = route
        self.allowed = allowed

    def __repr__(self) -> str:
        return f"<Match {self.route.name if self.route else None} allowed={self.allowed}>"


def _order(r: CompiledRoute) -> tuple[int, ...]:
    return r.order


class _Group:
    """
    The routes sharing one path key, in precedence order, indexed by exact host.

    C{byHost[h]} holds the routes for host C{h} (exact host C{h}, wildcard
    and host-less routes, merged in order); any other host gets C{generic}.
    A thousand virtual hosts behind one prefix stay one dict look-up away.
    """

    __slots__ = ("all", "generic", "byHost")

    def __init__(self, routes: Sequence[CompiledRoute]) -> None:
        self.all = tuple(sorted(routes, key=_order))
        self.generic = tuple(r for r in self.all if r.host is None)
        perHost: dict[str, list[CompiledRoute]] = {}
        for r in self.all:
            if r.host is not None:
                perHost.setdefault(r.host, []).append(r)
        self.byHost = {h: tuple(sorted(rs + list(self.generic), key=_order)) for h, rs in perHost.items()}

    def forHost(self, host: str) -> tuple[CompiledRoute, ...]:
        return self.byHost.get(host, self.generic)


class RouteTable:
    """All routes of one config, indexed for matching."""

    def __init__(self, routes: Iterable[CompiledRoute]) -> None:
        self.routes: tuple[CompiledRoute, ...] = tuple(sorted(routes, key=_order))
        exact: dict[str, list[CompiledRoute]] = {}
        prefix: dict[str, list[CompiledRoute]] = {}
        for r in self.routes:
            if r.exact is not None:
                exact.setdefault(r.exact, []).append(r)
            else:
                assert r.prefix is not None
                prefix.setdefault(r.prefix, []).append(r)
        self._exact = {k: _Group(v) for k, v in exact.items()}
        self._prefix = {k: _Group(v) for k, v in prefix.items()}

    def _groups(self, path: str) -> Iterator[_Group]:
        """The groups whose path key holds for C{path}, most specific first."""
        group = self._exact.get(path)
        if group is not None:
            yield group
        prefixes = self._prefix
        p = path.rstrip("/")
        while True:
            group = prefixes.get(p)
            if group is not None:
                yield group
            if not p:
                return
            p = p[: p.rfind("/")]

    def candidates(self, path: str) -> Iterator[CompiledRoute]:
        """Routes whose path matcher holds, most specific first."""
        for group in self._groups(path):
            yield from group.all

    def match(self, method: bytes, host: str, path: str, headers: Headers, query: bytes | None = None,
              clientIP: str = "") -> Match:
        allowed: set[bytes] | None = None
        queryArgs = None
        for group in self._groups(path):
            for r in group.forHost(host):
                suffix = r.hostSuffix
                if suffix is not None and not (host.endswith(suffix) and len(host) > len(suffix)):
                    continue
                if r.headers and not r.matchesHeaders(headers):
                    continue
                edge = r.edge
                if edge is not None:
                    if queryArgs is None and edge.query:
                        queryArgs = EdgeMatchers.parseQuery(query)
                    if not edge.matches(path, queryArgs, clientIP):
                        continue
                if r.methods is not None and method not in r.methods and not r.allowsMethod(method, headers):
                    allowed = set(r.methods) if allowed is None else allowed | r.methods
                    continue
                return Match(r)
        return Match(None, frozenset(allowed) if allowed else None)

    def explain(self, method: bytes, host: str, path: str, headers: Headers, query: bytes | None = None,
                clientIP: str = "") -> list[tuple[CompiledRoute, str]]:
        """For C{check --explain}: each route, in precedence order, and why it did or did not match."""
        winner = self.match(method, host, path, headers, query, clientIP).route
        out = []
        for r in self.routes:
            if r is winner:
                why = "MATCHES (the most specific route that holds)"
            elif not r.matchesPath(path):
                why = (f"path is not {r.exact}" if r.exact is not None
                       else f"path is not under {r.prefix or '/'}")
            elif not r.matchesHost(host):
                why = f"host {host or '(none)'} is not {r.config.match.host}"
            elif not r.matchesHeaders(headers):
                why = "a header matcher does not hold: " + "; ".join(_headerMisses(r, headers))
            elif r.edge is not None and not r.edge.matches(path, EdgeMatchers.parseQuery(query), clientIP):
                why = "; ".join(r.edge.misses(path, EdgeMatchers.parseQuery(query), clientIP))
            elif not r.allowsMethod(method, headers):
                assert r.methods is not None
                why = f"method {method.decode('latin-1')} is not one of {', '.join(sorted(m.decode() for m in r.methods))}"
            else:
                why = "matches too, but " + (_outranks(winner, r) if winner is not None else "?")
            out.append((r, why))
        return out


def _outranks(winner: CompiledRoute, loser: CompiledRoute) -> str:
    """Which precedence rule puts C{winner} before C{loser}, in words."""
    w, lo = winner.order, loser.order
    if w[0] != lo[0]:
        return f"{winner.name} has an exact path, which beats any prefix"
    if w[1] != lo[1]:
        return f"{winner.name} has a longer path prefix"
    if w[2] != lo[2]:
        return f"{winner.name} has more matchers ({winner.matcherCount} against {loser.matcherCount})"
    if w[3] != lo[3] or w[4] != lo[4]:
        return f"{winner.name} has a more specific host"
    return f"{winner.name} comes earlier in the file"


def _headerMisses(route: CompiledRoute, headers: Headers) -> list[str]:
    out = []
    for name, want in route.headers:
        values = headers.getRawHeaders(name)
        label = name.decode("latin-1")
        if not values:
            out.append(f"header {label} is absent")
        elif want != b"*" and want not in values:
            out.append(f"header {label} is not {want.decode('latin-1')!r}")
    return out


def compileRoutes(configs: Sequence[RouteConfig]) -> list[CompiledRoute]:
    return [CompiledRoute(c) for c in configs]
