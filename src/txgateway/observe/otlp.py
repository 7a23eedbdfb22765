# -*- test-case-name: tests.test_observe_tracing -*-
"""
A Twisted-native OTLP/HTTP span exporter: bounded queue, batches on a timer, never blocks.

Why not the OpenTelemetry SDK: its C{BatchSpanProcessor} runs a thread
with a lock and a condition variable per span, its OTLP exporter POSTs with
C{requests} from that thread, and its per-span objects (a C{Span} with an
attribute dict, a context, a resource, an instrumentation scope) cost tens
of microseconds each on a request path whose whole budget is ~100 us.  The
gateway's spans are a handful of slotted objects (L{txgateway.observe.tracing})
turned into OTLP's JSON encoding (C{application/json}, the OTLP/HTTP JSON
mapping: hex trace and span ids, 64-bit integers as strings) once per batch,
on the reactor, and POSTed with Twisted's own HTTP client.

Bounded: at most C{max_queue} spans wait; more are dropped and counted
(C{txgateway_trace_spans_dropped{reason="queue_full"}}).  One POST at a
time, cut off after C{timeout}: a batch the collector refused or never
answered is dropped and counted (C{reason="export_failed"}); requests never
wait for any of it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _string  # json's own C string encoder
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txgateway.http.replay import BytesProducer
from txgateway.observe.tracing import Tracer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import TracingConfig
    from txgateway.observe.ids import IdSource
    from txgateway.observe.metrics import Metrics
    from txgateway.observe.tracing import Span

__all__ = ["OTLPExporter", "agentPoster", "buildTracing", "encodeSpans", "encodeSpansPlainly"]

log = Logger(namespace="txgateway.tracing")

# POST(body) -> Deferred firing with the response's status code.
Poster = Callable[[bytes], "Deferred[int]"]


def _nanos(seconds: float) -> str:
    return str(int(seconds * 1e9))


def _value(v: Any) -> dict[str, Any]:
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int):
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    return {"stringValue": str(v)}


def _valueJSON(v: Any) -> str:
    """C{json.dumps(_value(v))}, written directly (attribute values are the bulk of a batch)."""
    t = type(v)
    if t is str:
        return '{"stringValue":' + _string(v) + "}"
    if t is int:
        return '{"intValue":"' + str(v) + '"}'
    if t is bool:
        return '{"boolValue":true}' if v else '{"boolValue":false}'
    if t is float:
        return '{"doubleValue":' + json.dumps(v) + "}"
    return '{"stringValue":' + _string(str(v)) + "}"


_KEYS: dict[str, str] = {}


def _key(k: str) -> str:
    """C{{"key":K,"value":} for an attribute name, encoded once (the names are a small fixed set)."""
    encoded = _KEYS.get(k)
    if encoded is None:
        encoded = '{"key":' + _string(k) + ',"value":'
        if len(_KEYS) < 1024:
            _KEYS[k] = encoded
    return encoded


def encodeSpans(spans: list[Span], resource: list[tuple[str, Any]]) -> bytes:
    """
    An OTLP/HTTP JSON C{ExportTraceServiceRequest} of C{spans}.

    Written as text with json's C string encoder rather than built as
    dicts for C{json.dumps}: the same document (a test holds the two
    equal) in about a third of the time, which is most of tracing's cost.
    """
    key = _key
    value = _valueJSON
    out = []
    for s in spans:
        attributes = ",".join([key(k) + value(v) + "}" for k, v in s.attributes])
        parent = f'"parentSpanId":"{s.parentId}",' if s.parentId else ""
        out.append(
            f'{{"traceId":"{s.traceId}","spanId":"{s.spanId}",{parent}"name":{_string(s.name)},"kind":{s.kind},'
            f'"startTimeUnixNano":"{int(s.start * 1e9)}","endTimeUnixNano":"{int(max(s.end, s.start) * 1e9)}",'
            f'"attributes":[{attributes}],"status":{{"code":{2 if s.error else 0}}}}}')
    res = ",".join([key(k) + value(v) + "}" for k, v in resource])
    return (f'{{"resourceSpans":[{{"resource":{{"attributes":[{res}]}},'
            f'"scopeSpans":[{{"scope":{{"name":"txgateway"}},"spans":[{",".join(out)}]}}]}}]}}').encode()


def encodeSpansPlainly(spans: list[Span], resource: list[tuple[str, Any]]) -> bytes:
    """L{encodeSpans} the obvious way, with dicts and C{json.dumps}: what the tests hold it to."""
    out = []
    for s in spans:
        span: dict[str, Any] = {
            "traceId": s.traceId, "spanId": s.spanId, "name": s.name, "kind": s.kind,
            "startTimeUnixNano": _nanos(s.start), "endTimeUnixNano": _nanos(max(s.end, s.start)),
            "attributes": [{"key": k, "value": _value(v)} for k, v in s.attributes],
            "status": {"code": 2} if s.error else {"code": 0},
        }
        if s.parentId:
            span["parentSpanId"] = s.parentId
        out.append(span)
    doc = {"resourceSpans": [{
        "resource": {"attributes": [{"key": k, "value": _value(v)} for k, v in resource]},
        "scopeSpans": [{"scope": {"name": "txgateway"}, "spans": out}],
    }]}
    return json.dumps(doc, separators=(",", ":")).encode()


def agentPoster(reactor: Any, url: str, headers: dict[str, str], timeout: float, clock: IReactorTime) -> Poster:
    """POST to the collector with Twisted's Agent and a pool of its own; cut off after C{timeout}."""
    from twisted.web.client import Agent, HTTPConnectionPool, readBody
    from twisted.web.http_headers import Headers

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 1
    agent = Agent(reactor, pool=pool, connectTimeout=timeout)
    h = Headers({b"Content-Type": [b"application/json"]})
    for k, v in headers.items():
        h.setRawHeaders(k.encode("latin-1"), [v.encode("latin-1")])
    target = url.encode("ascii")

    def post(body: bytes) -> Deferred[int]:
        def read(response: Any) -> Deferred[int]:
            return readBody(response).addCallback(lambda _: response.code)

        d: Deferred[int] = agent.request(b"POST", target, h, BytesProducer(body)).addCallback(read)
        d.addTimeout(timeout, clock)
        return d

    post.pool = pool  # type: ignore[attr-defined]
    return post


class OTLPExporter(Service):
    """Collects finished spans and sends them in batches, one POST at a time."""

    name = "tracing"

    def __init__(self, config: TracingConfig, clock: IReactorTime, post: Poster, metrics: Metrics,
                 resource: list[tuple[str, Any]]) -> None:
        self.clock = clock
        self.post = post
        self.maxQueue = config.max_queue
        self.batchSize = config.batch_size
        self.interval = config.flush_interval
        self.resource = resource
        self.queue: list[Span] = []
        self.sending: Deferred[None] | None = None
        self._soon: Any = None
        self.loop = LoopingCall(self.flush)
        self.loop.clock = clock
        self.exported = metrics.traceSpansExported
        self.droppedFull = metrics.traceSpansDropped.labels("queue_full")
        self.droppedFailed = metrics.traceSpansDropped.labels("export_failed")

    def add(self, spans: list[Span]) -> None:
        """Queue one request's spans; drop (and count) them when the queue is full."""
        queue = self.queue
        if len(queue) + len(spans) > self.maxQueue:
            self.droppedFull.inc(len(spans))
            return
        queue.extend(spans)
        if len(queue) >= self.batchSize and self.sending is None and self._soon is None and self.running:
            self._soon = self.clock.callLater(0, self._flushSoon)

    def _flushSoon(self) -> None:
        self._soon = None
        self.flush()

    def flush(self) -> Deferred[None] | None:
        """Send up to one batch, unless one is on its way (run by the loop; never raises)."""
        if self.sending is not None or not self.queue:
            return self.sending
        batch, self.queue = self.queue[:self.batchSize], self.queue[self.batchSize:]
        try:
            body = encodeSpans(batch, self.resource)
            d = self.post(body)
        except Exception:
            log.failure("encoding or sending {n} spans failed", n=len(batch))
            self.droppedFailed.inc(len(batch))
            return None
        sending: Deferred[None] = Deferred()
        self.sending = sending

        def sent(code: Any) -> None:
            if isinstance(code, int) and 200 <= code < 300:
                self.exported.inc(len(batch))
            else:
                self.droppedFailed.inc(len(batch))
                log.warn("the trace collector answered {code}: {n} spans dropped", code=code, n=len(batch))

        def failed(f: Any) -> None:
            self.droppedFailed.inc(len(batch))
            log.warn("sending {n} spans to the trace collector failed: {why}", n=len(batch),
                     why=f.getErrorMessage())

        def done(_: Any) -> None:
            self.sending = None
            sending.callback(None)
            if len(self.queue) >= self.batchSize and self.running and self._soon is None:
                self._soon = self.clock.callLater(0, self._flushSoon)

        d.addCallbacks(sent, failed).addBoth(done)
        return sending

    def startService(self) -> None:
        super().startService()
        self.loop.start(self.interval, now=False)

    def stopService(self) -> Deferred[None]:
        """Stop the timer, send what is queued (one batch, bounded by the timeout), close the pool."""
        super().stopService()
        if self.loop.running:
            self.loop.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        d = self.flush() or self.sending or succeed(None)
        pool = getattr(self.post, "pool", None)
        if pool is not None:
            d.addBoth(lambda _: pool.closeCachedConnections())
        return d


def buildTracing(config: TracingConfig | None, reactor: Any, clock: IReactorTime, ids: IdSource, metrics: Metrics,
                 worker: int | None = None) -> tuple[Tracer | None, OTLPExporter | None]:
    """
    The tracer and its exporter (a service to start and stop with the
    gateway) for C{config}; (None, None) without C{tracing:}, so nothing
    of tracing runs on the request path.
    """
    if config is None:
        return None, None
    from txgateway import __version__

    resource: list[tuple[str, Any]] = [("service.name", "txgateway"), ("service.version", __version__),
                                       ("process.pid", os.getpid())]
    if worker is not None:
        resource.append(("txgateway.worker", worker))
    post = agentPoster(reactor, config.otlp.endpoint, dict(config.otlp.headers), config.timeout, clock)
    # The headers are not logged: they usually hold a backend's API key.
    log.info("tracing: spans to {endpoint} over OTLP/HTTP, sample {sample}{errors}", endpoint=config.otlp.endpoint,
             sample=config.sample, errors=", every error" if config.always_sample_errors else "")
    exporter = OTLPExporter(config, clock, post, metrics, resource)
    return Tracer(config, clock, ids, exporter), exporter
