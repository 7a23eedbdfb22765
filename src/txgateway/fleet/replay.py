# -*- test-case-name: tests.test_fleet_member -*-
"""
Admin API runtime changes, replayed in every worker.

The admin listener is shared: one worker answers a C{POST .../drain}, a
split C{PUT} or a cache purge.  It applies the change and sends the request
(method, path, body) to the hub, which relays it to the other workers; each
replays it here through the same functions the admin API used, so every
worker ends up with the same targets, splits and caches.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.logger import Logger

from txgateway.admin.canary import handleSplit, splitRouteOf
from txgateway.admin.targets import PREFIX, targetControl
from txgateway.caching.purging import PURGE_KINDS, purgeAll, routeCaches
from txgateway.fleet.wire import Message

__all__ = ["adminChange", "replayAdmin"]

log = Logger(namespace="txgateway.fleet")

_PURGE = b"/api/cache/purge"


class _Replayed:
    """What the admin handlers read of a request, rebuilt from the relayed message."""

    def __init__(self, method: bytes, path: bytes, body: bytes) -> None:
        self.method = method
        self.path = path
        self.content = io.BytesIO(body)

    def getHeader(self, name: bytes) -> None:
        return None


def adminChange(request: Any) -> Message:
    """The message that replays C{request} (already applied in this worker) in the others."""
    content = getattr(request, "content", None)
    body = b""
    if content is not None:
        content.seek(0)
        body = content.read()
    return {"t": "admin", "method": request.method.decode("latin-1"), "path": request.path.decode("latin-1"),
            "body": body.decode("latin-1")}


def replayAdmin(service: Any, message: Message) -> None:
    request = _Replayed(message["method"].encode("latin-1"), message["path"].encode("latin-1"),
                        message["body"].encode("latin-1"))
    path = request.path
    runtime = service.gateway.runtime
    if path.startswith(PREFIX):
        code, body, _ = targetControl(runtime.clusters, request)
    elif path == _PURGE:
        code, body = _purge(runtime, request)
    else:
        route = splitRouteOf(path)
        if route is None:
            log.warn("fleet: cannot replay admin request {path}", path=path.decode("latin-1"))
            return
        code, body = handleSplit(service, request, route)
    if code >= 300:
        log.warn("fleet: replaying admin {method} {path} from another worker: {code} {body}",
                 method=message["method"], path=message["path"], code=code, body=body)


def _purge(runtime: Any, request: _Replayed) -> tuple[int, dict[str, Any]]:
    try:
        ((kind, value),) = json.loads(request.content.read()).items()
    except (ValueError, AttributeError, TypeError):
        return 400, {"error": "bad purge body"}
    if kind not in PURGE_KINDS:
        return 400, {"error": f"unknown purge {kind!r}"}
    d = purgeAll(routeCaches(runtime.routes.routes), kind, value)
    d.addErrback(lambda f: log.warn("fleet: replayed cache purge failed: {why}", why=f.getErrorMessage()))
    return 200, {}
