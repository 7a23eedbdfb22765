"""
Metrics, request IDs, trace context, logs, /health and /ready: the gateway in memory.

The gateway's own Site is fed raw HTTP over a StringTransport and its
upstream agent is swapped for an in-memory one, so a whole request path runs
under a L{MemoryReactorClock} whose time the test moves.
"""

from __future__ import annotations

import io
import json
import os
import re
from typing import Any

from prometheus_client import REGISTRY
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import FileLogObserver, Logger, LogLevel, LogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.support import TARGETS, BrokenBreaker, InMemoryGateway, configText
from txgateway.config import parseConfig
from txgateway.context import RequestContext
from txgateway.http.twistdlog import TwistdLogAdopter
from txgateway.observe import ids as idsModule
from txgateway.observe.accesslog import AccessLog
from txgateway.observe.ids import IdSource, parseTraceparent
from txgateway.observe.logging import configSummary, jsonFormatter, logConfigLoaded, redact, textFormatter
from txgateway.observe.metrics import LATENCY_BUCKETS, Metrics


class MetricsTests(SynchronousTestCase):
    def test_familiesHaveTheIssuesNamesAndLabels(self) -> None:
        """Every metric family of the issue exists with its exact name, type and labels."""
        m = Metrics(processMetrics=False)
        want = {
            "txgateway_http_requests": ("counter", ["route", "method", "status", "upstream"]),
            "txgateway_http_request_duration_seconds": ("histogram", ["route", "method", "upstream"]),
            "txgateway_upstream_requests": ("counter", ["upstream", "target", "status"]),
            "txgateway_upstream_request_duration_seconds": ("histogram", ["upstream", "target"]),
            "txgateway_target_healthy": ("gauge", ["upstream", "target"]),
            "txgateway_circuit_state": ("gauge", ["upstream", "target"]),
            "txgateway_rate_limited": ("counter", ["route"]),
            "txgateway_retries": ("counter", ["upstream"]),
            "txgateway_cache_requests": ("counter", ["route", "result"]),
            "txgateway_active_connections": ("gauge", []),
            "txgateway_in_flight_requests": ("gauge", []),
            "txgateway_config_reloads": ("counter", ["result"]),
        }
        families = {f._name: f for f in (m.requests, m.requestDuration, m.upstreamRequests, m.upstreamDuration,
                                         m.targetHealthy, m.circuitState, m.rateLimited, m.retries, m.cacheRequests,
                                         m.activeConnections, m.inFlight, m.configReloads)}
        for name, (kind, labels) in want.items():
            self.assertEqual((families[name]._type, list(families[name]._labelnames)), (kind, labels), name)
        self.assertEqual(LATENCY_BUCKETS[0], 0.001)
        self.assertEqual(LATENCY_BUCKETS[-1], 10.0)

    def test_registryIsPerGatewayNeverGlobal(self) -> None:
        """Two Metrics never collide, and nothing lands in prometheus_client's global registry."""
        a, b = Metrics(), Metrics()
        a.retries.labels("x").inc()
        self.assertEqual(a.registry.get_sample_value("txgateway_retries_total", {"upstream": "x"}), 1.0)
        self.assertIsNone(b.registry.get_sample_value("txgateway_retries_total", {"upstream": "x"}))
        self.assertFalse([n for n in REGISTRY._names_to_collectors if n.startswith("txgateway")])

    def test_processMetricsExported(self) -> None:
        """prometheus-client's process and Python metrics are in the gateway's registry."""
        text = Metrics().render().decode()
        self.assertIn("python_info", text)
        self.assertIn("process_cpu_seconds_total", text)

    def test_requestMetricsAfterKnownTraffic(self) -> None:
        """Counts and latency buckets match exactly the requests sent; paths never become labels."""
        gw = InMemoryGateway()
        for _ in range(3):
            self.assertEqual(gw.request("GET", "/secret-path-one").status, 200)
        self.assertEqual(gw.request("POST", "/other?status=503", body=b"x").status, 503)
        proto, transport = gw.send("GET", "/slow?delay=0.2")
        gw.clock.advance(0.2)
        self.assertEqual(gw.reply(transport).status, 200)  # type: ignore[union-attr]
        gw.request("BREW", "/coffee")

        self.assertEqual(gw.value("txgateway_http_requests_total", route="all", method="GET", upstream="app", status="200"), 4)
        self.assertEqual(gw.value("txgateway_http_requests_total", route="all", method="POST", upstream="app", status="503"), 1)
        self.assertEqual(gw.value("txgateway_http_requests_total", route="all", method="OTHER", upstream="app", status="200"), 1)
        hist = "txgateway_http_request_duration_seconds_bucket"
        self.assertEqual(gw.value(hist, route="all", method="GET", upstream="app", le="0.1"), 3)
        self.assertEqual(gw.value(hist, route="all", method="GET", upstream="app", le="0.25"), 4)
        self.assertAlmostEqual(gw.value("txgateway_http_request_duration_seconds_sum", route="all", method="GET", upstream="app"), 0.2)
        up = sum(gw.value("txgateway_upstream_requests_total", upstream="app", target=t, status="200") for t in TARGETS)
        self.assertEqual(up, 5)
        self.assertEqual(sum(gw.value("txgateway_upstream_requests_total", upstream="app", target=t, status="503")
                             for t in TARGETS), 1)
        self.assertEqual(sum(gw.value("txgateway_upstream_request_duration_seconds_count", upstream="app", target=t)
                             for t in TARGETS), 6)
        for family in gw.metrics.registry.collect():
            for sample in family.samples:
                for value in sample.labels.values():
                    self.assertNotIn("secret-path", value)
                    self.assertNotIn("coffee", value)

    def test_targetGaugesSetWhenBuilt(self) -> None:
        """Each target starts healthy (1) with a closed circuit (0), labelled by upstream and target."""
        gw = InMemoryGateway()
        for t in TARGETS:
            self.assertEqual(gw.value("txgateway_target_healthy", upstream="app", target=t), 1)
            self.assertEqual(gw.value("txgateway_circuit_state", upstream="app", target=t), 0)

    def test_inFlightAndActiveConnections(self) -> None:
        """While a request waits on its backend it is in flight on an open connection; after, neither."""
        gw = InMemoryGateway()
        proto, transport = gw.send("GET", "/slow?delay=1")
        self.assertEqual(gw.value("txgateway_in_flight_requests"), 1)
        self.assertEqual(gw.value("txgateway_active_connections"), 1)
        self.assertEqual(gw.gateway.state.inFlight, 1)
        gw.clock.advance(1)
        self.assertEqual(gw.reply(transport).status, 200)  # type: ignore[union-attr]
        self.assertEqual(gw.value("txgateway_in_flight_requests"), 0)
        proto.connectionLost(None)
        self.assertEqual(gw.value("txgateway_active_connections"), 0)

    def test_metricsEndpointServesPrometheusText(self) -> None:
        """/metrics answers GET with the text format, HEAD without a body, POST with 405."""
        gw = InMemoryGateway()
        gw.request("GET", "/x")
        r = gw.request("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers["content-type"].startswith("text/plain"))
        self.assertIn(b'txgateway_http_requests_total{method="GET",route="all",status="200",upstream="app"} 1.0', r.body)
        head = gw.request("HEAD", "/metrics")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(gw.request("POST", "/metrics").status, 405)


class RequestIdTests(SynchronousTestCase):
    def test_saneIdKept(self) -> None:
        """A short plain X-Request-ID is kept as it is."""
        self.assertEqual(IdSource().requestId(b"abc-123_x.y:z"), "abc-123_x.y:z")

    def test_insaneIdReplacedBy128BitId(self) -> None:
        """Too long, empty or odd characters: a fresh 32-hex-digit (128-bit) id instead."""
        for bad in (b"x" * 129, b"", b"a b", b"a\x00b", b"<script>", "é".encode(), None):
            rid = IdSource().requestId(bad)
            self.assertRegex(rid, r"^[0-9a-f]{32}$")
        self.assertNotEqual(IdSource().requestId(None), IdSource().requestId(None))

    def test_idSourceGivesFreshHexIdsAcrossBlocks(self) -> None:
        """IdSource: 32-digit request and trace ids, 16-digit span ids, never repeated, also past a block's end."""

        class SmallBlocks(IdSource):
            __slots__ = ()
            BLOCK = 40  # a refill every few ids

        reads: list[int] = []
        urandom = os.urandom
        self.patch(idsModule.os, "urandom", lambda n: reads.append(n) or urandom(n))
        for source in (IdSource(), SmallBlocks()):
            reads.clear()
            ids = []
            for _ in range(50):
                ids += [source.requestId(None), source.traceId(), source.spanId()]
                self.assertEqual(source.requestId(b"kept-1"), "kept-1")
            self.assertEqual([len(i) for i in ids], [32, 32, 16] * 50)
            for i in ids:
                self.assertRegex(i, r"^[0-9a-f]+$")
            self.assertEqual(len(set(ids)), len(ids))
            # 80 hex digits a round: one read in all for 4 KiB blocks, one a round for 40-byte ones.
            self.assertEqual(reads, [4096] if source.BLOCK == 4096 else [40] * 50)

    def test_idSentUpstreamAndReturned(self) -> None:
        """The client's id reaches the backend and comes back on the response."""
        gw = InMemoryGateway()
        r = gw.request("GET", "/a", {"X-Request-ID": "req-42"})
        self.assertEqual(r.headers["x-request-id"], "req-42")
        self.assertEqual(gw.origin.seen[-1]["x-request-id"], ["req-42"])

    def test_newIdOnLocalResponses(self) -> None:
        """Gateway-made answers (404, 405, /health) carry a request id too; a bad one is replaced."""
        gw = InMemoryGateway(configText(extra="  - name: only\n    match: {path: /only, methods: [GET]}\n"
                                              "    upstream: app\n").replace("path_prefix: /}", "path_prefix: /p/}"))
        r404 = gw.request("GET", "/nowhere", {"X-Request-ID": "bad id with spaces"})
        self.assertEqual(r404.status, 404)
        self.assertRegex(r404.headers["x-request-id"], r"^[0-9a-f]{32}$")
        self.assertEqual(r404.json()["request_id"], r404.headers["x-request-id"])
        r405 = gw.request("DELETE", "/only", {"X-Request-ID": "keep-me"})
        self.assertEqual((r405.status, r405.headers["x-request-id"]), (405, "keep-me"))
        self.assertIn("x-request-id", gw.request("GET", "/health").headers)


class TraceContextTests(SynchronousTestCase):
    PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    def test_parseTraceparent(self) -> None:
        """Valid headers give (trace id, flags); malformed, all-zero and version ff start a new trace."""
        self.assertEqual(parseTraceparent(self.PARENT.encode()), ("0af7651916cd43dd8448eb211c80319c", "01"))
        self.assertEqual(parseTraceparent(b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-more"),
                         ("0af7651916cd43dd8448eb211c80319c", "00"))
        for bad in (b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
                    b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                    b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
                    b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                    b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                    b"garbage", b""):
            self.assertIsNone(parseTraceparent(bad), bad)

    def test_traceContinuedWithGatewaySpanAsParent(self) -> None:
        """The backend sees the caller's trace id and flags, the gateway's own span id, and tracestate."""
        gw = InMemoryGateway()
        gw.request("GET", "/t", {"traceparent": self.PARENT, "tracestate": "vendor=1"})
        seen = gw.origin.seen[-1]
        version, trace, span, flags = seen["traceparent"][0].split("-")
        self.assertEqual((version, trace, flags), ("00", "0af7651916cd43dd8448eb211c80319c", "01"))
        self.assertRegex(span, r"^[0-9a-f]{16}$")
        self.assertNotEqual(span, "b7ad6b7169203331")
        self.assertEqual(seen["tracestate"], ["vendor=1"])

    def test_invalidTraceparentStartsNewTraceWithoutState(self) -> None:
        """A malformed traceparent starts a new trace, and its tracestate is not forwarded."""
        gw = InMemoryGateway()
        gw.request("GET", "/t", {"traceparent": "00-nothex-b7ad6b7169203331-01", "tracestate": "vendor=1"})
        seen = gw.origin.seen[-1]
        self.assertRegex(seen["traceparent"][0], r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
        self.assertNotIn("tracestate", seen)

    def test_newTraceWhenNoneSent(self) -> None:
        """Without a traceparent each request starts its own trace."""
        gw = InMemoryGateway()
        gw.request("GET", "/a")
        gw.request("GET", "/b")
        a, b = (s["traceparent"][0].split("-")[1] for s in gw.origin.seen)
        self.assertNotEqual(a, b)


class LogTests(SynchronousTestCase):
    def accessLines(self, gw: InMemoryGateway) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out.getvalue().splitlines()]

    def setUp(self) -> None:
        self.out = io.StringIO()

    def gatewayWithLog(self) -> InMemoryGateway:
        gw = InMemoryGateway()
        gw.service.accessLog = AccessLog(True, self.out, "json")
        gw.gateway.runtime.accessLog = gw.service.accessLog
        return gw

    def test_oneAccessLineWithEveryField(self) -> None:
        """Each request gives one JSON line naming request, route, target, timing and sizes."""
        gw = self.gatewayWithLog()
        proto, transport = gw.send("POST", "/p?delay=0.05", {"X-Request-ID": "rid-1"}, body=b"hello")
        gw.clock.advance(0.05)
        gw.reply(transport)
        [line] = self.accessLines(gw)
        for key in ("request_id", "client", "method", "host", "path", "route", "upstream", "target", "attempts",
                    "status", "duration_ms", "bytes_in", "bytes_out", "cache"):
            self.assertIn(key, line)
        self.assertEqual((line["request_id"], line["method"], line["host"], line["path"], line["route"]),
                         ("rid-1", "POST", "gw.example", "/p", "all"))
        self.assertEqual((line["upstream"], line["attempts"], line["status"], line["bytes_in"]), ("app", 1, 200, 5))
        self.assertIn(line["target"], TARGETS)
        self.assertEqual(line["duration_ms"], 50.0)
        self.assertGreater(line["bytes_out"], 0)
        self.assertEqual(line["client"], "127.0.0.1")

    def test_credentialsNeverLogged(self) -> None:
        """Authorization and cookie values appear in no access line."""
        gw = self.gatewayWithLog()
        gw.request("GET", "/a?token=querysecret", {"Authorization": "Bearer topsecret1",
                                                   "Cookie": "session=topsecret2", "Proxy-Authorization": "Basic x3"})
        text = self.out.getvalue()
        for secret in ("topsecret1", "topsecret2", "querysecret", "Basic x3"):
            self.assertNotIn(secret, text)

    def test_redactionOfFormattedMessages(self) -> None:
        """A message that formats a header's value anyway loses the value, in JSON and text."""
        headers = {b"Authorization": [b"Bearer abc"], b"Cookie": [b"s=1"]}
        event = {"log_format": "got {h} and Authorization: Basic zzz", "h": headers, "log_level": LogLevel.warn,
                 "log_namespace": "t", "log_time": 0.0}
        for fmt in (jsonFormatter("info"), textFormatter("info")):
            line = fmt(dict(event))
            assert line is not None
            for secret in ("Bearer abc", "s=1", "Basic zzz"):
                self.assertNotIn(secret, line)
        self.assertEqual(redact("nothing here"), "nothing here")
        self.assertEqual(redact("cookie=abc"), "cookie=[redacted]")

    def test_jsonFormatterLevelsAndFields(self) -> None:
        """Events below the level are dropped; others are one JSON object with request_id when known."""
        fmt = jsonFormatter("warn")
        self.assertIsNone(fmt({"log_format": "x", "log_level": LogLevel.info, "log_time": 0.0}))
        line = fmt({"log_format": "boom {n}", "n": 1, "log_level": LogLevel.error, "log_namespace": "txgateway",
                    "log_time": 0.0, "request_id": "r1"})
        assert line is not None
        self.assertTrue(line.endswith("\n"))
        obj = json.loads(line)
        self.assertEqual((obj["level"], obj["message"], obj["request_id"], obj["logger"]),
                         ("error", "boom 1", "r1", "txgateway"))
        self.assertEqual(obj["time"], "1970-01-01T00:00:00.000Z")

    def test_textLinesShareTheAccessLogTimestampFormat(self) -> None:
        """Text logs write one timestamp format: other lines' time is written as access lines' time is."""
        fmt = textFormatter("info")
        line = fmt({"log_format": "hello {n}", "n": 1, "log_level": LogLevel.info, "log_namespace": "txgateway",
                    "log_time": 1700000000.5})
        self.assertEqual(line, "2023-11-14T22:13:20.500Z [txgateway#info] hello 1\n")
        access = fmt({"access": {"time": "2023-11-14T22:13:20.500Z", "status": 200}, "log_time": 1700000000.5})
        self.assertEqual(access, "2023-11-14T22:13:20.500Z [access] status=200\n")

    def test_multiLineMessagesIndentTheirContinuation(self) -> None:
        """A traceback's lines stay with the line they belong to, as Twisted's classic text writes them."""
        line = textFormatter("info")({"log_format": "one\ntwo", "log_level": LogLevel.error, "log_namespace": "t",
                                      "log_time": 0.0})
        self.assertEqual(line, "1970-01-01T00:00:00.000Z [t#error] one\n\ttwo\n")

    def test_legacyEventsNamedByTheirSystemNotLogLegacy(self) -> None:
        """Twisted's log.msg lines (a port starting) name a logger a reader understands, not "log_legacy"."""
        event = {"log_format": "{log_text}", "log_text": "GatewaySite starting on 8080", "log_level": LogLevel.info,
                 "log_namespace": "log_legacy", "log_system": "-", "log_time": 0.0}
        obj = json.loads(jsonFormatter("info")(dict(event)) or "")
        self.assertEqual((obj["logger"], obj["message"]), ("twisted", "GatewaySite starting on 8080"))
        self.assertEqual(textFormatter("info")(dict(event)),
                         "1970-01-01T00:00:00.000Z [twisted#info] GatewaySite starting on 8080\n")

    def test_factoryStartAndStopOnlyAtDebug(self) -> None:
        """"Starting factory <... at 0x7f...>" is noise at info; at debug it is still there."""
        from twisted.internet.protocol import Factory
        from twisted.logger import globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = Factory()  # noisy, as every Factory is unless told otherwise
        factory.doStart()
        factory.doStop()
        events = [e for e in events if e.get("factory") is factory]
        self.assertEqual(len(events), 2)
        for event in events:
            self.assertIsNone(jsonFormatter("info")(dict(event)))
            self.assertIsNone(textFormatter("info")(dict(event)))
            self.assertEqual(json.loads(jsonFormatter("debug")(dict(event)) or "")["level"], "debug")

    def test_workerLinesSayWhichWorker(self) -> None:
        """In a worker every line names it: a worker field in JSON, a [worker N] tag in text."""
        event = {"log_format": "txgateway listening", "log_level": LogLevel.info, "log_namespace": "txgateway",
                 "log_time": 0.0}
        self.assertEqual(json.loads(jsonFormatter("info", worker=2)(dict(event)) or "")["worker"], 2)
        self.assertNotIn("worker", json.loads(jsonFormatter("info")(dict(event)) or ""))
        self.assertEqual(textFormatter("info", worker=2)(dict(event)),
                         "1970-01-01T00:00:00.000Z [worker 2] [txgateway#info] txgateway listening\n")

    def test_configSummaryLine(self) -> None:
        """At start-up one line names the config file and counts what it holds, without any URL."""
        config = parseConfig(configText(extra="""\
admin:
  listen: "tcp:0:interface=127.0.0.1"
stores:
  redis: redis://:hunter2@127.0.0.1:6379/0
"""), "/etc/txgateway/gw.yaml")
        summary = configSummary(config)
        self.assertEqual(summary, "config loaded /etc/txgateway/gw.yaml: 1 route, 1 upstream (2 targets), "
                                  "listening on tcp:0:interface=127.0.0.1, admin on tcp:0:interface=127.0.0.1, "
                                  "shared state in Redis")
        events: list[dict[str, Any]] = []
        logConfigLoaded(config, Logger(namespace="txgateway", observer=events.append))
        [event] = events
        self.assertEqual(json.loads(jsonFormatter("info")(event) or "")["message"], summary)

    def test_accessLinesKeptWhateverTheLevel(self) -> None:
        """logging.access_log decides about access lines, not logging.level."""
        event = {"access": {"request_id": "r", "status": 200}, "log_level": LogLevel.info, "log_time": 0.0}
        self.assertEqual(json.loads(jsonFormatter("error")(event) or ""), {"request_id": "r", "status": 200})
        self.assertIn("request_id=r status=200", textFormatter("error")(event) or "")

    def test_accessLogThroughTwistedLogger(self) -> None:
        """Without a file the access line is a twisted.logger event that the JSON formatter prints as is."""
        gw = InMemoryGateway()
        events: list[dict[str, Any]] = []
        logger = Logger(namespace="txgateway.access", observer=events.append)
        gw.service.accessLog = gw.gateway.runtime.accessLog = AccessLog(True, logger=logger)
        gw.request("GET", "/x", {"X-Request-ID": "via-logger"})
        [event] = events
        line = json.loads(jsonFormatter("info")(event) or "")
        self.assertEqual((line["request_id"], line["route"], line["status"]), ("via-logger", "all", 200))

    def test_textAccessLog(self) -> None:
        """format: text writes key=value pairs, quoting values with spaces."""
        gw = InMemoryGateway()
        gw.service.accessLog = gw.gateway.runtime.accessLog = AccessLog(True, self.out, "text")
        gw.request("GET", "/x", {"X-Request-ID": "t-1"})
        line = self.out.getvalue()
        self.assertIn("request_id=t-1 ", line)
        self.assertIn("route=all ", line)
        self.assertIn("status=200 ", line)

    def test_jsonLineIsWhatJsonDumpsWrites(self) -> None:
        """The access log's JSON line is byte for byte json.dumps of its entry, whatever the field values."""

        class Route:
            name = 'r\u00e9"1'

        class Request:
            bytesIn = 7

        plain = RequestContext(Request(), 0.0, "rid", "192.0.2.1", "192.0.2.1", b"GET", "h", "/", None)  # type: ignore[arg-type]
        odd = RequestContext(Request(), 0.0, 'r"\\', "2001:db8::1", "::1", b"G\xe9T", "h\u00e9",  # type: ignore[arg-type]
                             '/caf\u00e9/"q"\\/\x00\n\u2028', b"q=1")
        odd.route = Route()  # type: ignore[assignment]
        odd.upstream, odd.target, odd.attempts = "up", "http://t:1", 3
        odd.targetsTried = ["http://a:1", 'http://"b"']
        odd.status, odd.bytesOut, odd.cacheStatus, odd.identity = 502, 10**12, "hit", "\u00e9ve"
        odd.outcome, odd.traceId = "status_502", "ab" * 16
        one = RequestContext(Request(), 0.0, "rid", "192.0.2.1", "192.0.2.1", b"BREW", "h", "/", None)  # type: ignore[arg-type]
        one.route, one.upstream, one.target, one.targetsTried = Route(), "up", "http://t:1", ["http://t:1"]  # type: ignore[assignment]
        one.outcome, one.cacheStatus = "client_gone", "miss"
        times = iter([1700000000.0, 1700000000.9996, 1700000001.0015, 1700000059.5, 1e9 + 0.25, 1700000000.0])
        now: list[float] = []
        log = AccessLog(True, now=lambda: now[0])  # one timestamp for both
        cases = ((plain, 0.0, None), (odd, 1.23456789, 3), (plain, 12345.0006, 0), (one, 0.0004, None))
        for t in times:  # the same log again and again: its remembered strings and second change nothing
            now[:] = [t]
            for context, duration, worker in cases:
                log.worker = worker
                self.assertEqual(log.jsonLine(context, duration),
                                 json.dumps(log.entry(context, duration), separators=(",", ":")) + "\n")

    def test_accessLogFieldOfUnexpectedTypeWrittenAsJsonDoes(self) -> None:
        """A field that is not a string (a number for a name, say) still makes a JSON line, as json.dumps writes it."""

        class Request:
            bytesIn = 0

        context = RequestContext(Request(), 0.0, "rid", "192.0.2.1", "192.0.2.1", b"GET", "h", "/", None)  # type: ignore[arg-type]
        context.upstream, context.target, context.targetsTried = 5, "http://t:1", [1.5]  # type: ignore[assignment]
        out = io.StringIO()
        log = AccessLog(True, out, "json", now=lambda: 1700000000.5)
        log.record(context, 0.001)
        line = out.getvalue()
        self.assertEqual(line, json.dumps(log.entry(context, 0.001), separators=(",", ":")) + "\n")
        self.assertEqual((json.loads(line)["upstream"], json.loads(line)["targets_tried"]), (5, [1.5]))
        self.assertEqual(json.loads(line)["time"], "2023-11-14T22:13:20.500Z")

    def test_accessLogFileFlushedOncePerReactorTurn(self) -> None:
        """With a clock, lines written in one reactor turn reach the file in one flush."""
        flushes: list[str] = []

        class Out(io.StringIO):
            def flush(self) -> None:
                flushes.append(self.getvalue())

        clock = MemoryReactorClock()
        out = Out()
        gw = InMemoryGateway()
        gw.service.accessLog = gw.gateway.runtime.accessLog = AccessLog(True, out, "json", clock)
        gw.request("GET", "/x", {"X-Request-ID": "f-1"})
        gw.request("GET", "/x", {"X-Request-ID": "f-2"})
        self.assertEqual(flushes, [])
        clock.advance(0)
        self.assertEqual(len(flushes), 1)
        self.assertEqual([json.loads(line)["request_id"] for line in flushes[0].splitlines()], ["f-1", "f-2"])

    def test_twistdObserverAdoptedAtFirstEvent(self) -> None:
        """An observer added before twistd's file observer re-points it before the first line is written."""
        publisher = LogPublisher()
        adopter = TwistdLogAdopter(jsonFormatter("info"), publisher)
        adopter.attach()
        out = io.StringIO()
        publisher.addObserver(FileLogObserver(out, lambda e: "classic text\n"))
        Logger(namespace="twistd", observer=publisher).info("starting up")
        adopter.detach()
        Logger(namespace="twistd", observer=publisher).info("second")
        lines = [json.loads(x) for x in out.getvalue().splitlines()]
        self.assertEqual([x["message"] for x in lines], ["starting up", "second"])
        self.assertNotIn(adopter, publisher._observers)




class HealthTests(SynchronousTestCase):
    def test_healthyReport(self) -> None:
        """200 and every upstream's targets with health, circuit state and in-flight count."""
        gw = InMemoryGateway()
        r = gw.request("GET", "/health")
        self.assertEqual(r.status, 200)
        doc = r.json()
        self.assertEqual((doc["status"], doc["degraded"]), ("ok", []))
        targets = doc["upstreams"]["app"]["targets"]
        self.assertEqual([t["url"] for t in targets], list(TARGETS))
        self.assertEqual({(t["healthy"], t["circuit"], t["in_flight"]) for t in targets}, {(True, "closed", 0)})

    def test_degradedUpstreamNamed(self) -> None:
        """One bad target of two: still 200, the upstream listed as degraded, the open circuit shown."""
        gw = InMemoryGateway()
        gw.gateway.runtime.clusters["app"].endpoints[0].breaker = BrokenBreaker("open")
        r = gw.request("GET", "/health")
        self.assertEqual(r.status, 200)
        doc = r.json()
        self.assertEqual((doc["status"], doc["degraded"]), ("degraded", ["app"]))
        self.assertEqual(doc["upstreams"]["app"]["targets"][0]["circuit"], "open")

    def test_unavailableWhenNoUpstreamUsable(self) -> None:
        """503 once no upstream has a usable target (every one unhealthy and its circuit open)."""
        gw = InMemoryGateway()
        for e in gw.gateway.runtime.clusters["app"].endpoints:
            e.activeHealthy = False
            e.breaker = BrokenBreaker("open")
        r = gw.request("GET", "/health")
        self.assertEqual((r.status, r.json()["status"]), (503, "unavailable"))

    def test_failOpenWithNoHealthyTargetIsDegradedNot503(self) -> None:
        """fail_open (the default) still forwards when every target is unhealthy: /health says 200 degraded."""
        gw = InMemoryGateway()
        for e in gw.gateway.runtime.clusters["app"].endpoints:
            e.activeHealthy = False
        r = gw.request("GET", "/health")
        doc = r.json()
        self.assertEqual((r.status, doc["status"], doc["degraded"]), (200, "degraded", ["app"]))
        self.assertEqual((doc["upstreams"]["app"]["usable"], doc["upstreams"]["app"]["failing_open"]), (False, True))

    def test_methods(self) -> None:
        """GET and HEAD only: HEAD has the headers and no body; anything else is 405 with Allow."""
        gw = InMemoryGateway()
        head = gw.request("HEAD", "/health")
        self.assertEqual((head.status, head.body), (200, b""))
        self.assertEqual(head.headers["content-type"], "application/json")
        for method in ("POST", "PUT", "DELETE"):
            r = gw.request(method, "/health")
            self.assertEqual((r.status, r.headers["allow"]), (405, "GET, HEAD"))

    def test_readyFollowsListeningAndDraining(self) -> None:
        """/ready: 503 before listening, 200 once up, 503 while draining (HEAD too)."""
        gw = InMemoryGateway()
        gw.gateway.state.ready = False
        self.assertEqual(gw.request("GET", "/ready").status, 503)
        gw.gateway.state.ready = True
        self.assertEqual(gw.request("GET", "/ready").status, 200)
        self.assertEqual(gw.request("HEAD", "/ready").status, 200)
        gw.gateway.state.draining = True
        r = gw.request("GET", "/ready")
        self.assertEqual((r.status, r.json()["status"]), (503, "draining"))

    def test_endpointsFollowConfig(self) -> None:
        """server.endpoints moves the gateway's own paths; the old path then goes to routing."""
        gw = InMemoryGateway(configText().replace(
            "server:\n", "server:\n  endpoints: {health: /_gw/health, metrics: /_gw/metrics}\n"))
        self.assertIn("upstreams", gw.request("GET", "/_gw/health").json())
        self.assertTrue(re.search(rb"txgateway_", gw.request("GET", "/_gw/metrics").body))
        self.assertIn("headers", gw.request("GET", "/health").json())  # proxied to the backend


class DashboardTests(SynchronousTestCase):
    def test_dashboardAndDocsUseOnlyExportedMetrics(self) -> None:
        """Every txgateway_ series named in the Grafana dashboard and the docs is one the gateway exports."""
        from pathlib import Path

        root = Path(__file__).resolve().parents[1]
        from txgateway.logrelay import droppedCounter
        from txgateway.restarting import restartsCounter

        exported: set[str] = set()
        # The gateway's own, and the two the worker supervisor keeps (reported with the workers').
        supervisor = [*restartsCounter().collect(), *droppedCounter().collect()]
        for family in [*Metrics(processMetrics=False).registry.collect(), *supervisor]:
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
            exported.update(family.name + s for s in suffixes)
            exported.add(family.name)
        dashboard = (root / "deploy" / "grafana-dashboard.json").read_text()
        json.loads(dashboard)
        for text in (dashboard, (root / "docs" / "observability.md").read_text()):
            used = set(re.findall(r"\btxgateway_[a-z_]+", text))
            self.assertTrue(used)
            self.assertEqual(used - exported, set())
