"""
Observability of the real process: JSON logs, request ids and trace context
through a real backend, /metrics on both listeners, the admin API and reload,
and the status page as headless Chromium renders it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from .harness import Backend, GatewayProcess, adminBlock, chromium, request, simpleConfig, waitFor

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class ObservabilityTests(SynchronousTestCase):
    def startBackends(self, *names: str) -> list[Backend]:
        backends = []
        for name in names:
            b = Backend(name).start()
            self.addCleanup(b.stop)
            backends.append(b)
        return backends

    def startGateway(self, config: str, **kw: object) -> GatewayProcess:
        g = GatewayProcess(config, **kw)  # type: ignore[arg-type]
        self.addCleanup(g.cleanup)
        return g.start()

    def test_requestIdAndTraceparentReachTheBackend(self) -> None:
        """X-Request-ID goes to the backend and back; traceparent continues with the gateway's span."""
        [b] = self.startBackends("b1")
        g = self.startGateway(simpleConfig([b.url]))
        r = g.request("GET", "/echo", {"X-Request-ID": "e2e-id-1", "traceparent": PARENT, "tracestate": "v=1"})
        self.assertEqual(r.header("X-Request-ID"), "e2e-id-1")
        seen = {k.lower(): v for k, v in r.json()["headers"]}
        self.assertEqual(seen["x-request-id"], "e2e-id-1")
        version, trace, span, flags = seen["traceparent"].split("-")
        self.assertEqual((version, trace, flags), ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01"))
        self.assertNotEqual(span, "00f067aa0ba902b7")
        self.assertEqual(seen["tracestate"], "v=1")

        fresh = g.request("GET", "/echo", {"X-Request-ID": "not ok!", "traceparent": "junk", "tracestate": "v=1"})
        rid = fresh.header("X-Request-ID") or ""
        self.assertRegex(rid, r"^[0-9a-f]{32}$")
        seen = {k.lower(): v for k, v in fresh.json()["headers"]}
        self.assertEqual(seen["x-request-id"], rid)
        self.assertNotEqual(seen["traceparent"].split("-")[1], "4bf92f3577b34da6a3ce929d0e0e4736")
        self.assertNotIn("tracestate", seen)

    def test_everyLogLineIsJsonAndCarriesNoCredentials(self) -> None:
        """With format: json every line twistd writes parses as JSON; access lines name the request."""
        [b] = self.startBackends("b1")
        g = self.startGateway(simpleConfig([b.url]).replace("  level: info", "  level: info\n  format: json"))
        g.request("GET", "/echo/x?token=qsecret", {"X-Request-ID": "log-1", "Authorization": "Bearer hsecret",
                                                   "Cookie": "sid=csecret"})
        g.request("GET", "/status/404", {"X-Request-ID": "log-2"})
        g.stop()  # twistd re-raises SIGTERM after a clean shutdown, so its exit code says little
        lines = [line for line in g.log().splitlines() if line.strip()]
        self.assertTrue(lines)
        parsed = [json.loads(line) for line in lines]  # fails on any line that is not JSON
        access = {p["request_id"]: p for p in parsed if "status" in p and "request_id" in p}
        first = access["log-1"]
        self.assertEqual((first["method"], first["path"], first["route"], first["upstream"], first["status"]),
                         ("GET", "/echo/x", "all", "app", 200))
        self.assertEqual(first["target"], b.url)
        self.assertEqual(access["log-2"]["status"], 404)
        messages = [p.get("message", "") for p in parsed]
        self.assertTrue(any("starting up" in m for m in messages))
        self.assertIn("Server Shut Down.", messages)
        for secret in ("hsecret", "csecret", "qsecret"):
            self.assertNotIn(secret, g.log())

    def test_textLogOneTimestampFormatNoNoiseAndTheConfigLine(self) -> None:
        """format: text: every line starts with one timestamp format; no factory or log_legacy noise; the config line."""
        [b] = self.startBackends("b1")
        g = self.startGateway(simpleConfig([b.url]).replace("  level: info", "  level: info\n  format: text"))
        g.request("GET", "/echo", {"X-Request-ID": "text-1"})
        g.stop()
        log = g.log()
        lines = [line for line in log.splitlines() if line.strip() and not line.startswith("\t")]
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[")
        for noise in ("Starting factory", "Stopping factory", "log_legacy", " at 0x"):
            self.assertNotIn(noise, log)
        summary = [line for line in lines if "config loaded" in line]
        self.assertEqual(len(summary), 1, log)
        self.assertIn(f"config loaded {g.configPath}: 1 route, 1 upstream (1 target), listening on tcp:", summary[0])
        self.assertTrue(any("request_id=text-1" in line and "[access]" in line for line in lines))

    def test_workerLinesSayWhichWorker(self) -> None:
        """With workers, each worker's start-up lines name it; the supervisor's do not."""
        [b] = self.startBackends("b1")
        g = self.startGateway(simpleConfig([b.url]).replace("  level: info", "  level: info\n  format: json"),
                              args=["--workers", "2"])
        waitFor(lambda: sum("txgateway listening" in x for x in g.log().splitlines()) >= 2,
                what="both workers listening")
        parsed = [json.loads(line) for line in g.log().splitlines() if line.strip()]
        listening = [p for p in parsed if p.get("message", "").startswith("txgateway listening")]
        self.assertEqual(sorted(p.get("worker") for p in listening), [0, 1])
        supervisor = [p for p in parsed if p.get("message", "").startswith("starting 2 workers")]
        self.assertEqual([p.get("worker") for p in supervisor], [None])

    def test_accessLogFile(self) -> None:
        """logging.access_log_file gets the access lines; the main log keeps the rest."""
        [b] = self.startBackends("b1")
        g = self.startGateway(simpleConfig([b.url]).replace(
            "  level: info", "  level: info\n  access_log_file: access.log"))
        g.request("GET", "/echo", {"X-Request-ID": "file-1"})
        path = g.dir / "access.log"
        # Lines are flushed once per reactor turn, possibly after the response left.
        text = waitFor(lambda: path.exists() and "file-1" in path.read_text() and path.read_text(), what="access.log")
        self.assertEqual([json.loads(x)["request_id"] for x in text.splitlines()][-1], "file-1")
        self.assertNotIn("file-1", g.log())

    def test_metricsOnBothListenersAndAdminReload(self) -> None:
        """/metrics on the main and admin listeners; POST /api/config/reload applies the file."""
        [b] = self.startBackends("b1")
        # The file watcher is off so that only the admin API reloads (the history below counts reloads).
        g = self.startGateway(simpleConfig([b.url], extra=adminBlock()).replace(
            "server:\n", "server:\n  watch_config: false\n", 1))
        adminPort = g.adminPort
        for _ in range(3):
            g.request("GET", "/echo")
        line = 'txgateway_http_requests_total{method="GET",route="all",status="200",upstream="app"} 3.0'
        self.assertIn(line, g.request("GET", "/metrics").body.decode())
        self.assertIn(line, request(adminPort, "GET", "/metrics").body.decode())
        self.assertIn("process_resident_memory_bytes", g.request("GET", "/metrics").body.decode())

        g.configPath.write_text(g.config.replace("name: all", "name: everything"))
        r = request(adminPort, "POST", "/api/config/reload")
        self.assertEqual((r.status, r.json()), (200, {"ok": True, "problems": []}))
        self.assertEqual([x["name"] for x in request(adminPort, "GET", "/api/routes").json()["routes"]],
                         ["everything"])
        g.configPath.write_text("upstreams: [")
        r = request(adminPort, "POST", "/api/config/reload")
        self.assertEqual((r.status, r.json()["ok"]), (422, False))
        reloads = request(adminPort, "GET", "/api/reloads").json()["reloads"]
        self.assertEqual([x["result"] for x in reloads], ["failure", "success"])

    def test_adminTokenEnforced(self) -> None:
        """With admin.token the admin API needs the bearer token."""
        [b] = self.startBackends("b1")
        adminPort = self.startGateway(simpleConfig([b.url], extra=adminBlock("e2e-token"))).adminPort
        self.assertEqual(request(adminPort, "GET", "/api/status").status, 401)
        self.assertEqual(request(adminPort, "POST", "/api/config/reload").status, 401)
        ok = request(adminPort, "GET", "/api/status", {"Authorization": "Bearer e2e-token"})
        self.assertEqual(ok.status, 200)

    def test_statusPageInHeadlessChromium(self) -> None:
        """Chromium renders the page, its script polls the API, and the targets and their states show."""
        browser = chromium()
        if browser is None:
            raise SkipTest("chromium is not installed (scripts/ensure-chromium.sh installs it)")
        b1, b2 = self.startBackends("b1", "b2")
        g = self.startGateway(simpleConfig([b1.url, b2.url], extra=adminBlock()))
        adminPort = g.adminPort
        for _ in range(4):
            g.request("GET", "/echo")
        profile = Path(tempfile.mkdtemp(prefix="txgw-chromium-"))
        self.addCleanup(shutil.rmtree, profile, True)
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        url = f"http://127.0.0.1:{adminPort}/"
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120, check=False)
        page = dom.stdout.decode("utf-8", "replace")
        self.assertIn('data-live="true"', page, dom.stderr.decode("utf-8", "replace")[-2000:])
        for text in (b1.url, b2.url, "healthy", "closed", "all", "app"):
            self.assertIn(text, page)
        self.assertIn('data-locked="false"', page)
        self.assertIn("Live: updated", page)

        shot = profile / "status.png"
        subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,900", url], capture_output=True,
                       timeout=120, check=False)
        self.assertTrue(shot.exists(), "chromium wrote no screenshot")
        self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(shot.stat().st_size, 5000)
