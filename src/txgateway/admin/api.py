# -*- test-case-name: tests.test_admin -*-
"""
The admin listener's resource: C{/} (the page), C{/api/...} and C{/metrics}.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgateway.admin.auth import sameOrigin, tokenAccepted
from txgateway.admin.canary import handleSplit, mirrors, splitRouteOf
from txgateway.admin.page import StatusPage, renderBody
from txgateway.admin.status import AdminTarget, StatusReport
from txgateway.admin.targets import PREFIX, targetControl
from txgateway.caching.purging import PURGE_KINDS, purgeAll, routeCaches

log = Logger(namespace="txgateway.admin")

# Reason phrases twisted.web.http.RESPONSES lacks (it would write "Unknown Status").
_REASONS = {422: b"Unprocessable Content"}

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
        self.token = token
        self.report = report or StatusReport(target, clock)
        self.page = StatusPage()
        self._get: dict[bytes, Callable[[Any], bytes]] = {
            b"/": self._statusPage,
            b"/status": self._statusPage,
            b"/api/status": lambda r: self._json(r, 200, dict(self.report.status(), workers=self._workers())),
            b"/api/routes": lambda r: self._json(r, 200, {"routes": self.report.routes()}),
            b"/api/upstreams": lambda r: self._json(r, 200, {"upstreams": self.report.upstreams()}),
            b"/api/reloads": lambda r: self._json(r, 200, {"reloads": self.report.reloads(),
                                                           "workers": self._workers()}),
            b"/api/health": self._health,
            b"/api/mirrors": lambda r: self._json(r, 200, mirrors(self.target)),
            b"/metrics": self._metrics,
            b"/api/timeline": self._timeline,
        }
        self._post: dict[bytes, Callable[[Any], Any]] = {b"/api/config/reload": self._reload,
                                                         b"/api/cache/purge": self._purge}

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
            if path.startswith(PREFIX):  # runtime target control: see admin/targets.py
                if not sameOrigin(request):
                    return self._json(request, 403, {"error": "cross-origin request refused"})
                code, body, allow = targetControl(self.target.gateway.runtime.clusters, request)
                self._share(request, code)
                if allow is not None:
                    request.responseHeaders.setRawHeaders(b"Allow", [allow])
                return self._json(request, code, body)
            split = splitRouteOf(path)  # /api/routes/{route}/split (issue 23)
            if split is not None:
                if request.method == b"PUT" and not sameOrigin(request):
                    return self._json(request, 403, {"error": "cross-origin request refused"})
                code, body = handleSplit(self.target, request, split)
                if request.method == b"PUT":
                    self._share(request, code)
                return self._json(request, code, body)
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
        return tokenAccepted(request, self.token())

    def _unauthorized(self, request: Any, path: bytes) -> bytes:
        request.responseHeaders.setRawHeaders(b"WWW-Authenticate", [b'Bearer realm="txgateway-admin"'])
        if path in (b"/", b"/status") and request.method in (b"GET", b"HEAD"):
            body = ('<p class="notice">This admin listener needs a token: send '
                    "<code>Authorization: Bearer &lt;admin.token&gt;</code>, or enter it below.</p>")
            return self._html(request, 401, self.page.render(body, locked=True))
        return self._json(request, 401, {"error": "admin token required"})

    # -- handlers

    def _statusPage(self, request: Any) -> bytes:
        return self._html(request, 200, self.page.render(renderBody(self.report.status()), locked=False))

    def _health(self, request: Any) -> bytes:
        code, report = self.target.gateway.runtime.healthReport()
        return self._json(request, code, report)

    def _metrics(self, request: Any) -> bytes:
        metrics = self.target.metrics
        openMetrics, contentType = metrics.negotiate(request.getHeader(b"accept"))
        return self._send(request, 200, contentType, metrics.render(openMetrics))

    def _timeline(self, request: Any) -> bytes:
        """The last 15 minutes for the page's charts (C{?since=T}: only points after T)."""
        timeline = getattr(self.target, "timeline", None)
        if timeline is None:
            return self._json(request, 404, {"error": "no timeline in this gateway"})
        since = None
        raw = request.args.get(b"since")
        if raw:
            try:
                since = float(raw[0])
            except ValueError:
                return self._json(request, 400, {"error": "since must be a number (a time from an earlier answer)"})
        return self._json(request, 200, timeline.document(since))

    def _reload(self, request: Any) -> Any:
        if not sameOrigin(request):
            return self._json(request, 403, {"error": "cross-origin request refused"})
        log.info("config reload requested on the admin listener by {peer}", peer=_peer(request))
        fleet = getattr(self.target, "fleet", None)
        if fleet is not None:  # with workers: the supervisor validates once, every worker switches
            d = fleet.reload().addCallback(lambda problems: self._reloaded(request, problems))
            d.addErrback(lambda f: log.failure("answering the admin reload failed", f))
            return NOT_DONE_YET
        problems = self.target.reload()
        if not problems and getattr(self.target, "workerId", None) is not None:
            # One worker took this request; the supervisor passes the reload
            # on to every worker (this one reloads again, harmlessly).
            os.kill(os.getppid(), signal.SIGHUP)
        return self._json(request, 200 if not problems else 422, {"ok": not problems, "problems": problems})

    def _reloaded(self, request: Any, problems: list[str]) -> None:
        request.write(self._json(request, 200 if not problems else 422, {"ok": not problems, "problems": problems}))
        request.finish()

    def _workers(self) -> list[dict[str, Any]]:
        """C{[{worker, pid, generation}]}: every worker's, from the fleet's roster; this process alone without one."""
        fleet = getattr(self.target, "fleet", None)
        if fleet is not None:
            return fleet.workers()  # type: ignore[no-any-return]
        return [{"worker": getattr(self.target, "workerId", None), "pid": os.getpid(), "generation": None}]

    def _share(self, request: Any, code: int) -> None:
        """A runtime change this worker applied (C{code} 200): replayed in every other worker."""
        fleet = getattr(self.target, "fleet", None)
        if fleet is not None and code == 200:
            fleet.shareAdmin(request)

    def _purge(self, request: Any) -> Any:
        """
        C{POST /api/cache/purge} with one of C{{"url"}}, C{{"route"}},
        C{{"prefix"}}, C{{"tag"}}: 200 C{{"purged": N}} (stored responses
        removed), 400 for anything else, 503 when Redis could not be reached.
        """
        if not sameOrigin(request):
            return self._json(request, 403, {"error": "cross-origin request refused"})
        try:
            body = json.loads(request.content.read() or b"null")
        except ValueError:
            body = None
        if not (isinstance(body, dict) and len(body) == 1):
            return self._json(request, 400, {"error": "send one of " + ", ".join(f'{{"{k}": ...}}' for k in PURGE_KINDS)})
        ((kind, value),) = body.items()
        if kind not in PURGE_KINDS or not isinstance(value, str) or not value:
            return self._json(request, 400, {"error": f"unknown purge {kind!r}: use one of {', '.join(PURGE_KINDS)}"})
        caches = routeCaches(self.target.gateway.runtime.routes.routes)
        if kind == "route" and value not in {name for name, _ in caches}:
            return self._json(request, 404, {"error": f"no cached route named {value!r}"})
        log.info("cache purge {kind}={value} requested on the admin listener by {peer}", kind=kind, value=value,
                 peer=_peer(request))

        self._share(request, 200)

        def done(n: int) -> None:
            request.write(self._json(request, 200, {"purged": n}))
            request.finish()

        def failed(f: Failure) -> None:
            log.warn("cache purge {kind}={value} failed: {why}", kind=kind, value=value, why=f.getErrorMessage())
            request.write(self._json(request, 503, {"error": "purge failed: " + f.getErrorMessage()}))
            request.finish()

        purgeAll(caches, kind, value).addCallbacks(done, failed)
        return NOT_DONE_YET

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
        request.setResponseCode(code, _REASONS.get(code))
        request.responseHeaders.setRawHeaders(b"Content-Type", [contentType])
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        return b"" if request.method == b"HEAD" else body


def _peer(request: Any) -> str:
    addr = request.getClientAddress()
    return str(getattr(addr, "host", addr))


__all__ = ["AdminResource"]
