# -*- test-case-name: tests.test_concurrency_queue -*-
"""
Admission: at most C{limit} requests at the backend, the rest wait or are shed.

L{AdmissionController.acquire} answers with a L{Permit} at once while fewer
than C{limit} permits are held; otherwise the request waits in a bounded
first-in-first-out queue of its priority class, and every release hands the
freed slot to the oldest waiter of the highest class that has one.  A
request is shed, before it reaches the backend, with L{Shed} (the gateway's
503 with C{Retry-After}) when:

  - C{queue_full}: its class's queue already holds C{queueSize} waiters (a
    queue size of 0 sheds at once at the limit);
  - C{max_wait}: it waited C{maxWait} seconds without a slot;
  - C{stopped}: the controller was stopped (a reload replaced it, or
    shutdown) while it waited.

Each class has its own queue of C{queueSize}, so free traffic filling its
queue never sheds a paid request; a paid request is served before any free
one that waits.  A waiter whose Deferred is cancelled (the client went away)
leaves its queue at once and is counted in C{cancelled}, not as shed.

The permit measures from the grant to C{release(outcome)} and gives that to
the limit (L{txgateway.concurrency.limits}), which is how an adaptive limit
learns; released twice, it counts once.

Numbers for metrics are plain attributes, read at scrape time (C{limit},
C{inFlight}, C{queued}, C{shed} per reason, C{admitted}, C{cancelled});
events that a histogram needs are given to an optional observer: the wait
of every granted permit and every shed with its reason.

A timer runs only per waiter (its C{maxWait}); a request admitted at once
allocates its permit and an already-fired Deferred, nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from txgateway.concurrency.interfaces import DROPPED, IGNORED, SUCCESS, IConcurrencyLimit, IPermit, Outcome

__all__ = ["MAX_WAIT", "QUEUE_FULL", "STOPPED", "AdmissionController", "Permit", "Shed", "outcomeFor"]

QUEUE_FULL = "queue_full"
MAX_WAIT = "max_wait"
STOPPED = "stopped"

#: C{onWait(priority class, seconds queued)} for every granted permit (0.0
#: when granted at once): the wait-time histogram.
WaitObserver = Callable[[str, float], None]
#: C{onShed(priority class, reason)} for every shed request: the shed counter.
ShedObserver = Callable[[str, str], None]


#: Attempt verdicts (the attempt loop's status codes and failure names) that
#: mean the backend is overloaded: a limit must come down.
_OVERLOAD = frozenset({"timeout", 429, 503, 504})


def outcomeFor(verdicts: Iterable[str | int]) -> Outcome:
    """
    What a request's attempts (their verdicts in order, as the cluster's
    lease records them) tell a limit.  Any sign of overload (a response
    timeout, 429, 503, 504) is C{dropped}, even if a retry then succeeded;
    otherwise an answer from the backend (any status below 500) is
    C{success}; the rest (the client went away, a refused connection, a
    reset, a 500) says nothing about load and is C{ignored}, as health
    checks and breakers deal with broken targets.
    """
    last: str | int | None = None
    for verdict in verdicts:
        if verdict in _OVERLOAD:
            return DROPPED
        last = verdict
    if isinstance(last, int) and last < 500:
        return SUCCESS
    return IGNORED


class Shed(Exception):
    """
    The request was not admitted: the gateway answers 503 with
    C{Retry-After: ceil(retryAfter)} and the reason in its error body.
    """

    def __init__(self, reason: str, retryAfter: float, priority: str) -> None:
        super().__init__(f"shed ({reason}): the backend is at its concurrency limit")
        self.reason = reason
        self.retryAfter = retryAfter
        self.priority = priority


@implementer(IPermit)
class Permit:
    """One slot at the backend; L{release} gives it back exactly once."""

    __slots__ = ("_controller", "grantedAt", "priority", "released", "waited")

    def __init__(self, controller: AdmissionController, priority: str, grantedAt: float, waited: float) -> None:
        self._controller = controller
        self.priority = priority
        self.grantedAt = grantedAt
        self.waited = waited
        self.released = False

    def release(self, outcome: Outcome = SUCCESS, latency: float | None = None) -> None:
        """
        Give the slot back.  The limit hears C{latency} when given (the
        attempt loop passes the backend's time to the response head, which a
        slow client reading a long body does not inflate), else the time
        from the grant to now.
        """
        if self.released:
            return
        self.released = True
        self._controller._release(self, outcome, latency)


class _Waiter:
    __slots__ = ("deferred", "enqueuedAt", "owner", "priority", "timer")

    def __init__(self, owner: AdmissionController, priority: str, enqueuedAt: float) -> None:
        self.owner = owner  # the controller whose queue holds it (changes on takeOver)
        self.priority = priority
        self.enqueuedAt = enqueuedAt
        self.deferred: Deferred[Permit] | None = None
        self.timer: IDelayedCall | None = None


class AdmissionController:
    """
    The gate in front of one backend (an upstream, or later one target).

    C{classes} names the priority classes from highest to lowest; a request
    of an unknown class (or none) is queued in the lowest.
    """

    def __init__(self, limit: IConcurrencyLimit, clock: IReactorTime, *, queueSize: int = 100,
                 maxWait: float = 1.0, classes: Sequence[str] = ("default",),
                 onWait: WaitObserver | None = None, onShed: ShedObserver | None = None) -> None:
        if not classes:
            raise ValueError("at least one priority class")
        self.limiter = limit
        self.clock = clock
        self.queueSize = queueSize
        self.maxWait = maxWait
        self.classes = tuple(classes)
        self._queues: dict[str, deque[_Waiter]] = {c: deque() for c in self.classes}
        self._order = [self._queues[c] for c in self.classes]
        self._lowest = self.classes[-1]
        self._onWait = onWait
        self._onShed = onShed
        self._draining = False
        self._successor: AdmissionController | None = None
        self.stopped = False
        self.inFlight = 0
        self.queued = 0
        self.admitted = 0
        self.cancelled = 0
        self.shed: dict[str, int] = {QUEUE_FULL: 0, MAX_WAIT: 0, STOPPED: 0}
        self.meanHold = 0.0  # exponentially weighted seconds a permit is held: the Retry-After estimate

    @property
    def limit(self) -> int:
        return int(self.limiter.limit)

    @property
    def current(self) -> AdmissionController:
        """The controller now in charge: this one, or the one a reload handed its queue to."""
        controller = self
        while controller._successor is not None:
            controller = controller._successor
        return controller

    def queuedByClass(self) -> dict[str, int]:
        return {c: len(q) for c, q in self._queues.items()}

    def acquire(self, priority: str | None = None) -> Deferred[Permit]:
        """
        A permit, now or when a slot frees; fails with L{Shed}.  Cancel the
        Deferred to leave the queue (an already granted permit must be
        released instead).
        """
        if self._successor is not None:
            return self._successor.acquire(priority)
        cls = priority if priority in self._queues else self._lowest
        if self.stopped:
            return self._shedNow(STOPPED, cls)
        if self.inFlight < self.limiter.limit and not self.queued:
            self.inFlight += 1
            self.admitted += 1
            if self._onWait is not None:
                self._onWait(cls, 0.0)
            return succeed(Permit(self, cls, self.clock.seconds(), 0.0))
        queue = self._queues[cls]
        if len(queue) >= self.queueSize:
            return self._shedNow(QUEUE_FULL, cls)
        waiter = _Waiter(self, cls, self.clock.seconds())
        d: Deferred[Permit] = Deferred(lambda _: waiter.owner._cancel(waiter))
        waiter.deferred = d
        waiter.timer = self.clock.callLater(self.maxWait, self._expire, waiter)
        queue.append(waiter)
        self.queued += 1
        return d

    def retryAfter(self) -> float:
        """Seconds until a newcomer could expect a slot: the queue ahead, drained at the current pace."""
        hold = self.meanHold or self.maxWait or 1.0
        return hold * (self.queued + 1) / max(1, self.limiter.limit)

    def stop(self) -> None:
        """Shed every waiter (C{stopped}) and every later request; permits held are still released here."""
        self.stopped = True
        for queue in self._order:
            while queue:
                w = queue.popleft()
                self.queued -= 1
                self._shedWaiter(w, STOPPED)

    def takeOver(self, old: AdmissionController) -> None:
        """
        Carry on from C{old}, whose spec a reload changed: its permits in
        flight count here (and release here), its waiters move to this
        queue in their order, keeping their deadline (the shorter of the old
        and new C{maxWait} from when they came), and a request that still
        reaches C{old} is passed on.  So a reload neither sheds the queue
        nor lets the backend see two limits' worth of requests.  Waiters
        of a class this controller does not have join its lowest; those
        over its queue size are shed (C{queue_full}).
        """
        if old is self:
            return
        old._successor = self
        self.inFlight += old.inFlight
        old.inFlight = 0
        now = self.clock.seconds()
        for queue in old._order:
            while queue:
                w = queue.popleft()
                old.queued -= 1
                if w.timer is not None and w.timer.active():
                    w.timer.cancel()
                w.owner = self
                w.priority = w.priority if w.priority in self._queues else self._lowest
                mine = self._queues[w.priority]
                if len(mine) >= self.queueSize:
                    self._shedWaiter(w, QUEUE_FULL)
                    continue
                deadline = w.enqueuedAt + min(old.maxWait, self.maxWait)
                w.timer = self.clock.callLater(max(0.0, deadline - now), self._expire, w)
                mine.append(w)
                self.queued += 1
        self._drain()

    # -- internals

    def _shedNow(self, reason: str, cls: str) -> Deferred[Permit]:
        self.shed[reason] = self.shed.get(reason, 0) + 1
        if self._onShed is not None:
            self._onShed(cls, reason)
        d: Deferred[Permit] = Deferred()
        d.errback(Shed(reason, self.retryAfter(), cls))
        return d

    def _shedWaiter(self, w: _Waiter, reason: str) -> None:
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        self.shed[reason] = self.shed.get(reason, 0) + 1
        if self._onShed is not None:
            self._onShed(w.priority, reason)
        assert w.deferred is not None
        w.deferred.errback(Shed(reason, self.retryAfter(), w.priority))

    def _expire(self, w: _Waiter) -> None:
        w.timer = None
        self._queues[w.priority].remove(w)
        self.queued -= 1
        self._shedWaiter(w, MAX_WAIT)

    def _cancel(self, w: _Waiter) -> None:
        # Called by Deferred.cancel while the waiter is still queued (a
        # granted or shed waiter's Deferred has fired, so cancel is a no-op).
        if w.timer is not None and w.timer.active():
            w.timer.cancel()
        self._queues[w.priority].remove(w)
        self.queued -= 1
        self.cancelled += 1
        assert w.deferred is not None
        w.deferred.errback(CancelledError("client went away while queued"))

    def _release(self, permit: Permit, outcome: Outcome, latency: float | None) -> None:
        if self._successor is not None:
            self._successor._release(permit, outcome, latency)
            return
        now = self.clock.seconds()
        held = now - permit.grantedAt
        if outcome != IGNORED:
            self.meanHold = held if not self.meanHold else 0.9 * self.meanHold + 0.1 * held
        inFlight = self.inFlight
        self.inFlight -= 1
        self.limiter.onSample(held if latency is None else latency, outcome, inFlight)
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return  # a grant's callback released a permit: the loop below goes on
        self._draining = True
        try:
            while self.queued and self.inFlight < self.limiter.limit:
                w = next(q for q in self._order if q).popleft()
                self.queued -= 1
                if w.timer is not None and w.timer.active():
                    w.timer.cancel()
                now = self.clock.seconds()
                self.inFlight += 1
                self.admitted += 1
                waited = now - w.enqueuedAt
                if self._onWait is not None:
                    self._onWait(w.priority, waited)
                assert w.deferred is not None
                w.deferred.callback(Permit(self, w.priority, now, waited))
        finally:
            self._draining = False
