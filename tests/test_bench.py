"""
The bench's aiohttp + uvloop peer proxy forwards as a proxy must.

`make bench` compares txgateway with bench/aiohttp_proxy.py; that figure
means something only if the peer does a proxy's work: status and body
passed through, hop-by-hop fields dropped both ways, X-Forwarded-For added,
bodies passed on, round robin over the targets, connections kept alive.
This runs it against two bench/backend.py origins in --echo mode (they
answer with the request as received) over real sockets.  It asserts
behaviour, never speed; it needs neither nginx nor HAProxy, and is skipped
where aiohttp or uvloop is not installed (they are bench-only packages).
"""

from __future__ import annotations

import http.client
import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def waitListening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll until C{port} accepts a connection; fail if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


def fields(head: bytes) -> dict[str, list[str]]:
    """A head's fields by lower-cased name."""
    out: dict[str, list[str]] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, _, value = line.partition(":")
        out.setdefault(name.strip().lower(), []).append(value.strip())
    return out


class AiohttpPeerTests(SynchronousTestCase):
    def setUp(self) -> None:
        missing = [m for m in ("aiohttp", "uvloop") if importlib.util.find_spec(m) is None]
        if missing:
            raise SkipTest(f"bench-only packages not installed: {', '.join(missing)}")
        self.origins = [freePort(), freePort()]
        procs = [start(str(BENCH / "backend.py"), str(p), "--echo") for p in self.origins]
        self.port = freePort()
        procs.append(start(str(BENCH / "aiohttp_proxy.py"), str(self.port),
                           *(f"http://127.0.0.1:{p}" for p in self.origins)))
        for proc in procs:
            self.addCleanup(self._stop, proc)
        for port, proc in zip([*self.origins, self.port], procs, strict=True):
            waitListening(port, proc)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        self.addCleanup(self.conn.close)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def send(self, method: str, path: str, headers: list[tuple[str, str]],
             body: bytes | None = None) -> tuple[http.client.HTTPResponse, bytes, bytes]:
        """One request on the kept-alive connection: the response, what the origin saw (head, body)."""
        self.conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in headers:
            self.conn.putheader(name, value)
        if body is not None:
            self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders(body)
        response = self.conn.getresponse()
        seen = response.read()
        head, _, sent = seen.partition(b"\r\n\r\n")
        return response, head, sent

    def test_forwardsStatusBodyAndEndToEndFields(self) -> None:
        """The origin's status, body and end-to-end fields reach the client; the request line is kept."""
        response, head, _ = self.send("GET", "/a/b%2Fc?x=1&y=%20", [("X-Keep", "2")])
        self.assertEqual(response.status, 200)
        self.assertEqual(head.split(b"\r\n", 1)[0], b"GET /a/b%2Fc?x=1&y=%20 HTTP/1.1")
        self.assertEqual(fields(head)["x-keep"], ["2"])
        self.assertEqual(response.getheader("X-End"), "1")
        self.assertEqual(response.getheader("Content-Type"), "text/plain")

    def test_dropsHopByHopFieldsBothWays(self) -> None:
        """Connection, Keep-Alive, TE, Upgrade and the fields Connection names go no further, either way."""
        response, head, _ = self.send("GET", "/", [("Connection", "keep-alive, X-Drop"), ("Keep-Alive", "300"),
                                                   ("X-Drop", "1"), ("TE", "trailers"), ("Upgrade", "h2c"),
                                                   ("Proxy-Connection", "keep-alive")])
        seen = fields(head)
        for name in ("keep-alive", "x-drop", "te", "upgrade", "proxy-connection"):
            self.assertNotIn(name, seen)
        self.assertNotIn("x-drop", seen.get("connection", [""])[0].lower())
        # The origin sent Connection: keep-alive, X-Hop, Keep-Alive and X-Hop.
        self.assertIsNone(response.getheader("X-Hop"))
        self.assertIsNone(response.getheader("Keep-Alive"))
        self.assertNotIn("x-hop", (response.getheader("Connection") or "").lower())

    def test_addsForwardedFor(self) -> None:
        """X-Forwarded-For gets the client's address after any it already carried."""
        _, head, _ = self.send("GET", "/", [("X-Forwarded-For", "192.0.2.7")])
        self.assertEqual(fields(head)["x-forwarded-for"], ["192.0.2.7, 127.0.0.1"])

    def test_passesTheRequestBody(self) -> None:
        """A POST's body reaches the origin whole, with its length."""
        body = bytes(range(256)) * 300
        response, head, sent = self.send("POST", "/upload", [], body)
        self.assertEqual(response.status, 200)
        self.assertEqual(sent, body)
        self.assertEqual(fields(head)["content-length"], [str(len(body))])

    def test_roundRobinOverKeptAliveConnections(self) -> None:
        """Successive requests on one client connection go to each origin in turn."""
        seen = [self.send("GET", "/", [])[0].getheader("X-Origin") for _ in range(4)]
        self.assertEqual(sorted(seen), sorted(str(p) for p in self.origins * 2))
        self.assertNotEqual(seen[0], seen[1])
        self.assertEqual(seen[0], seen[2])
