"""
Routing: normalisation, matching precedence, strip/rewrite, check --explain.

The heart of it is one table of (routes, request) -> route cases, one row per
precedence or normalisation rule, and a property test that the indexed
L{RouteTable} always agrees with the plain definition of precedence (the
most specific matching route by its order key) over random route sets.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txgateway import cli
from txgateway.config import ConfigError, GatewayConfig, MatchConfig, RouteConfig, parseConfig
from txgateway.http.paths import PathError, normalizeConfigPath, normalizeHost, normalizePath
from txgateway.routing import CompiledRoute, Match, RouteTable, compileRoutes

EXAMPLE = Path("/work/shared/gw.example.yaml")


def configWith(routes: str, extra: str = "") -> GatewayConfig:
    """A config with upstream C{u} and the given YAML list of routes (each sent to C{u})."""
    doc = yaml.safe_load(extra) or {}
    doc["upstreams"] = {"u": {"targets": ["http://127.0.0.1:9"]}}
    doc["routes"] = [{**r, "upstream": "u"} for r in yaml.safe_load(routes)]
    return parseConfig(yaml.safe_dump(doc, allow_unicode=True))


def tableFor(routes: str) -> RouteTable:
    return RouteTable(compileRoutes(configWith(routes).routes))


def headersOf(items: Sequence[tuple[str, str]]) -> Headers:
    h = Headers()
    for k, v in items:
        h.addRawHeader(k.encode(), v.encode())
    return h


def route(table: RouteTable, method: str = "GET", url: str = "/", host: str = "h.test",
          headers: Sequence[tuple[str, str]] = ()) -> Match:
    return table.match(method.encode(), normalizeHost(host), normalizePath(url.encode()), headersOf(headers))


# (what the row shows, routes YAML, (method, path, host, headers), expected route name or None)
CASES: list[tuple[str, str, tuple[str, str, str, tuple[tuple[str, str], ...]], str | None]] = [
    ("exact path beats a prefix listed before it",
     "- {name: pre, match: {path_prefix: /api}}\n- {name: ex, match: {path: /api/users}}",
     ("GET", "/api/users", "h.test", ()), "ex"),
    ("exact path beats a longer prefix with more matchers",
     "- {name: pre, match: {path_prefix: /api/users, host: h.test, headers: {X-A: '1'}}}\n"
     "- {name: ex, match: {path: /api/users}}",
     ("GET", "/api/users", "h.test", (("X-A", "1"),)), "ex"),
    ("an exact path matches that path only, not with a trailing slash",
     "- {name: ex, match: {path: /api/users}}\n- {name: all, match: {path_prefix: /}}",
     ("GET", "/api/users/", "h.test", ()), "all"),
    ("longer prefix beats a shorter one listed first",
     "- {name: short, match: {path_prefix: /api}}\n- {name: long, match: {path_prefix: /api/v1}}",
     ("GET", "/api/v1/x", "h.test", ()), "long"),
    ("longer prefix beats a shorter one with more matchers",
     "- {name: short, match: {path_prefix: /api, host: h.test, headers: {X-A: '1'}, methods: [GET]}}\n"
     "- {name: long, match: {path_prefix: /api/v1}}",
     ("GET", "/api/v1/x", "h.test", (("X-A", "1"),)), "long"),
    ("the shorter prefix still takes what the longer does not cover",
     "- {name: short, match: {path_prefix: /api}}\n- {name: long, match: {path_prefix: /api/v1}}",
     ("GET", "/api/v2/x", "h.test", ()), "short"),
    ("more matchers win at equal prefix, wherever listed (header route)",
     "- {name: plain, match: {path_prefix: /api}}\n- {name: canary, match: {path_prefix: /api, headers: {X-Canary: '1'}}}",
     ("GET", "/api/x", "h.test", (("X-Canary", "1"),)), "canary"),
    ("without the header the plain route serves",
     "- {name: plain, match: {path_prefix: /api}}\n- {name: canary, match: {path_prefix: /api, headers: {X-Canary: '1'}}}",
     ("GET", "/api/x", "h.test", ()), "plain"),
    ("a wrong header value does not match",
     "- {name: plain, match: {path_prefix: /api}}\n- {name: canary, match: {path_prefix: /api, headers: {X-Canary: '1'}}}",
     ("GET", "/api/x", "h.test", (("X-Canary", "2"),)), "plain"),
    ("header names match case-insensitively",
     "- {name: plain, match: {path_prefix: /api}}\n- {name: canary, match: {path_prefix: /api, headers: {X-Canary: '1'}}}",
     ("GET", "/api/x", "h.test", (("x-canary", "1"),)), "canary"),
    ("\"*\" matches any value, even empty",
     "- {name: plain, match: {path_prefix: /}}\n- {name: any, match: {headers: {X-Debug: '*'}}}",
     ("GET", "/x", "h.test", (("X-Debug", ""),)), "any"),
    ("\"*\" does not match an absent header",
     "- {name: plain, match: {path_prefix: /}}\n- {name: any, match: {headers: {X-Debug: '*'}}}",
     ("GET", "/x", "h.test", ()), "plain"),
    ("a YAML boolean header value means the text true",
     "- {name: plain, match: {path_prefix: /}}\n- {name: flag, match: {headers: {X-Flag: true}}}",
     ("GET", "/x", "h.test", (("X-Flag", "true"),)), "flag"),
    ("two header matchers beat one",
     "- {name: one, match: {headers: {X-A: '1'}}}\n- {name: two, match: {headers: {X-A: '1', X-B: '*'}}}",
     ("GET", "/", "h.test", (("X-A", "1"), ("X-B", "y"))), "two"),
    ("all matchers must hold",
     "- {name: one, match: {headers: {X-A: '1'}}}\n- {name: two, match: {headers: {X-A: '1', X-B: '*'}}}",
     ("GET", "/", "h.test", (("X-A", "1"),)), "one"),
    ("methods count as a matcher",
     "- {name: any, match: {path_prefix: /p}}\n- {name: post, match: {path_prefix: /p, methods: [POST]}}",
     ("POST", "/p", "h.test", ()), "post"),
    ("a method mismatch falls through to a less specific route",
     "- {name: batch, match: {path: /batch, methods: [POST]}}\n- {name: all, match: {path_prefix: /}}",
     ("GET", "/batch", "h.test", ()), "all"),
    ("GET routes answer HEAD too",
     "- {name: get, match: {path_prefix: /, methods: [GET]}}",
     ("HEAD", "/x", "h.test", ()), "get"),
    ("ties go to the earlier route",
     "- {name: first, match: {path_prefix: /api}}\n- {name: second, match: {path_prefix: /api/}}",
     ("GET", "/api/x", "h.test", ()), "first"),
    ("a host-only route beats path_prefix / listed before it",
     "- {name: default, match: {path_prefix: /}}\n- {name: users, match: {host: users.test}}",
     ("GET", "/x", "users.test", ()), "users"),
    ("a host-only route beats a route with no matchers at the root path",
     "- {name: default, match: {path_prefix: /}}\n- {name: users, match: {host: users.test}}",
     ("GET", "/", "users.test", ()), "users"),
    ("path_prefix / takes other hosts",
     "- {name: default, match: {path_prefix: /}}\n- {name: users, match: {host: users.test}}",
     ("GET", "/x", "other.test", ()), "default"),
    ("a longer prefix beats a host-only route",
     "- {name: users, match: {host: users.test}}\n- {name: api, match: {path_prefix: /api}}",
     ("GET", "/api/x", "users.test", ()), "api"),
    ("an exact host beats a wildcard listed before it",
     "- {name: wild, match: {host: '*.example.com'}}\n- {name: users, match: {host: users.example.com}}",
     ("GET", "/", "users.example.com", ()), "users"),
    ("a longer wildcard beats a shorter one",
     "- {name: wild, match: {host: '*.example.com'}}\n- {name: api, match: {host: '*.api.example.com'}}",
     ("GET", "/", "v1.api.example.com", ()), "api"),
    ("a wildcard matches any depth of subdomain",
     "- {name: wild, match: {host: '*.example.com'}}",
     ("GET", "/", "a.b.example.com", ()), "wild"),
    ("a wildcard does not match the bare domain",
     "- {name: wild, match: {host: '*.example.com'}}",
     ("GET", "/", "example.com", ()), None),
    ("a wildcard does not match a look-alike suffix",
     "- {name: wild, match: {host: '*.example.com'}}",
     ("GET", "/", "badexample.com", ()), None),
    ("hosts match case-insensitively, port and trailing dot ignored",
     "- {name: users, match: {host: Users.Example.com}}",
     ("GET", "/", "USERS.example.COM.:8443", ()), "users"),
    ("IPv6 literal hosts match bracketed or not in the config",
     "- {name: v6, match: {host: '::1'}}",
     ("GET", "/", "[::1]:8080", ()), "v6"),
    ("no Host header matches no host route",
     "- {name: users, match: {host: users.test}}",
     ("GET", "/", "", ()), None),
    ("a prefix is segment-aware: /api is not /apix",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/apix", "h.test", ()), None),
    ("a prefix matches itself",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/api", "h.test", ()), "api"),
    ("a prefix matches itself with a trailing slash",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/api/", "h.test", ()), "api"),
    ("a prefix written /api/ also matches /api",
     "- {name: api, match: {path_prefix: /api/}}",
     ("GET", "/api", "h.test", ()), "api"),
    ("a prefix written /api/ does not match /apix",
     "- {name: api, match: {path_prefix: /api/}}",
     ("GET", "/apix", "h.test", ()), None),
    ("paths match case-sensitively",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/API/x", "h.test", ()), None),
    ("dot segments are resolved before matching: /public/../admin is /admin",
     "- {name: public, match: {path_prefix: /public}}\n- {name: admin, match: {path_prefix: /admin}}",
     ("GET", "/public/../admin/x", "h.test", ()), "admin"),
    ("encoded dot segments too",
     "- {name: public, match: {path_prefix: /public}}\n- {name: admin, match: {path_prefix: /admin}}",
     ("GET", "/public/%2e%2E/admin", "h.test", ()), "admin"),
    ("duplicate slashes are merged",
     "- {name: api, match: {path: /api/users}}",
     ("GET", "//api///users", "h.test", ()), "api"),
    ("percent-encoded unreserved characters are decoded",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/%61pi/x", "h.test", ()), "api"),
    ("a route path with an encoded unreserved character matches its decoded form",
     "- {name: home, match: {path: '/%7Euser'}}",
     ("GET", "/~user", "h.test", ()), "home"),
    ("a non-ASCII route path matches the percent-encoded request",
     "- {name: cafe, match: {path: /café}}",
     ("GET", "/caf%c3%a9", "h.test", ()), "cafe"),
    ("%2F is data, not a separator",
     "- {name: api, match: {path_prefix: /api/v1}}\n- {name: all, match: {path_prefix: /}}",
     ("GET", "/api%2Fv1/x", "h.test", ()), "all"),
    ("a route path with dot segments is normalised in the config",
     "- {name: api, match: {path_prefix: /x/../api//v1}}",
     ("GET", "/api/v1/y", "h.test", ()), "api"),
    ("a CORS route sees its preflight though OPTIONS is not among its methods",
     "- {name: batch, match: {path: /batch, methods: [POST]}, cors: {allow_origins: ['https://a.test']}}\n"
     "- {name: all, match: {path_prefix: /}}",
     ("OPTIONS", "/batch", "h.test", (("Access-Control-Request-Method", "POST"),)), "batch"),
    ("a plain OPTIONS is not a preflight",
     "- {name: batch, match: {path: /batch, methods: [POST]}, cors: {allow_origins: ['https://a.test']}}\n"
     "- {name: all, match: {path_prefix: /}}",
     ("OPTIONS", "/batch", "h.test", ()), "all"),
    ("no matching route",
     "- {name: api, match: {path_prefix: /api}}",
     ("GET", "/other", "h.test", ()), None),
]


class MatchTableTests(SynchronousTestCase):
    def test_table(self) -> None:
        """Every row of the precedence and normalisation table routes where it says."""
        failures = []
        for what, routes, (method, path, host, headers), expected in CASES:
            m = route(tableFor(routes), method, path, host, headers)
            got = m.route.name if m.route is not None else None
            if got != expected:
                failures.append(f"{what}: expected {expected}, got {got}")
        self.assertEqual(failures, [])

    def test_exampleConfigRoutesAsItsCommentsSay(self) -> None:
        """The shared example config: canary by header, users by host and prefix, wildcard, default."""
        config = parseConfig(EXAMPLE.read_text(), str(EXAMPLE), EXAMPLE.parent)
        table = RouteTable(compileRoutes(config.routes))

        def name(method: str, url: str, host: str, headers: Sequence[tuple[str, str]] = ()) -> str | None:
            r = route(table, method, url, host, headers).route
            return r.name if r else None

        self.assertEqual(name("POST", "/predict/x", "any.test"), "predict")
        self.assertEqual(name("POST", "/batch_predict", "any.test"), "batch")
        self.assertEqual(name("GET", "/batch_predict", "any.test"), "default")
        self.assertEqual(name("GET", "/api/v1/users", "users.example.com"), "users-api")
        self.assertEqual(name("GET", "/api/v1/users", "users.example.com", [("X-Canary", "1")]), "users-canary")
        self.assertEqual(name("GET", "/other", "users.example.com"), "wildcard-host")
        self.assertEqual(name("GET", "/api/v1/users", "shop.example.com"), "wildcard-host")
        self.assertEqual(name("GET", "/api/v1/users", "elsewhere.test"), "default")
        users = next(r for r in table.routes if r.name == "users-api")
        self.assertEqual(users.upstreamPath("/api/v1/users"), "/v1/users")

    def test_methodMismatchWithNoFallbackIsA405WithAllow(self) -> None:
        """When only the method fails, the match says which methods would have matched (for Allow)."""
        table = tableFor("- {name: a, match: {path: /p, methods: [GET]}}\n"
                         "- {name: b, match: {path_prefix: /p, methods: [PUT, DELETE]}}")
        m = route(table, "POST", "/p")
        self.assertIsNone(m.route)
        self.assertEqual(m.allowed, frozenset({b"GET", b"HEAD", b"PUT", b"DELETE"}))

    def test_methodsOfRoutesWhoseOtherMatchersFailAreNotAllowed(self) -> None:
        """A route for another host does not add its methods to Allow: that would be a 405 for a 404."""
        table = tableFor("- {name: a, match: {path: /p, methods: [GET], host: other.test}}")
        m = route(table, "POST", "/p", "h.test")
        self.assertIsNone(m.route)
        self.assertIsNone(m.allowed)

    def test_thousandHostRoutesMatchByIndex(self) -> None:
        """Host routes under one prefix are indexed: each host reaches its own route."""
        table = tableFor("\n".join(f"- {{name: r{i}, match: {{host: h{i}.test}}}}" for i in range(1000))
                         + "\n- {name: wild, match: {host: '*.test'}}")
        for i in (0, 1, 500, 999):
            self.assertEqual(route(table, url="/x", host=f"h{i}.test").route.name, f"r{i}")  # type: ignore[union-attr]
        self.assertEqual(route(table, url="/x", host="nope.test").route.name, "wild")  # type: ignore[union-attr]

    def test_routesAreListedMostSpecificFirst(self) -> None:
        """C{RouteTable.routes} is in precedence order (what check prints)."""
        table = tableFor("- {name: d, match: {path_prefix: /}}\n- {name: b, match: {path_prefix: /api}}\n"
                         "- {name: a, match: {path: /api/x}}\n- {name: c, match: {path_prefix: /api, host: h.test}}")
        self.assertEqual([r.name for r in table.routes], ["a", "c", "b", "d"])


class NormalizePathTests(SynchronousTestCase):
    CASES = [
        (b"/", "/"),
        (b"/a/b", "/a/b"),
        (b"/a/b/", "/a/b/"),
        (b"//a//b//", "/a/b/"),
        (b"/a/./b", "/a/b"),
        (b"/a/.", "/a/"),
        (b"/a/b/..", "/a/"),
        (b"/a/b/../c", "/a/c"),
        (b"/a/..", "/"),
        (b"/./", "/"),
        (b"/.hidden/..x", "/.hidden/..x"),
        (b"/%41%7e%2d", "/A~-"),
        (b"/%2f%3a", "/%2F%3A"),
        (b"/a%2F..%2Fb", "/a%2F..%2Fb"),
        (b"/x/%2e%2E/y", "/y"),
        (b"/caf\xc3\xa9", "/caf%C3%A9"),
        (b"/a\x01b", "/a%01b"),
        (b"/%25", "/%25"),
    ]

    def test_cases(self) -> None:
        """Each raw path normalises to its canonical form."""
        for raw, want in self.CASES:
            self.assertEqual((raw, normalizePath(raw)), (raw, want))

    def test_refused(self) -> None:
        """Paths that climb above the root, lack the leading slash or have bad escapes are refused."""
        for raw in (b"/..", b"/../a", b"/a/../..", b"/a/../../b", b"/%2e%2e/admin", b"/public/../../admin",
                    b"a/b", b"", b"*", b"/%", b"/%4", b"/%zz", b"http://h/x"):
            self.assertRaises(PathError, normalizePath, raw)

    def test_configPathsRefuseQueries(self) -> None:
        """A route path with ? or # is an error, not a path that never matches."""
        self.assertRaises(PathError, normalizeConfigPath, "/a?b=1")
        self.assertRaises(PathError, normalizeConfigPath, "/a#b")
        self.assertEqual(normalizeConfigPath("/a//b/"), "/a/b/")

    def test_hosts(self) -> None:
        """Host: lower case, no port, no trailing dot, IPv6 brackets kept."""
        self.assertEqual(normalizeHost(b"Example.COM:8080"), "example.com")
        self.assertEqual(normalizeHost("example.com."), "example.com")
        self.assertEqual(normalizeHost(b"[::1]:8080"), "[::1]")
        self.assertEqual(normalizeHost(None), "")
        self.assertEqual(normalizeHost(b""), "")


_SEGMENTS = st.sampled_from(["", ".", "..", "a", "b", "%2e", "%2E%2e", ".%2e", "%2F", "%41", "%7e", "~",
                             "...", ".a", "a.", "%25", "%2", "é", "x y", "%c3%a9"])


class NormalizePropertyTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(st.lists(_SEGMENTS, max_size=10), st.booleans())
    def test_segmentPathsNormaliseSafely(self, segments: list[str], trailing: bool) -> None:
        """Built from tricky segments: idempotent, rooted, no dot segments or empty ones."""
        raw = ("/" + "/".join(segments) + ("/" if trailing else "")).encode("utf-8")
        self.checkPath(raw)

    @settings(max_examples=400, deadline=None)
    @given(st.binary(max_size=40))
    def test_arbitraryBytesNormaliseSafely(self, tail: bytes) -> None:
        """Any bytes after a slash: idempotent, rooted, no dot segments or empty ones."""
        self.checkPath(b"/" + tail)

    def checkPath(self, raw: bytes) -> None:
        try:
            once = normalizePath(raw)
        except PathError:
            return
        self.assertEqual(normalizePath(once.encode("ascii")), once)
        self.assertTrue(once.startswith("/"))
        for bad in ("/./", "/../", "//"):
            self.assertNotIn(bad, once)
        self.assertFalse(once.endswith("/..") or once.endswith("/."))
        self.assertNotIn("..", once.split("/"))
        once.encode("ascii")  # only ASCII reaches a backend


# Random route sets: the index must agree with the plain definition of precedence.
_HOSTS = ["a.test", "b.test", "*.test", "*.x.test", None]
_PREFIXES = ["/", "/api", "/api/", "/api/v1", "/b", None]
_EXACTS = ["/api", "/api/v1/x", "/b"]
_REQ_PATHS = ["/", "/api", "/api/", "/api/v1", "/api/v1/x", "/apix", "/b", "/b/c"]
_REQ_HOSTS = ["a.test", "b.test", "c.test", "y.x.test", "other"]


@st.composite
def _routeConfigs(draw: Any) -> list[RouteConfig]:
    out = []
    for i in range(draw(st.integers(1, 8))):
        exact = draw(st.sampled_from(_EXACTS)) if draw(st.booleans()) and draw(st.booleans()) else None
        prefix = None if exact is not None else draw(st.sampled_from(_PREFIXES))
        headers = tuple(draw(st.lists(st.sampled_from([("X-A", "1"), ("X-B", "*")]), max_size=2, unique=True)))
        methods = tuple(draw(st.sampled_from([(), ("GET",), ("POST",), ("GET", "POST")])))
        match = MatchConfig(host=draw(st.sampled_from(_HOSTS)), path=exact, path_prefix=prefix,
                            methods=methods, headers=headers)
        out.append(RouteConfig(name=f"r{i}", index=i, match=match, upstream="u"))
    return out


def _bruteForce(routes: Sequence[CompiledRoute], method: bytes, host: str, path: str, headers: Headers) -> str | None:
    ok = [r for r in routes if r.matchesPath(path) and r.matchesHost(host) and r.matchesHeaders(headers)
          and r.allowsMethod(method, headers)]
    return min(ok, key=lambda r: r.order).name if ok else None


class IndexAgreesWithDefinitionTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(_routeConfigs(), st.sampled_from(["GET", "POST", "HEAD"]), st.sampled_from(_REQ_HOSTS),
           st.sampled_from(_REQ_PATHS), st.lists(st.sampled_from([("X-A", "1"), ("X-A", "2"), ("X-B", "")]), max_size=2))
    def test_indexedMatchIsTheMostSpecificMatchingRoute(self, configs: list[RouteConfig], method: str, host: str,
                                                        path: str, headers: list[tuple[str, str]]) -> None:
        """The dict-indexed match equals a linear scan for the minimum order key among matching routes."""
        routes = compileRoutes(configs)
        table = RouteTable(routes)
        h = headersOf(headers)
        got = table.match(method.encode(), host, path, h).route
        self.assertEqual(got.name if got else None, _bruteForce(routes, method.encode(), host, path, h))


class UpstreamPathTests(SynchronousTestCase):
    def pathFor(self, routeYAML: str, path: str) -> str:
        r = compileRoutes(configWith(routeYAML).routes)[0]
        return r.upstreamPath(normalizePath(path.encode()))

    def test_stripPrefix(self) -> None:
        """strip_prefix removes a leading segment-prefix, leaving / when nothing is left."""
        r = "- {name: a, match: {path_prefix: /api/}, strip_prefix: /api}"
        self.assertEqual(self.pathFor(r, "/api/v1/users"), "/v1/users")
        self.assertEqual(self.pathFor(r, "/api"), "/")
        self.assertEqual(self.pathFor(r, "/api/"), "/")
        r2 = "- {name: a, match: {path_prefix: /}, strip_prefix: /api/}"
        self.assertEqual(self.pathFor(r2, "/apix/y"), "/apix/y")
        self.assertEqual(self.pathFor(r2, "/other"), "/other")

    def test_stripPrefixSlashOnlyStripsNothing(self) -> None:
        """strip_prefix: / would strip nothing; it is accepted and changes nothing."""
        self.assertEqual(self.pathFor("- {name: a, match: {path_prefix: /}, strip_prefix: /}", "/x/y"), "/x/y")

    def test_rewritePrefix(self) -> None:
        """rewrite_prefix replaces the matched prefix and keeps the rest of the path."""
        r = "- {name: a, match: {path_prefix: /old}, rewrite_prefix: /new/v2}"
        self.assertEqual(self.pathFor(r, "/old/x/y"), "/new/v2/x/y")
        self.assertEqual(self.pathFor(r, "/old"), "/new/v2")
        self.assertEqual(self.pathFor(r, "/old/"), "/new/v2/")
        r2 = "- {name: a, match: {path_prefix: /old/}, rewrite_prefix: /new/}"
        self.assertEqual(self.pathFor(r2, "/old/x"), "/new/x")
        self.assertEqual(self.pathFor(r2, "/old"), "/new/")

    def test_rewriteToRoot(self) -> None:
        """rewrite_prefix: / drops the prefix without leaving a double slash."""
        r = "- {name: a, match: {path_prefix: /api}, rewrite_prefix: /}"
        self.assertEqual(self.pathFor(r, "/api/x"), "/x")
        self.assertEqual(self.pathFor(r, "/api"), "/")

    def test_rewriteOfARootRoute(self) -> None:
        """A host-only (root) route's rewrite_prefix is put in front of the whole path."""
        r = "- {name: a, match: {host: h.test}, rewrite_prefix: /svc}"
        self.assertEqual(self.pathFor(r, "/x"), "/svc/x")
        self.assertEqual(self.pathFor(r, "/"), "/svc/")

    def test_rewriteOfAnExactPath(self) -> None:
        """On an exact path route, rewrite_prefix replaces the whole path."""
        self.assertEqual(self.pathFor("- {name: a, match: {path: /old}, rewrite_prefix: /new}", "/old"), "/new")

    def test_noRuleKeepsTheNormalisedPath(self) -> None:
        """Without strip or rewrite the backend gets the normalised path."""
        self.assertEqual(self.pathFor("- {name: a, match: {path_prefix: /}}", "/a//b/./c/%7e"), "/a/b/c/~")


class RouteConfigTests(SynchronousTestCase):
    def problems(self, routes: str) -> str:
        e = self.assertRaises(ConfigError, configWith, routes)
        return str(e)

    def test_stripAndRewriteTogetherAreAnError(self) -> None:
        """strip_prefix with rewrite_prefix is rejected rather than one silently winning."""
        self.assertIn("not both", self.problems("- {name: a, match: {path_prefix: /a}, strip_prefix: /a, rewrite_prefix: /b}"))

    def test_pathAndPrefixTogetherAreAnError(self) -> None:
        """path with path_prefix is rejected."""
        self.assertIn("not both", self.problems("- {name: a, match: {path: /a, path_prefix: /a}}"))

    def test_routePathClimbingTheRootIsAnError(self) -> None:
        """A route path that climbs above the root is named with its key."""
        text = self.problems("- {name: a, match: {path_prefix: /../a}}")
        self.assertIn("path_prefix", text)
        self.assertIn("climbs above the root", text)

    def test_routePathWithQueryIsAnError(self) -> None:
        """A route path with a query is rejected."""
        self.assertIn("query", self.problems("- {name: a, match: {path: '/a?x=1'}}"))

    def test_routePathsAreStoredNormalised(self) -> None:
        """The config keeps route paths in their matching form."""
        c = configWith("- {name: a, match: {path_prefix: '/a//%7eb/./'}, strip_prefix: '/a//'}").routes[0]
        self.assertEqual(c.match.path_prefix, "/a/~b/")
        self.assertEqual(c.strip_prefix, "/a")

    def test_badHostIsAnError(self) -> None:
        """A host that is neither a name, an IP nor a *.wildcard is rejected."""
        self.assertIn("host", self.problems("- {name: a, match: {host: 'a b'}}"))
        self.assertIn("host", self.problems("- {name: a, match: {host: 'a.*.com'}}"))

    def test_watchConfig(self) -> None:
        """server.watch_config: a duration, false or 0 to turn off, at least 100ms otherwise."""
        self.assertEqual(configWith("- {name: a}", "server: {watch_config: 500ms}\n").server.watch_config, 0.5)
        self.assertEqual(configWith("- {name: a}", "server: {watch_config: false}\n").server.watch_config, 0.0)
        self.assertEqual(configWith("- {name: a}").server.watch_config, 2.0)
        self.assertRaises(ConfigError, configWith, "- {name: a}", "server: {watch_config: 1ms}\n")

    def test_exampleStillLoads(self) -> None:
        """The shared example config loads unchanged."""
        parseConfig(EXAMPLE.read_text(), str(EXAMPLE), EXAMPLE.parent)

    def test_handBuiltRouteConfigIsNormalisedToo(self) -> None:
        """A RouteConfig built in code (not from YAML) still gets a matchable path."""
        r = CompiledRoute(RouteConfig(name="a", index=0, match=MatchConfig(path_prefix="/a//b/"), upstream="u"))
        self.assertEqual(r.prefix, "/a/b")


class ExplainTests(SynchronousTestCase):
    def check(self, *args: str) -> tuple[int, str]:
        out, err = io.StringIO(), io.StringIO()
        code = cli.main(["check", str(EXAMPLE), *args], out, err)
        return code, out.getvalue() + err.getvalue()

    def test_explainNamesTheWinnerAndWhyOthersLost(self) -> None:
        """check --explain prints the winning route, the backend path with its query, and each loser's reason."""
        code, text = self.check("--explain", "http://users.example.com/api/v1/x?a=1&b")
        self.assertEqual(code, 0)
        self.assertIn("=> route users-api, upstream users, backend path /v1/x?a=1&b", text)
        self.assertIn("header X-Canary is absent", text)
        self.assertIn("path is not /batch_predict", text)
        self.assertIn("users-api has a longer path prefix", text)

    def test_explainWithHeaderAndMethod(self) -> None:
        """-H and -X take part in matching."""
        code, text = self.check("--explain", "http://users.example.com/api/v1/x", "-H", "X-Canary: 1", "-X", "post")
        self.assertEqual(code, 0)
        self.assertIn("=> route users-canary", text)
        self.assertIn("users-canary has more matchers (2 against 1)", text)

    def test_explainMethodFallThrough(self) -> None:
        """A method mismatch is explained, and the request falls through to the default route."""
        code, text = self.check("--explain", "http://x.test/batch_predict", "-X", "DELETE")
        self.assertEqual(code, 0)
        self.assertIn("method DELETE is not one of POST", text)
        self.assertIn("=> route default", text)

    def test_explainHostFromHeaderWhenTheURLHasNone(self) -> None:
        """A bare path takes its host from -H Host."""
        code, text = self.check("--explain", "/api/x", "-H", "Host: users.example.com:8080")
        self.assertIn("host=users.example.com", text)
        self.assertIn("=> route users-api", text)

    def test_explainBadPath(self) -> None:
        """A path that climbs above the root is a 400, exit 1."""
        code, text = self.check("--explain", "http://x.test/a/../../b")
        self.assertEqual(code, 1)
        self.assertIn("=> 400", text)

    def test_explainOwnEndpoint(self) -> None:
        """The gateway's own endpoints are answered before routing."""
        code, text = self.check("--explain", "http://x.test/health")
        self.assertEqual(code, 0)
        self.assertIn("answered by the gateway itself", text)

    def test_explain404And405(self) -> None:
        """No route is a 404 naming host and path; only the method failing is a 405 with Allow."""
        config = configWith("- {name: a, match: {path: /p, methods: [PUT]}}")
        out = io.StringIO()
        self.assertEqual(cli.explain(config, "http://h.test/q", "GET", [], out), 1)
        self.assertIn("=> 404 no route for host h.test and path /q", out.getvalue())
        out = io.StringIO()
        self.assertEqual(cli.explain(config, "http://h.test/p", "GET", [], out), 1)
        self.assertIn("=> 405 method not allowed (Allow: PUT)", out.getvalue())

    def test_explainEncodedSlash(self) -> None:
        """A %2F on a route that does not allow it is explained as the 400 it gets."""
        config = configWith("- {name: a, match: {path_prefix: /}}")
        out = io.StringIO()
        self.assertEqual(cli.explain(config, "http://h.test/a%2fb", "GET", [], out), 1)
        self.assertIn("allow_encoded_slash", out.getvalue())
