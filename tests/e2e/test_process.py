"""
The process as an operator meets it (issue #18, items 3, 4, 6 and 8), against the real twistd.

A client that stops reading is cut at server.timeouts.write; a burst of
5,000 connections is accepted (server.backlog); a drain that cuts requests
exits 3 and a clean one 0; a port in use exits non-zero with one clear line,
in the foreground and as a daemon.
"""

from __future__ import annotations

import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .harness import Backend, GatewayProcess, childEnv, request, simpleConfig, waitFor


def _established(port: int) -> int:
    """How many TCP connections on this machine are ESTABLISHED with C{port} at either end."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, remote, state = fields[1], fields[2], fields[3]
                    if state == "01" and port in (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)):
                        n += 1
        except OSError:
            continue
    return n


def _metric(gw: GatewayProcess, name: str) -> float:
    for line in gw.request("GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class WriteTimeoutTests(SynchronousTestCase):
    def test_aClientThatStopsReadingIsCutWithItsUpstream(self) -> None:
        """A 300 MB download the client stops reading is aborted after timeouts.write (1s here), both sides closed."""
        backend = Backend("big").start()
        self.addCleanup(backend.stop)
        config = simpleConfig([backend.url]).replace("timeouts: {drain: 10s}", "timeouts: {drain: 10s, write: 1s}")
        gw = GatewayProcess(config).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        s = socket.socket()
        self.addCleanup(s.close)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", gw.port))
        s.sendall(b"GET /big?bytes=300000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        first = s.recv(4096)
        self.assertTrue(first.startswith(b"HTTP/1.1 200"), first[:100])
        waitFor(lambda: _established(backend.port) > 0, what="the gateway's upstream connection")
        # Now read nothing: the gateway's buffers fill, it pauses, and a second later gives up.
        waitFor(lambda: _metric(gw, "txgateway_write_timeouts_total") >= 1, timeout=30, what="a write timeout")
        waitFor(lambda: _established(backend.port) == 0, timeout=10, what="the upstream connection to close")
        s.settimeout(10)
        got = 0
        try:
            while True:
                chunk = s.recv(1 << 20)
                if not chunk:
                    break
                got += len(chunk)
        except ConnectionResetError:
            pass
        self.assertLess(got, 300_000_000)  # cut, not finished
        self.assertIn("server.timeouts.write", gw.log())


class BacklogTests(SynchronousTestCase):
    def test_fiveThousandConnectionsAtOnceAreAllAccepted(self) -> None:
        """5,000 clients connecting at once are all accepted and answered (the listen queue is somaxconn)."""
        want = 5000
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want + 200:
            if hard != resource.RLIM_INFINITY and hard < want + 200:
                raise SkipTest(f"RLIMIT_NOFILE hard limit {hard} is below {want + 200}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (want + 200, hard))
            self.addCleanup(resource.setrlimit, resource.RLIMIT_NOFILE, (soft, hard))
        config = simpleConfig(["http://127.0.0.1:9"]).replace(
            "timeouts: {drain: 10s}", "timeouts: {drain: 10s}\n  max_connections_per_ip: 0")
        gw = GatewayProcess(config).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        if shutil.which("ss"):
            # For a listening socket, ss shows the backlog as Send-Q.
            out = subprocess.run(["ss", "-ltnH", f"sport = :{gw.port}"], capture_output=True, text=True).stdout
            with open("/proc/sys/net/core/somaxconn") as f:
                somaxconn = f.read().strip()
            self.assertEqual(out.split()[2], somaxconn, out)
        sel = selectors.DefaultSelector()
        socks = []
        try:
            for _ in range(want):
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(("127.0.0.1", gw.port))
                socks.append(s)
                sel.register(s, selectors.EVENT_WRITE)
            answered = 0
            deadline = time.monotonic() + 60
            replies: dict[socket.socket, bytes] = {}
            while answered < want and time.monotonic() < deadline:
                for key, events in sel.select(timeout=1):
                    s = key.fileobj  # type: ignore[assignment]
                    if events & selectors.EVENT_WRITE:
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                            sel.unregister(s)
                            continue
                        s.send(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        sel.modify(s, selectors.EVENT_READ)
                        continue
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    replies[s] = replies.get(s, b"") + data
                    if not data:
                        sel.unregister(s)
                        if replies[s].startswith(b"HTTP/1.1 200"):
                            answered += 1
            self.assertEqual(answered, want)
        finally:
            sel.close()
            for s in socks:
                s.close()


class DrainExitTests(SynchronousTestCase):
    def _gateway(self, backend: Backend) -> GatewayProcess:
        config = simpleConfig([backend.url], upstreamExtra="    timeouts: {response: 60s}").replace(
            "timeouts: {drain: 10s}", "timeouts: {drain: 1s}")
        gw = GatewayProcess(config).start()
        self.addCleanup(gw.cleanup)
        return gw

    def test_aDrainThatCutsRequestsExits3(self) -> None:
        """SIGTERM during a slow request: at server.timeouts.drain it is cut, logged with its count, exit status 3."""
        backend = Backend("slow").start()
        self.addCleanup(backend.stop)
        gw = self._gateway(backend)
        s = socket.create_connection(("127.0.0.1", gw.port))
        self.addCleanup(s.close)
        s.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        waitFor(lambda: request(backend.port, "GET", "/hangs").json()["open"] == 1, what="the request at the origin")
        gw.signal(signal.SIGTERM)
        self.assertEqual(gw.stop(), 3, gw.log())
        self.assertIn("passed with 1 request(s) in flight", gw.log())

    def test_aCleanDrainExits0(self) -> None:
        """SIGTERM with nothing in flight: exit status 0."""
        backend = Backend("idle").start()
        self.addCleanup(backend.stop)
        gw = self._gateway(backend)
        self.assertEqual(gw.request("GET", "/echo").status, 200)
        gw.signal(signal.SIGTERM)
        self.assertEqual(gw.stop(), 0, gw.log())

    def test_aSlowRequestThatFinishesInTimeExits0(self) -> None:
        """SIGTERM during a request that ends within the drain: it is answered, and the exit is clean."""
        backend = Backend("slowish").start()
        self.addCleanup(backend.stop)
        gw = self._gateway(backend)
        result: list[int] = []
        before = backend.count()  # /count counts itself: each poll below adds one
        polls = [0]

        def arrived() -> bool:
            polls[0] += 1
            return backend.count() >= before + polls[0] + 1

        t = threading.Thread(target=lambda: result.append(gw.request("GET", "/slow?ms=300").status))
        t.start()
        waitFor(arrived, what="the request at the origin")
        gw.signal(signal.SIGTERM)
        t.join(10)
        self.assertEqual(result, [200])
        self.assertEqual(gw.stop(), 0, gw.log())


PORT_CONFIG = """\
server:
  listen: "tcp:{port}:interface=127.0.0.1"
upstreams:
  app:
    targets: [http://127.0.0.1:9]
routes:
  - name: all
    match: {{path_prefix: /}}
    upstream: app
"""


class PortInUseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.taken = socket.socket()
        self.addCleanup(self.taken.close)
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen()
        self.port = self.taken.getsockname()[1]
        self.dir = Path(tempfile.mkdtemp(prefix="txgw-port-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        (self.dir / "gw.yaml").write_text(PORT_CONFIG.format(port=self.port))
        self.twistd = str(Path(sys.executable).parent / "twistd")

    def _oneLine(self, text: str) -> None:
        self.assertNotIn("Traceback", text)
        lines = [line for line in text.splitlines() if "cannot listen" in line]
        self.assertEqual(len(lines), 1, text)
        self.assertIn(f"127.0.0.1:{self.port}: Address already in use", lines[0])

    def test_foregroundExitsNonZeroWithOneLine(self) -> None:
        """twistd -n on a port in use: exit status 1, one log line saying which address and why."""
        r = subprocess.run([self.twistd, "-n", "--pidfile=", "--logfile=-", "txgateway", "--config", "gw.yaml"],
                           cwd=self.dir, env=childEnv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self._oneLine(r.stdout + r.stderr)

    def test_foregroundWithALogFileSaysItOnStderrToo(self) -> None:
        """twistd -n --logfile=gw.log: the log has the line, and so does the terminal."""
        r = subprocess.run([self.twistd, "-n", "--pidfile=", "--logfile=gw.log", "txgateway", "--config", "gw.yaml"],
                           cwd=self.dir, env=childEnv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self._oneLine(r.stderr)
        self._oneLine((self.dir / "gw.log").read_text())

    def test_daemonExitsNonZeroWithOneLine(self) -> None:
        """twistd (daemonising) on a port in use: the parent exits 1 and says why; the log has one line."""
        r = subprocess.run([self.twistd, "--pidfile=gw.pid", "--logfile=gw.log", "txgateway", "--config", "gw.yaml"],
                           cwd=self.dir, env=childEnv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("Address already in use", r.stderr)
        log = self.dir / "gw.log"
        waitFor(lambda: "cannot listen" in log.read_text(), what="the daemon's log line")
        self._oneLine(log.read_text())
        waitFor(lambda: not (self.dir / "gw.pid").exists(), what="the daemon to remove its pid file")


class FailOpenHealthTests(SynchronousTestCase):
    def test_healthAndForwardingTellOneStory(self) -> None:
        """fail_open, every target failing its check: requests are still forwarded and /health says 200 degraded."""
        backend = Backend("sick").start()
        self.addCleanup(backend.stop)
        gw = GatewayProcess(simpleConfig([backend.url], upstreamExtra="""\
    health:
      active: {path: /health, interval: 100ms, timeout: 500ms, healthy_after: 1, unhealthy_after: 1}
      when_all_unhealthy: fail_open""")).start()
        self.addCleanup(gw.cleanup)
        self.addCleanup(gw.stop)
        self.assertEqual(request(backend.port, "POST", "/control/health?ok=0").status, 200)
        waitFor(lambda: not gw.request("GET", "/health").json()["upstreams"]["app"]["usable"],
                what="the target to fail its health check")
        health = gw.request("GET", "/health")
        self.assertEqual((health.status, health.json()["status"]), (200, "degraded"))
        self.assertTrue(health.json()["upstreams"]["app"]["failing_open"])
        self.assertEqual(gw.request("GET", "/echo").status, 200)
