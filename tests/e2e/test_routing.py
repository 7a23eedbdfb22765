"""
Routing end to end: the real gateway process in front of two real origins.

Host routing (a Host header picks the service), prefix + header routing
(a canary), strip/rewrite with the query byte for byte, per-route header
rules, normalisation, and the 400/404/405 answers.  One gateway and two
origins serve the whole module (started on first use, stopped at exit).
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, Response, echoed
from .harness import shared as sharedProcesses

CONFIG = """\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
  timeouts: {{drain: 5s}}
logging:
  level: info
upstreams:
  a:
    targets: [{a}]
  b:
    targets: [{b}]
routes:
  - name: users-host
    match: {{host: users.test}}
    upstream: b
  - name: api
    match: {{path_prefix: /api/}}
    upstream: a
    strip_prefix: /api
    headers:
      request: {{set: {{X-Gateway: txgateway}}, remove: [X-Debug]}}
      response: {{set: {{X-Route: api}}, remove: [X-Backend]}}
  - name: api-canary
    match: {{path_prefix: /api/, headers: {{X-Canary: "1"}}}}
    upstream: b
  - name: old
    match: {{path_prefix: /old}}
    upstream: a
    rewrite_prefix: /new/v2
  - name: admin
    match: {{path_prefix: /admin}}
    upstream: b
  - name: public
    match: {{path_prefix: /public}}
    upstream: a
  - name: submit
    match: {{path: /submit, methods: [POST, PUT]}}
    upstream: a
  - name: files
    match: {{path_prefix: /files}}
    upstream: a
    allow_encoded_slash: true
"""

def _start(started: list[Any]) -> GatewayProcess:
    a = Backend("a")
    started.append(a)
    a.start()
    b = Backend("b")
    started.append(b)
    b.start()
    gw = GatewayProcess(CONFIG.format(a=a.url, b=b.url))
    started.append(gw)
    gw.start()
    return gw


def shared() -> GatewayProcess:
    return sharedProcesses("routing", _start)  # type: ignore[no-any-return]


def get(path: str, headers: dict[str, str] | None = None, method: str = "GET", host: str = "h.test") -> Response:
    return shared().request(method, path, {"Host": host, **(headers or {})})


class RoutingE2ETests(SynchronousTestCase):
    def test_hostHeaderPicksTheService(self) -> None:
        """A Host header naming a service routes there, case-insensitively and with any port."""
        for host in ("users.test", "USERS.Test:8080", "users.test."):
            resp = get("/anything", host=host)
            self.assertEqual((host, resp.status, resp.header("X-Backend")), (host, 200, "b"))

    def test_prefixAndHeaderRouting(self) -> None:
        """/api goes to a; with X-Canary: 1 to b, whatever the order of the routes in the file."""
        self.assertEqual(get("/api/x").status, 200)
        self.assertEqual(echoed(get("/api/x"))["backend"], "a")
        self.assertEqual(echoed(get("/api/x", {"X-Canary": "1"}))["backend"], "b")
        self.assertEqual(echoed(get("/api/x", {"X-Canary": "0"}))["backend"], "a")

    def test_stripPrefixKeepsTheQueryByteForByte(self) -> None:
        """strip_prefix changes the path the backend sees; the query arrives exactly as sent."""
        query = "b=2&a=%2F&a=1&empty&x=a+b&%7e=%7E&sp=%20"
        data = echoed(get(f"/api/v1/users?{query}"))
        self.assertEqual(data["uri"], f"/v1/users?{query}")
        self.assertEqual(echoed(get("/api/"))["uri"], "/")

    def test_rewritePrefix(self) -> None:
        """rewrite_prefix replaces the matched prefix and keeps the rest and the query."""
        self.assertEqual(echoed(get("/old/x/y?q=1"))["uri"], "/new/v2/x/y?q=1")
        self.assertEqual(echoed(get("/old"))["uri"], "/new/v2")

    def test_requestAndResponseHeaderRules(self) -> None:
        """Per-route set/remove: request headers on the way in, response headers on the way out."""
        resp = get("/api/x", {"X-Debug": "secret", "X-Gateway": "spoofed"})
        data = echoed(resp)
        self.assertEqual(data["h"]["x-gateway"], ["txgateway"])
        self.assertNotIn("x-debug", data["h"])
        self.assertEqual(resp.header("X-Route"), "api")
        self.assertIsNone(resp.header("X-Backend"))
        other = get("/public/x", {"X-Debug": "kept"})
        self.assertEqual(echoed(other)["h"]["x-debug"], ["kept"])
        self.assertIsNone(other.header("X-Route"))

    def test_dotSegmentsCannotDodgeARoute(self) -> None:
        """/public/../admin is /admin: it takes admin's route, and the backend receives the normalised path."""
        # (Dot segments spelled with escapes are refused outright: see the hardening tests.)
        for raw in ("/public/../admin/x", "//admin//x", "/public/./../admin/./x"):
            data = echoed(get(raw))
            self.assertEqual((raw, data["backend"], data["uri"]), (raw, "b", "/admin/x"))

    def test_unreservedEscapesAreDecoded(self) -> None:
        """%61dmin is admin: decoded before matching, and forwarded decoded."""
        data = echoed(get("/%61dmin/%7Euser"))
        self.assertEqual((data["backend"], data["uri"]), ("b", "/admin/~user"))

    def test_pathAboveTheRootIs400(self) -> None:
        """A path that climbs above the root is refused with 400 JSON."""
        for raw in ("/../admin", "/public/../../admin", "/%2e%2e/x"):
            resp = get(raw)
            self.assertEqual((raw, resp.status), (raw, 400))
            self.assertEqual(resp.json()["status"], 400)

    def test_noRouteIs404NamingHostAndPath(self) -> None:
        """No route: 404 JSON with the host and the normalised path."""
        resp = get("/nothing//here", host="Elsewhere.Test:81")
        self.assertEqual(resp.status, 404)
        body = resp.json()
        self.assertEqual((body["host"], body["path"]), ("elsewhere.test", "/nothing/here"))
        self.assertEqual(resp.header("Content-Type"), "application/json")

    def test_methodMismatchIs405WithAllow(self) -> None:
        """Only the method failing: 405 with Allow listing what the route takes."""
        resp = get("/submit")
        self.assertEqual(resp.status, 405)
        self.assertEqual(resp.header("Allow"), "POST, PUT")
        self.assertEqual(get("/submit", method="PUT").status, 200)

    def test_encodedSlashNeedsTheRouteToAllowIt(self) -> None:
        """%2F is refused with 400 unless the route has allow_encoded_slash; then it is forwarded as is."""
        self.assertEqual(get("/public/a%2Fb").status, 400)
        self.assertEqual(get("/public/a%2fb").status, 400)
        data = echoed(get("/files/a%2fb"))
        self.assertEqual(data["uri"], "/files/a%2Fb")
