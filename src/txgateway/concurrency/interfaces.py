# -*- test-case-name: tests.test_concurrency_queue -*-
"""
What a concurrency limit and an admission permit promise.

The admission controller (L{txgateway.concurrency.queue}) asks a limit how
many requests may be at the backend at once and feeds it what each one
measured; the limit may be fixed or learnt from latency.  The cluster (after
the core restructuring) sees only a L{IPermit}: what it must give back, once,
with the outcome of the attempt.

Kept apart from L{txgateway.interfaces} while the core is being
restructured; the names stay when they move there.
"""

from __future__ import annotations

from typing import Literal

from zope.interface import Attribute, Interface

__all__ = ["DROPPED", "IGNORED", "SUCCESS", "IConcurrencyLimit", "IPermit", "Outcome"]

#: How a request that held a permit ended, as a limit needs to know it:
#: C{success} (an answer the backend produced in its own time: any 2xx-4xx),
#: C{dropped} (the backend showed overload: a timeout, a 503/429, a reset),
#: C{ignored} (says nothing about the backend: the client went away, the
#: gateway gave up for its own reasons).
Outcome = Literal["success", "dropped", "ignored"]
SUCCESS: Outcome = "success"
DROPPED: Outcome = "dropped"
IGNORED: Outcome = "ignored"


class IConcurrencyLimit(Interface):
    """
    How many requests may be in flight to one backend at once.

    A limit never keeps a timer: it changes only when told a sample, reading
    the time from its injected clock, so the admission controller can read
    C{limit} after every release and admit waiters at once.
    """

    limit = Attribute("The current limit, a whole number >= 1.")

    def onSample(latency: float, outcome: Outcome, inFlight: int) -> None:
        """
        One request finished: it held its permit for C{latency} seconds and
        ended with C{outcome}; C{inFlight} requests (itself included) held
        permits when it ended.  Must not raise.
        """


class IPermit(Interface):
    """
    The right to send one request to the backend now, until released.

    Released exactly once: a second C{release} is a no-op, so every path
    that may end a request (answer, error, client gone, timeout) can call it
    without counting twice.
    """

    priority = Attribute("The priority class it was granted in.")
    waited = Attribute("Seconds it spent queued before being granted (0.0 if granted at once).")

    def release(outcome: Outcome = "success", latency: float | None = None) -> None:
        """
        Give the slot back and tell the limit how the request went and how
        long the backend took (C{latency}; by default the time from the
        grant to this call).
        """
