# -*- test-case-name: tests.test_discovery_dns,tests.test_discovery_files -*-
"""
What a discovery source promises, and the value it delivers.

A source (DNS, a watched file; later perhaps the Kubernetes API) is a
Twisted service that knows the current targets of one C{targets:} item and
tells a listener when they change.  The cluster consumes sources only
through L{ITargetSource}, so a new kind of discovery plugs in without the
balancers or the admin API knowing where targets come from.

This module is kept apart from L{txgateway.interfaces} while the core is
being restructured; it may move there once that settles (the names stay).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import IService
from zope.interface import Attribute

__all__ = ["DiscoveredTarget", "ITargetSource", "Listener", "SourceCounters", "Targets"]


@dataclass(frozen=True, order=True)
class DiscoveredTarget:
    """
    One target as a source sees it: where to connect and how much traffic.

    Ordered (by scheme, host, port, weight, source) so a source can sort
    its answer and compare it with the last one: the same records in
    another order are no change.  C{source} is the kind of source that
    found it (C{dns}, C{file}), the value the admin API lists.
    """

    scheme: str
    host: str
    port: int
    weight: int = 1
    source: str = "static"

    @property
    def url(self) -> str:
        """C{scheme://host:port}, with an IPv6 host in brackets: the key Endpoints are kept by."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def hostPort(self) -> str:
        """C{host:port} as the admin API's C{/targets/{host:port}/...} paths name a target."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


Targets = tuple[DiscoveredTarget, ...]
Listener = Callable[[Targets], None]


@dataclass
class SourceCounters:
    """
    What a source has done, for metrics and the status page.

    Plain counters that only grow (a Prometheus collector reads them at
    scrape time, so the source needs no registry of its own).
    """

    refreshes: int = 0          # resolutions / file reads attempted
    failures: int = 0           # of which failed (the last good set was kept)
    empty: int = 0              # of which answered with no target at all
    changes: int = 0            # listener calls: the target set really changed
    lastError: str | None = None
    consecutiveFailures: int = 0  # failures since the last good answer
    lastSuccessAt: float | None = None  # clock.seconds() of the last good answer


class ITargetSource(IService):
    """
    The targets of one discovery item, kept current.

    C{startService} begins discovering at once (the first answer is asked
    for immediately) and C{stopService} stops every timer and cancels any
    query in flight; neither blocks the reactor.  A failed refresh keeps
    the last good set.
    """

    kind = Attribute("The source label of its targets: 'dns' or 'file'.")
    description = Attribute("Human text naming what is watched, for logs (e.g. 'dns api.default.svc port 8000').")
    targets = Attribute("The current L{Targets}, sorted and without duplicates; () until the first good answer.")
    counters = Attribute("The L{SourceCounters} of this source.")

    def subscribe(listener: Listener) -> Callable[[], None]:
        """
        Call C{listener(targets)} every time the set of targets changes
        (never for an answer equal to the current set).  Returns a function
        that unsubscribes.  A listener that raises is logged and does not
        stop the source or the other listeners.
        """

    def whenReady() -> object:
        """
        A Deferred that fires (with None) once the first refresh has
        finished, good or bad: what start-up may wait for before it calls
        the upstream ready.  Never fails.
        """

    def refresh() -> object:
        """
        Refresh now (outside the schedule); a Deferred firing with None
        when done.  Never fails: errors are counted and logged.
        """
