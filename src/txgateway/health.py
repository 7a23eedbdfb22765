"""
Health checking: active probes and passive outlier detection.

Foundation stub: every target is healthy until the health issue lands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application.service import IService
    from twisted.internet.interfaces import IReactorTime

    from .cluster import Cluster
    from .interfaces import IPassiveHealth
    from .observe import Metrics


def passiveFor(cluster: Cluster, clock: IReactorTime, metrics: Metrics) -> IPassiveHealth | None:
    """The upstream's passive checker (fed by real traffic), or None when not configured."""
    return None


def checkerFor(cluster: Cluster, reactor: Any, clock: IReactorTime, metrics: Metrics) -> IService | None:
    """
    A service probing the upstream's targets, or None when C{health.active}
    is not configured.  It must expose a writable C{cluster} attribute: on a
    reload that keeps the upstream's health config, the service swaps in the
    new Cluster (same Endpoint objects) instead of restarting the probes.
    """
    return None
