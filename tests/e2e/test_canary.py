"""
Issue 23 end to end: weighted splits and shadow traffic through the real
C{twistd -n txgateway}, against real origin processes (tests/e2e/backend.py's
C{/model}: an inference answer naming its version, with a settable score and
delay).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e.harness import Backend, GatewayProcess, childEnv, deadPort, request, shared, waitFor

TOKEN = "canary-admin-token"


def _backends(started: list[Any]) -> tuple[Backend, Backend]:
    v1 = Backend("model-v1").start()
    started.append(v1)
    v2 = Backend("model-v2").start()
    started.append(v2)
    return v1, v2


def backends() -> tuple[Backend, Backend]:
    return shared("canary-models", _backends)  # type: ignore[no-any-return]


def control(b: Backend, score: float = 0.5, ms: int = 0) -> None:
    assert request(b.port, "GET", f"/control/model?score={score}&ms={ms}").status == 200


def seen(b: Backend) -> dict[str, int]:
    return request(b.port, "GET", "/model-seen").json()  # type: ignore[no-any-return]


def config(routes: str, deadMirror: bool = False, token: str | None = TOKEN) -> str:
    v1, v2 = backends()
    dead = f"\n  dead:\n    targets: [http://127.0.0.1:{deadPort()}]\n    retries: false" if deadMirror else ""
    return f"""\
server:
  listen: "tcp:{{port}}:interface=127.0.0.1"
  trusted_proxies: [127.0.0.1/32]
  timeouts: {{drain: 10s}}
admin:
  listen: "tcp:0:interface=127.0.0.1"
{f"  token: {token}" if token else ""}
logging:
  level: info
upstreams:
  model-v1:
    targets: [{v1.url}]
    retries: false
  model-v2:
    targets: [{v2.url}]
    retries: false{dead}
routes:
{routes}"""


def start(test: TestCase, routes: str, deadMirror: bool = False, token: str | None = TOKEN) -> GatewayProcess:
    for b in backends():
        control(b)
    gw = GatewayProcess(config(routes, deadMirror, token)).start()
    test.addCleanup(gw.cleanup)
    test.addCleanup(gw.stop)
    return gw


def backendOf(r: Any) -> str:
    assert r.status == 200, r
    return str(r.header("X-Backend"))


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> Any:
    return request(gw.adminPort, method, path, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                   json.dumps(body).encode() if body is not None else None)


def metric(gw: GatewayProcess, name: str, **labels: str) -> float:
    text = request(gw.port, "GET", "/metrics").body.decode()
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


SPLIT = """\
  - name: predict
    match: {path_prefix: /model}
    upstreams: [{name: model-v1, weight: 90}, {name: model-v2, weight: 10}]
"""


class SplitTests(TestCase):
    timeout = 120

    def test_ninetyTenOverAThousandRequests(self) -> None:
        """
        1,000 requests on a 90/10 split: v2 gets 100 expected, standard
        deviation sqrt(1000 * 0.1 * 0.9) = 9.5; the bound 57..143 is 4.5
        of them either side (a false failure about once in 150,000 runs).
        Metrics name the upstream of every request.
        """
        gw = start(self, SPLIT)
        counts = {"model-v1": 0, "model-v2": 0}
        for _ in range(1000):
            counts[backendOf(gw.request("GET", "/model"))] += 1
        self.assertEqual(sum(counts.values()), 1000)
        self.assertTrue(57 <= counts["model-v2"] <= 143, counts)
        for name, n in counts.items():
            self.assertEqual(metric(gw, "txgateway_http_requests_total", route="predict", upstream=name), n)

    def test_stickyHeaderKeepsEachUserOnOneVersion(self) -> None:
        gw = start(self, SPLIT.replace("weight: 90", "weight: 50").replace("weight: 10", "weight: 50")
                   + "    sticky: {key: 'header:X-User'}\n")
        versions: dict[str, set[str]] = {}
        for user in range(40):
            for _ in range(5):
                versions.setdefault(f"user-{user}", set()).add(
                    backendOf(gw.request("GET", "/model", {"X-User": f"user-{user}"})))
        self.assertTrue(all(len(v) == 1 for v in versions.values()), versions)
        self.assertEqual(set().union(*versions.values()), {"model-v1", "model-v2"})  # 40 users: both get some

    def test_overrideFromTrustedAndUntrustedClients(self) -> None:
        """
        v2 has weight 0: only the override reaches it.  From 127.0.0.1 (a
        trusted, internal client) it does; from a public client (its address
        given by the trusted proxy's X-Forwarded-For) it is ignored.
        """
        gw = start(self, SPLIT.replace("weight: 10}", "weight: 0}").replace("weight: 90", "weight: 100")
                   + "    canary_override: {header: X-Canary, trusted_only: true}\n")
        for _ in range(20):
            self.assertEqual(backendOf(gw.request("GET", "/model", {"X-Canary": "always"})), "model-v2")
            self.assertEqual(backendOf(gw.request("GET", "/model", {"X-Canary": "model-v1"})), "model-v1")
            self.assertEqual(backendOf(gw.request("GET", "/model", [("X-Canary", "always"),
                                                                  ("X-Forwarded-For", "203.0.113.9")])), "model-v1")
            self.assertEqual(backendOf(gw.request("GET", "/model", [("X-Canary", "always"),
                                                                  ("X-Forwarded-For", "10.1.2.3")])), "model-v2")

        def accessLines() -> list[dict[str, Any]]:
            lines = [json.loads(x[x.index("{"):]) for x in gw.log().splitlines() if '"upstream_choice"' in x]
            return lines if len(lines) >= 80 else []

        lines = waitFor(accessLines, what="the access log lines")
        self.assertEqual({(x["upstream"], x["upstream_choice"]) for x in lines if x["path"] == "/model"},
                         {("model-v2", "override"), ("model-v1", "override"), ("model-v1", "weighted")})

    def test_weightsChangedThroughTheAdminAPIUnderLoad(self) -> None:
        """Four clients send 150 requests each while the ramp goes 10 -> 25 -> 50 -> 100 %: none fails."""
        gw = start(self, SPLIT)
        results: list[tuple[int, str | None]] = []
        lock = threading.Lock()

        def client() -> None:
            for _ in range(150):
                try:
                    r = gw.request("GET", "/model")
                    out = (r.status, r.header("X-Backend"))
                except OSError as e:
                    out = (0, repr(e))
                with lock:
                    results.append(out)

        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        for v2 in (25, 50, 100):
            waitFor(lambda n=len(results): len(results) > n + 60, what="load between weight changes")
            r = admin(gw, "PUT", "/api/routes/predict/split", {"weights": {"model-v1": 100 - v2, "model-v2": v2}})
            self.assertEqual(r.status, 200, r)
            self.assertEqual([u["weight"] for u in r.json()["upstreams"]], [100 - v2, v2])
        for t in threads:
            t.join(60)
        self.assertEqual(len(results), 600)
        self.assertEqual([x for x in results if x[0] != 200], [])
        after = {backendOf(gw.request("GET", "/model")) for _ in range(30)}
        self.assertEqual(after, {"model-v2"})
        self.assertEqual(admin(gw, "PUT", "/api/routes/predict/split", {"weights": {"model-v9": 1}}).status, 400)
        self.assertEqual(request(gw.adminPort, "PUT", "/api/routes/predict/split", {},
                                 b'{"weights": {"model-v1": 1}}').status, 401)


def mirrorRoutes(mirror: str) -> str:
    """Two routes to model-v1: /model mirrored as given, /plain not (the same run without mirroring)."""
    return f"""\
  - name: predict
    match: {{path_prefix: /model}}
    upstream: model-v1
    mirror: {mirror}
  - name: plain
    match: {{path_prefix: /plain}}
    upstream: model-v1
    rewrite_prefix: /model
"""


def latencies(gw: GatewayProcess, path: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.monotonic()
        r = gw.request("GET", path)
        out.append(time.monotonic() - t)
        assert backendOf(r) == "model-v1"
    return out


class MirrorTests(TestCase):
    timeout = 120

    def mirrors(self, gw: GatewayProcess) -> dict[str, Any]:
        r = admin(gw, "GET", "/api/mirrors")
        self.assertEqual(r.status, 200, r)
        return r.json()["mirrors"]["predict"]  # type: ignore[no-any-return]

    def assertLatencyUnaffected(self, gw: GatewayProcess) -> None:
        """
        Interleaved, the mirrored route and the same route without a mirror:
        the median of the mirrored one is within 20 ms of the other's, and no
        mirrored request waited anywhere near the mirror's delay or timeout.
        """
        mirrored, plain = [], []
        for _ in range(10):
            mirrored += latencies(gw, "/model", 3)
            plain += latencies(gw, "/plain", 3)
        self.assertLess(statistics.median(mirrored), statistics.median(plain) + 0.02, (mirrored, plain))
        self.assertLess(max(mirrored), 0.9, mirrored)  # below the mirror timeout (1 s) and far below its delay (3 s)

    def test_mirrorUpstreamDown(self) -> None:
        gw = start(self, mirrorRoutes("{upstream: dead, percent: 100, timeout: 1s}"), deadMirror=True)
        self.assertLatencyUnaffected(gw)
        m = waitFor(lambda: (x := self.mirrors(gw)) and x["failed"] == 30 and x,
                    what="every copy to the dead mirror counted as failed")
        self.assertEqual((m["sent"], m["dropped"], m["compared"]), (30, 0, 0))

    def test_slowMirror(self) -> None:
        """The mirror answers after 3 s, its timeout is 1 s: every copy times out or is dropped, the primary never waits."""
        v1, v2 = backends()
        gw = start(self, mirrorRoutes("{upstream: model-v2, percent: 100, timeout: 1s, concurrency: 5}"))
        control(v2, ms=3000)
        self.assertLatencyUnaffected(gw)
        m = waitFor(lambda: (x := self.mirrors(gw)) and x["timed_out"] + x["dropped"] == 30 and x, timeout=30,
                    what="every copy to the slow mirror timed out or dropped")
        self.assertEqual(m["sent"], m["timed_out"])
        self.assertGreater(m["timed_out"], 0)
        self.assertEqual(m["in_flight"], 0)
        self.assertEqual(m["failed"], 0)

    def test_differentJsonWithinAndOutsideTolerance(self) -> None:
        v1, v2 = backends()
        gw = start(self, mirrorRoutes("{upstream: model-v2, percent: 100, compare: {json: {ignore: [$.version, "
                                      "'$.meta.n'], absolute: 1.0e-6, relative: 1.0e-3}}}"))
        before = seen(v2)["mirrored"]
        control(v1, score=0.5)
        control(v2, score=0.5004)  # 0.08 % apart: within relative 1e-3
        self.assertLatencyUnaffected(gw)
        m = waitFor(lambda: (x := self.mirrors(gw)) and x["compared"] == 30 and x, what="30 comparisons")
        self.assertEqual((m["mismatched"], m["samples"]), (0, []))
        self.assertEqual(seen(v2)["mirrored"] - before, 30)

        control(v2, score=0.6)  # 18 % apart
        for _ in range(5):
            gw.request("GET", "/model", {"Authorization": "Bearer secret-token-of-a-client"})
        m = waitFor(lambda: (x := self.mirrors(gw)) and x["compared"] == 35 and x, what="5 more comparisons")
        self.assertEqual(m["mismatched"], 5)
        self.assertEqual(metric(gw, "txgateway_mirror_mismatches_total", route="predict"), 5)
        self.assertEqual(len(m["samples"]), 5)
        sample = m["samples"][-1]
        self.assertEqual(sample["differences"], ["$.score"])
        self.assertEqual((sample["primary"]["body"]["score"], sample["mirror"]["body"]["score"]), (0.5, 0.6))
        self.assertNotIn("secret-token-of-a-client", json.dumps(sample))
        page = request(gw.adminPort, "GET", "/", {"Authorization": f"Bearer {TOKEN}"}).body.decode()
        self.assertIn("<h2>Mirrors</h2>", page)
        self.assertIn('<span class="diff">  &quot;score&quot;: 0.6', page)


class CheckTests(TestCase):
    def test_checkNamesUnknownUpstreamsWithKeyPathAndLine(self) -> None:
        """`txgateway check` refuses a split or mirror naming an upstream the file does not define."""
        directory = Path(tempfile.mkdtemp(prefix="txgw-canary-"))
        self.addCleanup(shutil.rmtree, directory, True)
        (directory / "gw.yaml").write_text("""\
upstreams:
  model-v1: {targets: [http://127.0.0.1:9]}
routes:
  - name: predict
    upstreams: [{name: model-v1, weight: 95}, {name: model-v2, weight: 5}]
    mirror: {upstream: model-v3, percent: 10}
""")
        done = subprocess.run([str(Path(sys.executable).parent / "txgateway"), "check", "gw.yaml"], cwd=directory,
                              env=childEnv(), capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 1, done.stdout + done.stderr)
        self.assertIn("line 5", done.stderr)
        self.assertIn("routes[0](predict).upstreams[1](model-v2).name: no upstream named 'model-v2'", done.stderr)
        self.assertIn("routes[0](predict).mirror.upstream: no upstream named 'model-v3'", done.stderr)


class StatusPageTests(TestCase):
    timeout = 180

    def test_splitsAndSamplesInHeadlessChromium(self) -> None:
        """The page's script draws each split with its live shares, and the samples side by side, diffs marked."""
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if browser is None:
            raise SkipTest("chromium is not installed (scripts/ensure-chromium.sh installs it)")
        v1, v2 = backends()
        gw = start(self, SPLIT + """\
  - name: shadowed
    match: {path_prefix: /shadow}
    upstream: model-v1
    rewrite_prefix: /model
    mirror: {upstream: model-v2, compare: {json: {ignore: [$.version, $.meta]}}}
""", token=None)
        control(v2, score=0.75)
        for _ in range(20):
            gw.request("GET", "/model")
        for _ in range(3):
            gw.request("GET", "/shadow")
        waitFor(lambda: request(gw.adminPort, "GET", "/api/mirrors").json()["mirrors"]["shadowed"]["mismatched"] == 3,
                what="three mismatches")
        profile = Path(tempfile.mkdtemp(prefix="txgw-chromium-"))
        self.addCleanup(shutil.rmtree, profile, True)
        flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
        url = f"http://127.0.0.1:{gw.adminPort}/"
        dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, timeout=120, check=False)
        page = dom.stdout.decode("utf-8", "replace")
        self.assertIn('data-live="true"', page, dom.stderr.decode("utf-8", "replace")[-2000:])
        self.assertIn("model-v1 90 % (", page)
        self.assertIn("model-v2 10 % (", page)
        self.assertIn('data-mirror="shadowed"', page)
        self.assertIn("<code>$.score</code>", page)
        self.assertIn('<span class="diff">  "score": 0.5,</span>', page)
        self.assertIn('<span class="diff">  "score": 0.75,</span>', page)
        shot = Path(os.environ.get("TXGW_CANARY_SHOT", str(profile / "status.png")))
        subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,1400", url], capture_output=True,
                       timeout=120, check=False)
        self.assertEqual(shot.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
