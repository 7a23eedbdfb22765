# -*- test-case-name: tests.test_concurrency_config -*-
"""
The parsed form of the concurrency, batching and coalescing keys.

Frozen dataclasses with nothing but the standard library beneath them, so
the config package's schema can hold them (C{UpstreamConfig.concurrency},
C{RouteConfig.batch} ...) without importing anything that runs.  Reload
compares them with C{==}: an unchanged spec keeps its running controller.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["DEFAULT_CLASS", "DEFAULT_KEY_HEADERS", "AdaptiveSpec", "BatchSpec", "CoalesceSpec", "ConcurrencySpec", "FixedSpec",
           "PrioritySpec", "QueueSpec", "RouteConcurrency"]

DEFAULT_CLASS = "default"

#: Headers whose values are part of a coalescing key unless a route lists
#: its own: the ones an origin's answer commonly depends on (never share an
#: answer across credentials by default).
DEFAULT_KEY_HEADERS = (b"accept", b"accept-encoding", b"accept-language", b"authorization", b"cookie")


@dataclass(frozen=True)
class FixedSpec:
    """C{concurrency: {limit: N}}"""

    limit: int


@dataclass(frozen=True)
class AdaptiveSpec:
    """C{concurrency: {adaptive: true, min: 1, max: 200, ...}}: see L{txgateway.concurrency.limits.GradientLimit}."""

    min: int = 1
    max: int = 200
    initial: int | None = None
    tolerance: float = 1.25
    window: float = 1.0
    probe_interval: float = 60.0


@dataclass(frozen=True)
class QueueSpec:
    """C{queue: {size: 100, max_wait: 1s}}: per priority class; size 0 sheds at once at the limit."""

    size: int = 100
    max_wait: float = 1.0


def _frozen(mapping: Mapping[str, str] | None = None) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class PrioritySpec:
    """
    C{priority: {classes: [paid, free], default: free, consumer: {alice: paid}, route: {admin: paid}}}

    C{classes} run from highest to lowest.  A request's class is the higher
    of its consumer's and its route's, else C{default} (the lowest class
    unless said otherwise).
    """

    classes: tuple[str, ...] = (DEFAULT_CLASS,)
    default: str = DEFAULT_CLASS
    consumer: Mapping[str, str] = field(default_factory=_frozen)
    route: Mapping[str, str] = field(default_factory=_frozen)

    def __hash__(self) -> int:
        return hash((self.classes, self.default, tuple(sorted(self.consumer.items())),
                     tuple(sorted(self.route.items()))))

    def classOf(self, route: str | None, consumer: str | None) -> str:
        """The class a request of this route and consumer (None: anonymous) queues in."""
        byRoute = self.route.get(route) if route is not None else None
        byConsumer = self.consumer.get(consumer) if consumer is not None else None
        if byRoute is None and byConsumer is None:
            return self.default
        if byRoute is None or byConsumer is None:
            return byRoute or byConsumer or self.default
        return min(byRoute, byConsumer, key=self.classes.index)


@dataclass(frozen=True)
class ConcurrencySpec:
    """
    C{upstreams.NAME.concurrency}: the limit, its queue and its priority
    classes; with C{per_target}, the limit is each target's, and the
    upstream's the sum of its targets'.
    """

    limit: FixedSpec | AdaptiveSpec
    queue: QueueSpec = QueueSpec()
    priority: PrioritySpec = PrioritySpec()
    per_target: bool = False


@dataclass(frozen=True)
class BatchSpec:
    """C{routes[].batch: {target_path, max_size: 32, max_wait: 5ms, envelope: null, on_error: fail}}"""

    target_path: str
    max_size: int = 32
    max_wait: float = 0.005
    envelope: str | None = None
    on_error: str = "fail"


@dataclass(frozen=True)
class CoalesceSpec:
    """C{routes[].coalesce: true} or C{{headers: [...]}}; the header names lower-case bytes."""

    headers: tuple[bytes, ...]


@dataclass(frozen=True)
class RouteConcurrency:
    """A route's C{batch}, C{coalesce} and C{idempotent_post} (each off when absent)."""

    batch: BatchSpec | None = None
    coalesce: CoalesceSpec | None = None
    idempotent_post: bool = False
