# -*- test-case-name: tests.test_discovery_dns,tests.test_discovery_files -*-
"""
What every discovery source shares: listeners, change detection, counters.

A source computes a candidate answer and hands it to L{SourceBase.publish};
this module decides whether that is a change (sorted, deduplicated, compared
with the current set), applies the C{on_empty} rule, counts, and calls the
listeners.  Keeping it here means the DNS and file sources differ only in
how they find an answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from txgateway.discovery.interfaces import DiscoveredTarget, Listener, SourceCounters, Targets

__all__ = ["Observer", "SourceBase", "canonical"]

log = Logger(namespace="txgateway.discovery")

#: Outcomes passed to an C{observe} callback after every refresh.
CHANGED, UNCHANGED, EMPTY, FAILED = "changed", "unchanged", "empty", "failed"

Observer = Callable[[str], None]


def canonical(targets: Iterable[DiscoveredTarget]) -> Targets:
    """
    Sorted, one entry per URL: the form compared for changes.

    Two records for the same address and port (two SRV records naming
    hosts with one address, say) become one target whose weight is their
    sum, so its share of traffic is what the records together asked for.
    """
    byURL: dict[str, DiscoveredTarget] = {}
    for t in targets:
        seen = byURL.get(t.url)
        if seen is None:
            byURL[t.url] = t
        else:
            byURL[t.url] = DiscoveredTarget(t.scheme, t.host, t.port, seen.weight + t.weight, t.source)
    return tuple(sorted(byURL.values()))


class SourceBase(Service):
    """
    The listener and bookkeeping half of an L{ITargetSource}.

    C{onEmpty} is C{keep} (an empty answer is ignored: the last good set
    stays, as for a failure) or C{drop} (the targets become none).  Before
    the first good answer there is nothing to keep either way.
    """

    kind = "static"
    description = "a target source"

    def __init__(self, onEmpty: str, observe: Observer | None = None) -> None:
        if onEmpty not in ("keep", "drop"):
            raise ValueError(f"on_empty must be 'keep' or 'drop', not {onEmpty!r}")
        self.onEmpty = onEmpty
        self.observe = observe
        self.targets: Targets = ()
        self.counters = SourceCounters()
        self._listeners: list[Listener] = []
        self._ready = False
        self._readyWaiters: list[Deferred[None]] = []
        self._failing = False
        self._empty = False

    # -- listeners

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def whenReady(self) -> Deferred[None]:
        if self._ready:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._readyWaiters.append(d)
        return d

    # -- outcomes, called by the concrete source after each refresh

    def publish(self, answer: Iterable[DiscoveredTarget], now: float) -> str:
        """A good answer arrived: adopt it if it differs.  Returns the outcome."""
        self.counters.refreshes += 1
        self.counters.lastSuccessAt = now
        if self._failing:
            self._failing = False
            log.info("{source}: answering again after {n} failed refreshes",
                     source=self.description, n=self.counters.consecutiveFailures)
        self.counters.consecutiveFailures = 0
        targets = canonical(answer)
        wasEmpty, self._empty = self._empty, not targets
        if not targets:
            self.counters.empty += 1
            if self.onEmpty == "keep":
                # Once per empty spell, not at every refresh while it lasts.
                if self.targets and not wasEmpty:
                    log.warn("{source}: the answer lists no target; keeping the last {n} (on_empty: keep)",
                             source=self.description, n=len(self.targets))
                return self._done(EMPTY)
            if self.targets:
                log.warn("{source}: the answer lists no target; dropping all {n} (on_empty: drop)",
                         source=self.description, n=len(self.targets))
        if targets == self.targets:
            return self._done(EMPTY if not targets else UNCHANGED)
        self.targets = targets
        self.counters.changes += 1
        log.info("{source}: {n} target(s): {urls}", source=self.description, n=len(targets),
                 urls=" ".join(t.url for t in targets))
        for listener in list(self._listeners):
            try:
                listener(targets)
            except Exception:
                log.failure("{source}: a listener failed on a target change", source=self.description)
        return self._done(CHANGED if targets else EMPTY)

    def fail(self, reason: str, everyTime: bool = False) -> str:
        """
        A refresh failed: keep the last good set, count, and log.  A DNS
        outage is logged once per streak (every retry would repeat it);
        C{everyTime} logs each one, for a file whose every bad edit is news.
        """
        self.counters.refreshes += 1
        self.counters.failures += 1
        self.counters.lastError = reason
        self.counters.consecutiveFailures += 1
        if everyTime:
            self._failing = True
            log.error("{source}: {reason}; keeping the last {n} target(s)",
                      source=self.description, reason=reason, n=len(self.targets))
        elif not self._failing:
            self._failing = True
            log.warn("{source}: refresh failed ({reason}); keeping the last {n} target(s)",
                     source=self.description, reason=reason, n=len(self.targets))
        else:
            log.debug("{source}: refresh failed again ({reason})", source=self.description, reason=reason)
        return self._done(FAILED)

    def _done(self, outcome: str) -> str:
        if not self._ready:
            self._ready = True
            waiters, self._readyWaiters = self._readyWaiters, []
            for d in waiters:
                d.callback(None)
        if self.observe is not None:
            try:
                self.observe(outcome)
            except Exception:
                log.failure("{source}: the refresh observer failed", source=self.description)
        return outcome
