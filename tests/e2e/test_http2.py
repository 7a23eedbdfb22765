"""
HTTP/2 to clients against the real C{twistd -n txgateway}: a TLS listener with
a certificate made at test time offers C{h2} by ALPN (httpx with its http2
extra as the client), keeps HTTP/1.1 for a client that does not ask for
it, and a C{tcp:} listener with C{server.h2c} takes prior-knowledge HTTP/2.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import threading
from typing import Any

import httpx
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from ..tlscerts import selfSigned
from .harness import Backend, GatewayProcess, simpleConfig, waitFor


class TlsHttp2Tests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        key, cert = selfSigned()
        config = simpleConfig([self.backend.url], extra="logging: {level: info, access_log: true}\n").replace(
            'listen: "tcp:{port}:interface=127.0.0.1"',
            'listen: "ssl:{port}:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem"').replace(
            "logging:\n  level: info\n", "")
        self.gw = GatewayProcess(config, files={"key.pem": key, "cert.pem": cert})
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start(waitReady=False)
        self.gw.waitListening()
        self.base = f"https://127.0.0.1:{self.gw.port}"
        waitFor(lambda: self._ready(), what="gateway /ready over TLS")

    def _ready(self) -> bool:
        try:
            return httpx.get(self.base + "/ready", verify=False, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, http2: bool = True) -> httpx.Client:
        c = httpx.Client(http2=http2, http1=not http2, verify=False, timeout=10)
        self.addCleanup(c.close)
        return c

    def test_alpnNegotiatesH2AndProxies(self) -> None:
        """An HTTP/2 client gets h2 by ALPN; its requests reach the backend, routed by :authority."""
        c = self.client()
        for i in range(3):
            r = c.get(f"{self.base}/echo/{i}?q=1")
            self.assertEqual(r.http_version, "HTTP/2")
            self.assertEqual(r.status_code, 200)
            echoed: dict[str, Any] = r.json()
            self.assertEqual(echoed["path"], f"/echo/{i}")
            seen = {k.lower(): v for k, v in echoed["headers"]}
            self.assertEqual(seen["x-forwarded-proto"], "https")
            self.assertTrue(r.headers.get("x-request-id"))

    def test_http11ClientStillServed(self) -> None:
        """A client that offers only http/1.1 is served HTTP/1.1 on the same listener."""
        r = self.client(http2=False).get(f"{self.base}/echo/plain")
        self.assertEqual(r.http_version, "HTTP/1.1")
        self.assertEqual(r.status_code, 200)

    def test_postBodyAndStreamedResponse(self) -> None:
        """A request body is forwarded whole; a streamed response arrives chunk by chunk, complete."""
        c = self.client()
        r = c.post(f"{self.base}/echo/post", content=b"x" * 100_000)
        self.assertEqual(r.status_code, 200)
        self.assertEqual(r.json()["body_length"] if "body_length" in r.json() else len(r.json().get("body", "")),
                         100_000)
        with c.stream("GET", f"{self.base}/stream?chunks=3&ms=50") as s:
            chunks = list(s.iter_raw())
        self.assertEqual(s.status_code, 200)
        self.assertEqual(b"".join(chunks).count(b"data:"), 3)

    def test_concurrentStreamsAndAccessLog(self) -> None:
        """Many requests at once share one connection; the access log says which protocol each used."""
        c = self.client()
        rs = [c.get(f"{self.base}/echo/{i}") for i in range(10)]
        self.assertEqual({r.status_code for r in rs}, {200})

        def logged() -> list[dict[str, Any]]:
            lines = []
            for line in self.gw.log().splitlines():
                try:
                    entry = json.loads(line[line.index("{"):])
                except ValueError:
                    continue
                if entry.get("path", "").startswith("/echo/"):
                    lines.append(entry)
            return lines

        waitFor(lambda: len(logged()) >= 10, what="access log lines")
        self.assertEqual({e.get("protocol") for e in logged()}, {"HTTP/2"})


class H2cTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        config = simpleConfig([self.backend.url]).replace("  timeouts: {drain: 10s}\n",
                                                          "  timeouts: {drain: 10s}\n  h2c: true\n")
        self.gw = GatewayProcess(config)
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()
        self.base = f"http://127.0.0.1:{self.gw.port}"

    def test_priorKnowledgeH2c(self) -> None:
        """A client with prior knowledge speaks HTTP/2 in cleartext; an HTTP/1.1 client on the same port too."""
        with httpx.Client(http2=True, http1=False, timeout=10) as c:
            r = c.get(f"{self.base}/echo/h2c")
        self.assertEqual(r.http_version, "HTTP/2")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(self.gw.request("GET", "/echo/h1").status, 200)

    def test_h2loadManyStreams(self) -> None:
        """h2load (nghttp2-client) drives many streams per connection with no failures."""
        h2load = shutil.which("h2load")
        if h2load is None:
            raise SkipTest("h2load is not installed (make ensure-h2load)")
        out = subprocess.run([h2load, "-n", "400", "-c", "2", "-m", "20", f"{self.base}/echo/load"],
                             capture_output=True, text=True, timeout=60).stdout
        self.assertIn("400 succeeded, 0 failed", out.replace("requests: ", "").split("\n", 20)[-1] + out)


class _HeadWatchingOrigin:
    """
    An HTTP/1.1 origin on a raw socket that says when a request's head
    arrived, before it reads the body (a twisted.web origin would read the
    whole body before answering anything), then answers with the body's size.
    """

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.headSeen = threading.Event()
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(20)
            data = b""
            while b"\r\n\r\n" not in data:
                got = conn.recv(65536)
                if not got:
                    return
                data += got
            head, _, rest = data.partition(b"\r\n\r\n")
            self.heads.append(head)
            self.headSeen.set()
            while not rest.endswith(b"0\r\n\r\n"):  # the gateway sends a body of unknown length chunked
                got = conn.recv(65536)
                if not got:
                    return
                rest += got
            body = _unchunk(rest)
            answer = json.dumps({"body_length": len(body)}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer))

    def stop(self) -> None:
        self.sock.close()


def _unchunk(data: bytes) -> bytes:
    out = b""
    while True:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            return out
        out, data = out + data[:n], data[n + 2:]


class StreamedUploadTests(SynchronousTestCase):
    def test_uploadReachesTheOriginBeforeItEnds(self) -> None:
        """
        An HTTP/2 upload that the client sends slowly is forwarded as it
        comes: the origin has the request while the client still holds back
        the rest of its body (it waits for that before sending more).
        """
        origin = _HeadWatchingOrigin()
        self.addCleanup(origin.stop)
        config = simpleConfig([origin.url]).replace(
            "  timeouts: {drain: 10s}\n", "  timeouts: {drain: 10s}\n  h2c: true\n")
        gw = GatewayProcess(config)
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        gw.start(waitReady=False)
        gw.waitListening()
        waitedOk: list[bool] = []

        def body() -> Any:
            yield b"a" * 1000
            waitedOk.append(origin.headSeen.wait(15))  # the origin has the request: only now the rest
            yield b"b" * 1000

        with httpx.Client(http2=True, http1=False, timeout=20) as c:
            r = c.post(f"http://127.0.0.1:{gw.port}/upload", content=body())
        self.assertEqual(r.http_version, "HTTP/2")
        self.assertEqual(waitedOk, [True])
        self.assertEqual((r.status_code, r.json()), (200, {"body_length": 2000}))
        self.assertIn(b"POST /upload HTTP/1.1", origin.heads[0])


FEATURES = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
  timeouts: {drain: 10s}
  h2c: true
logging: {level: info, access_log: true}
auth_policies:
  partners:
    api_key:
      header: X-API-Key
      keys: {alice: "sha256:KEY_DIGEST"}
upstreams:
  app:
    targets: [BACKEND]
routes:
  - name: private
    match: {path_prefix: /private/}
    upstream: app
    auth: partners
  - name: limited
    match: {path_prefix: /limited/}
    upstream: app
    rate_limit: {algorithm: token_bucket, rate: 1/m, burst: 2, key: client_ip}
  - name: cached
    match: {path_prefix: /}
    upstream: app
    cache: {max_ttl: 60s}
"""


class FeaturesOverHttp2Tests(SynchronousTestCase):
    """What a route does over HTTP/1.1 it does over HTTP/2: auth, rate limits, the cache, request ids."""

    def setUp(self) -> None:
        self.backend = Backend("b1").start()
        self.addCleanup(self.backend.stop)
        config = FEATURES.replace("BACKEND", self.backend.url).replace(
            "KEY_DIGEST", hashlib.sha256(b"alice-h2-key").hexdigest())
        self.gw = GatewayProcess(config)
        self.addCleanup(self.gw.cleanup)
        self.addCleanup(self.gw.stop)
        self.gw.start()
        self.c = httpx.Client(http2=True, http1=False, timeout=10, base_url=f"http://127.0.0.1:{self.gw.port}")
        self.addCleanup(self.c.close)

    def test_authRateLimitAndCache(self) -> None:
        """Over h2c: 401 without a key, 429 past the bucket, a cache hit served, each counted in /metrics."""
        denied = self.c.get("/private/x")
        self.assertEqual((denied.http_version, denied.status_code), ("HTTP/2", 401))
        self.assertTrue(denied.headers.get("x-request-id"))
        self.assertEqual(self.c.get("/private/x", headers={"X-API-Key": "alice-h2-key"}).status_code, 200)

        limited = [self.c.get("/limited/x").status_code for _ in range(3)]
        self.assertEqual(limited, [200, 200, 429])

        first = self.c.get("/cacheable?key=h2&cc=max-age%3D30")
        second = self.c.get("/cacheable?key=h2&cc=max-age%3D30")
        self.assertEqual(first.status_code, 200)
        self.assertTrue(second.headers["cache-status"].startswith("txgateway; hit"), second.headers)
        self.assertEqual(second.json()["n"], first.json()["n"])
        self.assertEqual(second.http_version, "HTTP/2")

        metrics = self.c.get("/metrics").text
        self.assertIn('txgateway_rate_limited_total{route="limited"} 1.0', metrics)
        self.assertIn('txgateway_cache_requests_total{result="hit",route="cached"} 1.0', metrics)
