# -*- test-case-name: tests.test_observe_metrics -*-
"""
Every metric the gateway exports, in a registry owned by one gateway.

Never the global registry, so tests and reloads cannot collide.  Label
children are looked up once per route and target and cached on those
objects, keeping the per-request cost to an increment, and in a single
process that increment takes no lock (see L{txgateway.http.fastmetrics}).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.openmetrics.exposition import generate_latest as generateOpenMetrics

from txgateway.http.fastmetrics import FastCounter, FastGauge, FastHistogram

OPENMETRICS_CONTENT_TYPE = b"application/openmetrics-text; version=1.0.0; charset=utf-8"
# The gateway's own share of a request is usually well under a millisecond.
PROCESSING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
WEBSOCKET_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Every metric the gateway exports, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, processMetrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if processMetrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        # upstream: the one the request went to (on a split route, the one
        # chosen), "" when answered without one; so versions can be compared.
        self.requests = FastCounter("txgateway_http_requests",
                                    "Requests answered, by route, method, status and upstream.",
                                    ["route", "method", "status", "upstream"], registry=r)
        self.requestDuration = FastHistogram("txgateway_http_request_duration_seconds",
                                         "Time from request head to last response byte.",
                                         ["route", "method", "upstream"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstreamRequests = FastCounter("txgateway_upstream_requests", "Attempts sent to targets, by outcome.",
                                        ["upstream", "target", "status"], registry=r)
        self.upstreamDuration = FastHistogram("txgateway_upstream_request_duration_seconds",
                                          "Time from sending an attempt to its response head.",
                                          ["upstream", "target"], buckets=LATENCY_BUCKETS, registry=r)
        # multiprocess_mode only matters with workers (see render): how the
        # workers' values of one gauge combine into the gateway's.
        self.targetHealthy = FastGauge("txgateway_target_healthy", "1 when a target may receive traffic.",
                                   ["upstream", "target"], multiprocess_mode="livemin", registry=r)
        self.circuitState = FastGauge("txgateway_circuit_state", "0 closed, 1 open, 2 half-open.",
                                  ["upstream", "target"], multiprocess_mode="livemax", registry=r)
        # Discovery and runtime control (issue 22).
        self.upstreamTargets = FastGauge("txgateway_upstream_targets", "Targets of an upstream by state (active, "
                                     "draining, disabled, retiring).", ["upstream", "state"],
                                     multiprocess_mode="livemax", registry=r)
        self.discoveryRefreshes = FastCounter("txgateway_discovery_refreshes", "Discovery refreshes by outcome (changed, "
                                          "unchanged, empty, failed).", ["upstream", "source", "outcome"], registry=r)
        self.rateLimited = FastCounter("txgateway_rate_limited", "Requests refused with 429.", ["route"], registry=r)
        self.retries = FastCounter("txgateway_retries", "Attempts beyond the first.", ["upstream"], registry=r)
        self.grpcRequests = FastCounter("txgateway_grpc_requests", "gRPC calls by upstream and grpc-status "
                                        "(the target's, or the gateway's own error).", ["upstream", "code"], registry=r)
        self.cacheRequests = FastCounter("txgateway_cache_requests", "Cache lookups by result.", ["route", "result"],
                                     registry=r)
        self.authFailures = FastCounter("txgateway_auth_failures", "Requests refused by access control.",
                                    ["route", "reason"], registry=r)
        self.activeConnections = FastGauge("txgateway_active_connections", "Open client connections.",
                                       multiprocess_mode="livesum", registry=r)
        self.inFlight = FastGauge("txgateway_in_flight_requests", "Requests being handled now.",
                              multiprocess_mode="livesum", registry=r)
        self.configReloads = FastCounter("txgateway_config_reloads", "Config reloads by result.", ["result"], registry=r)
        self.storeFallbacks = FastCounter("txgateway_store_fallbacks", "Times a shared store was unreachable.",
                                      ["store", "use"], registry=r)
        self.breakerTransitions = FastCounter("txgateway_circuit_transitions", "Circuit breaker state changes.",
                                          ["upstream", "target", "to"], registry=r)
        self.healthTransitions = FastCounter("txgateway_target_health_transitions", "Target health changes.",
                                         ["upstream", "target", "to"], registry=r)
        self.refused = FastCounter("txgateway_refused_requests", "Requests refused before routing (malformed, too "
                               "large, too slow, too many connections), by status.", ["status"], registry=r)
        self._refusedChildren: dict[int, Any] = {}
        self.writeTimeouts = FastCounter("txgateway_write_timeouts", "Responses aborted because the client read "
                                         "nothing for server.timeouts.write.", registry=r)
        # Where the time goes (issue #27): the gateway's own share of a
        # request, before it went upstream and after the answer came back.
        self.requestProcessing = FastHistogram(
            "txgateway_request_processing_seconds", "From the request read to it being forwarded upstream.",
            ["route"], buckets=PROCESSING_BUCKETS, registry=r)
        self.responseProcessing = FastHistogram(
            "txgateway_response_processing_seconds", "From the upstream's response head to the response "
            "forwarded to the client (its last byte).", ["route"], buckets=PROCESSING_BUCKETS, registry=r)
        self._processingChildren: dict[str, tuple[Any, Any]] = {}
        self.traceSpansExported = FastCounter("txgateway_trace_spans_exported", "Spans the trace collector accepted.",
                                              registry=r)
        self.traceSpansDropped = FastCounter("txgateway_trace_spans_dropped", "Spans dropped: the export queue was "
                                             "full, or the collector refused or did not answer.", ["reason"],
                                             registry=r)
        self._protection(r)
        self._websocket(r)
        # Issue 23: weighted splits and shadow traffic.
        self.splitWeight = FastGauge("txgateway_split_weight", "A split route's weight for each of its upstreams.",
                                     ["route", "upstream"], multiprocess_mode="livemax", registry=r)
        self.mirrorRequests = FastCounter("txgateway_mirror_requests", "Mirrored copies by outcome (sent, dropped, "
                                          "skipped, failed, timed_out, compared, mismatched, not_compared).",
                                          ["route", "outcome"], registry=r)
        self.mirrorMismatches = FastCounter("txgateway_mirror_mismatches", "Mirror answers that differed from "
                                            "the primary's.", ["route"], registry=r)
        # Issue 21: certificates the gateway holds (a TLS listener's, an upstream's client certificate).
        self.certificateExpiry = FastGauge("txgateway_tls_certificate_expiry_timestamp_seconds",
                                           "When the certificate in use stops being valid (Unix time), by where it "
                                           "is used (kind listener, admin or upstream; name).", ["kind", "name"],
                                           multiprocess_mode="livemin", registry=r)
        self.certificateReloads = FastCounter("txgateway_tls_certificate_reloads", "Certificate files read again "
                                              "after they changed on disk, by result (loaded, refused).",
                                              ["kind", "name", "result"], registry=r)
        self.beforeRender: Callable[[], None] | None = None
        self._requestChildren: dict[tuple[str, bytes, int, str], tuple[Any, Any]] = {}

    def certificateObserver(self, kind: str, name: str) -> Callable[[float | None, str | None], None]:
        """
        What a holder of certificates (L{txgateway.tls}) calls with the expiry
        of the certificate it now uses (None: unchanged) and, after a change
        on disk, the result (C{loaded} or C{refused}; None at start).
        """
        expiry = self.certificateExpiry.labels(kind, name)

        def observe(notAfter: float | None, result: str | None) -> None:
            if notAfter is not None:
                expiry.set(notAfter)
            if result is not None:
                self.certificateReloads.labels(kind, name, result).inc()

        return observe

    def _protection(self, r: CollectorRegistry) -> None:
        """Issue 24: admission limits, queues and sheds per upstream; batches and coalescing per route."""
        self.concurrencyLimit = FastGauge("txgateway_upstream_concurrency_limit",
                                          "Requests the upstream's admission limit lets in at once now.",
                                          ["upstream"], multiprocess_mode="livesum", registry=r)
        self.concurrencyInFlight = FastGauge("txgateway_upstream_concurrency_in_flight",
                                             "Requests holding an admission permit of the upstream.",
                                             ["upstream"], multiprocess_mode="livesum", registry=r)
        self.targetConcurrencyLimit = FastGauge("txgateway_target_concurrency_limit",
                                                "A target's own admission limit (concurrency.per_target).",
                                                ["upstream", "target"], multiprocess_mode="livesum", registry=r)
        self.queueLength = FastGauge("txgateway_upstream_queue_length", "Requests waiting for an admission permit.",
                                     ["upstream", "class"], multiprocess_mode="livesum", registry=r)
        self.queueWait = FastHistogram("txgateway_upstream_queue_wait_seconds",
                                       "Time a request waited for its admission permit (0 when let in at once).",
                                       ["upstream", "class"], buckets=LATENCY_BUCKETS, registry=r)
        self.shed = FastCounter("txgateway_shed", "Requests shed with 503 before reaching the upstream, by reason.",
                                ["upstream", "reason"], registry=r)
        self.batchSize = FastHistogram("txgateway_batch_size", "Items per micro-batch call.", ["route"],
                                       buckets=BATCH_BUCKETS, registry=r)
        self.batchWait = FastHistogram("txgateway_batch_wait_seconds",
                                       "Time the first item of a micro-batch waited for it to leave.", ["route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.batchFailures = FastCounter("txgateway_batch_failures", "Micro-batch calls that gave no usable answer.",
                                         ["route", "kind"], registry=r)
        self.coalesced = FastCounter("txgateway_coalesced", "Requests answered by another's identical request.",
                                     ["route"], registry=r)

    def _websocket(self, r: CollectorRegistry) -> None:
        """Issue 20: open WebSockets per route and per target, upgrades by outcome, bytes each way, lifetimes."""
        self.websocketConnections = FastGauge("txgateway_websocket_connections", "Open WebSocket connections.",
                                              ["route"], multiprocess_mode="livesum", registry=r)
        self.websocketTargetConnections = FastGauge("txgateway_websocket_target_connections",
                                                    "Open WebSocket connections per target.", ["upstream", "target"],
                                                    multiprocess_mode="livesum", registry=r)
        self.websocketUpgrades = FastCounter("txgateway_websocket_upgrades", "WebSocket upgrade requests by outcome "
                                             "(upgraded, target_refused, target_failed, no_target, refused_*).",
                                             ["route", "outcome"], registry=r)
        self.websocketBytes = FastCounter("txgateway_websocket_bytes", "WebSocket bytes relayed, by direction "
                                          "(client_to_target, target_to_client).", ["route", "direction"], registry=r)
        self.websocketDuration = FastHistogram("txgateway_websocket_duration_seconds",
                                               "How long WebSocket connections stayed open.", ["route"],
                                               buckets=WEBSOCKET_BUCKETS, registry=r)

    def observeRequest(self, route: str, method: bytes, status: int, seconds: float,
                       traceId: str | None = None, upstream: str = "") -> None:
        """
        One answered request; C{traceId} (a sampled request's) becomes the
        exemplar of the latency bucket it falls in, so a dashboard can jump
        from a slow bucket to a trace.  C{upstream}: the one it went to (on
        a split route, the one chosen), "" when answered without one.
        """
        children = self._requestChildren.get((route, method, status, upstream))
        if children is None:
            children = self._requestChildrenFor(route, method, status, upstream)
        children[0].inc()
        if traceId is None:
            children[1].observe(seconds)
        else:
            children[1].observe(seconds, {"trace_id": traceId})

    def observeProcessing(self, route: str, requestSeconds: float, responseSeconds: float | None) -> None:
        """The gateway's own time on a forwarded request: before forwarding, and after the upstream answered."""
        children = self._processingChildren.get(route)
        if children is None:
            if len(self._processingChildren) > 10000:
                self._processingChildren.clear()
            children = self._processingChildren[route] = (self.requestProcessing.labels(route),
                                                          self.responseProcessing.labels(route))
        children[0].observe(requestSeconds)
        if responseSeconds is not None:
            children[1].observe(responseSeconds)

    def _requestChildrenFor(self, route: str, method: bytes, status: int, upstream: str) -> tuple[Any, Any]:
        """
        The counter and histogram children of one (route, method, status, upstream), looked up once.

        Methods outside the standard ones share the label C{OTHER}, so a
        client inventing methods cannot grow the series; the cache is
        emptied if it ever holds more keys than any sane gateway sees.
        """
        if len(self._requestChildren) > 10000:
            self._requestChildren.clear()
        m = method.decode("latin-1") if method in KNOWN_METHODS else "OTHER"
        children = self._requestChildren[(route, method, status, upstream)] = (
            self.requests.labels(route, m, str(status), upstream), self.requestDuration.labels(route, m, upstream))
        return children

    def observeRefusal(self, status: int) -> None:
        child = self._refusedChildren.get(status)
        if child is None:
            child = self._refusedChildren[status] = self.refused.labels(str(status))
        child.inc()

    def render(self, openMetrics: bool = False) -> bytes:
        """
        The exposition.  A worker (PROMETHEUS_MULTIPROC_DIR set by the
        supervisor) reports the sum over every worker, so /metrics tells the
        truth for the whole gateway whichever worker answers.

        State that is computed lazily from the clock (a breaker's open ->
        half-open) is settled first by C{beforeRender}, so a scrape never
        shows a state that has already expired.
        """
        if self.beforeRender is not None:
            self.beforeRender()
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client import multiprocess

            merged = CollectorRegistry()
            multiprocess.MultiProcessCollector(merged, path=directory)
            return generateOpenMetrics(merged) if openMetrics else generate_latest(merged)
        return generateOpenMetrics(self.registry) if openMetrics else generate_latest(self.registry)

    @staticmethod
    def negotiate(accept: bytes | None) -> tuple[bool, bytes]:
        """
        (OpenMetrics?, content type) for a scrape's Accept header: OpenMetrics
        (which carries exemplars) when the scraper asks for it, as Prometheus
        does with exemplar storage on; the classic text format otherwise.
        """
        if accept is not None and b"application/openmetrics-text" in accept:
            return True, OPENMETRICS_CONTENT_TYPE
        return False, CONTENT_TYPE_LATEST.encode()

    @staticmethod
    def samples(family: Any) -> list[tuple[str, dict[str, str], float]]:
        """
        Every sample of one metric family as (name, labels, value).

        For the admin status page, which reads the same numbers Prometheus
        scrapes instead of keeping a second set of counters on the request path.
        """
        return [(s.name, s.labels, s.value) for metric in family.collect() for s in metric.samples]

    def gaugeValue(self, gauge: Gauge) -> float:
        """The value of an unlabelled gauge."""
        for name, _, value in self.samples(gauge):
            if not name.endswith("_created"):
                return value
        return 0.0


KNOWN_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"))


def histogramQuantile(bounds: Sequence[float], cumulative: Sequence[float], total: float, q: float) -> float | None:
    """
    PromQL's histogram_quantile: linear interpolation inside the bucket that
    holds rank C{q * total}; the lower bound of an open-ended last bucket.
    None for an empty histogram.  The status page's rates and the timeline
    both read latency this way.
    """
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative, strict=True):
        if count >= rank:
            if bound == float("inf"):
                return lower
            inBucket = count - below
            share = (rank - below) / inBucket if inBucket > 0 else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


__all__ = ["BATCH_BUCKETS", "KNOWN_METHODS", "LATENCY_BUCKETS", "OPENMETRICS_CONTENT_TYPE", "PROCESSING_BUCKETS",
           "histogramQuantile",
           "Metrics"]
