# -*- test-case-name: tests.test_protection -*-
"""
Admission in the forward path: one permit per request, taken before the lease.

L{AdmissionForwarder} sits between a route's other wrappers (cache,
coalescing, batching) and its attempt loop.  It asks the upstream's
L{txgateway.concurrency.queue.AdmissionController} for a permit in the
request's priority class and only then lets the attempt loop choose a
target, so:

  - a request over the limit waits in the queue, and is shed (503 with
    C{Retry-After}, reason C{shed_queue_full}, C{shed_max_wait} or
    C{shed_stopped}) before any backend sees it;
  - a client that goes away while queued cancels the awaited Deferred,
    which takes it out of the queue (the route leaf cancels the forward on
    the client's C{onGone});
  - one permit covers every attempt of the request: a retry is not a new
    request at the backend (the failed attempt's slot is free again), and
    queueing it again would make it wait twice;
  - the access-log line of an admitted request has C{queue_ms}: how long it
    waited for its permit (0.0 when let in at once);
  - the limit learns from the answering attempt's time to the response
    head (the lease's C{seconds}), so a slow client reading a long body does
    not look like a slow backend, and from its verdict (a timeout, 429, 503
    or 504 is overload: C{dropped}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from txgateway.attempts import UpstreamFailure
from txgateway.concurrency.interfaces import DROPPED, IGNORED, Outcome
from txgateway.concurrency.queue import Shed, outcomeFor
from txgateway.interfaces import IForwarder

if TYPE_CHECKING:
    from txgateway.concurrency.interfaces import IPermit
    from txgateway.concurrency.queue import AdmissionController
    from txgateway.concurrency.specs import PrioritySpec
    from txgateway.context import RequestContext

__all__ = ["AdmissionForwarder", "failureOutcome"]

#: UpstreamFailure reasons that mean the backend is overloaded.
_OVERLOADED = frozenset({"timeout", "status_429", "status_503", "status_504"})


def failureOutcome(reason: str) -> Outcome:
    """What an attempt loop's failure (its C{UpstreamFailure.reason}) tells a limit."""
    return DROPPED if reason in _OVERLOADED else IGNORED


@implementer(IForwarder)
class AdmissionForwarder:
    """C{inner} (the attempt loop), behind the upstream's admission controller."""

    __slots__ = ("changed", "controller", "inner", "priority", "upstream")

    def __init__(self, inner: IForwarder, controller: AdmissionController, priority: PrioritySpec,
                 upstream: str, changed: Callable[[], None] | None = None) -> None:
        self.inner = inner
        self.controller = controller
        self.priority = priority
        self.upstream = upstream
        self.changed = changed  # refreshes the upstream's limit / in-flight / queue gauges

    async def fetch(self, context: RequestContext, method: bytes | None = None,
                    extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        route = context.route
        cls = self.priority.classOf(route.name if route is not None else None, context.identity)
        d = self.controller.acquire(cls)
        changed = self.changed
        if changed is not None and not d.called:
            changed()  # it queued: the queue gauge moves
        try:
            permit = await d
        except Shed as e:
            context.upstream = self.upstream
            context.outcome = "shed_" + e.reason
            raise UpstreamFailure(503, context.outcome, e.retryAfter) from None
        finally:
            if changed is not None:
                changed()  # granted, shed, or left the queue (the client went away)
        context.note("queue_ms", round(permit.waited * 1000, 3))  # the access log: how long it waited (0.0: not)
        try:
            exchange = await self.inner.fetch(context, method, extraHeaders)
        except UpstreamFailure as e:
            self._release(permit, failureOutcome(e.reason), None)
            raise
        except BaseException:
            self._release(permit, IGNORED, None)
            raise
        return _Admitted(exchange, permit, self)

    def _release(self, permit: IPermit, outcome: Outcome, latency: float | None) -> None:
        permit.release(outcome, latency)
        if self.changed is not None:
            self.changed()


class _Admitted:
    """The inner exchange; ending it gives the permit back with the attempt's verdict and time."""

    __slots__ = ("inner", "owner", "permit", "response")

    def __init__(self, inner: Any, permit: IPermit, owner: AdmissionForwarder) -> None:
        self.inner = inner
        self.response = inner.response
        self.permit = permit
        self.owner = owner

    def finish(self, complete: bool, clientGone: bool = False) -> None:
        try:
            self.inner.finish(complete, clientGone)
        finally:
            verdict = getattr(self.inner, "verdict", None)
            seconds = getattr(self.inner, "seconds", -1.0)
            outcome = outcomeFor([verdict]) if verdict is not None else IGNORED
            self.owner._release(self.permit, outcome, seconds if seconds >= 0 else None)
