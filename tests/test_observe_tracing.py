"""
Tracing: server and client spans, parent-based sampling, the batching OTLP exporter, exemplars, processing SLIs.

The whole gateway runs in memory (L{tests.test_observe.InMemoryGateway});
the tracer's sink is swapped for a list, and the exporter is driven by a
L{Clock} with a fake POST.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from tests.support import InMemoryGateway, configText
from txgateway.config import parseConfig
from txgateway.observe.metrics import Metrics
from txgateway.observe.otlp import OTLPExporter, encodeSpans
from txgateway.observe.tracing import KIND_CLIENT, KIND_SERVER, Span

PARENT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
PARENT_UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"


def tracingConfig(sample: float = 1.0, errors: bool = False, retries: str = "") -> str:
    extra = (f"tracing:\n  otlp: {{endpoint: 'http://127.0.0.1:4318'}}\n  sample: {sample}\n"
             f"  always_sample_errors: {'true' if errors else 'false'}\n")
    text = configText(extra=extra)
    if retries:
        text = text.replace("upstreams:\n  app:\n", f"upstreams:\n  app:\n{retries}")
    return text


class Sink:
    def __init__(self) -> None:
        self.batches: list[list[Span]] = []

    def add(self, spans: list[Span]) -> None:
        self.batches.append(spans)


def traced(text: str) -> tuple[InMemoryGateway, Sink]:
    gw = InMemoryGateway(text)
    sink = Sink()
    tracer = gw.gateway.state.tracer
    assert tracer is not None
    tracer.sink = sink
    return gw, sink


def attrs(span: Span) -> dict[str, Any]:
    return dict(span.attributes)


class SpanTests(SynchronousTestCase):
    def test_noTracerWithoutTracingConfig(self) -> None:
        """Without tracing: there is no tracer and requests carry no span."""
        gw = InMemoryGateway()
        self.assertIsNone(gw.gateway.state.tracer)
        self.assertEqual(gw.request("GET", "/t").status, 200)

    def test_serverAndClientSpanWithTheIssuesNamesAndAttributes(self) -> None:
        """One request: an `HTTP GET` server span and an `upstream GET` client span under it."""
        gw, sink = traced(tracingConfig())
        reply = gw.request("GET", "/t", {"traceparent": PARENT_SAMPLED})
        self.assertEqual(reply.status, 200)
        [spans] = sink.batches
        server, client = spans
        self.assertEqual((server.name, server.kind), ("HTTP GET", KIND_SERVER))
        self.assertEqual((client.name, client.kind), ("upstream GET", KIND_CLIENT))
        self.assertEqual(server.traceId, "0af7651916cd43dd8448eb211c80319c")
        self.assertEqual(server.parentId, "b7ad6b7169203331")
        self.assertEqual(client.parentId, server.spanId)
        a = attrs(server)
        self.assertEqual(a["http.route"], "all")
        self.assertEqual(a["http.response.status_code"], 200)
        self.assertEqual(a["server.address"], "gw.example")
        self.assertEqual(a["txgateway.upstream"], "app")
        self.assertEqual(a["client.address"], "127.0.0.1")
        self.assertEqual(a["txgateway.request_id"], reply.headers["x-request-id"])
        c = attrs(client)
        self.assertEqual(c["txgateway.attempt"], 1)
        self.assertIn(c["txgateway.target"], ("http://127.0.0.1:9101", "http://127.0.0.1:9102"))
        self.assertEqual(c["txgateway.outcome"], "status_200")

    def test_backendSeesTheAttemptSpanAsParent(self) -> None:
        """The traceparent sent upstream names the client span, and says sampled."""
        gw, sink = traced(tracingConfig())
        gw.request("GET", "/t", {"traceparent": PARENT_SAMPLED})
        client = sink.batches[0][1]
        sent = gw.origin.seen[-1]["traceparent"][0]
        self.assertEqual(sent, f"00-{client.traceId}-{client.spanId}-01")

    def test_unsampledParentIsNotExportedAndSaysSoUpstream(self) -> None:
        """Parent-based: a traceparent flagged not sampled is not exported, and 00 goes on upstream."""
        gw, sink = traced(tracingConfig(sample=1.0))
        gw.request("GET", "/t", {"traceparent": PARENT_UNSAMPLED})
        self.assertEqual(sink.batches, [])
        self.assertTrue(gw.origin.seen[-1]["traceparent"][0].endswith("-00"))

    def test_ratioSamplesRootsByTraceId(self) -> None:
        """sample 0 exports no new trace; sample 1 exports every one."""
        gw, sink = traced(tracingConfig(sample=0.0))
        for _ in range(5):
            gw.request("GET", "/t")
        self.assertEqual(sink.batches, [])
        gw, sink = traced(tracingConfig(sample=1.0))
        for _ in range(5):
            gw.request("GET", "/t")
        self.assertEqual(len(sink.batches), 5)

    def test_ratioIsRoughlyTheShareSampled(self) -> None:
        """sample 0.1 keeps about a tenth of new traces (decided from the trace id)."""
        gw, _ = traced(tracingConfig(sample=0.1))
        tracer = gw.gateway.state.tracer
        ids = gw.gateway.state.ids
        kept = sum(tracer.sampledRoot(ids.traceId()) for _ in range(20000))
        self.assertTrue(1600 < kept < 2400, kept)

    def test_errorsAreExportedWhenAskedEvenUnsampled(self) -> None:
        """always_sample_errors: an unsampled 5xx is exported, an unsampled 200 is not."""
        gw, sink = traced(tracingConfig(sample=0.0, errors=True))
        gw.request("GET", "/t")
        self.assertEqual(sink.batches, [])
        gw.request("GET", "/t?status=502")
        [spans] = sink.batches
        self.assertTrue(spans[0].error)
        self.assertEqual(attrs(spans[0])["http.response.status_code"], 502)

    def test_retriedAttemptsEachHaveASpanWithTheRetryReason(self) -> None:
        """A retried 503 gives two client spans: attempt 1 and attempt 2 with its reason."""
        gw, sink = traced(tracingConfig(retries="    retries: {attempts: 1, on: [503], backoff: 0s}\n"))
        gw.request("GET", "/t?status=503")
        server, first, second = sink.batches[0]
        self.assertEqual([attrs(first)["txgateway.attempt"], attrs(second)["txgateway.attempt"]], [1, 2])
        self.assertEqual(attrs(second)["txgateway.retry_reason"], "status_503")
        self.assertNotIn("txgateway.retry_reason", attrs(first))
        self.assertTrue(first.error)


class ExemplarAndSLITests(SynchronousTestCase):
    def test_sampledRequestsTraceIdIsAnExemplarInOpenMetrics(self) -> None:
        """/metrics asked for OpenMetrics carries the sampled request's trace id on its latency bucket."""
        gw, sink = traced(tracingConfig())
        gw.request("GET", "/t")
        traceId = sink.batches[0][0].traceId
        reply = gw.request("GET", "/metrics", {"accept": "application/openmetrics-text; version=1.0.0"})
        self.assertIn("application/openmetrics-text", reply.headers["content-type"])
        self.assertIn(f'# {{trace_id="{traceId}"}}'.encode(), reply.body)
        self.assertTrue(reply.body.endswith(b"# EOF\n"))
        plain = gw.request("GET", "/metrics")
        self.assertNotIn(b"trace_id", plain.body)
        self.assertTrue(plain.headers["content-type"].startswith("text/plain"))

    def test_processingTimesAreObservedPerRouteAndLogged(self) -> None:
        """A forwarded request counts in both processing histograms; the access log has both durations."""
        gw = InMemoryGateway()
        gw.service.accessLog.enabled = True
        with capturedLogs() as events:
            gw.send("GET", "/t?delay=0.25")
            gw.clock.advance(0.25)
            gw.agent.flush()
        [entry] = [e["access"] for e in events if e.get("log_namespace") == "txgateway.access"]
        self.assertEqual(gw.value("txgateway_request_processing_seconds_count", route="all"), 1)
        self.assertEqual(gw.value("txgateway_response_processing_seconds_count", route="all"), 1)
        self.assertEqual(entry["request_processing_ms"], 0.0)
        self.assertIsNotNone(entry["response_processing_ms"])
        self.assertEqual(entry["duration_ms"], 250.0)


class Post:
    """A fake collector POST: each call's body kept, its Deferred fired by the test."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Deferred[int]]] = []

    def __call__(self, body: bytes) -> Deferred[int]:
        d: Deferred[int] = Deferred()
        self.calls.append((body, d))
        return d


def exporter(maxQueue: int = 10, batch: int = 4) -> tuple[OTLPExporter, Post, Clock, Metrics]:
    config = parseConfig(tracingConfig()).tracing
    assert config is not None
    from dataclasses import replace

    config = replace(config, max_queue=maxQueue, batch_size=batch, flush_interval=1.0)
    clock = Clock()
    post = Post()
    metrics = Metrics(processMetrics=False)
    return OTLPExporter(config, clock, post, metrics, [("service.name", "txgateway")]), post, clock, metrics


def span(i: int) -> Span:
    s = Span("0af7651916cd43dd8448eb211c80319c", f"{i:016x}", None, "HTTP GET", KIND_SERVER, 1.5)
    s.end = 2.0
    s.attributes.append(("txgateway.attempt", i))
    return s


class ExporterTests(SynchronousTestCase):
    def test_encodingIsOTLPJSON(self) -> None:
        """Hex ids, kind, nanosecond times as strings, typed attribute values, the resource."""
        doc = json.loads(encodeSpans([span(1)], [("service.name", "txgateway")]))
        rs = doc["resourceSpans"][0]
        self.assertEqual(rs["resource"]["attributes"], [{"key": "service.name", "value": {"stringValue": "txgateway"}}])
        s = rs["scopeSpans"][0]["spans"][0]
        self.assertEqual(s["spanId"], "0000000000000001")
        self.assertEqual(s["startTimeUnixNano"], "1500000000")
        self.assertEqual(s["attributes"], [{"key": "txgateway.attempt", "value": {"intValue": "1"}}])
        self.assertNotIn("parentSpanId", s)

    def test_batchesOnTheTimerOnePostAtATime(self) -> None:
        """Spans wait for the timer; a second batch waits for the first POST's answer."""
        e, post, clock, metrics = exporter(maxQueue=100, batch=4)
        e.startService()
        e.add([span(i) for i in range(3)])
        self.assertEqual(post.calls, [])
        clock.advance(1)
        self.assertEqual(len(post.calls), 1)
        e.add([span(i) for i in range(5)])
        clock.advance(0)
        clock.advance(1)
        self.assertEqual(len(post.calls), 1)
        post.calls[0][1].callback(200)
        clock.advance(0)
        self.assertEqual(len(post.calls), 2)
        self.assertEqual(metrics.registry.get_sample_value("txgateway_trace_spans_exported_total"), 3)
        post.calls[1][1].callback(200)
        e.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_fullQueueDropsAndCounts(self) -> None:
        """More spans than max_queue are dropped and counted as queue_full."""
        e, post, clock, metrics = exporter(maxQueue=4, batch=100)
        e.startService()
        e.add([span(i) for i in range(3)])
        e.add([span(i) for i in range(2)])
        self.assertEqual(metrics.registry.get_sample_value("txgateway_trace_spans_dropped_total",
                                                           {"reason": "queue_full"}), 2)
        e.stopService()

    def test_collectorDownDropsTheBatchAndCarriesOn(self) -> None:
        """A failed or refused POST drops its batch (counted); the next batch is still sent."""
        e, post, clock, metrics = exporter(maxQueue=100, batch=100)
        e.startService()
        e.add([span(1), span(2)])
        clock.advance(1)
        post.calls[0][1].errback(ConnectionRefusedError())
        e.add([span(3)])
        clock.advance(1)
        post.calls[1][1].callback(503)
        self.assertEqual(metrics.registry.get_sample_value("txgateway_trace_spans_dropped_total",
                                                           {"reason": "export_failed"}), 3)
        e.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_stopSendsWhatIsQueued(self) -> None:
        """Stopping sends the queued spans once more before the service is done."""
        e, post, clock, _ = exporter(maxQueue=100, batch=100)
        e.startService()
        e.add([span(1)])
        d = e.stopService()
        self.assertEqual(len(post.calls), 1)
        self.assertNoResult(d)
        post.calls[0][1].callback(200)
        self.successResultOf(d)

    def test_directEncodingIsTheDictEncoding(self) -> None:
        """The hand-written JSON is the same document as json.dumps of the dicts, odd values included."""
        from txgateway.observe.otlp import encodeSpansPlainly

        s = span(7)
        s.parentId = "b7ad6b7169203331"
        s.error = True
        s.attributes += [("x.str", 'q"uo\\te\u00e9\n'), ("x.bool", True), ("x.float", 0.25), ("x.none", None)]
        resource = [("service.name", "txgateway"), ("process.pid", 42)]
        self.assertEqual(json.loads(encodeSpans([s, span(8)], resource)),
                         json.loads(encodeSpansPlainly([s, span(8)], resource)))
        self.assertEqual(json.loads(encodeSpans([], resource)), json.loads(encodeSpansPlainly([], resource)))


class TracingConfigTests(SynchronousTestCase):
    def test_keysParsedWithDefaultsAndTheSignalPath(self) -> None:
        """The issue's keys; /v1/traces is added to a base URL, as OpenTelemetry's exporters do."""
        t = parseConfig(tracingConfig(sample=0.1, errors=True)).tracing
        assert t is not None
        self.assertEqual((t.otlp.endpoint, t.sample, t.always_sample_errors),
                         ("http://127.0.0.1:4318/v1/traces", 0.1, True))
        self.assertIsNone(parseConfig(configText()).tracing)

    def test_mistakesNameTheirKey(self) -> None:
        """A missing otlp, a non-HTTP endpoint, a ratio over 1 and a bad header each name their key path."""
        from txgateway.config import ConfigError

        for extra, path in (("tracing: {sample: 0.5}\n", "tracing.otlp"),
                            ("tracing: {otlp: {endpoint: 'collector:4318'}}\n", "tracing.otlp.endpoint"),
                            ("tracing: {otlp: {endpoint: 'http://c:4318'}, sample: 2}\n", "tracing.sample"),
                            ("tracing: {otlp: {endpoint: 'http://c:4318', headers: {'a b': x}}}\n",
                             "tracing.otlp.headers")):
            with self.assertRaises(ConfigError) as e:
                parseConfig(configText(extra=extra))
            self.assertIn(path, str(e.exception))

    def test_reloadChangingTracingSaysARestartIsNeeded(self) -> None:
        """Tracing is read at start-up: a reload that changes it warns, and the tracer stays as it was."""
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import globalLogPublisher

        from txgateway.service import GatewayService

        first = parseConfig(tracingConfig(sample=0.1))
        second = parseConfig(tracingConfig(sample=0.5))
        clock = MemoryReactorClock()
        service = GatewayService(first, clock, clock=clock, metrics=Metrics(processMetrics=False), configPath="gw.yaml",
                                 loadConfig=lambda path: second)
        tracer = service.gateway.state.tracer
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.assertEqual(service.reload(), [])
        self.assertIn("tracing", [e.get("what") for e in events])
        self.assertIs(service.gateway.state.tracer, tracer)
