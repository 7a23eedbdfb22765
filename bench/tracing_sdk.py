"""
Per-request cost of one request's spans (a server span and one client span
with the gateway's attributes, sampled, encoded for OTLP): the OpenTelemetry
SDK (BatchSpanProcessor, protobuf encoding) against txgateway's own tracer
(txgateway.observe.tracing, OTLP JSON).  Why issue #27's tracing does not use the SDK.

The SDK is not a dependency of txgateway; install it beside, e.g.
  pip install --target /tmp/otel opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
  PYTHONPATH=/tmp/otel python bench/tracing_sdk.py sdk
  python bench/tracing_sdk.py ours
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

N = 20000

def sdk() -> float:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    from opentelemetry.trace import SpanKind
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    class Encode(SpanExporter):
        def export(self, spans: Any) -> Any:
            encode_spans(spans).SerializeToString()
            return SpanExportResult.SUCCESS
        def shutdown(self) -> None:
            pass

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(1.0)))
    provider.add_span_processor(BatchSpanProcessor(Encode(), max_queue_size=N * 2, max_export_batch_size=512))
    tracer = provider.get_tracer("txgateway")
    prop = TraceContextTextMapPropagator()
    carrier = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    gc.collect()
    t0 = time.process_time()
    for _ in range(N):
        ctx = prop.extract(carrier)
        server = tracer.start_span("HTTP GET", context=ctx, kind=SpanKind.SERVER)
        cctx = trace.set_span_in_context(server)
        client = tracer.start_span("upstream GET", context=cctx, kind=SpanKind.CLIENT)
        client.set_attribute("http.request.method", "GET")
        client.set_attribute("url.full", "http://127.0.0.1:9101")
        client.set_attribute("txgateway.target", "http://127.0.0.1:9101")
        client.set_attribute("txgateway.attempt", 1)
        out: dict[str, str] = {}
        prop.inject(out, context=trace.set_span_in_context(client))
        client.set_attribute("http.response.status_code", 200)
        client.set_attribute("txgateway.outcome", "status_200")
        client.end()
        for k, v in (("http.request.method", "GET"), ("url.path", "/api/x"), ("http.route", "api"),
                     ("http.response.status_code", 200), ("server.address", "127.0.0.1:8080"),
                     ("client.address", "127.0.0.1"), ("txgateway.request_id", "0123456789abcdef0123456789abcdef"),
                     ("txgateway.upstream", "app")):
            server.set_attribute(k, v)
        server.end()
    provider.force_flush()
    provider.shutdown()
    return (time.process_time() - t0) / N * 1e6

def ours() -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from twisted.internet.task import Clock

    from txgateway.config import TracingConfig, TracingOTLP
    from txgateway.context import RequestContext
    from txgateway.observe.ids import IdSource, parentSpanId
    from txgateway.observe.otlp import encodeSpans
    from txgateway.observe.tracing import Tracer

    class Sink:
        def __init__(self) -> None:
            self.q: list[Any] = []

        def add(self, spans: list[Any]) -> None:
            self.q.extend(spans)
            if len(self.q) >= 512:
                encodeSpans(self.q, [("service.name", "txgateway")])
                self.q = []

    ids = IdSource()
    clock = Clock()
    tracer = Tracer(TracingConfig(TracingOTLP("http://x/v1/traces"), 1.0), clock, ids, Sink())
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    gc.collect()
    t0 = time.process_time()
    for _ in range(N):
        c = RequestContext(None, 1.0, "0123456789abcdef0123456789abcdef", "127.0.0.1", "127.0.0.1", b"GET",  # type: ignore[arg-type]
                           "127.0.0.1:8080", "/api/x", None)
        c.traceId, c.traceFlags = "4bf92f3577b34da6a3ce929d0e0e4736", "01"
        c.spanId = ids.spanId()
        tracer.begin(c, parentSpanId(tp))
        s = tracer.attempt(c, b"GET", "http://127.0.0.1:9101", 1, None)
        assert s is not None
        tracer.attemptEnded(s, 200)
        c.status = 200
        c.upstream = "app"
        tracer.end(c, 2.0)
    tracer.sink.add([])
    return (time.process_time() - t0) / N * 1e6

if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "ours"
    best = min((sdk if which == "sdk" else ours)() for _ in range(3))
    print(f"{which}: {best:.1f} us per request (2 spans, sample 1.0, encoded)")
