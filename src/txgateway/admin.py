"""
The admin listener: a live status page, a JSON API and /metrics, off the data path.

It runs on its own port (C{admin.listen}, loopback unless a token is set)
with a plain twisted.web Site, so an operator's browser polling it never
shares limits, metrics labels or the access log with client traffic.

Every number on the page is read from the same Prometheus registry that
C{/metrics} exports: the request path keeps one set of counters, and the
page derives rates and latency percentiles from two samples of them a
window apart, taken lazily when someone asks (no timer runs for it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

from txgateway import __version__
from txgateway.observe import LATENCY_BUCKETS, Metrics

if TYPE_CHECKING:
    from txgateway.service import Gateway

log = Logger(namespace="txgateway.admin")

_BOUNDS = (*LATENCY_BUCKETS, float("inf"))
_REFRESH_MS = 2000


class AdminTarget(Protocol):
    """What the admin listener needs from the running gateway (a L{GatewayService})."""

    gateway: Gateway
    metrics: Metrics

    def reload(self) -> list[str]: ...


# ---------------------------------------------------------------------------
# Numbers: snapshots of the registry and the difference of two of them.


class _Hist:
    """Count, sum and cumulative bucket counts of one histogram series (or a sum of several)."""

    __slots__ = ("count", "total", "buckets")

    def __init__(self) -> None:
        self.count = 0.0
        self.total = 0.0
        self.buckets = [0.0] * len(_BOUNDS)

    def minus(self, other: _Hist | None) -> _Hist:
        out = _Hist()
        if other is None:
            other = _Hist()
        out.count = self.count - other.count
        out.total = self.total - other.total
        out.buckets = [a - b for a, b in zip(self.buckets, other.buckets, strict=True)]
        return out

    def quantile(self, q: float) -> float | None:
        """Linear interpolation inside the bucket holding rank C{q}, as PromQL's histogram_quantile does."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(_BOUNDS, self.buckets, strict=True):
            if cumulative >= rank:
                if bound == float("inf"):
                    return lower
                inBucket = cumulative - below
                share = (rank - below) / inBucket if inBucket > 0 else 1.0
                return lower + (bound - lower) * share
            lower, below = bound, cumulative
        return lower

    def mean(self) -> float | None:
        return self.total / self.count if self.count > 0 else None


def _histograms(family: Any, keyLabels: tuple[str, ...]) -> dict[tuple[str, ...], _Hist]:
    out: dict[tuple[str, ...], _Hist] = {}
    index = {b: i for i, b in enumerate(_BOUNDS)}
    for name, labels, value in Metrics.samples(family):
        key = tuple(labels.get(k, "") for k in keyLabels)
        h = out.get(key)
        if h is None:
            h = out[key] = _Hist()
        if name.endswith("_count"):
            h.count += value
        elif name.endswith("_sum"):
            h.total += value
        elif name.endswith("_bucket"):
            i = index.get(float(labels["le"]))
            if i is not None:
                h.buckets[i] += value
    return out


def _counters(family: Any, keyLabels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    """Sums of a counter family's series grouped by C{keyLabels}."""
    out: dict[tuple[str, ...], float] = {}
    for name, labels, value in Metrics.samples(family):
        if not name.endswith("_total"):
            continue
        key = tuple(labels.get(k, "") for k in keyLabels)
        out[key] = out.get(key, 0.0) + value
    return out


class Snapshot:
    """The registry's numbers the status page uses, at one moment."""

    def __init__(self, metrics: Metrics | None) -> None:
        if metrics is None:  # the zero baseline
            self.routeLatency: dict[tuple[str, ...], _Hist] = {}
            self.routeStatus: dict[tuple[str, ...], float] = {}
            self.targetLatency: dict[tuple[str, ...], _Hist] = {}
            self.targetStatus: dict[tuple[str, ...], float] = {}
            return
        self.routeLatency = _histograms(metrics.requestDuration, ("route",))
        self.routeStatus = _counters(metrics.requests, ("route", "status"))
        self.targetLatency = _histograms(metrics.upstreamDuration, ("upstream", "target"))
        self.targetStatus = _counters(metrics.upstreamRequests, ("upstream", "target", "status"))


class RateWindow:
    """
    Rates over roughly the last C{window} seconds, from snapshots kept as they are asked for.

    A snapshot is kept at most once a second; the oldest one still inside
    the window is the baseline.  Until a baseline exists (the first look),
    the baseline is zero at start-up, so the first answer is the average
    since the gateway started.
    """

    def __init__(self, clock: IReactorTime, window: float = 60.0) -> None:
        self.clock = clock
        self.window = window
        self.samples: deque[tuple[float, Snapshot]] = deque([(clock.seconds(), Snapshot(None))])

    def sample(self, metrics: Metrics) -> tuple[float, Snapshot, Snapshot]:
        """(seconds covered, baseline, now)."""
        now = self.clock.seconds()
        current = Snapshot(metrics)
        samples = self.samples
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        base_t, base = samples[0]
        if now - samples[-1][0] >= 1.0:
            samples.append((now, current))
        # At least a second: a rate over a few milliseconds says nothing.
        return max(now - base_t, 1.0), base, current


# ---------------------------------------------------------------------------
# The status document.


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _isError(status: str) -> bool:
    return not status.isdigit() or int(status) >= 500


def _latency(h: _Hist) -> dict[str, float | None]:
    return {"mean": _ms(h.mean()), "p50": _ms(h.quantile(0.5)), "p95": _ms(h.quantile(0.95)),
            "p99": _ms(h.quantile(0.99))}


def _matchText(route: Any) -> str:
    m = route.config.match
    parts = []
    if m.host:
        parts.append(f"host {m.host}")
    if m.path is not None:
        parts.append(f"path {m.path}")
    if m.path_prefix is not None:
        parts.append(f"prefix {m.path_prefix}")
    if m.methods:
        parts.append("methods " + ",".join(m.methods))
    for k, v in m.headers:
        parts.append(f"header {k}: {v}")
    return "; ".join(parts) or "everything"


def _rateText(r: Any) -> str:
    unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(float(r.per))
    return f"{r.count}/{unit}" if unit else f"{r.count}/{r.per:g}s"


class StatusReport:
    """Builds the status document (the JSON API and the page) from the gateway's live state."""

    def __init__(self, target: AdminTarget, clock: IReactorTime, window: float = 60.0) -> None:
        self.target = target
        self.clock = clock
        self.started = clock.seconds()
        self.rates = RateWindow(clock, window)

    def status(self) -> dict[str, Any]:
        gw = self.target.gateway
        runtime = gw.runtime
        metrics = self.target.metrics
        span, base, now = self.rates.sample(metrics)
        code, health = runtime.healthReport()
        return {
            "gateway": {
                "version": __version__,
                "now": _iso(self.clock.seconds()),
                "uptime_s": round(self.clock.seconds() - self.started, 1),
                "ready": gw.state.ready and not gw.state.draining,
                "draining": gw.state.draining,
                "in_flight": gw.state.inFlight,
                "active_connections": int(metrics.gaugeValue(metrics.activeConnections)),
                "listen": runtime.config.server.listen,
                "config": runtime.config.source,
                "window_s": round(min(span, self.rates.window), 1),
                "health": health["status"],
                "health_code": code,
                "environment": runtime.config.server.environment,
                "degraded": health["degraded"],
            },
            "routes": self._routes(span, base, now),
            "upstreams": self._upstreams(span, base, now, health),
            "stores": health.get("stores", {}),
            "reloads": self.reloads(),
        }

    def routes(self) -> list[dict[str, Any]]:
        span, base, now = self.rates.sample(self.target.metrics)
        return self._routes(span, base, now)

    def upstreams(self) -> list[dict[str, Any]]:
        span, base, now = self.rates.sample(self.target.metrics)
        _, health = self.target.gateway.runtime.healthReport()
        return self._upstreams(span, base, now, health)

    def reloads(self) -> list[dict[str, Any]]:
        return [{"time": _iso(h["time"]), "result": h["result"], "problems": list(h.get("problems", ()))}
                for h in reversed(self.target.gateway.history)]

    def _routes(self, span: float, base: Snapshot, now: Snapshot) -> list[dict[str, Any]]:
        metrics = self.target.metrics
        limited = _counters(metrics.rateLimited, ("route",))
        cache = _counters(metrics.cacheRequests, ("route", "result"))
        authFailed = _counters(metrics.authFailures, ("route",))
        totals: dict[str, float] = {}
        errors: dict[str, float] = {}
        for (routeName, status), v in now.routeStatus.items():
            totals[routeName] = totals.get(routeName, 0.0) + v
            if _isError(status):
                errors[routeName] = errors.get(routeName, 0.0) + v
        out = []
        # In the config's order, the order the operator wrote and reads them in.
        for route in sorted(self.target.gateway.runtime.routes.routes, key=lambda r: r.config.index):
            c = route.config
            key = (route.name,)
            latest = now.routeLatency.get(key, _Hist())
            recent = latest.minus(base.routeLatency.get(key))
            out.append({
                "name": route.name,
                "match": _matchText(route),
                "upstream": route.upstreamName,
                "auth": c.auth.name if c.auth is not None else None,
                "rate_limit": (f"{c.rate_limit.algorithm} {_rateText(c.rate_limit.rate)}"
                               if c.rate_limit is not None else None),
                "cache": c.cache is not None,
                "requests": int(totals.get(route.name, 0)),
                "errors": int(errors.get(route.name, 0)),
                "rate": round(recent.count / span, 3),
                "latency_ms": _latency(recent),
                "rate_limited": int(limited.get(key, 0)),
                "auth_failures": int(authFailed.get(key, 0)),
                "cache_results": {r: int(v) for (name, r), v in sorted(cache.items()) if name == route.name},
            })
        return out

    def _upstreams(self, span: float, base: Snapshot, now: Snapshot, health: dict[str, Any]) -> list[dict[str, Any]]:
        metrics = self.target.metrics
        retries = _counters(metrics.retries, ("upstream",))
        totals: dict[tuple[str, str], float] = {}
        errors: dict[tuple[str, str], float] = {}
        for (upstream, target, status), v in now.targetStatus.items():
            k = (upstream, target)
            totals[k] = totals.get(k, 0.0) + v
            if _isError(status):
                errors[k] = errors.get(k, 0.0) + v
        out = []
        for name, cluster in self.target.gateway.runtime.clusters.items():
            report = health["upstreams"].get(name, {"usable": False, "targets": []})
            byURL = {t["url"]: t for t in report["targets"]}
            targets = []
            for e in cluster.endpoints:
                t = byURL.get(e.url, {})
                k = (name, e.url)
                recent = now.targetLatency.get(k, _Hist()).minus(base.targetLatency.get(k))
                targets.append({
                    "url": e.url,
                    "weight": e.weight,
                    "healthy": bool(t.get("healthy", False)),
                    "circuit": t.get("circuit", "closed"),
                    "in_flight": e.inFlight,
                    "requests": int(totals.get(k, 0)),
                    "errors": int(errors.get(k, 0)),
                    "rate": round(recent.count / span, 3),
                    "latency_ms": _latency(recent),
                })
            out.append({
                "name": name,
                "balancer": cluster.config.balancer,
                "usable": bool(report["usable"]),
                "degraded": name in health["degraded"],
                "retries": int(retries.get((name,), 0)),
                "targets": targets,
            })
        return out


# ---------------------------------------------------------------------------
# The page: server-rendered, then refreshed by the script polling the API.


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, suffix: str = "") -> str:
    if value is None:
        return "–"
    text = repr(value) if isinstance(value, float) else str(value)
    if text.endswith(".0"):  # as the page's script prints numbers
        text = text[:-2]
    return text + suffix


def _table(cls: str, head: Iterable[str], rows: Iterable[str]) -> str:
    th = "".join(f"<th>{_esc(h)}</th>" for h in head)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _row(cells: Iterable[tuple[str, Any]], attrs: str = "") -> str:
    return f"<tr{attrs}>" + "".join(f'<td class="{c}">{_esc(v)}</td>' for c, v in cells) + "</tr>"


def renderBody(doc: dict[str, Any]) -> str:
    """
    The status as HTML, the same markup the page's script builds from
    C{/api/status}: readable without JavaScript, and the screenshot test
    sees the same thing either way.
    """
    g = doc["gateway"]
    summary = (
        f'<p id="summary" class="state-{_esc(g["health"])}">'
        f'<b>{_esc(g["health"])}</b> · {"ready" if g["ready"] else ("draining" if g["draining"] else "not ready")}'
        f' · in flight {g["in_flight"]} · connections {g["active_connections"]}'
        f' · up {_num(g["uptime_s"], " s")} · rates over {_num(g["window_s"], " s")}'
        f' · v{_esc(g["version"])}</p>'
    )
    parts = [summary, "<h2>Upstreams</h2>"]
    for u in doc["upstreams"]:
        state = "degraded" if u["degraded"] else "ok"
        if not u["usable"]:
            state = "down"
        rows = [
            _row([("url", t["url"]), ("health " + ("ok" if t["healthy"] else "bad"),
                                      "healthy" if t["healthy"] else "unhealthy"),
                  ("circuit c-" + t["circuit"], t["circuit"]), ("n", t["in_flight"]), ("n", _num(t["rate"])),
                  ("n", t["requests"]), ("n", t["errors"]), ("n", _num(t["latency_ms"]["p95"]))],
                 f' data-target="{_esc(t["url"])}"')
            for t in u["targets"]
        ]
        parts.append(
            f'<section class="upstream" data-upstream="{_esc(u["name"])}"><h3>{_esc(u["name"])} '
            f'<span class="badge {state}">{state}</span> <small>{_esc(u["balancer"])} · retries {u["retries"]}'
            f"</small></h3>"
            + _table("targets", ["Target", "Health", "Circuit", "In flight", "Req/s", "Requests", "Errors", "p95 ms"],
                     rows)
            + "</section>")
    if doc.get("stores"):
        parts.append("<h2>Stores</h2>")
        parts.append(_table("stores", ["Store", "State", "Since", "Address"], [
            _row([("name", name), ("store-" + st["state"], st["state"]), ("", st["since"]), ("", st["address"])],
                 f' data-store="{_esc(name)}"') for name, st in doc["stores"].items()]))
    parts.append("<h2>Routes</h2>")
    routeRows = []
    for r in doc["routes"]:
        lat = r["latency_ms"]
        cache = ", ".join(f"{k} {v}" for k, v in r["cache_results"].items()) if r["cache_results"] else (
            "on" if r["cache"] else "–")
        routeRows.append(_row([
            ("name", r["name"]), ("match", r["match"]), ("", r["upstream"]), ("n", _num(r["rate"])),
            ("n", r["requests"]), ("n", r["errors"]), ("n", _num(lat["p50"])), ("n", _num(lat["p95"])),
            ("", r["rate_limit"] or "–"), ("n", r["rate_limited"]), ("n", r["auth_failures"]), ("", cache),
        ], f' data-route="{_esc(r["name"])}"'))
    parts.append(_table("routes", ["Route", "Match", "Upstream", "Req/s", "Requests", "Errors", "p50 ms", "p95 ms",
                                   "Rate limit", "429s", "Auth refused", "Cache"], routeRows))
    parts.append("<h2>Recent reloads</h2>")
    if doc["reloads"]:
        parts.append(_table("reloads", ["Time", "Result", "Problems"], [
            _row([("", h["time"]), ("result-" + h["result"], h["result"]), ("problems", "; ".join(h["problems"]))])
            for h in doc["reloads"]]))
    else:
        parts.append('<p class="reloads none">No reload since start.</p>')
    return "".join(parts)


class _Page:
    """The status page template, read once, with the CSP hashes of its inline script and style."""

    def __init__(self) -> None:
        text = resources.files("txgateway").joinpath("static/status.html").read_text("utf-8")
        self.template = text.replace("{{REFRESH_MS}}", str(_REFRESH_MS))
        hashes = []
        for tag in ("script", "style"):
            m = re.search(rf"<{tag}>(.*?)</{tag}>", self.template, re.S)
            assert m is not None, f"status.html has no inline <{tag}>"
            digest = base64.b64encode(hashlib.sha256(m.group(1).encode()).digest()).decode()
            hashes.append(f"'sha256-{digest}'")
        self.csp = (f"default-src 'none'; connect-src 'self'; script-src {hashes[0]}; style-src {hashes[1]}; "
                    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'").encode()

    def render(self, body: str, locked: bool) -> bytes:
        page = self.template.replace("<!--STATUS-->", body)
        page = page.replace("{{LOCKED}}", "true" if locked else "false")
        return page.encode("utf-8")


# ---------------------------------------------------------------------------
# The resource.


def _bearer(request: Any) -> bytes | None:
    value = request.getHeader(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


class AdminResource(Resource):
    """
    The whole admin listener: C{/} (the page), C{/api/...} and C{/metrics}.

    With a token configured every path needs C{Authorization: Bearer};
    the page answers an unauthenticated browser with an empty shell whose
    script asks for the token (kept in the tab's sessionStorage only).
    """

    isLeaf = True

    def __init__(self, target: AdminTarget, clock: IReactorTime, token: Callable[[], str | None],
                 report: StatusReport | None = None) -> None:
        super().__init__()
        self.target = target
        self.clock = clock
        self.token = token
        self.report = report or StatusReport(target, clock)
        self.page = _Page()
        self._get: dict[bytes, Callable[[Any], bytes]] = {
            b"/": self._statusPage,
            b"/status": self._statusPage,
            b"/api/status": lambda r: self._json(r, 200, self.report.status()),
            b"/api/routes": lambda r: self._json(r, 200, {"routes": self.report.routes()}),
            b"/api/upstreams": lambda r: self._json(r, 200, {"upstreams": self.report.upstreams()}),
            b"/api/reloads": lambda r: self._json(r, 200, {"reloads": self.report.reloads()}),
            b"/api/health": self._health,
            b"/metrics": self._metrics,
        }
        self._post: dict[bytes, Callable[[Any], bytes]] = {b"/api/config/reload": self._reload}

    def render(self, request: Any) -> bytes:
        request.responseHeaders.setRawHeaders(b"Cache-Control", [b"no-store"])
        request.responseHeaders.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
        path = request.path
        try:
            if not self._authorized(request):
                return self._unauthorized(request, path)
            method = request.method
            handler = self._get.get(path) if method in (b"GET", b"HEAD") else self._post.get(path) \
                if method == b"POST" else None
            if handler is not None:
                return handler(request)
            if path in self._get or path in self._post:
                allow = b"GET, HEAD" if path in self._get else b"POST"
                request.responseHeaders.setRawHeaders(b"Allow", [allow])
                return self._json(request, 405, {"error": "method not allowed", "allow": allow.decode()})
            return self._json(request, 404, {"error": "not found", "path": path.decode("latin-1")})
        except Exception:
            log.failure("admin request {path} failed", path=path)
            return self._json(request, 500, {"error": "internal error"})

    # -- access

    def _authorized(self, request: Any) -> bool:
        expected = self.token()
        if expected is None:
            return True
        given = _bearer(request)
        # An empty token (e.g. an empty token_file) admits nobody rather than everybody.
        return bool(given) and bool(expected) and hmac.compare_digest(given or b"", expected.encode("utf-8"))

    def _unauthorized(self, request: Any, path: bytes) -> bytes:
        request.responseHeaders.setRawHeaders(b"WWW-Authenticate", [b'Bearer realm="txgateway-admin"'])
        if path in (b"/", b"/status") and request.method in (b"GET", b"HEAD"):
            body = ('<p class="notice">This admin listener needs a token: send '
                    "<code>Authorization: Bearer &lt;admin.token&gt;</code>, or enter it below.</p>")
            return self._html(request, 401, self.page.render(body, locked=True))
        return self._json(request, 401, {"error": "admin token required"})

    def _sameOrigin(self, request: Any) -> bool:
        """A browser's cross-site POST carries an Origin naming another site: refuse it."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return True
        host = request.getHeader(b"host") or b""
        return origin.split(b"://", 1)[-1].rstrip(b"/").lower() == host.lower()

    # -- handlers

    def _statusPage(self, request: Any) -> bytes:
        return self._html(request, 200, self.page.render(renderBody(self.report.status()), locked=False))

    def _health(self, request: Any) -> bytes:
        code, report = self.target.gateway.runtime.healthReport()
        return self._json(request, code, report)

    def _metrics(self, request: Any) -> bytes:
        return self._send(request, 200, CONTENT_TYPE_LATEST.encode(), self.target.metrics.render())

    def _reload(self, request: Any) -> bytes:
        if not self._sameOrigin(request):
            return self._json(request, 403, {"error": "cross-origin request refused"})
        log.info("config reload requested on the admin listener by {peer}", peer=_peer(request))
        problems = self.target.reload()
        if not problems and getattr(self.target, "workerId", None) is not None:
            # One worker took this request; the supervisor passes the reload
            # on to every worker (this one reloads again, harmlessly).
            os.kill(os.getppid(), signal.SIGHUP)
        return self._json(request, 200 if not problems else 422, {"ok": not problems, "problems": problems})

    # -- writing

    def _json(self, request: Any, code: int, obj: Any) -> bytes:
        body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
        return self._send(request, code, b"application/json", body)

    def _html(self, request: Any, code: int, body: bytes) -> bytes:
        request.responseHeaders.setRawHeaders(b"Content-Security-Policy", [self.page.csp])
        request.responseHeaders.setRawHeaders(b"X-Frame-Options", [b"DENY"])
        request.responseHeaders.setRawHeaders(b"Referrer-Policy", [b"no-referrer"])
        return self._send(request, code, b"text/html; charset=utf-8", body)

    def _send(self, request: Any, code: int, contentType: bytes, body: bytes) -> bytes:
        request.setResponseCode(code)
        request.responseHeaders.setRawHeaders(b"Content-Type", [contentType])
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        return b"" if request.method == b"HEAD" else body


def _peer(request: Any) -> str:
    addr = request.getClientAddress()
    return str(getattr(addr, "host", addr))


class AdminSite(Site):
    """A plain Site: no request log of its own (a polling page would flood it)."""

    noisy = False
    displayTracebacks = False

    def log(self, request: Any) -> None:
        pass


def makeAdminSite(target: AdminTarget, clock: IReactorTime, token: Callable[[], str | None],
                  reactor: Any = None) -> AdminSite:
    return AdminSite(AdminResource(target, clock, token), timeout=60, reactor=reactor)
