# -*- test-case-name: tests.test_observe_tracing -*-
"""
Spans: one server span per request, one client span per upstream attempt.

Built only when the config has C{tracing:} (L{buildTracer} returns None
otherwise, and the request path then tests one attribute for None: the
whole cost of tracing switched off).  A request's spans live on its
L{RequestContext} (C{context.trace}, the server L{Span}, which holds its
attempts) and are handed to the exporter as one batch when the request ends,
so the decision to keep an unsampled request that failed
(C{always_sample_errors}) can be made with the status in hand.

Sampling is parent-based: a request whose C{traceparent} says sampled is
sampled, one that says not is not; a new trace is sampled when the low 64
bits of its (random) trace id fall under C{sample} of their range, as
OpenTelemetry's C{TraceIdRatioBased} sampler decides, so every hop that
samples by ratio agrees on a trace.  The decision is made when the request
starts, so the C{traceparent} sent upstream carries it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import TracingConfig
    from txgateway.context import RequestContext
    from txgateway.observe.ids import IdSource

__all__ = ["KIND_CLIENT", "KIND_SERVER", "Span", "SpanSink", "Tracer", "buildTracer"]

KIND_SERVER = 2  # OTLP's SpanKind values
KIND_CLIENT = 3
_RATIO_RANGE = 1 << 64


class Span:
    """
    One finished or running span, as little as the OTLP encoding needs.

    Times are seconds from the gateway's clock (the reactor's wall clock in a
    running gateway); C{attributes} is a list of (key, value) pairs, values
    str, int, float or bool.
    """

    __slots__ = ("traceId", "spanId", "parentId", "name", "kind", "start", "end", "attributes", "error",
                 "sampled", "attempts", "tracer")

    def __init__(self, traceId: str, spanId: str, parentId: str | None, name: str, kind: int, start: float) -> None:
        self.traceId = traceId
        self.spanId = spanId
        self.parentId = parentId
        self.name = name
        self.kind = kind
        self.start = start
        self.end = start
        self.attributes: list[tuple[str, Any]] = []
        self.error = False
        self.sampled = False
        self.attempts: list[Span] | None = None
        self.tracer: Tracer | None = None

    def __repr__(self) -> str:
        return f"<Span {self.name} {self.traceId}/{self.spanId} parent={self.parentId}>"


class SpanSink:
    """What the tracer hands finished spans to (L{txgateway.observe.otlp.OTLPExporter}); a list in tests."""

    def add(self, spans: list[Span]) -> None:
        raise NotImplementedError


class Tracer:
    """Starts and ends the spans of requests, and passes the kept ones to C{sink}."""

    def __init__(self, config: TracingConfig, clock: IReactorTime, ids: IdSource, sink: Any) -> None:
        self.clock = clock
        self.ids = ids
        self.sink = sink
        self.alwaysErrors = config.always_sample_errors
        self.threshold = int(config.sample * _RATIO_RANGE)
        self.methods: dict[bytes, tuple[str, str]] = {}

    def sampledRoot(self, traceId: str) -> bool:
        """The ratio decision for a new trace, from its id alone (OpenTelemetry's TraceIdRatioBased)."""
        return int(traceId[16:], 16) < self.threshold

    def _names(self, method: bytes) -> tuple[str, str]:
        names = self.methods.get(method)
        if names is None:
            m = method.decode("latin-1") if len(method) <= 16 else "OTHER"
            names = (f"HTTP {m}", f"upstream {m}")
            if len(self.methods) < 64:  # clients inventing methods cannot grow this
                self.methods[method] = names
        return names

    def begin(self, context: RequestContext, parent: str | None) -> None:
        """
        The request's server span, on C{context.trace}; its sampling decision
        goes into C{context.traceFlags}, so the traceparent sent upstream carries it.

        C{parent}: the span id of a valid incoming traceparent (see
        L{txgateway.observe.ids.parentSpanId}), the caller's span: this
        span's parent, whose flags decide.  None starts a trace here.
        """
        traceId = context.traceId
        assert traceId is not None and context.spanId is not None
        if parent is not None:
            sampled = (int(context.traceFlags, 16) & 1) == 1
        else:
            sampled = self.sampledRoot(traceId)
        context.traceFlags = "01" if sampled else "00"
        span = Span(traceId, context.spanId, parent, self._names(context.method)[0], KIND_SERVER, context.started)
        span.sampled = sampled
        span.tracer = self
        context.trace = span

    def attempt(self, context: RequestContext, method: bytes, target: str, number: int,
                retryReason: str | None) -> Span | None:
        """
        A client span for attempt C{number} to C{target}, child of the
        request's server span; None when the request can never be exported
        (not sampled, and errors not always kept), so it costs nothing more.
        """
        server: Span = context.trace
        if not server.sampled and not self.alwaysErrors:
            return None
        span = Span(server.traceId, self.ids.spanId(), server.spanId, self._names(method)[1], KIND_CLIENT,
                    self.clock.seconds())
        span.end = -1.0  # open until attemptEnded
        attrs = span.attributes
        attrs.append(("http.request.method", method.decode("latin-1")))
        attrs.append(("url.full", target))
        attrs.append(("txgateway.target", target))
        attrs.append(("txgateway.attempt", number))
        if retryReason is not None:
            attrs.append(("txgateway.retry_reason", retryReason))
        if server.attempts is None:
            server.attempts = [span]
        else:
            server.attempts.append(span)
        return span

    def attemptEnded(self, span: Span, outcome: str | int) -> None:
        """The attempt's answer: a status code, or the name of its failure ('timeout', 'reset'...)."""
        span.end = self.clock.seconds()
        if isinstance(outcome, int):
            span.attributes.append(("http.response.status_code", outcome))
            span.attributes.append(("txgateway.outcome", f"status_{outcome}"))
            span.error = outcome >= 500
        else:
            span.attributes.append(("txgateway.outcome", outcome))
            span.error = outcome != "cancelled"

    def end(self, context: RequestContext, end: float) -> bool:
        """
        The request is answered: finish its server span, and hand it and its
        attempts to the sink when sampled (or failed, with C{always_sample_errors}).
        Returns whether it was kept (its trace id then becomes an exemplar).
        """
        span: Span = context.trace
        status = context.status
        span.error = status >= 500
        if not (span.sampled or (self.alwaysErrors and (span.error or _attemptFailed(span)))):
            return False
        span.end = end
        route = context.route
        attrs = span.attributes
        attrs.append(("http.request.method", context.method.decode("latin-1")))
        attrs.append(("url.path", context.path))
        attrs.append(("http.route", route.name if route is not None else ""))
        attrs.append(("http.response.status_code", status))
        attrs.append(("server.address", context.host))
        attrs.append(("client.address", context.clientIP))
        attrs.append(("txgateway.request_id", context.requestId))
        if context.upstream is not None:
            attrs.append(("txgateway.upstream", context.upstream))
        if context.outcome is not None:
            attrs.append(("txgateway.outcome", context.outcome))
        if context.cacheStatus is not None:
            attrs.append(("txgateway.cache", context.cacheStatus))
        spans = [span]
        attempts = span.attempts
        if attempts:
            for a in attempts:
                if a.end < 0:  # still open: the client left mid-attempt
                    a.end = end
                    a.attributes.append(("txgateway.outcome", "cancelled"))
            spans.extend(attempts)
        self.sink.add(spans)
        return True


def _attemptFailed(span: Span) -> bool:
    attempts = span.attempts
    return attempts is not None and any(a.error for a in attempts)


def buildTracer(config: TracingConfig | None, clock: IReactorTime, ids: IdSource, sink: Any) -> Tracer | None:
    """The tracer for C{config}, or None when tracing is not configured (decided once, at build time)."""
    if config is None:
        return None
    return Tracer(config, clock, ids, sink)
