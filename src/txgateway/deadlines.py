# -*- test-case-name: tests.test_forwarder -*-
"""
Deadlines: how long the upstream phase may take, and the one way to enforce it.

Every timeout on the request path (an attempt's response timeout, cut short
by the request's total deadline) goes through L{withDeadline}, which reads
the injected clock, so tests drive it with a C{Clock}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.python.failure import Failure

from txgateway.http.grpcstatus import grpcTimeout, isGrpc

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import UpstreamConfig
    from txgateway.context import RequestContext

__all__ = ["grpcDeadline", "totalTimeout", "withDeadline"]

T = TypeVar("T")


def withDeadline(d: Deferred[T], seconds: float, clock: IReactorTime) -> Deferred[T]:
    """
    Cancel C{d} after C{seconds} and fail it with L{DeferTimeout}.

    C{Deferred.addTimeout} only translates a plain CancelledError, but a
    cancelled Agent request fails with ResponseNeverReceived wrapping it, so
    the timeout would read as a reset (502) instead of a timeout (504).
    """
    timedOut = False

    def expire() -> None:
        nonlocal timedOut
        timedOut = True
        d.cancel()

    call = clock.callLater(seconds, expire)

    def settle(result: Any) -> Any:
        if call.active():
            call.cancel()
        if timedOut and isinstance(result, Failure):
            return Failure(DeferTimeout(f"no response within {seconds:g}s"))
        return result

    return d.addBoth(settle)


def totalTimeout(config: UpstreamConfig) -> float:
    """
    How long the upstream phase of one request may take, all attempts
    included: C{retries.total_timeout}, or by default enough for every
    attempt to use its full response timeout.
    """
    retries = config.retries
    if retries.total_timeout is not None:
        return retries.total_timeout
    return config.timeouts.response * (retries.attempts + 1)


def grpcDeadline(context: RequestContext, deadline: float, clock: IReactorTime) -> float:
    """
    C{deadline}, brought forward to the call's own C{grpc-timeout} when it
    is a gRPC call that set one: past it the caller has given up, so the
    gateway answers DEADLINE_EXCEEDED rather than keep a target busy.  The
    header itself goes on to the target, which may stop at the same time.
    """
    if not isGrpc(context.header(b"content-type")):
        return deadline
    seconds = grpcTimeout(context.header(b"grpc-timeout"))
    if seconds is None:
        return deadline
    return min(deadline, clock.seconds() + seconds)
