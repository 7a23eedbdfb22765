"""
HTTP hardening end to end: raw sockets against the real twistd process.

Every test sends bytes a browser would never send and checks what comes back
on the wire, citing the RFC section that says how it must be.  The gateways
of this module are shared (started on first use, stopped at exit); the
slowloris and connection-cap tests start their own.
"""

from __future__ import annotations

import select
import socket
import time
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import Backend, GatewayProcess, echoed, raw, readAll, request, simpleConfig, waitFor
from .harness import shared as sharedProcesses


def _start(started: list[Any]) -> tuple[GatewayProcess, Backend]:
    backend = Backend("origin")
    started.append(backend)
    backend.start()
    config = simpleConfig(
        [backend.url],
        upstreamExtra="    timeouts: {connect: 1s, response: 3s}\n    retries: false",
        routeExtra="""\
  - name: files
    match: {path_prefix: /files}
    upstream: app
    allow_encoded_slash: true
    strip_prefix: /files
  - name: api
    match: {host: api.example.com, path_prefix: /}
    upstream: app
    rewrite_prefix: /echo/api
""",
    ).replace("  timeouts: {drain: 10s}", """\
  max_request_body: 1KiB
  max_uri_bytes: 500
  trusted_proxies: [127.0.0.1/32]
  timeouts: {drain: 10s, request_header: 1s, request_body: 1s}""")
    gw = GatewayProcess(config)
    started.append(gw)
    gw.start()
    return gw, backend


def shared() -> tuple[GatewayProcess, Backend]:
    return sharedProcesses("hardening", _start)  # type: ignore[no-any-return]


def status(data: bytes) -> int:
    """The status code of the first response in C{data} (0 when there is none)."""
    if not data.startswith(b"HTTP/1.1 "):
        return 0
    return int(data[9:12])


def split(data: bytes) -> tuple[int, dict[bytes, list[bytes]], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status(data), headers, body


def get(path: bytes = b"/echo", *headers: bytes, method: bytes = b"GET") -> bytes:
    lines = b"".join(h + b"\r\n" for h in headers)
    return b"%s %s HTTP/1.1\r\n%sConnection: close\r\n\r\n" % (method, path, lines)


class HostAndTargetTests(SynchronousTestCase):
    def test_missingHostIs400(self) -> None:
        """RFC 9112 §3.2: HTTP/1.1 without Host gets 400."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get())), 400)

    def test_twoHostsAre400(self) -> None:
        """RFC 9112 §3.2: two Host lines get 400."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: a", b"Host: b"))), 400)

    def test_invalidHostIs400(self) -> None:
        """RFC 9112 §3.2: a Host that is not host[:port] gets 400."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: a b"))), 400)
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: x@y"))), 400)

    def test_absoluteFormRoutesByItsAuthority(self) -> None:
        """RFC 9112 §3.2.2: the absolute-form authority picks the route and replaces Host."""
        gw, _ = shared()
        code, _, body = split(raw(gw.port, get(b"http://API.Example.com/v1?x=1", b"Host: other.example")))
        self.assertEqual(code, 200)
        data = echoed(body)
        self.assertEqual(data["uri"], "/echo/api/v1?x=1")
        self.assertEqual(data["h"]["x-forwarded-host"], ["API.Example.com"])

    def test_longTargetIs414(self) -> None:
        """RFC 9112 §3 / RFC 9110 §15.5.15: a request-target over server.max_uri_bytes gets 414."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get(b"/echo/" + b"a" * 600, b"Host: x"))), 414)

    def test_encodedSlashIs400UnlessTheRouteAllowsIt(self) -> None:
        """RFC 3986 §2.2: %2F is refused by default; a route with allow_encoded_slash forwards it unchanged."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get(b"/echo/a%2Fb", b"Host: x"))), 400)
        self.assertEqual(status(raw(gw.port, get(b"/echo/a\\b", b"Host: x"))), 400)
        self.assertEqual(status(raw(gw.port, get(b"/echo/%2e%2e/x", b"Host: x"))), 400)
        self.assertEqual(status(raw(gw.port, get(b"/echo/a%00", b"Host: x"))), 400)
        code, _, body = split(raw(gw.port, get(b"/files/echo/a%2Fb", b"Host: x")))
        self.assertEqual(code, 200)
        self.assertEqual(echoed(body)["uri"], "/echo/a%2Fb")
        self.assertIn("encoded slash", gw.log())


class FramingTests(SynchronousTestCase):
    def test_chunkedUploadReachesTheBackendIntact(self) -> None:
        """RFC 9112 §6 / §7.1: a chunked upload is decoded and re-framed; the backend gets the same bytes."""
        gw, _ = shared()
        body = b"line one\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 10]), body[i:i + 10]) for i in range(0, len(body), 10))
        data = raw(gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                   + chunks + b"0\r\n\r\n")
        code, _, resp = split(data)
        self.assertEqual(code, 200)
        got = echoed(resp)
        self.assertEqual(got["body"].encode("latin-1"), body)
        self.assertEqual(got["h"]["content-length"], [str(len(body))])
        self.assertNotIn("transfer-encoding", got["h"])
        self.assertEqual(data.count(b"HTTP/1.1 "), 1)

    def test_smugglingShapesAre400(self) -> None:
        """RFC 9112 §6.1 / §6.3: CL with TE, two CLs, TE identity and obs-fold are refused with 400."""
        gw, _ = shared()
        for extra in (b"Content-Length: 4\r\nTransfer-Encoding: chunked", b"Content-Length: 4\r\nContent-Length: 5",
                      b"Transfer-Encoding: identity", b"Transfer-Encoding: chunked\r\n folded"):
            data = raw(gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n%s\r\n\r\n0\r\n\r\n" % extra)
            self.assertEqual(status(data), 400, extra)

    def test_controlCharactersInRequestFieldsAre400(self) -> None:
        """RFC 9110 §5.5: CR or NUL inside a field value gets 400."""
        gw, _ = shared()
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: x", b"X-A: a\rb"))), 400)
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: x", b"X-A: a\x00b"))), 400)

    def test_invalidUpstreamFramingIs502(self) -> None:
        """RFC 9112 §6.3: an upstream response with invalid framing or fields is discarded; the client gets 502."""
        gw, _ = shared()
        for kind in (b"cl-te", b"bad-cl", b"two-cl", b"te-identity", b"nul-header", b"cr-header"):
            code, headers, body = split(raw(gw.port, get(b"/raw/" + kind, b"Host: x")))
            self.assertEqual(code, 502, kind)
            self.assertNotIn(b"set-cookie", headers)
            self.assertNotIn(b"hello", body)

    def test_brokenChunkMidBodyCutsTheClientOff(self) -> None:
        """RFC 9112 §7.1: a malformed chunk after the head is out ends the client's response short, not as complete."""
        gw, _ = shared()
        s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
        s.sendall(get(b"/raw/bad-chunk", b"Host: x"))
        data = readAll(s)  # the gateway aborts: a reset may come instead of an orderly close
        # Whether the head got out before the abort depends on socket timing;
        # a complete response never does.
        self.assertIn(status(data), (0, 200))
        self.assertFalse(data.endswith(b"0\r\n\r\n"))
        self.assertNotIn(b"more", data)


    def test_truncatedUpstreamBodyCutsTheClientOff(self) -> None:
        """RFC 9112 §8: a body that ends before its framing says is not passed on as complete; the next request is served."""
        gw, _ = shared()
        data = raw(gw.port, get(b"/raw/truncated", b"Host: x"))
        # The head may or may not be out before the gateway aborts the client connection.
        self.assertIn(status(data), (0, 200))
        if status(data) == 200:
            code, headers, body = split(data)
            self.assertEqual(headers[b"content-length"], [b"10"])
            self.assertLess(len(body), 10)
        data = raw(gw.port, get(b"/raw/chunked-cut", b"Host: x"))
        self.assertIn(status(data), (0, 200))
        self.assertFalse(data.endswith(b"0\r\n\r\n"))  # never the last chunk of a complete response
        self.assertEqual(gw.request("GET", "/status/200").status, 200)


class HeaderTests(SynchronousTestCase):
    def test_bareResponseGetsNoServerOrContentType(self) -> None:
        """RFC 9110 §8.3 / §10.2.4: the gateway adds neither Content-Type nor Server of its own."""
        gw, _ = shared()
        code, headers, body = split(raw(gw.port, get(b"/raw/bare", b"Host: x")))
        self.assertEqual(code, 200)
        self.assertEqual(body, b"bare")
        self.assertNotIn(b"server", headers)
        self.assertNotIn(b"content-type", headers)
        self.assertEqual(headers[b"via"], [b"1.1 txgateway"])

    def test_connectionNamedResponseFieldsAreDropped(self) -> None:
        """RFC 9110 §7.6.1: a field the backend names in Connection is hop-by-hop and never reaches the client."""
        gw, _ = shared()
        code, headers, _ = split(raw(gw.port, get(b"/raw/conn-named", b"Host: x")))
        self.assertEqual(code, 200)
        self.assertNotIn(b"x-internal", headers)
        self.assertEqual(headers[b"x-public"], [b"p"])

    def test_setCookieLinesStaySeparate(self) -> None:
        """RFC 6265 §3: two Set-Cookie fields arrive as two lines, never folded into one."""
        gw, _ = shared()
        _, headers, _ = split(raw(gw.port, get(b"/cookie", b"Host: x")))
        self.assertEqual(headers[b"set-cookie"], [b"a=1; Path=/", b"b=2; Path=/"])

    def test_repeatedRequestFieldsKeepOrder(self) -> None:
        """RFC 9110 §5.3: repeated request fields reach the backend, all of them, in order."""
        gw, _ = shared()
        _, _, body = split(raw(gw.port, get(b"/echo", b"Host: x", b"X-M: 1", b"X-Other: o", b"X-M: 2", b"X-M: 3")))
        self.assertEqual(echoed(body)["h"]["x-m"], ["1", "2", "3"])

    def test_protectedFieldsSurviveConnectionTokens(self) -> None:
        """RFC 9110 §7.6.1: Connection cannot make the gateway drop X-Forwarded-For, X-Request-ID or Authorization."""
        gw, _ = shared()
        _, _, body = split(raw(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\n"
                                        b"X-Request-ID: rid-1\r\nX-Drop: d\r\n"
                                        b"Connection: close, X-Forwarded-For, X-Request-ID, Authorization, X-Drop\r\n\r\n"))
        h = echoed(body)["h"]
        self.assertEqual(h["authorization"], ["Bearer t"])
        self.assertEqual(h["x-request-id"], ["rid-1"])
        self.assertEqual(h["x-forwarded-for"], ["127.0.0.1"])
        self.assertNotIn("x-drop", h)

    def test_viaBothWaysAndLoop508(self) -> None:
        """RFC 9110 §7.6.3: Via is appended both ways; a request already carrying ours is refused with 508."""
        gw, _ = shared()
        code, headers, body = split(raw(gw.port, get(b"/echo", b"Host: x", b"Via: 1.0 edge")))
        self.assertEqual(code, 200)
        self.assertEqual(echoed(body)["h"]["via"], ["1.0 edge", "1.1 txgateway"])
        self.assertEqual(headers[b"via"], [b"1.1 txgateway"])
        self.assertEqual(status(raw(gw.port, get(b"/echo", b"Host: x", b"Via: 1.0 edge, 1.1 txgateway"))), 508)

    def test_forwardedForWalkedThroughTrustedProxies(self) -> None:
        """RFC 7239 §5.2 practice: X-Forwarded-For from a trusted peer is walked right to left; forgeries are dropped."""
        gw, _ = shared()
        _, _, body = split(raw(gw.port, get(b"/echo", b"Host: x", b"X-Forwarded-For: 6.6.6.6, 198.51.100.7")))
        self.assertEqual(echoed(body)["h"]["x-forwarded-for"], ["198.51.100.7, 127.0.0.1"])
        waitFor(lambda: '"client":"198.51.100.7"' in gw.log(), timeout=5, what="access log with the real client")

    def test_requestIdInjectionIsReplaced(self) -> None:
        """RFC 9110 §5.5: an X-Request-ID that is not short and plain is replaced, never echoed."""
        gw, _ = shared()
        _, headers, body = split(raw(gw.port, get(b"/echo", b"Host: x", b"X-Request-ID: a<script>b")))
        rid = headers[b"x-request-id"]
        self.assertEqual(len(rid), 1)
        self.assertRegex(rid[0].decode(), r"\A[0-9a-f]{32}\Z")
        self.assertEqual(echoed(body)["h"]["x-request-id"], [rid[0].decode()])


class LimitTests(SynchronousTestCase):
    def test_bodyOverLimitIs413WithoutContinue(self) -> None:
        """RFC 9110 §10.1.1: a declared body over max_request_body gets 413 at once, never 100 Continue."""
        gw, _ = shared()
        data = raw(gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n")
        self.assertEqual(status(data), 413)
        self.assertNotIn(b"100 Continue", data)

    def _timed(self, data: bytes) -> tuple[bytes, float]:
        gw, _ = shared()
        started = time.monotonic()
        answer = raw(gw.port, data, timeout=5)
        return answer, time.monotonic() - started

    def test_bareLineFeedHeadIs400AtOnce(self) -> None:
        """RFC 9112 §2.2: bare-LF line endings are refused with 400 at once, not at the head deadline (408)."""
        answer, elapsed = self._timed(b"GET /echo HTTP/1.1\nHost: x\n\n")
        self.assertEqual(status(answer), 400)
        self.assertIn(b"bare LF", answer)
        self.assertLess(elapsed, 0.9)  # request_header is 1s here

    def test_chunkOverTheBodyLimitIs413AtOnce(self) -> None:
        """A chunk-size line over max_request_body (1 KiB here) is answered 413 before its bytes come."""
        answer, elapsed = self._timed(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                                      b"40000000\r\nabc")
        self.assertEqual(status(answer), 413)
        self.assertLess(elapsed, 0.9)  # request_body is 1s here

    def test_tenThousandHeaderLinesAre431WithARequestIdAndAnAccessLine(self) -> None:
        """10,000 field lines: 431 (the cap is 500 fields), with an X-Request-ID that the access log also names."""
        gw, _ = shared()
        answer = raw(gw.port, b"GET /echo HTTP/1.1\r\nHost: x\r\n" + b"a:b\r\n" * 10_000 + b"\r\n", timeout=5)
        code, headers, body = split(answer)
        self.assertEqual(code, 431)
        self.assertIn(b"more than 500 header fields", body)
        rid = headers[b"x-request-id"][0].decode()
        waitFor(lambda: rid in gw.log() and '"status":431' in gw.log(), what="the access-log line of the 431")
        line = next(line for line in gw.log().splitlines() if rid in line and "431" in line)
        self.assertIn("refused", line)

    def test_413CarriesTheClientsRequestId(self) -> None:
        """A 413 keeps the client's plain X-Request-ID, as any answered request does."""
        gw, _ = shared()
        answer = raw(gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Request-ID: mine-413\r\nContent-Length: 5000\r\n\r\n")
        code, headers, _ = split(answer)
        self.assertEqual(code, 413)
        self.assertEqual(headers[b"x-request-id"], [b"mine-413"])
        waitFor(lambda: "mine-413" in gw.log(), what="the access-log line of the 413")

    def test_tricklingHeadIsCutOffWith408(self) -> None:
        """RFC 9110 §15.5.9: a head trickled a line at a time is cut off at request_header (1s), each byte or not."""
        gw, _ = shared()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n")
            started = time.monotonic()
            answer = b""
            while not answer and time.monotonic() - started < 5:
                s.sendall(b"X-Slow: 1\r\n")
                if select.select([s], [], [], 0.2)[0]:
                    answer = s.recv(4096)
            elapsed = time.monotonic() - started
        self.assertEqual(status(answer), 408)
        self.assertLess(elapsed, 3)

    def test_slowBodyIsCutOffWith408(self) -> None:
        """RFC 9110 §15.5.9: a body that has not all arrived within request_body (1s) gets 408."""
        gw, backend = shared()
        before = backend.count()
        data = raw(gw.port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", timeout=5)
        self.assertEqual(status(data), 408)
        self.assertEqual(backend.count(), before + 1)  # only the /count call itself

    def test_connectionsPerAddressAreCapped(self) -> None:
        """server.max_connections_per_ip: extra sockets from one address are refused; other addresses are served."""
        backend = Backend("capped").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url]).replace(
            "  timeouts: {drain: 10s}", "  max_connections_per_ip: 3\n  timeouts: {drain: 10s}")).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        held = []
        self.addCleanup(lambda: [s.close() for s in held])
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            held.append(s)
        # The fourth is told why and closed, without sending anything.
        waitFor(lambda: status(readAll(socket.create_connection(("127.0.0.1", gw.port), timeout=5))) == 503,
                timeout=5, what="the fourth connection refused")
        other = socket.socket()
        other.settimeout(5)
        other.bind(("127.0.0.2", 0))
        other.connect(("127.0.0.1", gw.port))
        other.sendall(get(b"/echo", b"Host: x"))
        self.assertEqual(status(readAll(other)), 200)
        held.pop().close()
        waitFor(lambda: request(gw.port, "GET", "/echo", timeout=2).status == 200, timeout=5,
                what="a slot freed by closing one connection")


class SlowlorisTests(SynchronousTestCase):
    def test_slowConnectionsDoNotStarveAWellBehavedClient(self) -> None:
        """RFC 9110 §15.5.9: 200 slow connections from one address leave others answered within a second; all are cut off."""
        backend = Backend("loris").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url]).replace(
            "  timeouts: {drain: 10s}", "  timeouts: {drain: 10s, request_header: 3s}")).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        slow: list[socket.socket] = []
        self.addCleanup(lambda: [s.close() for s in slow])
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Loris-%d: " % i)
            slow.append(s)
        # Keep the slow ones trickling while a well-behaved client asks,
        # until the head deadline (3s) has cut every slow one off.
        latencies = []
        deadline = time.monotonic() + 15
        while slow and time.monotonic() < deadline:
            for s in slow:
                try:
                    s.sendall(b"a")
                except OSError:
                    pass
            started = time.monotonic()
            resp = request(gw.port, "GET", f"/echo?round={len(latencies)}", timeout=5)
            latencies.append(time.monotonic() - started)
            self.assertEqual(resp.status, 200)
            for s in select.select(slow, [], [], 0.2)[0]:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                self.assertIn(status(data), (0, 408))
                slow.remove(s)
                s.close()
        self.assertEqual(slow, [], "slow connections outlived request_header")
        self.assertGreater(len(latencies), 5)
        self.assertLess(max(latencies), 1.0, latencies)
