# -*- test-case-name: tests.test_seedcompat -*-
"""
The Go workshop gateway's interface on txgateway's: its C{/health} fields
(C{environment}, C{backend}, C{backend_status}) and its C{ENVIRONMENT} as a
constant field of every JSON log line, so its users' probes, dashboards and
log queries keep working.  (Its variables themselves are read with the
config, L{txgateway.config}, as C{server.environment}.)

Duck-typed on the health report and the clusters, importing nothing of
txgateway, so the request path's modules can call it without a cycle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["labelledFormatter", "workshopHealth"]


def workshopHealth(report: dict[str, Any], environment: str | None, clusters: Mapping[str, Any]) -> dict[str, Any]:
    """
    The fields the workshop gateway's C{/health} has and ours had not,
    added to C{report} (returned): C{environment} (when configured),
    C{backend} (C{ok} while some upstream can take traffic, else
    C{unreachable}, with C{backend_error}) and C{backend_status}, the HTTP
    status of the latest answered active health probe (a usable target's
    first), left out until a probe has been answered.  Its users' readiness
    probes and dashboards read these.
    """
    if environment:
        report["environment"] = environment
    usable = [u for u in report.get("upstreams", {}).values() if u.get("usable")]
    report["backend"] = "ok" if usable else "unreachable"
    if not usable:
        report["backend_error"] = "no upstream has a target that can take traffic"
    statuses = [(not t["usable"], getattr(e, "probeStatus", None))
                for name, u in report.get("upstreams", {}).items() if name in clusters
                for e, t in zip(clusters[name].endpoints, u.get("targets", ()), strict=False)]
    answered = [(bad, code) for bad, code in statuses if code is not None]
    if answered:
        report["backend_status"] = min(answered, key=lambda a: a[0])[1]
    return report


def labelledFormatter(fmt: Callable[[dict[str, Any]], str | None],
                      environment: str | None) -> Callable[[dict[str, Any]], str | None]:
    """
    C{fmt} with C{"environment": ...} as the first field of every JSON log
    line (the workshop gateway's constant label); text lines and a gateway
    without an environment are left as they are.
    """
    if not environment:
        return fmt
    prefix = '{"environment":' + json.dumps(environment)

    def labelled(event: dict[str, Any]) -> str | None:
        line = fmt(event)
        if line is None or not line.startswith("{"):
            return line
        return prefix + ("," if not line.startswith("{}") else "") + line[1:]

    return labelled
