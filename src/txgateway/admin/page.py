# -*- test-case-name: tests.test_admin -*-
"""
The status page: server-rendered from the status document, then refreshed by its script polling the API.

The template is C{txgateway/static/status.html}; its inline script and
style are allowed by hash in the page's Content-Security-Policy.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from txgateway.admin.canary import renderCanary

_REFRESH_MS = 2000


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


def concurrencyLine(c: dict[str, Any] | None) -> str:
    """
    An upstream's admission state in one line (issue 24), as the page's
    script writes it: "limit 14 (adaptive 1-200) · in flight 12 · queued 3
    (paid 0, free 3) · shed 17 (max_wait 17)", and with per-target limits
    "· per target http://a:8000 3/9, http://b:8000 5/5" (in flight / limit).
    """
    if not c:
        return ""
    mode = f'adaptive {c["min"]}-{c["max"]}' if c["mode"] == "adaptive" else "fixed"
    queued: dict[str, int] = c["queued"]
    shed = {k: v for k, v in c["shed"].items() if v > 0}
    text = f'limit {c["limit"]} ({mode}) · in flight {c["in_flight"]} · queued {sum(queued.values())}'
    if len(queued) > 1:
        text += " (" + ", ".join(f"{k} {v}" for k, v in queued.items()) + ")"
    text += f' · shed {sum(c["shed"].values())}'
    if shed:
        text += " (" + ", ".join(f"{k} {v}" for k, v in shed.items()) + ")"
    if c.get("per_target"):
        text += " · per target " + ", ".join(f'{u} {t["in_flight"]}/{t["limit"]}' for u, t in c["per_target"].items())
    return f'<p class="concurrency">{_esc(text)}</p>'


def _actions(upstream: str, t: dict[str, Any]) -> str:
    """The drain / enable button of a target (the page's script posts it to the admin API)."""
    action = "drain" if t["state"] == "active" else "enable"
    return (f'<td class="actions"><button type="button" data-upstream="{_esc(upstream)}" '
            f'data-host-port="{_esc(t["host_port"])}" data-action="{action}">{action.capitalize()}</button></td>')


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
                  ("n", t["requests"]), ("n", t["errors"]), ("n", _num(t["latency_ms"]["p95"])),
                  ("source", t["source"]), ("state s-" + t["state"], t["state"])],
                 f' data-target="{_esc(t["url"])}"')[:-5] + _actions(u["name"], t) + "</tr>"
            for t in u["targets"]
        ]
        parts.append(
            f'<section class="upstream" data-upstream="{_esc(u["name"])}"><h3>{_esc(u["name"])} '
            f'<span class="badge {state}">{state}</span> <small>{_esc(u["balancer"])} · retries {u["retries"]}'
            f"</small></h3>"
            + concurrencyLine(u.get("concurrency"))
            + _table("targets", ["Target", "Health", "Circuit", "In flight", "Req/s", "Requests", "Errors", "p95 ms",
                                 "Source", "State", ""], rows)
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
            ("name", r["name"]), ("match", r["match"]), ("", r.get("split_text") or r["upstream"]), ("n", _num(r["rate"])),
            ("n", r["requests"]), ("n", r["errors"]), ("n", _num(lat["p50"])), ("n", _num(lat["p95"])),
            ("", r["rate_limit"] or "–"), ("n", r["rate_limited"]), ("n", r["auth_failures"]), ("", cache),
        ], f' data-route="{_esc(r["name"])}"'))
    parts.append(_table("routes", ["Route", "Match", "Upstream", "Req/s", "Requests", "Errors", "p50 ms", "p95 ms",
                                   "Rate limit", "429s", "Auth refused", "Cache"], routeRows))
    cached = [r for r in doc["routes"] if r.get("cache_store")]
    if cached:
        parts.append("<h2>Caches</h2>")
        parts.append(_table("caches", ["Route", "Store", "Entries", "Bytes", "Hit ratio", "Evictions"], [
            _row([("name", r["name"]), ("", c["store"]), ("n", _num(c.get("entries"))), ("n", _num(c.get("bytes"))),
                  ("n", _num(c["hit_ratio"])), ("n", _num(c.get("evictions")))], f' data-cache="{_esc(r["name"])}"')
            for r in cached for c in (r["cache_store"],)]))
    parts.append(renderCanary(doc))
    parts.append("<h2>Recent reloads</h2>")
    if doc["reloads"]:
        parts.append(_table("reloads", ["Time", "Result", "Problems"], [
            _row([("", h["time"]), ("result-" + h["result"], h["result"]), ("problems", "; ".join(h["problems"]))])
            for h in doc["reloads"]]))
    else:
        parts.append('<p class="reloads none">No reload since start.</p>')
    return "".join(parts)


class StatusPage:
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


__all__ = ["StatusPage", "renderBody"]
