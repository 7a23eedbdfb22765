# -*- test-case-name: tests.test_canary_mirror -*-
"""
Shadow traffic: copies of a route's requests sent to another upstream, off the request path.

The forward path offers a copy (L{Mirror.submit}) once the primary's
request was sent.  Nothing here can delay or fail the primary:

  - C{submit} only decides and enqueues; the copy is sent from a
    C{callLater(0)} on the injected clock, in a later reactor turn, so even
    connecting to the mirror costs the primary's turn nothing;
  - the queue is bounded (C{mirror.queue}): a copy that does not fit is
    dropped and counted, never waited for;
  - at most C{mirror.concurrency} copies are in flight; a slow mirror
    fills them and the queue, and further copies are dropped;
  - each copy has its own C{mirror.timeout} (from when it was queued: a
    copy that waited that long is dropped when its turn comes, not sent
    late), and is never retried;
  - a body over C{mirror.max_body} is not copied (skipped and counted);
  - a mirror request is not a client request: it passes no route filter,
    so it consumes no rate limit and cannot be refused by one.

Counts (per route, in L{Mirror.report} and, through C{observe}, in
metrics): C{sent}, C{dropped} (queue full, or waited past the timeout),
C{skipped} (body too large), C{failed} and C{timed_out} (of those sent),
C{compared}, C{mismatched}, and C{not_compared} (both answered, but a body
was over C{max_body}).

With C{compare}, the ticket C{submit} returns takes the primary's answer
(the forward path keeps the first C{max_body} bytes of the primary's body
as it relays them); when both answers are in, they are compared
(L{txgateway.canary.compare.Comparer}) and a mismatch is kept as a redacted
sample.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace
from random import Random
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from txgateway.canary.compare import Comparer, SampleRing
from txgateway.canary.interfaces import Answer, IMirror, MirrorRequest, MirrorSend
from txgateway.canary.specs import MirrorSpec

__all__ = ["OUTCOMES", "Mirror", "MirrorTicket"]

#: What C{observe} is called with, one call per event.
OUTCOMES = ("sent", "dropped", "skipped", "failed", "timed_out", "compared", "mismatched", "not_compared")


class MirrorTicket:
    """
    One mirrored request, waiting for both answers.  The forward path calls
    L{primaryAnswered} (or L{primaryFailed}) once; the mirror side fills in
    its own answer.  Without C{compare} both are no-ops.
    """

    __slots__ = ("mirror", "request", "queuedAt", "primary", "answer", "primaryDone", "mirrorDone")

    def __init__(self, mirror: Mirror, request: MirrorRequest, queuedAt: float) -> None:
        self.mirror: Mirror | None = mirror
        self.request = request
        self.queuedAt = queuedAt
        self.primary: Answer | None = None
        self.answer: Answer | None = None
        self.primaryDone = False
        self.mirrorDone = False

    def primaryAnswered(self, answer: Answer) -> None:
        """The primary's answer (its body cut at C{max_body}, and C{truncated} then)."""
        if not self.primaryDone:
            self.primaryDone = True
            self.primary = answer
            self._settle()

    def primaryFailed(self) -> None:
        """The primary gave no answer: nothing to compare with."""
        if not self.primaryDone:
            self.primaryDone = True
            self._settle()

    def _mirrorDone(self, answer: Answer | None) -> None:
        self.mirrorDone = True
        self.answer = answer
        self._settle()

    def _settle(self) -> None:
        mirror = self.mirror
        if mirror is not None and self.primaryDone and self.mirrorDone:
            self.mirror = None  # settled once
            if self.primary is not None and self.answer is not None:
                mirror._compare(self.request, self.primary, self.answer)


@implementer(IMirror)
class Mirror:
    """One route's mirror (see the module docstring)."""

    def __init__(self, route: str, spec: MirrorSpec, send: MirrorSend, clock: IReactorTime, rng: Random,
                 observe: Callable[[str], None] | None = None) -> None:
        self.route = route
        self.upstream = spec.upstream
        self.spec = spec
        self.send = send
        self.clock = clock
        self.random = rng
        self.observe = observe
        self.comparer = Comparer(spec.compare) if spec.compare is not None else None
        self.samples = SampleRing(spec.compare.samples if spec.compare is not None else 0)
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.lastError: str | None = None
        self.inFlight = 0
        self._queue: deque[MirrorTicket] = deque()
        self._sending: set[Deferred[Any]] = set()
        self._pumpCall: IDelayedCall | None = None
        self._stopped = False
        self._fraction = spec.percent / 100.0

    def _count(self, outcome: str) -> None:
        self.counts[outcome] += 1
        if self.observe is not None:
            self.observe(outcome)

    def sample(self) -> bool:
        """
        Whether this request is in the mirrored C{percent}: asked first by
        the forward path, so that a request not sampled costs no copy.
        """
        if self._stopped or self._fraction <= 0.0:
            return False
        return self._fraction >= 1.0 or self.random.random() < self._fraction

    def submit(self, request: MirrorRequest, bodyLength: int | None = None,
               sampled: bool = False) -> MirrorTicket | None:
        if not sampled and not self.sample():
            return None
        if self._stopped:
            return None
        if (len(request.body) if bodyLength is None else bodyLength) > self.spec.max_body:
            self._count("skipped")
            return None
        if len(self._queue) >= self.spec.queue:
            self._count("dropped")
            return None
        ticket = MirrorTicket(self, request, self.clock.seconds())
        self._queue.append(ticket)
        if self._pumpCall is None:
            self._pumpCall = self.clock.callLater(0, self._pump)
        return ticket

    def _pump(self) -> None:
        self._pumpCall = None
        now = self.clock.seconds()
        queue = self._queue
        while queue and self.inFlight < self.spec.concurrency and not self._stopped:
            ticket = queue.popleft()
            if now - ticket.queuedAt >= self.spec.timeout:
                # It waited its whole timeout for a slot: the mirror is slow, and a late copy helps nobody.
                self._count("dropped")
                ticket._mirrorDone(None)
                continue
            self._start(ticket, now)

    def _start(self, ticket: MirrorTicket, now: float) -> None:
        request = ticket.request
        if self.comparer is None:
            ticket.request = _EMPTY  # nothing will be compared: let the body go as soon as it is sent
        elif request.body:
            ticket.request = replace(request, body=b"")  # a sample shows the request line and headers only
        self.inFlight += 1
        self._count("sent")
        try:
            d = self.send(request)
        except Exception:
            d = fail()
        d.addTimeout(max(0.0, self.spec.timeout - (now - ticket.queuedAt)), self.clock)
        self._sending.add(d)
        d.addCallbacks(ticket._mirrorDone, self._failed, errbackArgs=(ticket,))
        d.addBoth(self._done, d)

    def _failed(self, failure: Failure, ticket: MirrorTicket) -> None:
        if failure.check(TimeoutError):
            self._count("timed_out")
            self.lastError = f"no answer within {self.spec.timeout:g}s"
        elif failure.check(CancelledError) and self._stopped:
            pass  # stop(): neither a failure of the mirror nor anything to count
        else:
            self._count("failed")
            self.lastError = failure.getErrorMessage() or failure.type.__name__  # type: ignore[union-attr]
        ticket._mirrorDone(None)

    def _done(self, result: object, d: Deferred[Any]) -> None:
        self.inFlight -= 1
        self._sending.discard(d)
        if self._queue and self._pumpCall is None and not self._stopped:
            self._pumpCall = self.clock.callLater(0, self._pump)

    def _compare(self, request: MirrorRequest, primary: Answer, mirror: Answer) -> None:
        comparer = self.comparer
        if comparer is None:
            return
        if not comparer.comparable(primary, mirror):
            self._count("not_compared")
            return
        self._count("compared")
        differences = comparer.differences(primary, mirror)
        if differences:
            self._count("mismatched")
            self.samples.add(comparer.sample(request, primary, mirror, differences, self.clock.seconds()))

    def continueFrom(self, old: Mirror) -> None:
        """
        Carry the counts and samples of the previous runtime's mirror of this
        route over a reload, so C{GET /api/mirrors} does not restart from
        zero (C{old} is then stopped by its owner).  Not when the mirror
        upstream changed: those counts were about another version.
        """
        if old.upstream != self.upstream:
            return
        for outcome, n in old.counts.items():
            self.counts[outcome] += n
        self.lastError = self.lastError or old.lastError
        for sample in old.samples.items():
            self.samples.add(sample)

    def stop(self) -> None:
        self._stopped = True
        if self._pumpCall is not None:
            if self._pumpCall.active():
                self._pumpCall.cancel()
            self._pumpCall = None
        self._queue.clear()
        for d in list(self._sending):
            d.cancel()

    def report(self) -> dict[str, Any]:
        c = self.counts
        return {
            "upstream": self.upstream,
            "percent": self.spec.percent,
            "sent": c["sent"],
            "dropped": c["dropped"],
            "skipped": c["skipped"],
            "failed": c["failed"],
            "timed_out": c["timed_out"],
            "compared": c["compared"],
            "mismatched": c["mismatched"],
            "not_compared": c["not_compared"],
            "queued": len(self._queue),
            "in_flight": self.inFlight,
            "last_error": self.lastError,
            "samples": self.samples.items(),
        }


_EMPTY = MirrorRequest(b"", b"", ())
