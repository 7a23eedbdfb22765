# -*- test-case-name: tests.test_concurrency_queue -*-
"""
From specs to running objects: the one place that knows which class a spec means.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

from txgateway.concurrency.interfaces import IConcurrencyLimit
from txgateway.concurrency.limits import FixedLimit, GradientLimit
from txgateway.concurrency.queue import AdmissionController, ShedObserver, WaitObserver
from txgateway.concurrency.specs import AdaptiveSpec, ConcurrencySpec, FixedSpec

__all__ = ["makeAdmission", "makeLimit", "rebuildAdmission"]


def makeLimit(spec: FixedSpec | AdaptiveSpec, clock: IReactorTime) -> IConcurrencyLimit:
    if isinstance(spec, FixedSpec):
        return FixedLimit(spec.limit)
    return GradientLimit(clock, minLimit=spec.min, maxLimit=spec.max, initial=spec.initial,
                         tolerance=spec.tolerance, window=spec.window, probeInterval=spec.probe_interval)


def makeAdmission(spec: ConcurrencySpec, clock: IReactorTime, onWait: WaitObserver | None = None,
                  onShed: ShedObserver | None = None) -> AdmissionController:
    """The controller of one upstream; C{onWait}/C{onShed} feed its metrics."""
    return AdmissionController(makeLimit(spec.limit, clock), clock, queueSize=spec.queue.size,
                               maxWait=spec.queue.max_wait, classes=spec.priority.classes,
                               onWait=onWait, onShed=onShed)


def rebuildAdmission(previous: tuple[ConcurrencySpec, AdmissionController] | None, spec: ConcurrencySpec,
                     clock: IReactorTime, onWait: WaitObserver | None = None,
                     onShed: ShedObserver | None = None,
                     newLimit: Callable[[], IConcurrencyLimit] | None = None) -> AdmissionController:
    """
    The controller for C{spec} on a reload, given the running one and its
    spec: the same controller when nothing changed; when only the queue or
    the classes changed, a new controller around the same limit (an
    adaptive limit keeps what it learnt); otherwise a new limit too.  A new
    controller takes over the old one's permits and waiters
    (L{AdmissionController.takeOver}).  C{newLimit} makes the limit when a
    new one is needed (default: from C{spec.limit}; per-target limits make
    their sum instead).
    """
    make = newLimit or (lambda: makeLimit(spec.limit, clock))
    if previous is None:
        return AdmissionController(make(), clock, queueSize=spec.queue.size, maxWait=spec.queue.max_wait,
                                   classes=spec.priority.classes, onWait=onWait, onShed=onShed)
    oldSpec, old = previous
    if oldSpec == spec:
        return old
    same = oldSpec.limit == spec.limit and oldSpec.per_target == spec.per_target
    limit = old.limiter if same else make()
    new = AdmissionController(limit, clock, queueSize=spec.queue.size, maxWait=spec.queue.max_wait,
                              classes=spec.priority.classes, onWait=onWait, onShed=onShed)
    new.takeOver(old)
    return new
