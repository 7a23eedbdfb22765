# -*- test-case-name: tests.test_protection -*-
"""
An upstream's admission state as the admin API and the status page show it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from txgateway.concurrency.specs import AdaptiveSpec

if TYPE_CHECKING:
    from txgateway.cluster import Cluster

__all__ = ["admissionReport"]


def admissionReport(cluster: Cluster) -> dict[str, Any] | None:
    """
    C{mode} (fixed / adaptive), C{limit}, C{min}, C{max}, C{in_flight},
    C{queued} (per class), C{shed} (per reason), C{min_rtt_ms} and
    C{probing} (adaptive only), and with C{per_target} each target's own
    C{limit} and C{in_flight} (by URL; else None); None for an upstream
    without a limit.
    """
    spec = cluster.config.concurrency
    if cluster.admission is None or spec is None:
        return None
    controller = cluster.admission.current
    limiter = controller.limiter
    adaptive = isinstance(spec.limit, AdaptiveSpec)
    minRTT = getattr(limiter, "minRTT", None)
    return {
        "mode": "adaptive" if adaptive else "fixed",
        "limit": controller.limit,
        "min": spec.limit.min if isinstance(spec.limit, AdaptiveSpec) else None,
        "max": spec.limit.max if isinstance(spec.limit, AdaptiveSpec) else None,
        "in_flight": controller.inFlight,
        "queued": controller.queuedByClass(),
        "queue_size": controller.queueSize,
        "max_wait_ms": round(controller.maxWait * 1000, 3),
        "shed": dict(controller.shed),
        "min_rtt_ms": round(minRTT * 1000, 3) if minRTT is not None else None,
        "probing": bool(getattr(limiter, "probing", False)),
        "per_target": _perTarget(cluster),
    }


def _perTarget(cluster: Cluster) -> dict[str, dict[str, int]] | None:
    """Each target's limit and in flight (by URL), with C{per_target}."""
    limits = cluster.targetLimits
    if limits is None:
        return None
    return {e.url: {"limit": int(limits.limitOf(e).limit), "in_flight": e.inFlight} for e in cluster.endpoints}
