# -*- test-case-name: tests.test_canary_flow -*-
"""
The admin side of issue 23: splits changed at run time, mirrors reported.

C{GET|PUT /api/routes/{route}/split} reads or replaces a split route's
weights (a ramp without a reload: 5 % -> 25 % -> 100 %); C{GET /api/mirrors}
is every mirrored route's counts and kept samples.  For the status page,
L{CanaryStatus} adds each route's split with its live shares (the choices
made over the page's window, from two snapshots of the splitter's counts)
and the mirrors to the status document, and L{renderCanary} draws the
mirror samples side by side with the differing JSON paths marked.
"""

from __future__ import annotations

import html
import json
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

from txgateway.canary.compare import mirrorsReport
from txgateway.canary.split import SplitRefused, liveShares, updateSplit
from txgateway.splitting import publishSplit

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.admin.status import AdminTarget

__all__ = ["CanaryStatus", "handleSplit", "mirrors", "renderCanary", "splitRouteOf", "splitText"]

log = Logger(namespace="txgateway.admin")

_PREFIX = b"/api/routes/"
_SUFFIX = b"/split"


def splitRouteOf(path: bytes) -> str | None:
    """The route of C{/api/routes/{route}/split}, or None for any other path."""
    if path.startswith(_PREFIX) and path.endswith(_SUFFIX) and len(path) > len(_PREFIX) + len(_SUFFIX):
        name = path[len(_PREFIX):-len(_SUFFIX)]
        if b"/" not in name:
            return name.decode("utf-8", "replace")
    return None


def _route(target: AdminTarget, name: str) -> Any:
    for route in target.gateway.runtime.routes.routes:
        if route.name == name:
            return route
    return None


def handleSplit(target: AdminTarget, request: Any, name: str) -> tuple[int, dict[str, Any]]:
    """
    C{GET}: the split's report; C{PUT} with C{{"weights": {...}}}: change it
    (kept across reloads that leave the route's C{upstreams} unchanged).
    The caller has checked the token and, for C{PUT}, the origin.
    """
    route = _route(target, name)
    splitter = route.canary.splitter if route is not None and route.canary is not None else None
    if splitter is None:
        message = "no such route" if route is None else "this route has one upstream, not a split (upstreams:)"
        return 404, {"error": message, "route": name}
    if request.method in (b"GET", b"HEAD"):
        return 200, splitter.report()
    if request.method != b"PUT":
        request.responseHeaders.setRawHeaders(b"Allow", [b"GET, HEAD, PUT"])
        return 405, {"error": "method not allowed", "allow": "GET, HEAD, PUT"}
    if getattr(target, "workerId", None) is not None and getattr(target, "fleet", None) is None:
        # The admin socket is shared by the workers: this PUT reaches one of them.
        return 409, {"error": "with server.workers > 1, change weights by reload"}
    try:
        new = updateSplit(splitter.split, request.content.read() if request.content is not None else b"")
    except SplitRefused as e:
        return 400, {"error": str(e)}
    old = splitter.split
    splitter.setSplit(new)
    publishSplit(target.metrics, splitter)
    log.info("split of {route} changed through the admin API: {change}", route=name,
             change=", ".join(f"{n} {old.weight(n)}->{new.weight(n)}" for n in new.names))
    return 200, splitter.report()


def mirrors(target: AdminTarget) -> dict[str, Any]:
    """The body of C{GET /api/mirrors}."""
    return mirrorsReport({r.name: r.canary.mirror for r in target.gateway.runtime.routes.routes
                          if r.canary is not None and r.canary.mirror is not None})


def splitText(split: dict[str, Any] | None) -> str | None:
    """C{model-v1 75 % (74.6 %) / model-v2 25 % (25.4 %)}: configured share, live share over the window."""
    if split is None:
        return None
    parts = []
    for u in split["upstreams"]:
        live = u.get("live_share")
        parts.append(f"{u['name']} {u['share'] * 100:.4g} %" + (f" ({live * 100:.1f} %)" if live is not None else ""))
    return " / ".join(parts)


class CanaryStatus:
    """Adds splits (with live shares over the window) and mirrors to the status document."""

    def __init__(self, target: AdminTarget, clock: IReactorTime, window: float = 60.0) -> None:
        self.target = target
        self.clock = clock
        self.window = window
        # From start (every count 0) until the window has passed, as the page's rates are.
        self._snapshots: deque[tuple[float, dict[str, dict[str, int]]]] = deque([(clock.seconds(), {})])

    def _counts(self) -> dict[str, dict[str, int]]:
        return {r.name: r.canary.splitter.counts() for r in self.target.gateway.runtime.routes.routes
                if r.canary is not None and r.canary.splitter is not None}

    def add(self, doc: dict[str, Any]) -> dict[str, Any]:
        now = self.clock.seconds()
        counts = self._counts()
        snaps = self._snapshots
        while len(snaps) > 1 and now - snaps[1][0] >= self.window:
            snaps.popleft()
        base = snaps[0][1] if snaps else {}
        if not snaps or now - snaps[-1][0] >= 1.0:
            snaps.append((now, counts))
        runtime = self.target.gateway.runtime
        for r in doc.get("routes", ()):
            route = next((x for x in runtime.routes.routes if x.name == r["name"]), None)
            splitter = route.canary.splitter if route is not None and route.canary is not None else None
            if splitter is None:
                r["split"] = None
                continue
            report = splitter.report()
            live = liveShares(base.get(r["name"], {}), counts.get(r["name"], {}))
            for u in report["upstreams"]:
                u["live_share"] = live.get(u["name"])
            r["split"] = report
            r["split_text"] = splitText(report)
        doc["mirrors"] = mirrors(self.target)["mirrors"]
        return doc


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _pretty(side: dict[str, Any], differences: list[str]) -> str:
    """The side's body, pretty-printed when JSON, with the lines of differing paths marked."""
    body = side.get("body")
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return f"<pre>{_esc(body)}</pre>"
    if body is None:
        return "<pre></pre>"
    keys = {p.rsplit(".", 1)[-1].split("[", 1)[0] for p in differences if p.startswith("$.")}
    lines = []
    for line in json.dumps(body, indent=2, sort_keys=True).splitlines():
        key = line.strip().split('"', 2)[1] if line.strip().startswith('"') else None
        cls = ' class="diff"' if key is not None and key in keys else ""
        lines.append(f"<span{cls}>{_esc(line)}</span>")
    return "<pre>" + "\n".join(lines) + "</pre>"


def renderCanary(doc: dict[str, Any]) -> str:
    """The Mirrors section of the page: counts per route, then each kept sample side by side."""
    mirrorsDoc = doc.get("mirrors") or {}
    if not mirrorsDoc:
        return ""
    parts = ["<h2>Mirrors</h2>"]
    for name, m in mirrorsDoc.items():
        counts = " · ".join(f"{k} {m[k]}" for k in ("sent", "dropped", "skipped", "failed", "timed_out",
                                                      "compared", "mismatched"))
        parts.append(f'<section class="mirror" data-mirror="{_esc(name)}"><h3>{_esc(name)} → '
                     f'{_esc(m["upstream"])} <small>{m["percent"]:g} % · {counts}</small></h3>')
        for s in reversed(m["samples"]):
            diffs = list(s.get("differences", ()))
            parts.append(
                '<div class="sample"><p class="diffs">'
                f'{_esc(s.get("method"))} {_esc(s.get("path"))} · differs at: '
                + ", ".join(f"<code>{_esc(d)}</code>" for d in diffs)
                + '</p><div class="sides"><div class="side"><h4>primary '
                f'{_esc(s.get("primary", {}).get("status"))}</h4>{_pretty(s.get("primary", {}), diffs)}</div>'
                f'<div class="side"><h4>mirror {_esc(s.get("mirror", {}).get("status"))}</h4>'
                f'{_pretty(s.get("mirror", {}), diffs)}</div></div></div>')
        parts.append("</section>")
    return "".join(parts)
