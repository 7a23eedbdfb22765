# -*- test-case-name: tests.test_concurrency_config -*-
"""
Parsing C{upstreams.NAME.concurrency} and a route's C{batch}, C{coalesce}
and C{idempotent_post}: pure functions, no I/O.

The config package calls these while it walks an upstream or a route and
adds the problems they return to its own (each a C{(key path, line,
message)} triple; the line is read from the C{lines} mapping the config
loader attaches to YAML mappings, and is None for plain dicts).  Values are
converted by the config package's own converters
(L{txgateway.config.values}), so C{5ms}, C{1s} and whole numbers read and
fail the same way as everywhere else in the file.

The YAML::

    upstreams:
      model:
        targets: [http://10.0.0.7:8501]
        concurrency:
          adaptive: true          # or: limit: 8
          per_target: false       # true: that limit for each target, the queue shared
          min: 1
          max: 200
          queue: {size: 100, max_wait: 1s}
          priority:
            classes: [paid, free] # highest first
            default: free
            consumer: {acme: paid}
            route: {health: paid}
    routes:
      - name: predict
        match: {path: /v1/predict}
        upstream: model
        batch: {target_path: /v1/batch_predict, max_size: 32, max_wait: 5ms,
                envelope: instances, on_error: single}
        coalesce: true            # or {headers: [accept, authorization]}
        idempotent_post: true
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from txgateway.concurrency.specs import (
    DEFAULT_KEY_HEADERS,
    AdaptiveSpec,
    BatchSpec,
    CoalesceSpec,
    ConcurrencySpec,
    FixedSpec,
    PrioritySpec,
    QueueSpec,
    RouteConcurrency,
)
from txgateway.config.errors import Invalid
from txgateway.config.values import boolean, duration, headerName, integer, positive, string, urlPath

__all__ = ["ROUTE_KEYS", "Problem", "checkPriorityRoutes", "parseConcurrency", "parseRouteConcurrency"]

T = TypeVar("T")

#: (key path, line or None, message)
Problem = tuple[str, int | None, str]

#: The keys of a route that L{parseRouteConcurrency} reads: the route parser adds them to its known keys.
ROUTE_KEYS = ("batch", "coalesce", "idempotent_post")

MAX_BATCH = 10_000
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


class _Reader:
    """Reads the keys of one mapping, converting and collecting problems with their lines."""

    def __init__(self, mapping: dict[Any, Any], path: str, line: int | None, problems: list[Problem]) -> None:
        self.m = mapping
        self.path = path
        # The line of the key that holds this mapping (where "is required" points), else the mapping's own.
        self.line = line if line is not None else getattr(mapping, "line", None)
        self.lines: dict[Any, int] = getattr(mapping, "lines", {})
        self.problems = problems

    def lineOf(self, key: str) -> int | None:
        return self.lines.get(key, self.line)

    def add(self, key: str, message: str) -> None:
        self.problems.append((f"{self.path}.{key}" if key else self.path, self.lineOf(key), message))

    def known(self, keys: Iterable[str]) -> None:
        keys = tuple(keys)
        for key in self.m:
            if key not in keys:
                self.add(str(key), f"unknown key (expected one of: {', '.join(sorted(keys))})")

    def get(self, key: str, conv: Callable[[Any], T], default: T) -> T:
        if self.m.get(key) is None:
            return default
        try:
            return conv(self.m[key])
        except Invalid as e:
            self.add(key, str(e))
            return default

    def mapping(self, key: str) -> _Reader | None:
        value = self.m.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(key, "must be a mapping")
            return None
        return _Reader(value, f"{self.path}.{key}", self.lineOf(key), self.problems)


def _className(value: Any) -> str:
    text = string(value).strip()
    if not text or not set(text) <= _NAME_CHARS:
        raise Invalid(f"not a class name: {value!r} (letters, digits, _ - .)")
    return text


def _wait(value: Any) -> float:
    seconds = positive(duration)(value)
    if seconds > 600:
        raise Invalid("at most 10m: a request held longer has long been given up by its client")
    return seconds


# --------------------------------------------------------------------------
# upstreams.NAME.concurrency


def parseConcurrency(value: Any, path: str, line: int | None) -> tuple[ConcurrencySpec | None, list[Problem]]:
    """
    C{upstreams.NAME.concurrency} (C{path} is that key path); absent or
    null is no limit (None).  Returns the spec (None also when unusable)
    and the problems found.
    """
    problems: list[Problem] = []
    if value is None:
        return None, problems
    if not isinstance(value, dict):
        return None, [(path, line, "must be a mapping: {limit: N} or {adaptive: true, min: 1, max: 200}")]
    r = _Reader(value, path, line, problems)
    adaptiveKeys = ("min", "max", "initial", "tolerance", "window", "probe_interval")
    r.known(("limit", "adaptive", "queue", "priority", "per_target") + adaptiveKeys)
    adaptive = r.get("adaptive", boolean, False)
    limit: FixedSpec | AdaptiveSpec | None = None
    if adaptive:
        if value.get("limit") is not None:
            r.add("limit", "a fixed limit and adaptive: true exclude each other (use min and max)")
        a = AdaptiveSpec()
        low = r.get("min", integer(1), a.min)
        high = r.get("max", integer(1), a.max)
        initial = r.get("initial", integer(1), None)
        if low > high:
            r.add("min", f"min ({low}) is above max ({high})")
        elif initial is not None and not low <= initial <= high:
            r.add("initial", f"must be within min and max ({low}..{high})")
        tolerance = r.get("tolerance", _tolerance, a.tolerance)
        window = r.get("window", positive(duration), a.window)
        probe = r.get("probe_interval", duration, a.probe_interval)
        limit = AdaptiveSpec(low, high, initial, tolerance, window, probe)
    else:
        for key in adaptiveKeys:
            if key in value:
                r.add(key, "only with adaptive: true")
        if value.get("limit") is None:
            r.add("", "needs limit: N, or adaptive: true")
        else:
            limit = FixedSpec(r.get("limit", integer(1), 1))
    queue = QueueSpec()
    q = r.mapping("queue")
    if q is not None:
        q.known(("size", "max_wait"))
        queue = QueueSpec(q.get("size", integer(0), queue.size), q.get("max_wait", _wait, queue.max_wait))
    priority = _priority(r.mapping("priority"))
    perTarget = r.get("per_target", boolean, False)
    if limit is None or problems:
        return None, problems
    return ConcurrencySpec(limit, queue, priority, perTarget), problems


def _tolerance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1.0 <= value <= 10.0:
        raise Invalid(f"not a tolerance: {value!r} (a number from 1.0 to 10; 1.25 allows latency 25% over its minimum)")
    return float(value)


def _priority(r: _Reader | None) -> PrioritySpec:
    if r is None:
        return PrioritySpec()
    r.known(("classes", "default", "consumer", "route"))
    raw = r.m.get("classes")
    classes: list[str] = []
    if not isinstance(raw, list) or not raw:
        r.add("classes", "must list the priority classes, highest first (e.g. [paid, free])")
        return PrioritySpec()
    itemLines = getattr(raw, "lines", [])
    for i, item in enumerate(raw):
        try:
            name = _className(item)
        except Invalid as e:
            r.problems.append((f"{r.path}.classes[{i}]", itemLines[i] if i < len(itemLines) else r.lineOf("classes"),
                               str(e)))
            continue
        if name in classes:
            r.add("classes", f"class {name!r} is listed twice")
        classes.append(name)
    if not classes:
        return PrioritySpec()

    def className(value: Any) -> str:
        name = _className(value)
        if name not in classes:
            raise Invalid(f"{name!r} is not one of the classes: {', '.join(classes)}")
        return name

    default = r.get("default", className, classes[-1])
    maps: dict[str, dict[str, str]] = {}
    for key in ("consumer", "route"):
        maps[key] = {}
        m = r.mapping(key)
        if m is None:
            continue
        for name in m.m:
            converted = m.get(str(name), className, None)
            if converted is not None:
                maps[key][str(name)] = converted
    return PrioritySpec(tuple(classes), default, maps["consumer"], maps["route"])


def checkPriorityRoutes(spec: ConcurrencySpec, routeNames: Iterable[str], path: str,
                        line: int | None) -> list[Problem]:
    """Names in C{priority.route} that are no route's: the config parser calls this once routes are known."""
    names = set(routeNames)
    return [(f"{path}.priority.route.{r}", line, f"no route is named {r!r}")
            for r in spec.priority.route if r not in names]


# --------------------------------------------------------------------------
# routes[].batch, coalesce, idempotent_post


def parseRouteConcurrency(route: dict[Any, Any], path: str, line: int | None) -> tuple[RouteConcurrency, list[Problem]]:
    """
    The L{ROUTE_KEYS} of one route mapping (C{path} is the route's key path,
    e.g. C{routes[0](predict)}); other keys are the route parser's business.
    """
    problems: list[Problem] = []
    r = _Reader(route, path, line, problems)
    batch = None
    b = r.mapping("batch")
    if b is not None:
        b.known(("target_path", "max_size", "max_wait", "envelope", "on_error"))
        target = b.get("target_path", urlPath, "")
        if route["batch"].get("target_path") is None:
            b.add("target_path", "is required: the backend path that takes a batch (e.g. /v1/batch_predict)")
        envelope = route["batch"].get("envelope")
        if envelope not in (None, "instances"):
            b.add("envelope", f"{envelope!r} is not one of: null (a bare JSON array), instances")
            envelope = None
        batch = BatchSpec(target, b.get("max_size", _batchSize, 32), b.get("max_wait", _wait, 0.005), envelope,
                          b.get("on_error", _onError, "fail"))
    coalesce = None
    raw = route.get("coalesce")
    if isinstance(raw, dict):
        c = r.mapping("coalesce")
        assert c is not None
        c.known(("headers",))
        headers = c.m.get("headers")
        if not isinstance(headers, list):
            c.add("headers", "must be a list of header names (their values are part of the key)")
        else:
            names = []
            for i, h in enumerate(headers):
                try:
                    names.append(headerName(h).lower().encode("ascii"))
                except Invalid as e:
                    problems.append((f"{c.path}.headers[{i}]", c.lineOf("headers"), str(e)))
            coalesce = CoalesceSpec(tuple(dict.fromkeys(names)))
    elif r.get("coalesce", boolean, False):
        coalesce = CoalesceSpec(DEFAULT_KEY_HEADERS)
    idempotentPost = r.get("idempotent_post", boolean, False)
    return RouteConcurrency(batch, coalesce, idempotentPost), problems


def _batchSize(value: Any) -> int:
    n = integer(1)(value)
    if n > MAX_BATCH:
        raise Invalid(f"at most {MAX_BATCH}")
    return n


def _onError(value: Any) -> str:
    if value not in ("fail", "single"):
        raise Invalid(f"{value!r} is not one of: fail (502 to every client), single (send each item alone)")
    return str(value)

