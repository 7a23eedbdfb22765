"""
Issue #28 templates and answers: escaping where each value lands, redirects and respond bodies,
RFC 7239 Forwarded values, and the edge keys' config errors.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http_headers import Headers

from txgateway.answers import answerFor
from txgateway.config import ConfigError, parseConfig
from txgateway.http.addresses import AddressSet, ForwardedFor, bareIP, forwardedElement, splitForwarded
from txgateway.http.templates import BadValue, Template, safeHost
from txgateway.routing import compileRoutes

UPSTREAM = "upstreams:\n  u: {targets: ['http://127.0.0.1:9']}\n"


class _Request:
    def __init__(self, secure: bool = False) -> None:
        self.secure = secure

    def isSecure(self) -> bool:
        return self.secure


class _Context:
    def __init__(self, path: str = "/p", query: bytes | None = None, host: str = "h.test") -> None:
        self.request = _Request()
        self.path = path
        self.query = query
        self.host = host
        self.clientIP = "10.0.0.1"
        self.method = b"GET"
        self.requestId = "rid"
        self.upstream: str | None = "x"
        self.outcome: str | None = None


def answer(route: str, context: _Context) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    cfg = parseConfig(UPSTREAM + "routes:\n  - " + route + "\n")
    fwd = answerFor(compileRoutes(cfg.routes)[0])
    assert fwd is not None
    out: list[Any] = []
    d: Deferred[Any] = fwd.fetch(context)  # type: ignore[arg-type]
    d.addCallback(out.append)
    response = out[0].response
    body: list[bytes] = []

    class P:
        def makeConnection(self, t: Any) -> None:
            pass

        def dataReceived(self, b: bytes) -> None:
            body.append(b)

        def connectionLost(self, r: Any) -> None:
            pass

    response.deliverBody(P())
    return response.code, dict(response.headers.getAllRawHeaders()), b"".join(body)


class TemplateTests(SynchronousTestCase):
    def test_onlyKnownNamesAreVariables(self) -> None:
        t = Template('{"a": {x}} {host}', "header")
        self.assertEqual(t.render({"host": "h"}), '{"a": {x}} h')
        self.assertTrue(Template("plain {json}").static)

    def test_urlEscaping(self) -> None:
        t = Template("{path}?{query}", "url")
        self.assertEqual(t.render({"path": '//evil.com/"<a b>\r\n', "query": "a=1&b=\"x\"\r"}),
                         "/evil.com/%22%3Ca%20b%3E%0D%0A?a=1&b=%22x%22%0D")
        self.assertEqual(Template("{request_uri}", "url").render({"request_uri": "/\\/evil.com?x=<"}), "/evil.com?x=%3C")

    def test_hostile_hosts(self) -> None:
        for bad in ("evil.com/x", 'a"b', "a b", "a\r\nb", "a@b", "-x.com", "x.com:99999999"):
            self.assertRaises(BadValue, safeHost, bad)
        for good in ("a.b", "a-b.c:8080", "[::1]", "[2001:db8::1]:443", "10.0.0.1"):
            self.assertEqual(safeHost(good), good)

    def test_headerAndBodyEscaping(self) -> None:
        self.assertEqual(Template("x{path}", "header").render({"path": "/a\r\nSet-Cookie: 1"}), "x/aSet-Cookie: 1")
        self.assertEqual(Template("<b>{path}</b>", "html").render({"path": "/<i>&\"'"}),
                         "<b>/&lt;i&gt;&amp;&quot;&#x27;</b>")
        self.assertEqual(Template('{"p": "{path}"}', "json").render({"path": '/"\n'}), '{"p": "/\\"\\n"}')


class AnswerTests(SynchronousTestCase):
    def test_schemeRedirectKeepsPathAndQuery(self) -> None:
        code, headers, body = answer("{name: r, redirect: {scheme: https}}", _Context("/a b", b"x=\"1\""))
        self.assertEqual((code, headers[b"Location"], body), (308, [b"https://h.test/a%20b?x=%221%22"], b""))

    def test_relativeRedirectNeverProtocolRelative(self) -> None:
        code, headers, _ = answer("{name: r, redirect: {to: '{path}', status: 302}}", _Context("//evil.com"))
        self.assertEqual((code, headers[b"Location"]), (302, [b"/evil.com"]))

    def test_badHostIs400(self) -> None:
        context = _Context(host='evil.com/"')
        code, _, body = answer("{name: r, redirect: {scheme: https}}", context)
        self.assertEqual(code, 400)
        self.assertIn(b"not a plain host name", body)

    def test_respond(self) -> None:
        code, headers, body = answer("{name: r, respond: {status: 418, body: 'hi {client_ip}', "
                                     "headers: {X-P: '{path}'}}}", _Context("/t"))
        self.assertEqual((code, body, headers[b"X-P"], headers[b"Content-Length"]), (418, b"hi 10.0.0.1", [b"/t"], [b"11"]))
        self.assertEqual(headers[b"Content-Type"], [b"text/plain; charset=utf-8"])


class ForwardedTests(SynchronousTestCase):
    def test_quoting(self) -> None:
        self.assertEqual(forwardedElement("2001:db8::1", "h:80", "https"), b'for="[2001:db8::1]";host="h:80";proto=https')
        self.assertEqual(forwardedElement("192.0.2.1", "h", "http"), b"for=192.0.2.1;host=h;proto=http")

    def test_parse(self) -> None:
        got = splitForwarded([b'for="[2001:db8::1]:4711";host="a,b;c", For=unknown', b'for=_hidden;by="\\"x"'])
        self.assertEqual([p for _, p in got], [{"for": "[2001:db8::1]:4711", "host": "a,b;c"}, {"for": "unknown"},
                                               {"for": "_hidden", "by": '"x'}])

    def test_hopsWithPorts(self) -> None:
        self.assertEqual([bareIP(h) for h in (b"1.2.3.4:80", b"[::1]:5", b"[::1]", b"::1", b'"[::2]"')],
                         ["1.2.3.4", "::1", "::1", "::1", "::2"])
        ff = ForwardedFor(AddressSet([__import__("ipaddress").ip_network("127.0.0.0/8")]))
        self.assertEqual(ff.clientIP("127.0.0.1", [b"10.0.0.1:1234, 127.0.0.2:80"]), "10.0.0.1")

    def test_readForwarded(self) -> None:
        import ipaddress
        ff = ForwardedFor(AddressSet([ipaddress.ip_network("127.0.0.0/8")]))
        h = Headers({b"forwarded": [b'for="[2001:db8::5]:1", for=127.0.0.9'], b"x-forwarded-for": [b"6.6.6.6"]})
        self.assertEqual(ff.clientIPOf("127.0.0.1", h, "forwarded"), "2001:db8::5")
        self.assertEqual(ff.clientIPOf("127.0.0.1", h, "both"), "2001:db8::5")
        self.assertEqual(ff.clientIPOf("127.0.0.1", h, "x-forwarded"), "6.6.6.6")
        self.assertEqual(ff.clientIPOf("10.0.0.1", h, "forwarded"), "10.0.0.1")  # untrusted peer
        self.assertEqual(ff.clientIPOf("127.0.0.1", Headers({b"forwarded": [b"for=unknown"]}), "forwarded"), "127.0.0.1")


class ConfigTests(SynchronousTestCase):
    def problems(self, route: str, server: str = "") -> str:
        text = (server + "\n" if server else "") + "upstreams:\n  u: {targets: ['http://127.0.0.1:9']}\nroutes:\n  - " + route + "\n"
        try:
            parseConfig(text)
        except ConfigError as e:
            return str(e)
        return ""

    def test_errorsNameTheKey(self) -> None:
        cases = {
            "{name: a, upstream: u, match: {path_regex: '(a)\\1'}}": "routes[0](a).match.path_regex",
            "{name: a, upstream: u, match: {query: {q: [1]}}}": "routes[0](a).match.query.q",
            "{name: a, upstream: u, match: {client_ip: [nope]}}": "routes[0](a).match.client_ip",
            "{name: a, redirect: {status: 200, scheme: https}}": "routes[0](a).redirect.status",
            "{name: a, redirect: {to: '//evil.com'}}": "routes[0](a).redirect.to",
            "{name: a, redirect: {}}": "give to (a URL template) or scheme",
            "{name: a, redirect: {scheme: https}, respond: {}}": "not both",
            "{name: a, upstream: u, compress: {encodings: [lzma]}}": "routes[0](a).compress.encodings",
            "{name: a, upstream: u, compress: {types: [html]}}": "routes[0](a).compress.types",
            "{name: a, upstream: u, rewrite_regex: {replacement: x}}": "routes[0](a).rewrite_regex.pattern",
            "{name: a, upstream: u, strip_prefix: /a, rewrite_regex: {pattern: a}}": "not both",
            "{name: a}": "routes[0](a).upstream",
        }
        for route, want in cases.items():
            self.assertIn(want, self.problems(route), route)
        self.assertIn("server.forwarded_header", self.problems("{upstream: u}", "server: {forwarded_header: x}"))

    def test_answersNeedNoUpstream(self) -> None:
        self.assertEqual(self.problems("{name: a, respond: {body: ok}}"), "")
        cfg = parseConfig(UPSTREAM + "routes:\n  - {name: a, compress: true, respond: {body: ok}}\n")
        self.assertEqual(cfg.routes[0].compress.encodings, ("zstd", "br", "gzip"))  # type: ignore[union-attr]
