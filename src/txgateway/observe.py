"""
Observability: metrics, logs, request IDs and trace context.

Metrics live in a registry owned by one gateway (never the global one), so
tests and reloads cannot collide.  Label children are looked up once per
route and target and cached on those objects, keeping the per-request cost
to an increment.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from zope.interface import provider

if TYPE_CHECKING:
    from .context import RequestContext

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
        self.requests = Counter("txgateway_http_requests", "Requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.requestDuration = Histogram("txgateway_http_request_duration_seconds",
                                         "Time from request head to last response byte.",
                                         ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
        self.upstreamRequests = Counter("txgateway_upstream_requests", "Attempts sent to targets, by outcome.",
                                        ["upstream", "target", "status"], registry=r)
        self.upstreamDuration = Histogram("txgateway_upstream_request_duration_seconds",
                                          "Time from sending an attempt to its response head.",
                                          ["upstream", "target"], buckets=LATENCY_BUCKETS, registry=r)
        self.targetHealthy = Gauge("txgateway_target_healthy", "1 when a target may receive traffic.",
                                   ["upstream", "target"], registry=r)
        self.circuitState = Gauge("txgateway_circuit_state", "0 closed, 1 open, 2 half-open.",
                                  ["upstream", "target"], registry=r)
        self.rateLimited = Counter("txgateway_rate_limited", "Requests refused with 429.", ["route"], registry=r)
        self.retries = Counter("txgateway_retries", "Attempts beyond the first.", ["upstream"], registry=r)
        self.cacheRequests = Counter("txgateway_cache_requests", "Cache lookups by result.", ["route", "result"],
                                     registry=r)
        self.authFailures = Counter("txgateway_auth_failures", "Requests refused by access control.",
                                    ["route", "reason"], registry=r)
        self.activeConnections = Gauge("txgateway_active_connections", "Open client connections.", registry=r)
        self.inFlight = Gauge("txgateway_in_flight_requests", "Requests being handled now.", registry=r)
        self.configReloads = Counter("txgateway_config_reloads", "Config reloads by result.", ["result"], registry=r)
        self.storeFallbacks = Counter("txgateway_store_fallbacks", "Times a shared store was unreachable.",
                                      ["store", "use"], registry=r)
        self.breakerTransitions = Counter("txgateway_circuit_transitions", "Circuit breaker state changes.",
                                          ["upstream", "target", "to"], registry=r)
        self.healthTransitions = Counter("txgateway_target_health_transitions", "Target health changes.",
                                         ["upstream", "target", "to"], registry=r)
        self._requestChildren: dict[tuple[str, bytes, int], Any] = {}
        self._durationChildren: dict[tuple[str, bytes], Any] = {}

    def observeRequest(self, route: str, method: bytes, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._requestChildren.get(key)
        if child is None:
            if len(self._requestChildren) > 10000:
                self._requestChildren.clear()
            m = method.decode("latin-1") if method in _KNOWN_METHODS else "OTHER"
            child = self._requestChildren[key] = self.requests.labels(route, m, str(status))
        child.inc()
        dkey = (route, method)
        dchild = self._durationChildren.get(dkey)
        if dchild is None:
            m = method.decode("latin-1") if method in _KNOWN_METHODS else "OTHER"
            dchild = self._durationChildren[dkey] = self.requestDuration.labels(route, m)
        dchild.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


_KNOWN_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"))


# ---------------------------------------------------------------------------
# Request IDs and trace context.

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def requestIdFrom(value: bytes | None) -> str:
    """Keep a client's X-Request-ID if it is short and plain; else a fresh 128-bit one."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value.decode("ascii")
    return os.urandom(16).hex()


_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def parseTraceparent(value: bytes | None) -> tuple[str, str] | None:
    """(trace id, flags) from a valid W3C traceparent, else None (a new trace starts)."""
    if value is None:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == b"ff" or m.group(2) == b"0" * 32 or m.group(3) == b"0" * 16:
        return None
    return m.group(2).decode(), m.group(4).decode()


def newSpanId() -> str:
    return os.urandom(8).hex()


def newTraceId() -> str:
    return os.urandom(16).hex()


# ---------------------------------------------------------------------------
# Logging.

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


def _jsonSafe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def jsonFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    """One JSON object per line; events below C{level} are dropped."""
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        if "access" in event:
            return json.dumps(event["access"], separators=(",", ":")) + "\n"
        out: dict[str, Any] = {
            "time": _iso(event.get("log_time", time.time())),
            "level": lvl.name,
            "logger": event.get("log_namespace", ""),
            "message": eventAsText(event, includeTimestamp=False, includeSystem=False),
        }
        for key in ("request_id", "upstream", "target", "route"):
            if key in event:
                out[key] = _jsonSafe(event[key])
        return json.dumps(out, separators=(",", ":")) + "\n"

    return fmt


def textFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        if "access" in event:
            a = event["access"]
            line = " ".join(f"{k}={v}" for k, v in a.items() if v is not None)
            return f"{_iso(event.get('log_time', time.time()))} [access] {line}\n"
        return formatEventAsClassicLogText(event)

    return fmt


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def formatterFor(level: str, format: str) -> Callable[[dict[str, Any]], str | None]:
    return jsonFormatter(level) if format == "json" else textFormatter(level)


def adoptTwistdObservers(formatter: Callable[[dict[str, Any]], str | None]) -> int:
    """
    Make twistd's own log file speak our format and level.

    twistd has installed its file observer before any service starts and
    offers no hook from a plugin to replace it; re-pointing the formatter of
    the L{FileLogObserver}s already listening is the least intrusive way to
    get JSON lines and level filtering in C{twistd -n txgateway} without
    asking every user to pass C{--logger}.
    """
    count = 0
    for observer in list(getattr(globalLogPublisher, "_observers", [])):
        target = getattr(observer, "_observer", observer)  # unwrap filtering observers
        if isinstance(target, FileLogObserver):
            target.formatEvent = formatter  # type: ignore[attr-defined]
            count += 1
    return count


def jsonLogObserver(outFile: IO[str] | None = None) -> ILogObserver:
    """For C{twistd --logger txgateway.observe.jsonLogObserver}."""
    import sys

    return FileLogObserver(outFile or sys.stdout, jsonFormatter("debug"))


@provider(ILogObserver)
def _discard(event: dict[str, Any]) -> None:
    pass


class AccessLog:
    """One line per request, through twisted.logger (or a file of its own)."""

    def __init__(self, enabled: bool, outFile: IO[str] | None = None, format: str = "json") -> None:
        from twisted.logger import Logger

        self.enabled = enabled
        self._log = Logger(namespace="txgateway.access")
        self._file = outFile
        self._format = format

    def record(self, context: RequestContext, duration: float) -> None:
        if not self.enabled:
            return
        route = context.route
        entry = {
            "time": _iso(time.time()),
            "request_id": context.requestId,
            "client": context.clientIP,
            "method": context.method.decode("latin-1"),
            "host": context.host,
            "path": context.path,
            "route": route.name if route is not None else None,
            "upstream": context.upstream,
            "target": context.target,
            "attempts": context.attempts,
            "targets_tried": context.targetsTried or None,
            "status": context.status,
            "duration_ms": round(duration * 1000, 3),
            "bytes_in": _bytesIn(context),
            "bytes": context.bytesOut,
            "cache": context.cacheStatus,
            "identity": context.identity,
            "outcome": context.outcome,
        }
        if self._file is not None:
            if self._format == "json":
                self._file.write(json.dumps(entry, separators=(",", ":")) + "\n")
            else:
                self._file.write(" ".join(f"{k}={v}" for k, v in entry.items() if v is not None) + "\n")
            return
        self._log.info("{access[method]} {access[path]} {access[status]}", access=entry)


def _bytesIn(context: RequestContext) -> int:
    content = getattr(context.request, "content", None)
    if content is None:
        return 0
    try:
        pos = content.tell()
        content.seek(0, 2)
        n = content.tell()
        content.seek(pos)
        return int(n)
    except (OSError, ValueError):
        return 0
