"""
Issue #28 matchers: path_regex (RE2, or the guarded re fallback), query, client_ip; rewrite_regex; precedence.
"""

from __future__ import annotations

import time

import yaml
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txgateway.config import parseConfig
from txgateway.http.patterns import MAX_SUBJECT, PatternError, compilePattern
from txgateway.routing import RouteTable, compileRoutes


def table(routes: str) -> RouteTable:
    """The route table of the given YAML list of routes, each sent to upstream C{u}."""
    doc = {"upstreams": {"u": {"targets": ["http://127.0.0.1:9"]}},
           "routes": [{**r, "upstream": "u"} for r in yaml.safe_load(routes)]}
    return RouteTable(compileRoutes(parseConfig(yaml.safe_dump(doc)).routes))


def winner(t: RouteTable, path: str, query: bytes | None = None, client: str = "192.0.2.1", method: bytes = b"GET") -> str | None:
    route = t.match(method, "h.test", path, Headers(), query, client).route
    return route.name if route is not None else None


class PatternTests(SynchronousTestCase):
    def test_re2IsLinear(self) -> None:
        p = compilePattern("(a+)+b")
        started = time.monotonic()
        self.assertIsNone(p.fullmatch("a" * 200_000 + "c"))
        self.assertLess(time.monotonic() - started, 1.0)

    def test_re2RefusesBackreferences(self) -> None:
        for bad in (r"(a)\1", "(?=a)a", "", "("):
            self.assertRaises(PatternError, compilePattern, bad)

    def test_fallbackGuard(self) -> None:
        """Without RE2: nested repeats, backreferences and look-arounds refused; long subjects never match."""
        for bad in ("(a+)+b", "(?:x*)*", "((ab)*c)+", r"(a)\1", "(?!a)b"):
            self.assertRaises(PatternError, compilePattern, bad, "re")
        p = compilePattern("/a/[0-9]+", "re")
        self.assertIsNotNone(p.fullmatch("/a/12"))
        self.assertIsNone(p.fullmatch("/a/" + "1" * MAX_SUBJECT))
        self.assertEqual(compilePattern("x", "re").sub("y", "x" * (MAX_SUBJECT + 1)), "x" * (MAX_SUBJECT + 1))


class MatcherTests(SynchronousTestCase):
    def test_pathRegexAnchored(self) -> None:
        t = table("[{name: n, match: {path_regex: '/items/[0-9]+'}}]")
        self.assertEqual(winner(t, "/items/12"), "n")
        self.assertIsNone(winner(t, "/items/12/x"))
        self.assertIsNone(winner(t, "/x/items/12"))

    def test_regexRouteRanksWithItsPrefixGroup(self) -> None:
        """A path_regex counts as a matcher: it beats a catch-all at the same prefix, not a longer prefix."""
        t = table("""
- {name: all, match: {path_prefix: /}}
- {name: rx, match: {path_regex: '/api/v[0-9]+/.*'}}
- {name: api2, match: {path_prefix: /api/v2}}
- {name: scoped, match: {path_prefix: /api, path_regex: '/api/x[0-9]'}}
""")
        self.assertEqual(winner(t, "/api/v1/x"), "rx")
        self.assertEqual(winner(t, "/api/v2/x"), "api2")
        self.assertEqual(winner(t, "/api/x1"), "scoped")
        self.assertEqual(winner(t, "/other"), "all")

    def test_query(self) -> None:
        t = table("[{name: q, match: {path: /s, query: {q: present, lang: en, n: {regex: '[0-9]+'}, "
                  "p: {value: present}}}}]")
        self.assertEqual(winner(t, "/s", b"q=&lang=en&n=5&p=present"), "q")
        self.assertEqual(winner(t, "/s", b"lang=fr&lang=en&q&n=5&p=present"), "q")  # any value may match
        for miss in (None, b"lang=en&n=5&p=present", b"q=1&lang=EN&n=5&p=present", b"q=1&lang=en&n=5x&p=present",
                     b"q=1&lang=en&n=5&p=x"):
            self.assertIsNone(winner(t, "/s", miss), miss)

    def test_clientIP(self) -> None:
        t = table("[{name: c, match: {client_ip: [10.0.0.0/8, '2001:db8::/32', 192.0.2.7]}}]")
        for ip in ("10.2.3.4", "2001:db8::1", "192.0.2.7", "::ffff:10.0.0.1"):
            self.assertEqual(winner(t, "/", client=ip), "c", ip)
        for ip in ("192.0.2.8", "11.0.0.1", ""):
            self.assertIsNone(winner(t, "/", client=ip), ip)

    def test_allMustMatchAndMethodsStillGive405(self) -> None:
        t = table("[{name: c, match: {path_regex: '/a.*', client_ip: [10.0.0.0/8], methods: [POST]}}]")
        self.assertEqual(winner(t, "/ab", client="10.0.0.1", method=b"POST"), "c")
        self.assertIsNone(winner(t, "/ab", client="11.0.0.1", method=b"POST"))
        m = t.match(b"GET", "h.test", "/ab", Headers(), None, "10.0.0.1")
        self.assertEqual((m.route, m.allowed), (None, frozenset({b"POST"})))

    def test_explainSaysWhy(self) -> None:
        t = table("[{name: c, match: {path_regex: '/a', query: {k: v}, client_ip: [10.0.0.0/8]}}]")
        why = dict((r.name, w) for r, w in t.explain(b"GET", "h", "/b", Headers(), b"k=w", "11.0.0.1"))["c"]
        self.assertIn("client 11.0.0.1 is not in client_ip", why)
        self.assertIn("query parameter k is not 'v'", why)
        self.assertIn("path does not match path_regex", why)

    def test_rewriteRegex(self) -> None:
        t = table("[{name: r, match: {path_prefix: /v1}, rewrite_regex: {pattern: '^/v1/(?P<rest>.*)$', "
                  "replacement: '/api/\\g<rest>'}}]")
        route = t.routes[0]
        self.assertEqual(route.upstreamPath("/v1/users/3"), "/api/users/3")
        self.assertEqual(route.upstreamPath("/v1"), "/v1")
        t2 = table("[{name: r, rewrite_regex: {pattern: '^/x', replacement: ''}}]")
        self.assertEqual(t2.routes[0].upstreamPath("/x/y"), "/y")
        self.assertEqual(t2.routes[0].upstreamPath("/x"), "/")
