"""The admin listener: status page, JSON API, reload, /metrics and the bearer token."""

from __future__ import annotations

import json
import os
from typing import Any

import treq
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import TARGETS, BrokenBreaker, InMemoryGateway, configText
from txgateway.admin.api import AdminResource
from txgateway.admin.page import renderBody
from txgateway.admin.rates import LatencyHistogram
from txgateway.config import ConfigError, parseConfig
from txgateway.observe import Metrics
from txgateway.service import GatewayService

ADMIN = 'admin:\n  listen: "tcp:0:interface=127.0.0.1"\n'


class AdminClient:
    """An admin resource over a gateway in memory, spoken to through StubTreq."""

    def __init__(self, test: SynchronousTestCase, gw: InMemoryGateway, token: str | None = None) -> None:
        self.test = test
        self.gw = gw
        self.resource = AdminResource(gw.service, gw.clock, lambda: token)
        self.stub = StubTreq(self.resource)

    def call(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[Any, bytes]:
        d = self.stub.request(method, "http://127.0.0.1:8090" + path, headers=headers)
        self.stub.flush()
        response = self.test.successResultOf(d)
        body = self.test.successResultOf(treq.content(response))
        return response, body

    def json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        response, body = self.call("GET", path, headers)
        self.test.assertEqual(response.code, 200, body)
        return json.loads(body)


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = InMemoryGateway(configText(extra="""\
  - name: limited
    match: {path_prefix: /limited}
    upstream: app
    rate_limit: {algorithm: token_bucket, rate: 5/s, burst: 10}
"""))
        self.admin = AdminClient(self, self.gw)

    def test_statusNamesRoutesUpstreamsTargetsAndStates(self) -> None:
        """/api/status has every route and target, with health, circuit state and in-flight count."""
        self.gw.gateway.runtime.clusters["app"].endpoints[1].breaker = BrokenBreaker("open")
        proto, transport = self.gw.send("GET", "/slow?delay=5")  # one request stays in flight
        doc = self.admin.json("/api/status")
        self.assertEqual([r["name"] for r in doc["routes"]], ["all", "limited"])
        self.assertEqual(doc["routes"][1]["rate_limit"], "token_bucket 5/s")
        [app] = doc["upstreams"]
        self.assertEqual((app["name"], app["usable"], app["degraded"]), ("app", True, True))
        targets = {t["url"]: t for t in app["targets"]}
        self.assertEqual(set(targets), set(TARGETS))
        self.assertEqual(targets[TARGETS[1]]["circuit"], "open")
        self.assertEqual(targets[TARGETS[0]]["circuit"], "closed")
        self.assertEqual(sum(t["in_flight"] for t in targets.values()), 1)
        g = doc["gateway"]
        self.assertEqual((g["in_flight"], g["active_connections"], g["health"]), (1, 1, "degraded"))
        self.assertEqual(g["degraded"], ["app"])
        self.gw.clock.advance(5)
        self.assertEqual(self.gw.reply(transport).status, 200)  # type: ignore[union-attr]

    def test_ratesAndLatencyOverTheWindow(self) -> None:
        """Requests per second and percentiles come from the counters' change over the window."""
        for _ in range(20):  # 20 requests in the first 10 s after start
            proto, transport = self.gw.send("GET", "/r?delay=0.02")
            self.gw.clock.advance(0.02)
            self.gw.reply(transport)
        self.gw.clock.advance(10 - 20 * 0.02)
        [route, _] = self.admin.json("/api/routes")["routes"]
        self.assertEqual((route["requests"], route["rate"]), (20, 2.0))
        self.assertAlmostEqual(route["latency_ms"]["mean"], 20.0)
        self.assertTrue(10.0 < route["latency_ms"]["p95"] <= 25.0)
        [app] = self.admin.json("/api/upstreams")["upstreams"]
        self.assertEqual(sum(t["requests"] for t in app["targets"]), 20)
        self.assertAlmostEqual(sum(t["rate"] for t in app["targets"]), 2.0)
        # A minute later with no traffic the window holds none of it.
        self.gw.clock.advance(61)
        self.admin.json("/api/routes")
        self.gw.clock.advance(61)
        [route, _] = self.admin.json("/api/routes")["routes"]
        self.assertEqual((route["requests"], route["rate"], route["latency_ms"]["p95"]), (20, 0.0, None))

    def test_countersOfOtherModulesShown(self) -> None:
        """Rate-limit, auth and cache counters other modules increment appear per route."""
        m = self.gw.metrics
        m.rateLimited.labels("limited").inc(3)
        m.cacheRequests.labels("all", "hit").inc(2)
        m.cacheRequests.labels("all", "miss").inc()
        m.authFailures.labels("all", "missing").inc()
        routes = {r["name"]: r for r in self.admin.json("/api/routes")["routes"]}
        self.assertEqual(routes["limited"]["rate_limited"], 3)
        self.assertEqual(routes["all"]["cache_results"], {"hit": 2, "miss": 1})
        self.assertEqual(routes["all"]["auth_failures"], 1)

    def test_pageIsServerRenderedAndPolls(self) -> None:
        """The HTML shows targets and their states without script, and its script polls the API."""
        self.gw.gateway.runtime.clusters["app"].endpoints[1].activeHealthy = False
        response, body = self.admin.call("GET", "/")
        self.assertEqual(response.code, 200)
        page = body.decode()
        for text in (*TARGETS, "healthy", "unhealthy", "closed", "degraded", "limited", "token_bucket 5/s"):
            self.assertIn(text, page)
        self.assertIn('fetch("api/status"', page)
        self.assertNotIn("<!--STATUS-->", page)
        csp = response.headers.getRawHeaders("content-security-policy")[0]
        self.assertIn("script-src 'sha256-", csp)
        self.assertEqual(response.headers.getRawHeaders("cache-control"), ["no-store"])

    def test_renderEscapesHTML(self) -> None:
        """Names from config are escaped in the server-rendered page."""
        doc = self.admin.json("/api/status")
        doc["routes"][0]["name"] = "<script>alert(1)</script>"
        html = renderBody(doc)
        self.assertNotIn("<script>", html)
        self.assertIn("&lt;script&gt;", html)

    def test_healthAndMetricsOnAdmin(self) -> None:
        """/metrics and /api/health are served on the admin listener too."""
        self.gw.request("GET", "/x")
        response, body = self.admin.call("GET", "/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b'txgateway_http_requests_total{method="GET",route="all",status="200",upstream="app"} 1.0', body)
        self.assertEqual(self.admin.json("/api/health")["status"], "ok")
        response, body = self.admin.call("HEAD", "/metrics")
        self.assertEqual((response.code, body), (200, b""))

    def test_unknownPathAndMethod(self) -> None:
        """404 for unknown paths, 405 with Allow for a wrong method."""
        self.assertEqual(self.admin.call("GET", "/nope")[0].code, 404)
        response, _ = self.admin.call("POST", "/api/status")
        self.assertEqual((response.code, response.headers.getRawHeaders("allow")), (405, ["GET, HEAD"]))
        response, _ = self.admin.call("GET", "/api/config/reload")
        self.assertEqual((response.code, response.headers.getRawHeaders("allow")), (405, ["POST"]))


class ReloadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.configs = [configText()]
        self.gw = InMemoryGateway(loadConfig=lambda path: parseConfig(self.configs[-1]))
        self.gw.service.configPath = "gw.yaml"
        self.admin = AdminClient(self, self.gw)

    def test_reloadSwapsConfigAndIsListed(self) -> None:
        """POST /api/config/reload applies the file's config; the reload is in /api/reloads."""
        self.configs.append(configText(extra="  - name: added\n    match: {path: /added}\n    upstream: app\n"))
        response, body = self.admin.call("POST", "/api/config/reload")
        self.assertEqual((response.code, json.loads(body)), (200, {"ok": True, "problems": []}))
        self.assertIn("added", [r["name"] for r in self.admin.json("/api/routes")["routes"]])
        [entry] = self.admin.json("/api/reloads")["reloads"]
        self.assertEqual((entry["result"], entry["problems"]), ("success", []))
        self.assertEqual(self.gw.metrics.registry.get_sample_value("txgateway_config_reloads_total",
                                                                   {"result": "success"}), 1)

    def test_oneProcessListsItselfAsTheOnlyWorker(self) -> None:
        """Without server.workers, /api/reloads and /api/status list this process, with no generations to show."""
        for path in ("/api/reloads", "/api/status"):
            self.assertEqual(self.admin.json(path)["workers"], [{"worker": None, "pid": os.getpid(), "generation": None}])

    def test_rejectedReloadHasItsReasonPhrase(self) -> None:
        """A 422 says "Unprocessable Content" on its status line, not twisted.web's "Unknown Status"."""
        self.configs.append(configText().replace("upstream: app", "upstream: nowhere"))
        response, _ = self.admin.call("POST", "/api/config/reload")
        self.assertEqual((response.code, response.phrase), (422, b"Unprocessable Content"))

    def test_rejectedReloadReportsProblems(self) -> None:
        """A bad config is refused with its problems, listed as a failure, and the old one keeps serving."""
        self.configs.append(configText().replace("upstream: app", "upstream: nowhere"))
        response, body = self.admin.call("POST", "/api/config/reload")
        doc = json.loads(body)
        self.assertEqual((response.code, doc["ok"]), (422, False))
        self.assertTrue(doc["problems"])
        self.assertIn("nowhere", " ".join(doc["problems"]))
        [entry] = self.admin.json("/api/reloads")["reloads"]
        self.assertEqual(entry["result"], "failure")
        self.assertEqual(self.gw.request("GET", "/x").status, 200)

    def test_crossOriginReloadRefused(self) -> None:
        """A browser POST from another origin cannot trigger a reload; the same origin can."""
        response, _ = self.admin.call("POST", "/api/config/reload", {"Origin": "https://evil.example"})
        self.assertEqual(response.code, 403)
        self.assertEqual(self.gw.gateway.history, [])
        response, _ = self.admin.call("POST", "/api/config/reload", {"Origin": "http://127.0.0.1:8090"})
        self.assertEqual(response.code, 200)


class TokenTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gw = InMemoryGateway()
        self.admin = AdminClient(self, self.gw, token="s3cret-token")

    def test_everyPathNeedsTheBearerToken(self) -> None:
        """Without the token, or with a wrong one, every path is 401 and shows no data."""
        for path in ("/api/status", "/api/routes", "/api/upstreams", "/api/reloads", "/metrics", "/api/health"):
            for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"},
                            {"Authorization": "s3cret-token"}):
                response, body = self.admin.call("GET", path, headers)
                self.assertEqual(response.code, 401, (path, headers))
                self.assertEqual(response.headers.getRawHeaders("www-authenticate"),
                                 ['Bearer realm="txgateway-admin"'])
                self.assertNotIn(b"127.0.0.1:9101", body)
        response, _ = self.admin.call("POST", "/api/config/reload")
        self.assertEqual(response.code, 401)
        self.assertEqual(self.gw.gateway.history, [])

    def test_pageAsksForTheToken(self) -> None:
        """The page answers 401 with a shell that asks for the token and holds no status."""
        response, body = self.admin.call("GET", "/")
        self.assertEqual(response.code, 401)
        self.assertIn(b'id="login"', body)
        self.assertNotIn(b"127.0.0.1:9101", body)

    def test_rightTokenAdmits(self) -> None:
        """Authorization: Bearer <token> (scheme in any case) is let in."""
        for scheme in ("Bearer", "bearer"):
            doc = self.admin.json("/api/status", {"Authorization": f"{scheme} s3cret-token"})
            self.assertEqual(doc["upstreams"][0]["name"], "app")


    def test_emptyTokenAdmitsNobody(self) -> None:
        """An empty configured token never matches, not even an empty bearer."""
        admin = AdminClient(self, self.gw, token="")
        for headers in (None, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
            self.assertEqual(admin.call("GET", "/api/status", headers)[0].code, 401)


class ConfigAndWiringTests(SynchronousTestCase):
    def test_nonLoopbackAdminNeedsToken(self) -> None:
        """config refuses an admin listener beyond loopback without a token, accepts it with one."""
        open_ = configText() + 'admin:\n  listen: "tcp:8090"\n'
        with self.assertRaises(ConfigError) as e:
            parseConfig(open_)
        self.assertIn("admin.listen", str(e.exception.problems[0]))
        self.assertEqual(parseConfig(open_ + "  token: abc\n").admin.token, "abc")  # type: ignore[union-attr]
        self.assertIsNone(parseConfig(configText() + ADMIN).admin.token)  # type: ignore[union-attr]

    def test_serviceListensOnAdminAndStopsItLast(self) -> None:
        """The service binds admin.listen beside the main listener, and closes it in the drain."""
        clock = MemoryReactorClock()
        service = GatewayService(parseConfig(configText() + ADMIN.replace("tcp:0", "tcp:8090")), clock, clock=clock,
                                 metrics=Metrics(processMetrics=False))
        service.startService()
        ports = sorted(p[0] for p in clock.tcpServers)
        self.assertEqual(ports, [0, 8090])
        self.assertIsNotNone(service.adminListener)
        self.successResultOf(service.stopService())
        self.assertIsNone(service.adminListener.port)  # type: ignore[union-attr]

    def test_noAdminWithoutConfig(self) -> None:
        """No admin: section, no admin listener."""
        self.assertIsNone(InMemoryGateway().service.adminListener)

    def test_tokenRotatesOnReload(self) -> None:
        """A reloaded admin.token replaces the old one at once."""
        gw = InMemoryGateway(configText() + ADMIN + "  token: one\n",
                             loadConfig=lambda path: parseConfig(configText() + ADMIN + "  token: two\n"))
        gw.service.configPath = "gw.yaml"
        self.assertEqual(gw.service.adminSite.resource.token(), "one")
        self.assertEqual(gw.service.reload(), [])
        self.assertEqual(gw.service.adminSite.resource.token(), "two")


class QuantileTests(SynchronousTestCase):
    def test_quantileInterpolatesInsideBucket(self) -> None:
        """Like histogram_quantile: linear within the bucket that holds the rank."""
        h = LatencyHistogram()
        # 10 observations, all in (0.01, 0.025]
        h.count = 10
        h.buckets = [0, 0, 0, 0, 10] + [10] * (len(h.buckets) - 5)
        self.assertAlmostEqual(h.quantile(0.5), 0.0175)  # type: ignore[arg-type]
        self.assertIsNone(LatencyHistogram().quantile(0.5))


class TimelineAPITests(SynchronousTestCase):
    def test_timelineServesTheLastSecondsAndOpenMetricsOnAsk(self) -> None:
        """/api/timeline has a point a second once the service runs; /metrics speaks OpenMetrics when asked."""
        gw = InMemoryGateway(configText() + ADMIN)
        timeline = gw.service.timeline
        self.assertIsNotNone(timeline)
        timeline.startService()
        self.addCleanup(timeline.stopService)
        admin = AdminClient(self, gw)
        gw.request("GET", "/t")
        gw.clock.advance(1)
        doc = admin.json("/api/timeline")
        self.assertEqual(len(doc["t"]), 1)
        self.assertEqual(doc["series"]["route:all"]["rps"], [1.0])
        gw.clock.advance(1)
        later = admin.json(f"/api/timeline?since={doc['t'][-1]}")
        self.assertEqual(len(later["t"]), 1)
        response, _ = admin.call("GET", "/api/timeline?since=x")
        self.assertEqual(response.code, 400)
        response, body = admin.call("GET", "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
        self.assertIn(b"openmetrics", response.headers.getRawHeaders(b"content-type")[0])
        self.assertTrue(body.endswith(b"# EOF\n"))

    def test_noTimelineWithoutAdmin(self) -> None:
        """A gateway without an admin listener keeps no timeline."""
        self.assertIsNone(InMemoryGateway().service.timeline)
