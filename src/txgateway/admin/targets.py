# -*- test-case-name: tests.test_membership,tests.e2e.test_discovery -*-
"""
Runtime control of upstream targets (issue 22):
C{POST /api/upstreams/{upstream}/targets/{host:port}/drain|disable|enable}
and C{PUT /api/upstreams/{upstream}/targets/{host:port}/weight} with
C{{"weight": N}}.

Changes last until the next config reload (L{txgateway.membership}).
Answers: 200 with the target, 404 for an unknown upstream or target, 400
for a bad weight, 405 for a wrong method, 409 when C{host:port} names both
an http and an https target.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from txgateway.membership import ACTIVE, DISABLED, DRAINING, describe

__all__ = ["PREFIX", "targetControl"]

PREFIX = b"/api/upstreams/"
_STATES = {"drain": DRAINING, "disable": DISABLED, "enable": ACTIVE}


def targetControl(clusters: Any, request: Any) -> tuple[int, dict[str, Any], bytes | None]:
    """(status, JSON body, Allow header for a 405) for a request under L{PREFIX}."""
    parts = request.path[len(PREFIX):].split(b"/")
    if len(parts) != 4 or parts[1] != b"targets":
        return 404, {"error": "not found", "path": request.path.decode("latin-1")}, None
    upstream, hostPort, action = (unquote(p.decode("latin-1")) for p in (parts[0], parts[2], parts[3]))
    if action not in (*_STATES, "weight"):
        return 404, {"error": "not found", "path": request.path.decode("latin-1")}, None
    method = b"PUT" if action == "weight" else b"POST"
    if request.method != method:
        return 405, {"error": "method not allowed", "allow": method.decode()}, method
    cluster = clusters.get(upstream)
    if cluster is None or cluster.membership is None:
        return 404, {"error": f"no upstream {upstream!r}"}, None
    membership = cluster.membership
    found = [e for e in membership.find(hostPort) if e.url in membership.members]
    if not found:
        return 404, {"error": f"upstream {upstream!r} has no target {hostPort!r}"}, None
    if len(found) > 1:
        return 409, {"error": f"{hostPort!r} names several targets: {', '.join(e.url for e in found)}"}, None
    endpoint = found[0]
    if action == "weight":
        try:
            body = json.loads(request.content.read() or b"{}")
            weight = body["weight"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'send {"weight": N} with N a whole number, 1 or more'}, None
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 10000:
            return 400, {"error": "weight must be a whole number from 1 to 10000"}, None
        membership.setWeight(endpoint, weight)
    else:
        membership.setState(endpoint, _STATES[action])
    return 200, {"upstream": upstream, "target": describe(endpoint, cluster.config.slow_start, True),
                 "note": "runtime change: lasts until the next config reload"}, None
