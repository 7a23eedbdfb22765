"""
Observability: metrics, logs, request IDs and trace context.

Metrics live in a registry owned by one gateway (never the global one), so
tests and reloads cannot collide.  Label children are looked up once per
route and target and cached on those objects, keeping the per-request cost
to an increment, and in a single process that increment takes no lock (the
reactor thread is the only writer; see L{FastCounter}).
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import time
from bisect import bisect_left
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
    values,
)
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from zope.interface import implementer

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.context import RequestContext

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _PlainValue:
    """
    A metric child's value without a lock: what L{values.MutexValue} is, minus the mutex.

    The gateway updates its metrics from the reactor thread only, so the
    lock prometheus-client takes around every increment guards nothing
    here, and taking it was most of an increment's cost.  (A scrape reads
    a float attribute, which the GIL keeps whole.)
    """

    __slots__ = ("_value", "_exemplar")

    _multiprocess = False

    def __init__(self, value: float = 0.0) -> None:
        self._value = value
        self._exemplar: Any = None

    def inc(self, amount: float) -> None:
        self._value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._value = value

    def set_exemplar(self, exemplar: Any) -> None:
        self._exemplar = exemplar

    def get(self) -> float:
        return self._value

    def get_exemplar(self) -> Any:
        return self._exemplar


_TWO_DOUBLES = struct.Struct("dd")  # a sample's value and timestamp, as prometheus-client's MmapedDict stores them


class _MmapValue:
    """
    A worker's metric child value: prometheus-client's L{MmapedValue} without
    its lock and its fork check.

    With workers every update goes to a memory-mapped file that /metrics in
    any worker sums.  The stock value takes a lock and calls C{os.getpid()}
    (a system call) on every update to notice a fork; together that was
    about 1.5 us an update, eight updates a request.  A worker updates its
    metrics from the reactor thread only, and is spawned, not forked, after
    its metrics exist, so neither guards anything here.  What is written is
    what the stock value writes, at the same place in the same file: the
    sample's new value and a zero timestamp (C{mostrecent} gauges, which
    time-stamp their samples, keep the stock value).

    Assigning C{_value} writes through, so the C{Fast*} metrics' inline
    C{plain._value += amount} works on either kind of value.
    """

    __slots__ = ("_file", "_pos", "_v")

    _multiprocess = True

    def __init__(self, stock: Any) -> None:
        self._file = stock._file  # the MmapedDict of this metric type, shared by its values
        self._pos = stock._file._positions[stock._key]  # allocated when the stock value read its start
        self._v = float(stock._value)
        _TWO_DOUBLES.unpack_from(self._file._m, self._pos)  # the layout is the one written to below

    @property
    def _value(self) -> float:
        return self._v

    @_value.setter
    def _value(self, value: float) -> None:
        self._v = value
        # Read each time: the file's mapping is replaced when it grows.
        _TWO_DOUBLES.pack_into(self._file._m, self._pos, value, 0.0)

    def inc(self, amount: float) -> None:
        self._value = self._v + amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self._v = value
        _TWO_DOUBLES.pack_into(self._file._m, self._pos, value, timestamp or 0.0)

    def set_exemplar(self, exemplar: Any) -> None:
        pass  # multiprocess mode has no exemplars

    def get(self) -> float:
        return self._v

    def get_exemplar(self) -> Any:
        return None


def _unlocked(value: Any) -> _PlainValue | _MmapValue | None:
    """
    A lock-free replacement for C{value}: a plain in-process one, or (with
    workers, C{PROMETHEUS_MULTIPROC_DIR}) one writing straight to the
    worker's mmap file; None for anything else, which stays as it is.
    """
    if type(value) is values.MutexValue:
        return _PlainValue(value.get())
    if getattr(value, "_multiprocess", False):
        try:
            return _MmapValue(value)
        except (AttributeError, KeyError, TypeError):
            return None  # a prometheus-client whose values are laid out otherwise: its own value stays
    return None


class FastCounter(Counter):
    """
    A Counter whose label children count without a lock (L{_PlainValue},
    or L{_MmapValue} with workers).

    Anything out of the ordinary (a negative amount, an exemplar, a parent
    without label values) takes prometheus-client's own path, so errors and
    the exposition stay exactly its own.
    """

    _plain: _PlainValue | _MmapValue | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        plain = _unlocked(self._value)
        if plain is not None:
            self._value = self._plain = plain

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        plain = self._plain
        if plain is not None and amount >= 0 and not exemplar:
            plain._value += amount
            return
        super().inc(amount, exemplar)


class FastGauge(Gauge):
    """A Gauge updated without a lock (see L{FastCounter})."""

    _plain: _PlainValue | _MmapValue | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        # The most-recent modes time-stamp every set; leave those to the base class.
        if self._multiprocess_mode not in self._MOST_RECENT_MODES:
            plain = _unlocked(self._value)
            if plain is not None:
                self._value = self._plain = plain

    def inc(self, amount: float = 1) -> None:
        plain = self._plain
        if plain is None:
            super().inc(amount)
        else:
            plain._value += amount

    def dec(self, amount: float = 1) -> None:
        plain = self._plain
        if plain is None:
            super().dec(amount)
        else:
            plain._value -= amount

    def set(self, value: float) -> None:
        plain = self._plain
        if plain is None:
            super().set(value)
        else:
            plain._value = float(value)


class FastHistogram(Histogram):
    """
    A Histogram observed without locks (see L{FastCounter}), its bucket found by bisection.

    prometheus-client walks the bounds one by one (an observation in the
    last buckets compares against all of them) and locks twice; the first
    bound not below the amount is what C{bisect_left} finds.  NaN, which
    no bucket takes, and exemplars go through the base class.
    """

    _plainBuckets: list[_PlainValue | _MmapValue] | None = None

    def _metric_init(self) -> None:
        super()._metric_init()
        plainSum = _unlocked(self._sum)
        if plainSum is None:
            return
        buckets = [_unlocked(b) for b in self._buckets]
        if any(b is None for b in buckets):  # pragma: no cover - all or none are replaced
            return
        self._sum = plainSum
        self._buckets = self._plainBuckets = buckets  # type: ignore[assignment]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        buckets = self._plainBuckets
        if buckets is None or exemplar or amount != amount:
            super().observe(amount, exemplar)
            return
        self._sum._value += amount
        buckets[bisect_left(self._upper_bounds, amount)]._value += 1



class Metrics:
    """Every metric the gateway exports, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None, processMetrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        if processMetrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.requests = FastCounter("txgateway_http_requests", "Requests answered, by route, method and status.",
                                ["route", "method", "status"], registry=r)
        self.requestDuration = FastHistogram("txgateway_http_request_duration_seconds",
                                         "Time from request head to last response byte.",
                                         ["route", "method"], buckets=LATENCY_BUCKETS, registry=r)
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
        self.rateLimited = FastCounter("txgateway_rate_limited", "Requests refused with 429.", ["route"], registry=r)
        self.retries = FastCounter("txgateway_retries", "Attempts beyond the first.", ["upstream"], registry=r)
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
        self.beforeRender: Callable[[], None] | None = None
        self._requestChildren: dict[tuple[str, bytes, int], tuple[Any, Any]] = {}

    def observeRequest(self, route: str, method: bytes, status: int, seconds: float) -> None:
        children = self._requestChildren.get((route, method, status))
        if children is None:
            children = self._requestChildrenFor(route, method, status)
        children[0].inc()
        children[1].observe(seconds)

    def _requestChildrenFor(self, route: str, method: bytes, status: int) -> tuple[Any, Any]:
        """
        The counter and histogram children of one (route, method, status), looked up once.

        Methods outside the standard ones share the label C{OTHER}, so a
        client inventing methods cannot grow the series; the cache is
        emptied if it ever holds more keys than any sane gateway sees.
        """
        if len(self._requestChildren) > 10000:
            self._requestChildren.clear()
        m = method.decode("latin-1") if method in _KNOWN_METHODS else "OTHER"
        children = self._requestChildren[(route, method, status)] = (
            self.requests.labels(route, m, str(status)), self.requestDuration.labels(route, m))
        return children

    def observeRefusal(self, status: int) -> None:
        child = self._refusedChildren.get(status)
        if child is None:
            child = self._refusedChildren[status] = self.refused.labels(str(status))
        child.inc()

    def render(self) -> bytes:
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
            return generate_latest(merged)
        return generate_latest(self.registry)

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


_KNOWN_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"))


# ---------------------------------------------------------------------------
# Request IDs and trace context.

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def requestIdFrom(value: bytes | None) -> str:
    """Keep a client's X-Request-ID if it is short and plain; else a fresh 128-bit one."""
    if value is not None and _SANE_ID.fullmatch(value):
        return value.decode("ascii")
    return os.urandom(16).hex()


_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


def parseTraceparent(value: bytes | None) -> tuple[str, str] | None:
    """
    (trace id, flags) from a valid W3C traceparent, else None (a new trace starts).

    Version 00 must be exactly four fields; a later version may append
    fields after the flags, which are ignored (trace context, section 3.2.4).
    """
    if value is None:
        return None
    m = _TRACEPARENT.match(value.strip())
    if m is None or m.group(1) == b"ff" or m.group(2) == b"0" * 32 or m.group(3) == b"0" * 16:
        return None
    if m.group(1) == b"00" and m.group(5):
        return None
    return m.group(2).decode(), m.group(4).decode()


class IdSource:
    """
    Request, trace and span ids from the OS's random source, read in blocks.

    A request can need three ids; C{os.urandom} per id is a getrandom(2)
    syscall each.  Reading a few kilobytes at a time, turned into hex once,
    and slicing gives the same unpredictable ids for a fraction of the cost.
    One per process (L{GatewayState}); a worker is its own process with its
    own buffer.
    """

    __slots__ = ("_hex", "_pos")

    BLOCK = 4096  # random bytes read at a time: 8192 hex digits

    def __init__(self) -> None:
        self._hex = ""
        self._pos = 0

    def _digits(self, n: int) -> str:
        """The next C{n} hex digits (C{n} // 2 random bytes), each digit used once."""
        pos = self._pos
        end = pos + n
        if end > len(self._hex):
            self._hex = os.urandom(self.BLOCK).hex()
            pos, end = 0, n
        self._pos = end
        return self._hex[pos:end]

    def requestId(self, value: bytes | None) -> str:
        """As L{requestIdFrom}: the client's id if short and plain, else a fresh 128-bit one."""
        if value is not None and _SANE_ID.fullmatch(value):
            return value.decode("ascii")
        return self._digits(32)

    def traceId(self) -> str:
        """A fresh 128-bit trace id (32 hex digits)."""
        return self._digits(32)

    def spanId(self) -> str:
        """A fresh 64-bit span id (16 hex digits)."""
        return self._digits(16)


# ---------------------------------------------------------------------------
# Logging.

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}

# Fields of a log event copied into its JSON line, so that every line about
# one request can be found by its request_id.
_EVENT_FIELDS = ("request_id", "route", "upstream", "target", "client", "trace_id")

# Credentials must never reach a log line, whatever a caller formats into a
# message: a header name followed by its value (as text, key=value, or the
# repr of a Headers object) loses the value.
_SECRET = re.compile(
    r"""(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key)(['"]?\s*[:=,]\s*\[?\s*b?['"]?)([^'"\]\r\n]+)""")


def redact(text: str) -> str:
    """C{text} with the values of credential-bearing headers replaced."""
    if not _SECRET.search(text):
        return text
    return _SECRET.sub(lambda m: m.group(1) + m.group(2) + "[redacted]", text)


def _jsonSafe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def jsonFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    """
    One JSON object per line; events below C{level} are dropped.

    Access-log events are kept whatever the level: C{logging.access_log}
    decides about those, so an operator who turns the level to C{warn} to
    quieten the gateway keeps the one line per request.
    """
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        access = event.get("access")
        if access is not None:
            return json.dumps(access, separators=(",", ":")) + "\n"
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        out: dict[str, Any] = {
            "time": _iso(event.get("log_time", time.time())),
            "level": lvl.name,
            "logger": event.get("log_namespace", ""),
            "message": redact(eventAsText(event, includeTimestamp=False, includeSystem=False)),
        }
        for key in _EVENT_FIELDS:
            if key in event:
                out[key] = _jsonSafe(event[key])
        return json.dumps(out, separators=(",", ":")) + "\n"

    return fmt


def textFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    """Twisted's classic lines, with the same level and redaction rules as JSON."""
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        access = event.get("access")
        if access is not None:
            return f"{access.get('time', _iso(event.get('log_time', time.time())))} [access] {accessText(access)}\n"
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        text = formatEventAsClassicLogText(event)
        if text is None:
            return None
        rid = event.get("request_id")
        if rid is not None and str(rid) not in text:
            text = text.rstrip("\n") + f" request_id={rid}\n"
        return redact(text)

    return fmt


def accessText(entry: dict[str, Any]) -> str:
    """An access entry as C{key=value} pairs (values with spaces quoted)."""
    parts = []
    for k, v in entry.items():
        if v is None or k == "time":
            continue
        if isinstance(v, list):
            v = ",".join(map(str, v))
        v = str(v)
        if not v or " " in v or '"' in v:
            v = json.dumps(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


@functools.lru_cache(maxsize=4)
def _isoSecond(second: int) -> str:
    # Every access line within one second shares this: strftime once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


_now = time.time  # the access log's clock, one name for a test to pin

# The milliseconds of a timestamp as written, "000" to "999" ("1000" for a
# fraction that rounds up to a whole second, as the format spec wrote it).
_MILLIS = [f"{i:03d}" for i in range(1001)]


def _iso(t: float) -> str:
    return f"{_isoSecond(int(t))}.{int((t % 1) * 1000):03d}Z"


def formatterFor(level: str, format: str) -> Callable[[dict[str, Any]], str | None]:
    return jsonFormatter(level) if format == "json" else textFormatter(level)


def adoptTwistdObservers(formatter: Callable[[dict[str, Any]], str | None],
                         publisher: Any = globalLogPublisher) -> int:
    """
    Make twistd's own log file speak our format and level.

    twistd installs its file observer after the plugin's C{makeService}
    returns and offers no hook to replace it; re-pointing the formatter of
    the L{FileLogObserver}s already listening is the least intrusive way to
    get JSON lines and level filtering in C{twistd -n txgateway} without
    asking every user to pass C{--logger}.
    """
    count = 0
    for observer in list(getattr(publisher, "_observers", [])):
        target = getattr(observer, "_observer", observer)  # unwrap filtering observers
        if isinstance(target, FileLogObserver):
            target.formatEvent = formatter  # type: ignore[attr-defined]
            count += 1
    return count


@implementer(ILogObserver)
class TwistdLogAdopter:
    """
    Adopts twistd's file observer as soon as it exists: at its first event.

    Added to the publisher while the plugin builds its service, this
    observer sits before the one twistd adds when it begins logging, so it
    sees the first event (the replay of what was logged during start-up)
    before the file does, and re-points the file's formatter in time for
    twistd's own "starting up" lines to come out as JSON too.  After that
    it is inert; L{detach} removes it (not from inside a log call: the
    publisher is iterating over its observers then).
    """

    def __init__(self, formatter: Callable[[dict[str, Any]], str | None], publisher: Any = globalLogPublisher) -> None:
        self.formatter = formatter
        self.publisher = publisher
        self.adopted = 0

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.adopted:
            self.adopted = adoptTwistdObservers(self.formatter, self.publisher)

    def attach(self) -> None:
        self.publisher.addObserver(self)

    def detach(self) -> None:
        if not self.adopted:
            self.adopted = adoptTwistdObservers(self.formatter, self.publisher)
        self.publisher.removeObserver(self)


class AccessLog:
    """
    One line per request, through twisted.logger (or a file of its own).

    The entry carries no header values at all, only what the gateway
    decided (route, target, status...): credentials cannot leak through it.
    The path is the normalised one without its query string, which may
    hold tokens too.
    """

    def __init__(self, enabled: bool, outFile: IO[str] | None = None, format: str = "json",
                 clock: IReactorTime | None = None) -> None:
        from twisted.logger import Logger

        self.enabled = enabled
        self._log = Logger(namespace="txgateway.access")
        self._file = outFile
        self._format = format
        # With a clock, lines written to a buffered file are flushed once per
        # reactor turn instead of once per line: every request that ends in
        # the same turn shares one write(2).  Without one, the file's own
        # buffering decides (line-buffered files flush every line).
        self._clock = clock
        self._flushPending = False
        self.worker: int | None = None  # the worker's index when running with server.workers
        self._jsonFile = outFile is not None and format == "json"
        # The start of the time field for the current second, made once a second.
        self._second = -1
        self._timePrefix = ""
        # The JSON of strings from small sets (route, upstream and target
        # names, methods, cache results, outcomes), encoded once each.
        self._encoded: dict[str, str] = {}
        self._methods: dict[bytes, str] = {}

    def entry(self, context: RequestContext, duration: float) -> dict[str, Any]:
        route = context.route
        return {
            "time": _iso(_now()),
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
            "bytes_out": context.bytesOut,
            "cache": context.cacheStatus,
            "identity": context.identity,
            "outcome": context.outcome,
            "trace_id": context.traceId,
            "worker": self.worker,
        }

    def record(self, context: RequestContext, duration: float) -> None:
        if not self.enabled:
            return
        out = self._file
        if out is None:
            entry = self.entry(context, duration)
            self._log.info("{access[method]} {access[path]} {access[status]}", access=entry,
                           request_id=context.requestId)
            return
        if self._jsonFile:
            try:
                line = self.jsonLine(context, duration)
            except TypeError:  # a field of an unexpected type: let json say what it makes of it
                line = json.dumps(self.entry(context, duration), separators=(",", ":")) + "\n"
            out.write(line)
        else:
            entry = self.entry(context, duration)
            out.write(f"{entry['time']} {accessText(entry)}\n")
        if not self._flushPending and self._clock is not None:
            self._flushPending = True
            self._clock.callLater(0, self.flush)

    def jsonLine(self, context: RequestContext, duration: float) -> str:
        """
        C{json.dumps(self.entry(context, duration), separators=(",", ":"))}
        and a newline, without the dict: the fields are known, so each is
        encoded in place with json's own (C) string encoder, and strings
        that repeat from request to request (route, upstream, target,
        method, cache, outcome) are encoded once and looked up after.
        A test holds the two to the same bytes.
        """
        c = context
        t = _now()
        second = int(t)
        if second != self._second:
            self._second = second
            self._timePrefix = '{"time":"' + _isoSecond(second) + "."
        enc = _encodeString
        known = self._encoded
        get = known.get
        route = c.route
        upstream = c.upstream
        target = c.target
        tried = c.targetsTried
        cache = c.cacheStatus
        outcome = c.outcome
        identity = c.identity
        traceId = c.traceId
        worker = self.worker
        if tried:
            if len(tried) == 1:
                t0 = tried[0]
                triedJson = "[" + (get(t0) or self._encode(t0)) + "]"
            else:
                triedJson = "[" + ",".join([get(x) or self._encode(x) for x in tried]) + "]"
        else:
            triedJson = "null"
        # repr(round(ms, 3)), as json.dumps writes it, without the costly
        # round trip through a float: for up to 15 significant digits the
        # shortest repr of the rounded float is the 3-decimal text less its
        # trailing zeros (both round with the same correctly rounded dtoa).
        ms = duration * 1000
        if 0.0 <= ms < 1e12:
            durationJson = f"{ms:.3f}".rstrip("0")
            if durationJson[-1] == ".":
                durationJson += "0"
        else:
            durationJson = repr(round(ms, 3))
        return (
            f'{self._timePrefix}{_MILLIS[int((t % 1) * 1000)]}Z","request_id":{enc(c.requestId)},'
            f'"client":{enc(c.clientIP)},"method":{self._methods.get(c.method) or self._encodeMethod(c.method)},'
            f'"host":{enc(c.host)},"path":{enc(c.path)},'
            f'"route":{"null" if route is None else get(route.name) or self._encode(route.name)},'
            f'"upstream":{"null" if upstream is None else get(upstream) or self._encode(upstream)},'
            f'"target":{"null" if target is None else get(target) or self._encode(target)},'
            f'"attempts":{c.attempts!r},"targets_tried":{triedJson},"status":{c.status!r},'
            f'"duration_ms":{durationJson},'
            f'"bytes_in":{_bytesIn(c)!r},"bytes_out":{c.bytesOut!r},'
            f'"cache":{"null" if cache is None else get(cache) or self._encode(cache)},'
            f'"identity":{"null" if identity is None else enc(identity)},'
            f'"outcome":{"null" if outcome is None else get(outcome) or self._encode(outcome)},'
            f'"trace_id":{"null" if traceId is None else enc(traceId)},'
            f'"worker":{"null" if worker is None else repr(worker)}}}\n'
        )

    def _encode(self, value: str) -> str:
        """The JSON of a string from a small set, remembered (a bounded number of them)."""
        encoded = _encodeString(value)  # raises TypeError for what is not a string
        known = self._encoded
        if len(known) >= 4096:
            known.clear()
        known[value] = encoded
        return encoded

    def _encodeMethod(self, method: bytes) -> str:
        encoded = _encodeString(method.decode("latin-1"))
        if method in _KNOWN_METHODS:  # a client's invented methods are not kept
            self._methods[method] = encoded
        return encoded

    def flush(self) -> None:
        """Write out the lines buffered this reactor turn (also called by the drain)."""
        self._flushPending = False
        if self._file is None:
            return
        try:
            self._file.flush()
        except (OSError, ValueError):
            # A full disk or a closed file must not take the request path down.
            from twisted.logger import Logger

            Logger(namespace="txgateway.access").failure("flushing the access log failed")


_encodeString = json.encoder.encode_basestring_ascii  # json.dumps' own (C) string encoder


def _bytesIn(context: RequestContext) -> int:
    return int(getattr(context.request, "bytesIn", 0))


def requestBodySize(request: Any) -> int:
    """
    The size of the request body, from the count L{GatewayRequest} keeps as
    it reads it (no seeking in the buffer); L{bodySize} for other requests.
    """
    n = getattr(request, "_bodyBytes", None)
    return n if isinstance(n, int) else bodySize(request)


def bodySize(request: Any) -> int:
    """
    The size of the request body the Site buffered.

    Measured when the request is routed: Twisted closes the buffer before
    the request's finish notification, where the access log is written.
    """
    content = getattr(request, "content", None)
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
