"""
The forwarding core, end to end: the real twistd process in front of real origins.

One gateway and two origins are shared by the tests of this module (started
on first use, stopped at interpreter exit); tests that need their own config
start their own.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from .harness import (
    Backend,
    GatewayProcess,
    childEnv,
    deadPort,
    echoed,
    listeningPort,
    raw,
    request,
    simpleConfig,
    startOnNamedPort,
    waitFor,
)
from .harness import shared as sharedProcesses


def _start(started: list[Any]) -> tuple[GatewayProcess, Backend]:
    backend = Backend("origin")
    started.append(backend)
    backend.start()
    gw = GatewayProcess(simpleConfig(
        [backend.url],
        upstreamExtra="    timeouts: {connect: 1s, response: 2s}\n    retries: false",
    ).replace("  listen:", "  max_request_body: 1KiB\n  max_header_bytes: 4KiB\n  trusted_proxies: [10.9.9.9/32]\n  listen:"))
    started.append(gw)
    gw.start()
    return gw, backend


def shared() -> tuple[GatewayProcess, Backend]:
    return sharedProcesses("forwarding", _start)  # type: ignore[no-any-return]


class ForwardingTests(SynchronousTestCase):
    def test_methodPathQueryHeadersAndBodyReachTheBackend(self) -> None:
        """What the client sent is what the backend receives: method, path, query byte for byte, headers, body."""
        gw, _ = shared()
        resp = gw.request("PUT", "/echo/a%20b?z=1&a=%2F&a=2&empty", {"X-Custom": "v1", "Content-Type": "text/plain"},
                          body=b"hello body")
        self.assertEqual(resp.status, 200)
        data = echoed(resp)
        self.assertEqual(data["method"], "PUT")
        self.assertEqual(data["uri"], "/echo/a%20b?z=1&a=%2F&a=2&empty")
        self.assertEqual(data["body"], "hello body")
        self.assertEqual(data["h"]["x-custom"], ["v1"])
        self.assertEqual(data["h"]["content-length"], ["10"])

    def test_statusHeadersAndBodyComeBackUnchanged(self) -> None:
        """A backend's status, its own headers and its body reach the client untouched."""
        gw, _ = shared()
        resp = gw.request("GET", "/status/418")
        self.assertEqual(resp.status, 418)
        self.assertEqual(resp.body, b"status 418 from origin\n")
        self.assertEqual(resp.header("X-Backend"), "origin")
        self.assertEqual(resp.header("Content-Length"), str(len(resp.body)))
        self.assertIsNone(resp.header("Transfer-Encoding"))

    def test_gzipBodyPassesThroughEncoded(self) -> None:
        """A gzip-encoded body is not decoded on the way, and no Accept-Encoding is invented."""
        gw, _ = shared()
        resp = gw.request("GET", "/gzip")
        self.assertEqual(resp.header("Content-Encoding"), "gzip")
        self.assertEqual(gzip.decompress(resp.body), b"compressed hello\n")
        data = echoed(gw.request("GET", "/echo"))
        self.assertNotIn("accept-encoding", data["h"])

    def test_redirectReachesTheClient(self) -> None:
        """A 3xx is relayed, not followed."""
        gw, _ = shared()
        resp = gw.request("GET", "/redirect")
        self.assertEqual(resp.status, 302)
        self.assertEqual(resp.header("Location"), "/echo")

    def test_setCookieReachesClientAndCookiesAreNeverShared(self) -> None:
        """Both Set-Cookie fields reach the client; the next client's request carries no cookie."""
        gw, _ = shared()
        resp = gw.request("GET", "/cookie")
        self.assertEqual(resp.headerList("Set-Cookie"), ["a=1; Path=/", "b=2; Path=/"])
        other = gw.request("GET", "/cookie")
        self.assertEqual(json.loads(other.body), {"cookie": None})

    def test_hopByHopHeadersAreStrippedTowardsTheBackend(self) -> None:
        """Connection, Keep-Alive, TE, Upgrade and every field named in Connection stay at the gateway."""
        gw, _ = shared()
        resp = gw.request("GET", "/echo", [("Connection", "keep-alive, X-Secret-Hop"), ("X-Secret-Hop", "1"),
                                           ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Upgrade", "websocket"),
                                           ("Proxy-Authorization", "Basic eA=="), ("X-Kept", "yes")])
        h = echoed(resp)["h"]
        for name in ("x-secret-hop", "keep-alive", "te", "upgrade", "proxy-authorization"):
            self.assertNotIn(name, h)
        self.assertEqual(h["x-kept"], ["yes"])

    def test_forwardedHeadersAndViaAreAdded(self) -> None:
        """X-Forwarded-For from an untrusted peer is replaced; Proto, Host and Via are added; Host is kept."""
        gw, _ = shared()
        resp = gw.request("GET", "/echo", [("Host", "api.example.com"), ("X-Forwarded-For", "6.6.6.6")])
        h = echoed(resp)["h"]
        self.assertEqual(h["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(h["x-forwarded-proto"], ["http"])
        self.assertEqual(h["x-forwarded-host"], ["api.example.com"])
        self.assertEqual(h["host"], ["api.example.com"])
        self.assertEqual(h["via"], ["1.1 txgateway"])
        self.assertEqual(resp.header("Via"), "1.1 txgateway")

    def test_requestIdIsSentToTheBackendAndReturned(self) -> None:
        """A sane incoming X-Request-ID is kept end to end; otherwise one is made."""
        gw, _ = shared()
        resp = gw.request("GET", "/echo", {"X-Request-ID": "abc-123"})
        self.assertEqual(resp.header("X-Request-ID"), "abc-123")
        self.assertEqual(echoed(resp)["h"]["x-request-id"], ["abc-123"])
        made = gw.request("GET", "/echo").header("X-Request-ID")
        assert made is not None
        self.assertEqual(len(made), 32)

    def test_chunkedStreamIsRelayedWhole(self) -> None:
        """Chunks sent 50 ms apart all reach the client, in order, twice over the same pooled connection."""
        gw, _ = shared()
        for _ in range(2):
            resp = gw.request("GET", "/stream?chunks=3&ms=50")
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.body, b"data: event 0\n\ndata: event 1\n\ndata: event 2\n\n")

    def test_bodyArrivingInPiecesIsRelayedWhole(self) -> None:
        """A body whose second half comes 50 ms after its head reaches the client complete, on a reused connection too."""
        gw, _ = shared()
        for _ in range(3):
            resp = gw.request("GET", "/split?bytes=20000&ms=50")
            self.assertEqual(resp.status, 200)
            self.assertEqual(resp.header("Content-Length"), "20000")
            self.assertEqual(resp.body, b"a" * 10000 + b"b" * 10000)

    def test_largeDownloadStreamsWithoutGrowingMemory(self) -> None:
        """256 MiB pass through while the gateway's resident memory stays flat."""
        gw, _ = shared()
        assert gw.proc is not None
        gw.request("GET", "/big?bytes=1048576")
        before = _rss(gw.proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request("GET", "/big?bytes=268435456")
        resp = conn.getresponse()
        total = 0
        peak = before
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            total += len(chunk)
            if total % (32 << 20) < (1 << 20):
                peak = max(peak, _rss(gw.proc.pid))
        conn.close()
        self.assertEqual(total, 268435456)
        self.assertLess(peak - before, 40 << 20, f"RSS grew from {before} to {peak}")

    def test_serverSentEventsArriveAsTheyAreSent(self) -> None:
        """An event-stream backend's first event reaches the client while the stream is still open."""
        gw, _ = shared()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as s:
            s.sendall(b"GET /sse-hold HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while b"data: first" not in got:
                chunk = s.recv(4096)
                self.assertTrue(chunk, "connection closed before the first event")
                got += chunk
        self.assertIn(b"text/event-stream", got)


class ErrorStatusTests(SynchronousTestCase):
    def test_connectionRefusedIs502WithJsonAndRequestId(self) -> None:
        """A target that refuses connections gives 502 with a small JSON body naming the request."""
        gw = GatewayProcess(simpleConfig([f"http://127.0.0.1:{deadPort()}"], upstreamExtra="    retries: false")).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        resp = gw.request("GET", "/x", {"X-Request-ID": "req-1"})
        self.assertEqual(resp.status, 502)
        body = resp.json()
        self.assertEqual(body["status"], 502)
        self.assertEqual(body["request_id"], "req-1")
        self.assertEqual(resp.header("Content-Type"), "application/json")

    def test_responseTimeoutIs504(self) -> None:
        """A backend that does not answer within timeouts.response gives 504."""
        gw, _ = shared()
        resp = gw.request("GET", "/hang")
        self.assertEqual(resp.status, 504)
        self.assertEqual(resp.json()["reason"], "timeout")

    def test_noRouteIs404NamingHostAndPath(self) -> None:
        """No matching route: 404 JSON with the host and path."""
        backend = Backend("b").start()
        self.addCleanup(backend.stop)
        config = simpleConfig([backend.url]).replace("match: {path_prefix: /}", "match: {path_prefix: /api}")
        gw = GatewayProcess(config).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        resp = gw.request("GET", "/other", {"Host": "Example.COM:8080"})
        self.assertEqual(resp.status, 404)
        self.assertEqual(resp.json()["host"], "example.com")
        self.assertEqual(resp.json()["path"], "/other")

    def test_bodyOverLimitIs413BeforeReachingTheBackend(self) -> None:
        """A Content-Length over max_request_body is refused with 413; the backend never sees it."""
        gw, backend = shared()
        before = backend.count()
        resp = gw.request("POST", "/echo", body=b"x" * 2048)
        self.assertEqual(resp.status, 413)
        self.assertEqual(backend.count(), before + 1)  # that +1 is the /count call itself

    def test_chunkedBodyOverLimitIs413(self) -> None:
        """A chunked body is cut off once it passes max_request_body."""
        gw, _ = shared()
        chunk = b"x" * 600
        data = (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 3 + b"0\r\n\r\n")
        self.assertTrue(raw(gw.port, data).startswith(b"HTTP/1.1 413 "))

    def test_headOverLimitIs431(self) -> None:
        """A request head over max_header_bytes is refused with 431."""
        gw, _ = shared()
        resp = gw.request("GET", "/echo", {"X-Big": "y" * 5000})
        self.assertEqual(resp.status, 431)
        metrics = gw.request("GET", "/metrics").body.decode()
        self.assertRegex(metrics, r'txgateway_refused_requests_total\{status="431"\} [1-9]')


class DrainTests(SynchronousTestCase):
    def test_sigtermLetsTheInFlightRequestFinishThenExitsZero(self) -> None:
        """A request in flight during SIGTERM gets its whole response; the process exits 0."""
        backend = Backend("slow").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url])).start()
        self.addCleanup(gw.cleanup)
        result: dict[str, Any] = {}

        def slow() -> None:
            result["resp"] = gw.request("GET", "/slow?ms=1500", timeout=20)

        before = backend.count()  # /count counts itself: each poll below adds one
        polls = [0]

        def arrived() -> bool:
            polls[0] += 1
            return backend.count() >= before + polls[0] + 1

        t = threading.Thread(target=slow)
        t.start()
        waitFor(arrived, what="the slow request to reach the backend")
        gw.signal(15)
        waitFor(lambda: _refused(gw.port), what="the listener to close")
        t.join(20)
        self.assertEqual(result["resp"].status, 200)
        self.assertEqual(result["resp"].body, b"slow slow\n")
        self.assertEqual(gw.stop(), 0)
        self.assertIn("draining", gw.log())


class EnvironmentConfigTests(SynchronousTestCase):
    def test_noConfigFileUsesTheEnvironment(self) -> None:
        """BACKEND_URL and GATEWAY_PORT alone give a working one-upstream gateway with /health probing it."""
        backend = Backend("envb").start()
        self.addCleanup(backend.stop)
        gw, _ = startOnNamedPort(lambda port: GatewayProcess(
            "", port=port, useConfigFile=False,
            env={"BACKEND_URL": backend.url, "GATEWAY_PORT": str(port), "LOG_LEVEL": "debug", "REQUEST_TIMEOUT": "2s"}))
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        resp = gw.request("GET", "/echo")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("X-Backend"), "envb")
        health = gw.request("GET", "/health")
        self.assertEqual(health.status, 200)
        self.assertEqual(list(health.json()["upstreams"]), ["backend"])

    def test_environmentOverridesTheFilePort(self) -> None:
        """GATEWAY_PORT overrides server.listen's port when a file is given."""
        backend = Backend("envp").start()
        self.addCleanup(backend.stop)
        # The file names port 1: the gateway listens where GATEWAY_PORT says instead.
        gw, port = startOnNamedPort(lambda port: GatewayProcess(simpleConfig([backend.url]), port=1,
                                                                env={"GATEWAY_PORT": str(port)}))
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        self.assertEqual(gw.port, port)
        self.assertEqual(request(port, "GET", "/echo").status, 200)

    def test_invalidConfigExitsOneWithKeyPathAndLine(self) -> None:
        """twistd refuses to start on a bad config and says where the problem is."""
        gw = GatewayProcess(simpleConfig(["ftp://nope"]))
        gw.start(waitReady=False)
        self.addCleanup(gw.cleanup)
        assert gw.proc is not None
        gw.proc.wait(20)
        self.assertNotEqual(gw.proc.returncode, 0)
        self.assertIn("upstreams.app.targets[0]", gw.log())
        self.assertIn("line 9", gw.log())


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True




class DaemonTests(SynchronousTestCase):
    def test_daemonModeWritesPidfileAndLogfileAndServes(self) -> None:
        """`twistd --pidfile --logfile txgateway` detaches, serves, logs to its file and removes the pidfile on stop."""
        backend = Backend("daemon").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url]))
        self.addCleanup(gw.cleanup)
        gw.configPath.write_text(gw.config)
        pidfile, logfile = gw.dir / "gw.pid", gw.dir / "gw.log"
        twistd = str(Path(sys.executable).parent / "twistd")
        subprocess.run([twistd, f"--pidfile={pidfile}", f"--logfile={logfile}", "txgateway", "--config",
                        str(gw.configPath)], check=True, env=childEnv(), cwd=gw.dir, timeout=30)
        pid = int(waitFor(lambda: pidfile.exists() and pidfile.read_text().strip(), what="the pidfile"))
        self.addCleanup(lambda: _kill(pid))
        gw.port = waitFor(lambda: logfile.exists() and listeningPort(logfile.read_text()), what="the daemon's port")
        waitFor(lambda: gw.request("GET", "/ready", timeout=1).status == 200, what="the daemon to be ready")
        self.assertEqual(gw.request("GET", "/echo").header("X-Backend"), "daemon")
        os.kill(pid, signal.SIGTERM)
        waitFor(lambda: not pidfile.exists(), what="the daemon to stop and remove its pidfile")
        self.assertIn('"route":"all"', logfile.read_text())


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
