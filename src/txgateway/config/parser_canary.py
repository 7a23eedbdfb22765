# -*- test-case-name: tests.test_canary_config -*-
"""
Parsing a route's canary keys into frozen specs: pure functions, no I/O.

C{routes[].upstreams} (instead of C{routes[].upstream}), C{sticky},
C{canary_override} and C{mirror}.  The route parser calls
L{parseRouteCanary} with the route's mapping and adds the problems it
returns to its own; each is a L{Problem} (key path, line, message), the
line read from the C{lines} table the YAML loader attaches to mappings
(None for a plain dict).

Values are converted by the config package's own converters
(L{txgateway.config.values}), so C{5s}, C{1MiB} and a header name read and
fail here exactly as everywhere else in the file.  Only the two leaf
modules C{config.values} and C{config.errors} are imported: the route
parser imports this module, and nothing here reaches back into it.  The
specs themselves live in L{txgateway.canary.specs} (re-exported here).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from txgateway.canary.jsonpath import parsePath
from txgateway.canary.specs import (
    INTERNAL_NETWORKS,
    CanaryRouteSpec,
    CompareSpec,
    JsonCompareSpec,
    MirrorSpec,
    OverrideSpec,
    RedactSpec,
    StickySpec,
    WeightedUpstream,
)
from txgateway.config.errors import Invalid, Problem, itemPath, keyPath
from txgateway.config.values import (
    boolean,
    duration,
    headerName,
    integer,
    network,
    oneOf,
    positive,
    size,
    string,
)

__all__ = [
    "CANARY_ROUTE_KEYS", "INTERNAL_NETWORKS", "CanaryRouteSpec", "CompareSpec", "JsonCompareSpec", "MirrorSpec",
    "OverrideSpec", "RedactSpec", "StickySpec", "WeightedUpstream", "jsonPath", "parseRouteCanary", "percent",
    "stickyKey",
]

T = TypeVar("T")

#: The keys of a route that this module reads; the route parser adds them to its known keys.
CANARY_ROUTE_KEYS = ("upstreams", "sticky", "canary_override", "mirror")


# --------------------------------------------------------------------------
# Value converters (raise Invalid, as config.values' do)


def percent(value: Any) -> float:
    """C{10}, C{2.5}, C{10%}: a share of requests, 0 to 100."""
    if isinstance(value, bool):
        raise Invalid("not a percentage (write e.g. 10 or 10%)")
    text = value.strip().removesuffix("%") if isinstance(value, str) else value
    try:
        p = float(text)
    except (TypeError, ValueError):
        raise Invalid(f"not a percentage: {value!r} (write e.g. 10 or 10%)") from None
    if not 0 <= p <= 100:
        raise Invalid("must be between 0 and 100")
    return p


def tolerance(value: Any) -> float:
    """C{1e-6} (which YAML reads as text), C{0.001}, C{0}: never negative."""
    if isinstance(value, bool):
        raise Invalid("not a number")
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"not a number: {value!r} (write e.g. 1e-6 or 0.001)") from None
    if not f >= 0 or f == float("inf"):
        raise Invalid("must be zero or more")
    return f


def stickyKey(value: Any) -> str:
    """C{header:X-User}, C{cookie:session}, C{client_ip}, C{consumer}."""
    text = string(value).strip()
    if text in ("client_ip", "consumer"):
        return text
    kind, sep, name = text.partition(":")
    if sep and kind == "header":
        return "header:" + headerName(name.strip())
    if sep and kind == "cookie" and name.strip() and not any(c in name for c in ";=, \t"):
        return "cookie:" + name.strip()
    raise Invalid(f"{text!r} is not one of: header:NAME, cookie:NAME, client_ip, consumer")


def jsonPath(value: Any) -> str:
    """A JSON path as L{txgateway.canary.jsonpath} reads it, checked here so a typo fails at load."""
    text = string(value).strip()
    try:
        parsePath(text)
    except ValueError as e:
        raise Invalid(str(e)) from None
    return text


# --------------------------------------------------------------------------
# Sections


class _Reader:
    """Reads the keys of one mapping, converting, collecting problems with key paths and lines."""

    def __init__(self, m: Mapping[Any, Any], path: str, line: int | None, problems: list[Problem]) -> None:
        self.m = m
        self.path = path
        self.line = getattr(m, "line", None) or line
        self.lines: Mapping[Any, int] = getattr(m, "lines", {})
        self.problems = problems

    def lineOf(self, key: str) -> int | None:
        return self.lines.get(key, self.line)

    def add(self, key: str | None, message: str, line: int | None = None) -> None:
        path = keyPath(self.path, key) if key else self.path
        self.problems.append(Problem(path, line if line is not None else (self.lineOf(key) if key else self.line),
                                     message))

    def known(self, keys: Collection[str]) -> None:
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

    def child(self, key: str) -> _Reader | None:
        """The mapping under C{key} (None when absent; a problem when not a mapping)."""
        value = self.m.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.add(key, "must be a mapping")
            return None
        return _Reader(value, keyPath(self.path, key), self.lineOf(key), self.problems)

    def seq(self, key: str, conv: Callable[[Any], T]) -> tuple[T, ...]:
        value = self.m.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.add(key, "must be a list")
            return ()
        itemLines = getattr(value, "lines", [])
        out: list[T] = []
        for i, item in enumerate(value):
            try:
                out.append(conv(item))
            except Invalid as e:
                line = itemLines[i] if i < len(itemLines) else self.lineOf(key)
                self.problems.append(Problem(itemPath(keyPath(self.path, key), i), line, str(e)))
        return tuple(out)


def parseRouteCanary(route: Mapping[Any, Any], path: str, line: int | None,
                     upstreamNames: Collection[str]) -> tuple[CanaryRouteSpec, list[Problem]]:
    """
    The canary keys of one route mapping (C{path} is the route's key path,
    C{routes[0](predict)}); C{upstreamNames} are the upstreams defined in
    the file.  Keys not in L{CANARY_ROUTE_KEYS} are the route parser's.
    Also reports C{upstream} and C{upstreams} given together, and the keys
    that need C{upstreams} on a route without it.
    """
    problems: list[Problem] = []
    r = _Reader(route, path, line, problems)
    ups = _upstreams(r, upstreamNames) if route.get("upstreams") is not None else ()
    if route.get("upstreams") is not None and route.get("upstream") is not None:
        r.add("upstreams", "give upstream (one) or upstreams (a weighted split), not both")
    sticky = override = None
    s = r.child("sticky")
    if s is not None:
        s.known(("key",))
        key = s.get("key", stickyKey, None)
        if s.m.get("key") is None:
            s.add("key", "is required (header:NAME, cookie:NAME, client_ip or consumer)", s.line)
        sticky = StickySpec(key) if key is not None else None
    o = r.child("canary_override")
    if o is not None:
        override = _override(o)
    if not ups:
        for key in ("sticky", "canary_override"):
            if route.get(key) is not None:
                r.add(key, "needs upstreams: a weighted split to choose from")
    mirror = None
    mr = r.child("mirror")
    if mr is not None:
        mirror = _mirror(mr, upstreamNames)
    return CanaryRouteSpec(ups, sticky, override, mirror), problems


def _upstreams(r: _Reader, upstreamNames: Collection[str]) -> tuple[WeightedUpstream, ...]:
    value = r.m.get("upstreams")
    if not isinstance(value, list) or not value:
        r.add("upstreams", "must be a list of {name: UPSTREAM, weight: N}, at least one")
        return ()
    itemLines = getattr(value, "lines", [])
    out: list[WeightedUpstream] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        ipath = itemPath(keyPath(r.path, "upstreams"), i, item.get("name") if isinstance(item, dict) else None)
        iline = itemLines[i] if i < len(itemLines) else r.lineOf("upstreams")
        if not isinstance(item, dict):
            r.problems.append(Problem(ipath, iline, "must be a mapping {name: UPSTREAM, weight: N}"))
            continue
        ir = _Reader(item, ipath, iline, r.problems)
        ir.known(("name", "weight"))
        name = ir.get("name", string, None)
        if name is None:
            ir.add("name", "is required", ir.line)
        elif name not in upstreamNames:
            ir.add("name", f"no upstream named {name!r}")
        elif name in seen:
            ir.add("name", f"upstream {name!r} is listed twice")
        weight = ir.get("weight", integer(0), None)
        if item.get("weight") is None:
            ir.add("weight", "is required (a whole number, 0 or more)", ir.line)
        if name is not None and weight is not None and name in upstreamNames and name not in seen:
            out.append(WeightedUpstream(name, weight))
        if name is not None:
            seen.add(name)
    if out and len(out) == len(value) and not any(u.weight for u in out):
        r.add("upstreams", "every weight is 0: at least one upstream must take traffic")
    return tuple(out)


def _override(o: _Reader) -> OverrideSpec:
    o.known(("header", "trusted_only", "trusted_clients", "trusted_consumers"))
    d = OverrideSpec()
    clients = o.seq("trusted_clients", network) if o.m.get("trusted_clients") is not None else d.trusted_clients
    return OverrideSpec(
        header=o.get("header", headerName, d.header),
        trusted_only=o.get("trusted_only", boolean, d.trusted_only),
        trusted_clients=clients,
        trusted_consumers=o.seq("trusted_consumers", string),
    )


def _mirror(r: _Reader, upstreamNames: Collection[str]) -> MirrorSpec | None:
    r.known(("upstream", "percent", "timeout", "max_body", "queue", "concurrency", "compare"))
    upstream = r.get("upstream", string, None)
    if upstream is None:
        r.add("upstream", "is required: the upstream that receives the copies", r.line)
    elif upstream not in upstreamNames:
        r.add("upstream", f"no upstream named {upstream!r}")
    d = MirrorSpec("")
    compare = None
    raw = r.m.get("compare")
    if raw is True:
        compare = CompareSpec()
    elif raw is not None and raw is not False:
        c = r.child("compare")
        compare = _compare(c) if c is not None else None
    spec = MirrorSpec(
        upstream=upstream or "",
        percent=r.get("percent", percent, d.percent),
        timeout=r.get("timeout", positive(duration), d.timeout),
        max_body=r.get("max_body", size, d.max_body),
        queue=r.get("queue", integer(1), d.queue),
        concurrency=r.get("concurrency", integer(1), d.concurrency),
        compare=compare,
    )
    return spec if upstream in upstreamNames else None


def _compare(c: _Reader) -> CompareSpec:
    c.known(("status", "headers", "body", "json", "redact", "samples"))
    d = CompareSpec()
    js = d.json
    j = c.child("json")
    if j is not None:
        j.known(("ignore", "absolute", "relative"))
        js = JsonCompareSpec(j.seq("ignore", jsonPath), j.get("absolute", tolerance, 0.0),
                             j.get("relative", tolerance, 0.0))
    redact = d.redact
    rr = c.child("redact")
    if rr is not None:
        rr.known(("headers", "json"))
        redact = RedactSpec(rr.seq("headers", headerName), rr.seq("json", jsonPath))
    return CompareSpec(
        status=c.get("status", boolean, d.status),
        headers=c.seq("headers", headerName),
        body=c.get("body", oneOf("json", "bytes", "ignore"), "json" if j is not None else "bytes"),
        json=js,
        redact=redact,
        samples=c.get("samples", integer(0), d.samples),
    )
