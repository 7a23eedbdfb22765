"""
Issue #28 end to end: the real gateway process in front of a real origin.

Pattern, query and client-address matchers; a catastrophic pattern that
stays quick (RE2) and a backreference refused at start-up; redirects and
direct answers with hostile input; RFC 7239 Forwarded written and read;
path rewrites by pattern and templated headers; compression (zstd, br,
gzip) decoded with the same libraries and compared with the origin's bytes,
streamed and from the cache.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import brotli
import zstandard
from twisted.trial.unittest import SynchronousTestCase

from .backend import docBody
from .harness import Backend, GatewayProcess, Response, childEnv, echoed, raw
from .harness import shared as sharedProcesses

CONFIG = """\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
  timeouts: {{drain: 5s}}
  trusted_proxies: [127.0.0.1/32]
  forwarded_header: {mode}
logging:
  level: info
upstreams:
  a:
    targets: [{a}]
routes:
  - name: numbered
    match: {{path_regex: "/items/[0-9]+"}}
    upstream: a
    headers:
      request: {{set: {{X-Client: "{{client_ip}}", X-Seen: "{{method}} {{path}}", X-Json: '{{"a": 1}}'}}}}
      response: {{set: {{X-For: "{{client_ip}}"}}}}
  - name: evil-regex
    match: {{path_prefix: /evil, path_regex: "/evil/(a+)+b"}}
    respond: {{body: "evil matched\\n"}}
  - name: search
    match: {{path: /search, query: {{q: present, lang: en, page: {{regex: "[0-9]{{1,3}}"}}}}}}
    upstream: a
    headers: {{response: {{set: {{X-Route: search}}}}}}
  - name: office
    match: {{path_prefix: /internal, client_ip: [10.0.0.0/8, "2001:db8::/32"]}}
    upstream: a
  - name: internal-refused
    match: {{path_prefix: /internal}}
    respond: {{status: 403, body: "internal only\\n"}}
  - name: to-https
    match: {{host: plain.test}}
    redirect: {{scheme: https}}
  - name: moved
    match: {{path_prefix: /old}}
    redirect: {{to: "https://new.example.com{{path}}?from={{host}}", status: 301}}
  - name: relative
    match: {{path_prefix: /rel}}
    redirect: {{to: "{{path}}/", status: 302}}
  - name: robots
    match: {{path: /robots.txt}}
    respond: {{body: "User-agent: *\\nDisallow: /\\n", headers: {{Cache-Control: "max-age=3600"}}}}
  - name: maintenance
    match: {{path_prefix: /maint}}
    respond:
      status: 503
      body: "<p>{{path}} is down for {{client_ip}}</p>"
      headers: {{Content-Type: text/html, Retry-After: "120", X-Path: "{{path}}"}}
  - name: rewritten
    match: {{path_prefix: /v1/users}}
    upstream: a
    rewrite_regex: {{pattern: "^/v1/users/([0-9]+)$", replacement: "/users/\\\\1/profile"}}
  - name: zipped
    match: {{path_prefix: /doc}}
    upstream: a
    compress: {{encodings: [zstd, br, gzip], min_bytes: 1024}}
  - name: passthrough
    match: {{path: /gzip}}
    upstream: a
    compress: true
  - name: zipped-cached
    match: {{path_prefix: /cached}}
    upstream: a
    rewrite_prefix: /doc
    cache: true
    compress: true
  - name: rest
    match: {{path_prefix: /}}
    upstream: a
"""


def _start(started: list[Any], mode: str) -> GatewayProcess:
    a = Backend("a")
    started.append(a)
    a.start()
    gw = GatewayProcess(CONFIG.format(a=a.url, mode=mode))
    started.append(gw)
    gw.start()
    return gw


def both() -> GatewayProcess:
    return sharedProcesses("edge-both", lambda s: _start(s, "both"))  # type: ignore[no-any-return]


def forwardedOnly() -> GatewayProcess:
    return sharedProcesses("edge-forwarded", lambda s: _start(s, "forwarded"))  # type: ignore[no-any-return]


def get(path: str, headers: dict[str, str] | None = None, host: str = "h.test", gw: GatewayProcess | None = None,
        method: str = "GET") -> Response:
    return (gw or both()).request(method, path, {"Host": host, **(headers or {})})


def headerOf(data: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in data["headers"] if k.lower() == name.lower()]


class MatcherE2ETests(SynchronousTestCase):
    def test_pathRegexIsAnchored(self) -> None:
        """path_regex must match the whole path: /items/42 matches, /items/42/x and /x/items/42 do not."""
        self.assertEqual(headerOf(echoed(get("/items/42")), "X-Seen"), ["GET /items/42"])
        self.assertEqual(headerOf(echoed(get("/items/42/x")), "X-Seen"), [])
        self.assertEqual(headerOf(echoed(get("/x/items/42")), "X-Seen"), [])

    def test_catastrophicPatternStaysQuick(self) -> None:
        """(a+)+b against 7000 a's and a c: RE2 answers at once (a backtracking engine would not, ever)."""
        started = time.monotonic()
        resp = get("/evil/" + "a" * 7000 + "c")
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(echoed(resp)["backend"], "a")  # fell through to the catch-all
        self.assertEqual(get("/evil/aaab").body, b"evil matched\n")

    def test_queryMatchers(self) -> None:
        """value, present and regex matchers all must hold; the query is forwarded as sent."""
        ok = get("/search?lang=en&q=&page=12")
        self.assertEqual((ok.status, ok.header("X-Route")), (200, "search"))
        self.assertEqual(echoed(ok)["uri"], "/search?lang=en&q=&page=12")
        for miss in ("/search?lang=en&page=12", "/search?lang=fr&q=x&page=1", "/search?lang=en&q=x&page=1234",
                     "/search?lang=en&q=x&page=1x", "/search"):
            self.assertIsNone(get(miss).header("X-Route"), miss)

    def test_clientIPAfterTrustedProxies(self) -> None:
        """client_ip reads the real client: X-Forwarded-For from a trusted peer, hops written ip:port or [v6]:port."""
        self.assertEqual(get("/internal/x").status, 403)  # the peer, 127.0.0.1, is not in the office
        self.assertEqual(get("/internal/x").body, b"internal only\n")
        for xff in ("10.1.2.3", "10.1.2.3:4711", "[2001:db8::7]:443", "192.0.2.1, 10.9.9.9"):
            resp = get("/internal/x", {"X-Forwarded-For": xff})
            self.assertEqual((xff, resp.status), (xff, 200))
        self.assertEqual(get("/internal/x", {"X-Forwarded-For": "10.1.2.3, 192.0.2.1"}).status, 403)
        # Read from Forwarded as well (forwarded_header: both).
        self.assertEqual(get("/internal/x", {"Forwarded": 'for="[2001:db8::9]:80";proto=https'}).status, 200)


class AnswerE2ETests(SynchronousTestCase):
    def test_schemeRedirect(self) -> None:
        resp = get("/a/b?x=1&y=%20", host="plain.test:8080")
        self.assertEqual((resp.status, resp.header("Location")), (308, "https://plain.test/a/b?x=1&y=%20"))
        self.assertEqual(resp.body, b"")

    def test_templateRedirect(self) -> None:
        resp = get("/old/page", host="shop.test")
        self.assertEqual((resp.status, resp.header("Location")),
                         (301, "https://new.example.com/old/page?from=shop.test"))

    def test_hostileRedirectInput(self) -> None:
        """CRLF, quotes, angle brackets and //evil.com never reach a Location as they came."""
        resp = get('/old/%0D%0ASet-Cookie:%20x=1/"<script>', host="shop.test")
        location = resp.header("Location") or ""
        self.assertEqual(resp.status, 301)
        self.assertTrue(location.startswith("https://new.example.com/old/"), location)
        for bad in ("\r", "\n", '"', "<", ">", " "):
            self.assertNotIn(bad, location)
        self.assertIsNone(resp.header("Set-Cookie"))
        # A relative redirect whose path starts with slashes stays on this host.
        for path in ("//evil.com/rel", "/rel/..//evil.com", "/%2F%2Fevil.com/rel"):
            loc = get(path).header("Location") or ""
            self.assertFalse(loc.startswith("//") or loc.startswith("/\\"), (path, loc))
        # A Host that is not a host name cannot steer a redirect.
        out = raw(both().port, b"GET /x HTTP/1.1\r\nHost: plain.test\r\nConnection: close\r\n\r\n")
        self.assertIn(b"Location: https://plain.test/x", out)
        out = raw(both().port, b"GET /old/x HTTP/1.1\r\nHost: evil.com/\"x\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 400"), out[:200])
        self.assertNotIn(b"Location", out)

    def test_respondAnswersWithoutAnUpstream(self) -> None:
        resp = get("/robots.txt")
        self.assertEqual((resp.status, resp.body), (200, b"User-agent: *\nDisallow: /\n"))
        self.assertEqual(resp.header("Cache-Control"), "max-age=3600")
        self.assertEqual(resp.header("Content-Type"), "text/plain; charset=utf-8")
        self.assertTrue(resp.header("X-Request-ID"))

    def test_respondEscapesForHtml(self) -> None:
        resp = get("/maint/%3Cscript%3E\"x", {"X-Forwarded-For": "10.0.0.1"})
        self.assertEqual((resp.status, resp.header("Retry-After")), (503, "120"))
        self.assertEqual(resp.body, b"<p>/maint/%3Cscript%3E&quot;x is down for 10.0.0.1</p>")
        self.assertEqual(resp.header("X-Path"), '/maint/%3Cscript%3E"x')


class ForwardedE2ETests(SynchronousTestCase):
    def test_bothWritesBothQuoted(self) -> None:
        data = echoed(get("/anything", {"Forwarded": 'for="[2001:db8::1]:4711";proto=https'}, host="h.test:81"))
        self.assertEqual(headerOf(data, "Forwarded"),
                         ['for="[2001:db8::1]:4711";proto=https, for=127.0.0.1;host="h.test:81";proto=http'])
        self.assertEqual(headerOf(data, "X-Forwarded-For"), ["127.0.0.1"])

    def test_xForwardedForHopsBecomeForwardedElements(self) -> None:
        """A trusted proxy that only sends X-Forwarded-For: its hops reach the backend as for= elements too."""
        data = echoed(get("/anything", {"X-Forwarded-For": "6.6.6.6, [2001:db8::3]:443"}))
        # The walk stops at the first untrusted hop (the client); 6.6.6.6 is its claim, dropped.
        self.assertEqual(headerOf(data, "Forwarded"), ['for="[2001:db8::3]", for=127.0.0.1;host=h.test;proto=http'])

    def test_forwardedOnly(self) -> None:
        """forwarded: no X-Forwarded-* upstream; the client is read from the trusted proxy's Forwarded."""
        gw = forwardedOnly()
        data = echoed(get("/items/7", {"Forwarded": "for=192.0.2.60;proto=https, for=10.0.0.5",
                                       "X-Forwarded-For": "6.6.6.6"}, gw=gw))
        self.assertEqual(headerOf(data, "X-Forwarded-For"), [])
        self.assertEqual(headerOf(data, "X-Forwarded-Proto"), [])
        # 10.0.0.5 is not trusted: it is the client, and what it claimed left of it is dropped.
        self.assertEqual(headerOf(data, "Forwarded"), ['for=10.0.0.5, for=127.0.0.1;host=h.test;proto=http'])
        self.assertEqual(headerOf(data, "X-Client"), ["10.0.0.5"])

    def test_untrustedForwardedIsIgnored(self) -> None:
        data = echoed(get("/items/7", {"Forwarded": "for=unknown"}, gw=forwardedOnly()))
        self.assertEqual(headerOf(data, "X-Client"), ["127.0.0.1"])


class RewriteE2ETests(SynchronousTestCase):
    def test_rewriteRegex(self) -> None:
        self.assertEqual(echoed(get("/v1/users/42?full=1"))["uri"], "/users/42/profile?full=1")
        self.assertEqual(echoed(get("/v1/users/me"))["uri"], "/v1/users/me")  # no match: unchanged

    def test_templatedHeaders(self) -> None:
        resp = get("/items/9", {"X-Forwarded-For": "10.2.3.4", "X-Client": "spoofed"})
        data = echoed(resp)
        self.assertEqual(headerOf(data, "X-Client"), ["10.2.3.4"])
        self.assertEqual(headerOf(data, "X-Json"), ['{"a": 1}'])  # braces that name no variable stay
        self.assertEqual(resp.header("X-For"), "10.2.3.4")


DECODE = {"gzip": gzip.decompress, "br": brotli.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b)}


class CompressionE2ETests(SynchronousTestCase):
    def fetch(self, path: str, accept: str | None) -> Response:
        return get(path, {"Accept-Encoding": accept} if accept is not None else {})

    def assertDecodes(self, resp: Response, coding: str, original: bytes) -> None:
        self.assertEqual(resp.header("Content-Encoding"), coding, resp.headers)
        self.assertIsNone(resp.header("Content-Length"))
        self.assertIn("accept-encoding", (resp.header("Vary") or "").lower())
        self.assertLess(len(resp.body), len(original))
        self.assertEqual(DECODE[coding](resp.body), original)

    def test_eachCodingDecodesToTheOriginal(self) -> None:
        original = docBody(65536)
        for coding in ("zstd", "br", "gzip"):
            self.assertDecodes(self.fetch("/doc?bytes=65536", coding), coding, original)

    def test_qValuesChoose(self) -> None:
        cases = {"gzip;q=0.5, br;q=0.9, zstd;q=0": "br", "*": "zstd", "gzip, br;q=0.1": "gzip",
                 "br;q=1, zstd;q=1": "zstd", "identity": None, "gzip;q=0": None, "x-gzip": "gzip"}
        for accept, coding in cases.items():
            resp = self.fetch("/doc?bytes=4096", accept)
            self.assertEqual((accept, resp.header("Content-Encoding")), (accept, coding))
            self.assertIn("accept-encoding", (resp.header("Vary") or "").lower())
        plain = self.fetch("/doc?bytes=4096", None)
        self.assertEqual((plain.header("Content-Encoding"), plain.body), (None, docBody(4096)))
        self.assertEqual(plain.header("Content-Length"), "4096")

    def test_streamedChunksDecode(self) -> None:
        """A chunked body written in pieces over time is compressed piece by piece and decodes whole."""
        original = docBody(50000)
        for coding in ("zstd", "br", "gzip"):
            self.assertDecodes(self.fetch("/doc?bytes=50000&chunks=5&ms=20", coding), coding, original)

    def test_neverCompressed(self) -> None:
        """Small, no-transform, other types and already encoded responses go out as the origin sent them."""
        for path in ("/doc?bytes=500", "/doc?bytes=4096&cc=no-transform", "/doc?bytes=4096&type=image/png"):
            resp = self.fetch(path, "gzip, br, zstd")
            self.assertIsNone(resp.header("Content-Encoding"), path)
        encoded = self.fetch("/gzip", "br, zstd, gzip")
        self.assertEqual(encoded.header("Content-Encoding"), "gzip")
        self.assertEqual(gzip.decompress(encoded.body), b"compressed hello\n")

    def test_headAgreesWithGet(self) -> None:
        resp = get("/doc?bytes=4096", {"Accept-Encoding": "br"}, method="HEAD")
        self.assertEqual((resp.status, resp.header("Content-Encoding"), resp.body), (200, "br", b""))

    def test_etagMadeWeak(self) -> None:
        resp = self.fetch('/doc?bytes=4096&etag="v1"', "gzip")
        self.assertEqual(resp.header("ETag"), 'W/"v1"')
        self.assertEqual(self.fetch('/doc?bytes=4096&etag="v1"', "identity").header("ETag"), '"v1"')

    def test_cachedResponsesCompressedForEachClient(self) -> None:
        """The cache stores the origin's bytes once; hits are compressed for each client's Accept-Encoding."""
        original = docBody(30000)
        path = "/cached?bytes=30000&cc=max-age=60&k=edge"
        first = self.fetch(path, "br")
        self.assertDecodes(first, "br", original)
        for coding in ("gzip", "zstd", "br"):
            hit = self.fetch(path, coding)
            self.assertTrue((hit.header("Cache-Status") or "").startswith("txgateway; hit"), hit.headers)
            self.assertDecodes(hit, coding, original)
        plain = self.fetch(path, None)
        self.assertEqual(plain.body, original)


class RefusedPatternTests(SynchronousTestCase):
    def test_backreferenceRefusedAtStart(self) -> None:
        """A pattern RE2 cannot run in linear time stops start-up with the key path."""
        folder = Path(tempfile.mkdtemp(prefix="txgw-edge-"))
        self.addCleanup(shutil.rmtree, folder, True)
        (folder / "gw.yaml").write_text("""\
upstreams:
  app: {targets: ["http://127.0.0.1:9"]}
routes:
  - name: bad
    match: {path_regex: "/(a)\\\\1"}
    upstream: app
""")
        argv = [str(Path(sys.executable).parent / "twistd"), "-n", "--pidfile=", "--logfile=-", "txgateway",
                "--config", "gw.yaml"]
        done = subprocess.run(argv, cwd=folder, env=childEnv(), capture_output=True, text=True, timeout=60)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("routes[0](bad).match.path_regex", done.stdout + done.stderr)
        self.assertIn("line 5", done.stdout + done.stderr)


REDIRECTOR = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
routes:
  - name: to-https
    redirect: {scheme: https, status: 308}
"""


class RedirectorE2ETests(SynchronousTestCase):
    def test_aGatewayOfRedirectsAloneNeedsNoUpstream(self) -> None:
        """Every route answers itself (an HTTP-to-HTTPS redirector): no `upstreams` needed, /health is 200."""
        gw = GatewayProcess(REDIRECTOR).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        resp = gw.request("GET", "/a/b?x=1", {"Host": "plain.test"})
        self.assertEqual((resp.status, resp.header("Location")), (308, "https://plain.test/a/b?x=1"))
        health = gw.request("GET", "/health")
        self.assertEqual((health.status, health.json()["status"]), (200, "ok"))
