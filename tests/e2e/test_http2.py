"""
HTTP/2 to clients against the real C{twistd -n txgateway}: a TLS listener with
a certificate made at test time offers C{h2} by ALPN (httpx with its http2
extra as the client), keeps HTTP/1.1 for a client that does not ask for
it, and a C{tcp:} listener with C{server.h2c} takes prior-knowledge HTTP/2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
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
