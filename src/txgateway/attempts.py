# -*- test-case-name: tests.test_forwarder -*-
"""
The attempt loop: up to 1 + C{retries.attempts} tries, each on a leased target.

Each try asks L{Cluster.choose} for a L{Lease} (breakers, health and caps
are decided there, not here), sends the request through the upstream's
L{IUpstreamClient} with its own response timeout (cut short by the
request's total deadline, see L{txgateway.deadlines}), and ends the lease
of every try that does not become the answer.  What a failure means for the
target is the lease's business; whether to try again is the retry
policy's.

At C{logging.level: debug} each decision is also a log line carrying
C{request_id}, C{route}, C{upstream} and C{target}: the target the balancer
chose and why the others were not (health, ejection, breaker, cap, tried
already), each failed try and whether and why it is retried.  Whether to
write them is decided once, when the config is built (C{debug}); with it
off, the loop pays one attribute test per try and formats nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import error as netError
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.iweb import IResponse

from txgateway.cluster import NoTarget
from txgateway.deadlines import grpcDeadline, totalTimeout, withDeadline
from txgateway.http.client.parser import InvalidUpstreamResponse
from txgateway.http.grpcstatus import grpcFailure
from txgateway.http.replay import bodyProducer
from txgateway.tls.failures import tlsFailure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.cluster import Cluster, Endpoint, Lease
    from txgateway.context import RequestContext
    from txgateway.http.messages import Messages
    from txgateway.interfaces import IRetryPolicy
    from txgateway.observe import Metrics

__all__ = ["AttemptLoop", "UpstreamFailure", "classify", "discard", "statusFor"]

log = Logger(namespace="txgateway.upstream")


class UpstreamFailure(Exception):
    """The upstream could not give an answer; C{status} is what the client gets."""

    def __init__(self, status: int, reason: str, retryAfter: float = 0.0, message: str | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retryAfter = retryAfter
        self.message = message


def classify(failure: Failure) -> str:
    """
    The retry condition a failed attempt stands for.

    Cancellation is checked first: a client that went away cancels the
    attempt, and the Agent reports that as a wrapped CancelledError (or a
    ConnectingCancelledError while still connecting), which must neither
    count against the target nor be retried.  Our own response deadline has
    already turned its cancellation into a L{DeferTimeout} by then (see
    L{withDeadline}).  A connect timeout is a connect failure: nothing was sent.
    """
    if failure.check(CancelledError, netError.ConnectingCancelledError):
        return "cancelled"
    reasons = getattr(failure.value, "reasons", None)  # the Agent's ResponseNeverReceived and kin
    if reasons and any(isinstance(r, Failure) and r.check(CancelledError) for r in reasons):
        return "cancelled"
    if failure.check(ResponseFailed) and reasons and any(
            isinstance(r, Failure) and r.check(InvalidUpstreamResponse) for r in reasons):
        return "invalid_response"
    if failure.check(DeferTimeout):
        return "timeout"
    if failure.check(netError.ConnectError, netError.DNSLookupError):
        return "connect_failure"
    return "reset"


def statusFor(outcome: str) -> int:
    """The status a client gets when the last attempt ended in C{outcome}."""
    if outcome == "timeout":
        return 504
    if outcome.startswith("status_"):
        return int(outcome[7:])
    return 502


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass


def discard(response: IResponse) -> None:
    """Read and drop a response's body (so its connection can go back to the pool)."""
    response.deliverBody(_Discard())


class AttemptLoop:
    """Sends a request to an upstream, with retries, each attempt on a leased target."""

    def __init__(self, clock: IReactorTime, messages: Messages, metrics: Metrics, debug: bool = False) -> None:
        self.clock = clock
        self.messages = messages
        self.metrics = metrics
        # logging.level is debug: explain every choice and retry (see the module docstring).
        self.debug = debug

    async def fetch(self, context: RequestContext, cluster: Cluster,
                    method: bytes | None = None, extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Lease:
        """
        The first acceptable response of up to 1 + retries.attempts tries,
        as the L{Lease} of its attempt (C{lease.response}).

        The lease still holds its target: the caller must end it with
        C{lease.finish} once the body is relayed (which also gives the
        verdict on a response whose status was fine).  Raises
        L{UpstreamFailure} with the status the client should get, or
        CancelledError when the client went away.
        """
        tried: list[Any] = []
        policy = cluster.retryPolicy
        if policy is not None:
            policy.recordRequest()
        context.upstream = cluster.name
        method = method or context.method
        clock = self.clock
        config = cluster.config
        responseTimeout = config.timeouts.response
        deadline = clock.seconds() + totalTimeout(config)
        grpc = config.protocol == "grpc"
        if grpc:
            deadline = grpcDeadline(context, deadline, clock)
        debug = self.debug
        while True:
            try:
                lease = cluster.choose(context, tried)
            except NoTarget as e:
                if debug:
                    _logNoTarget(context, cluster, tried, e.reason)
                if tried and context.outcome is not None:
                    raise UpstreamFailure(statusFor(context.outcome), context.outcome) from None
                context.outcome = "no_target"
                raise UpstreamFailure(503, e.reason, e.retryAfter) from None
            endpoint = lease.endpoint
            tried.append(endpoint)
            context.attempts += 1
            context.targetsTried.append(endpoint.url)
            context.target = endpoint.url
            if context.attempts > 1:
                self.metrics.retries.labels(cluster.name).inc()
            if debug:
                _logChoice(context, cluster, endpoint, tried)
            if context.forwarded < 0:
                context.forwarded = lease.sent
            server = context.trace
            span = None if server is None else server.tracer.attempt(
                context, method, endpoint.url, context.attempts, context.outcome if context.attempts > 1 else None)
            try:
                response = await self._attempt(context, cluster, lease, method, extraHeaders,
                                               min(responseTimeout, max(deadline - lease.sent, 0.001)), span)
            except BaseException as e:
                lease.release()
                outcome = classify(Failure(e)) if isinstance(e, Exception) else "cancelled"
                if span is not None:
                    server.tracer.attemptEnded(span, outcome)
                if outcome == "cancelled" or getattr(context.request, "gone", False):
                    # The client left: no verdict on the target, no retry for nobody.
                    lease.cancel()
                    if isinstance(e, CancelledError) or not isinstance(e, Exception):
                        raise
                    raise CancelledError() from e
                context.outcome = outcome
                lease.record(outcome, False)
                if outcome == "reset":
                    _logTLS(context, endpoint.url, e)
                bodySent = outcome != "connect_failure"
                remaining = deadline - clock.seconds()
                delay = self._retryDelay(policy, context, outcome, bodySent, remaining)
                if debug:
                    _logRetry(context, endpoint, outcome, delay, policy, bodySent, remaining)
                if delay is None:
                    raise UpstreamFailure(statusFor(outcome), outcome) from None
                if delay > 0:
                    await deferLater(clock, delay)
                continue
            code = response.code
            now = clock.seconds()
            lease.responded(response, now)
            context.answered = now
            if span is not None:
                server.tracer.attemptEnded(span, code)
            failed: str | int | None = code if code >= 500 else grpcFailure(response.headers) if grpc else None
            if failed is None:
                # Judged when its body has ended: see Lease.finish.
                context.outcome = None
                return lease
            if code >= 500:
                lease.record(code, False)
            context.outcome = f"status_{code}" if code >= 500 else str(failed)
            delay = self._retryDelay(policy, context, failed, True, deadline - now)
            if debug:
                _logRetry(context, endpoint, f"status {code}" if code >= 500 else str(failed), delay, policy, True,
                          deadline - now, code if code >= 500 else None)
            if delay is None:
                if code < 500:
                    context.outcome = None  # a gRPC answer relayed as it came: grpc_status says what it was
                return lease
            if code < 500:
                lease.record(str(failed), False)  # a gRPC status retried, as a retried 5xx: the target failed
            discard(response)
            lease.release()
            if delay > 0:
                await deferLater(clock, delay)

    @staticmethod
    def _retryDelay(policy: IRetryPolicy | None, context: RequestContext, outcome: str | int, bodySent: bool,
                    remaining: float) -> float | None:
        if policy is None or remaining <= 0:
            return None
        return policy.shouldRetry(context, outcome, bodySent, remaining)

    def _attempt(self, context: RequestContext, cluster: Cluster, lease: Lease, method: bytes,
                 extraHeaders: list[tuple[bytes, bytes]] | None, timeout: float, span: Any = None) -> Deferred[IResponse]:
        endpoint = lease.endpoint
        messages = self.messages
        if span is None:
            headers = messages.upstreamHeaders(context, endpoint)
        else:
            # The traceparent sent names this attempt's client span as the parent.
            own, context.spanId = context.spanId, span.spanId
            try:
                headers = messages.upstreamHeaders(context, endpoint)
            finally:
                context.spanId = own
        if extraHeaders:
            for k, v in extraHeaders:
                headers.setRawHeaders(k, [v])
        client = cluster.agent
        assert client is not None, "cluster has no upstream client: was it started?"
        # A fresh producer per attempt: bodyProducer rewinds the buffered
        # body, so a retry sends the client's body again from its start.
        d: Deferred[IResponse] = client.request(method, messages.upstreamURL(context, endpoint), headers,
                                                bodyProducer(context.request))
        return withDeadline(d, timeout, self.clock)


def _logTLS(context: RequestContext, target: str, error: BaseException) -> None:
    """A failed TLS handshake with a target gets a warning saying why (the client gets a 502 or a retry)."""
    why = tlsFailure(Failure(error))
    if why is not None:
        log.warn("request {request_id}: target {target} of upstream {upstream}: {reason}",
                 request_id=context.requestId, target=target, upstream=context.upstream or "", reason=why)


# -- the debug lines (written only when AttemptLoop.debug is set)


def _fields(context: RequestContext, target: str | None = None) -> dict[str, Any]:
    route = context.route
    return {"request_id": context.requestId, "route": route.name if route is not None else "",
            "upstream": context.upstream or "", "target": target or ""}


def _whyNot(cluster: Cluster, endpoint: Endpoint, tried: list[Any], now: float) -> str:
    """Why C{endpoint} did not take this attempt, as far as its state shows."""
    if not endpoint.activeHealthy:
        return "unhealthy (active check failing)"
    if now < endpoint.ejectedUntil:
        return f"ejected by passive health for {endpoint.ejectedUntil - now:.3g}s more"
    breaker = endpoint.breaker
    state = breaker.state if breaker is not None else "closed"
    if state == "open":
        return "circuit breaker open"
    if endpoint.inFlight >= cluster.maxPerTarget:
        return f"at pool.max_per_target ({cluster.maxPerTarget} in flight)"
    if endpoint in tried:
        return "tried already for this request"
    if state == "half_open":
        return "circuit breaker half-open, probe slots taken"
    return "not picked by the balancer"


def _others(cluster: Cluster, chosen: Endpoint | None, tried: list[Any]) -> str:
    now = cluster.clock.seconds()
    skipped = [f"{e.url}: {_whyNot(cluster, e, tried, now)}" for e in cluster.endpoints if e is not chosen]
    return "; ".join(skipped) if skipped else "none"


def _logChoice(context: RequestContext, cluster: Cluster, endpoint: Endpoint, tried: list[Any]) -> None:
    # `tried` already holds this attempt's endpoint: the others' reasons are judged without it.
    earlier = tried[:-1]
    log.debug("request {request_id} attempt {attempt} on upstream {upstream}: target {target} chosen by "
              "{balancer} (others: {others})", attempt=context.attempts, balancer=cluster.config.balancer,
              others=_others(cluster, endpoint, earlier), **_fields(context, endpoint.url))


def _logNoTarget(context: RequestContext, cluster: Cluster, tried: list[Any], reason: str) -> None:
    log.debug("request {request_id} on upstream {upstream}: no target for attempt {attempt}: {reason} "
              "(targets: {others})", attempt=context.attempts + 1, reason=reason,
              others=_others(cluster, None, tried), **_fields(context))


def _logRetry(context: RequestContext, endpoint: Endpoint, outcome: str, delay: float | None,
              policy: IRetryPolicy | None, bodySent: bool, remaining: float, code: int | None = None) -> None:
    if delay is not None:
        decision = f"retrying in {delay:.3g}s"
    else:
        decision = "not retrying: " + _whyNoRetry(context, policy, code if code is not None else outcome,
                                                  bodySent, remaining)
    log.debug("request {request_id} attempt {attempt} on {target} failed: {outcome}; {decision}",
              attempt=context.attempts, outcome=outcome, decision=decision, **_fields(context, endpoint.url))


def _whyNoRetry(context: RequestContext, policy: IRetryPolicy | None, outcome: str | int, bodySent: bool,
                remaining: float) -> str:
    if policy is None:
        return "the upstream has no retry policy"
    if remaining <= 0:
        return "the request's total deadline has passed"
    config = getattr(policy, "config", None)
    attempts = getattr(config, "attempts", None)
    if attempts is not None and context.attempts > attempts:
        return f"retries.attempts ({attempts}) used up"
    retryable = getattr(policy, "retryable", None)
    if retryable is not None and not retryable(context.method, outcome, bodySent):
        return (f"{outcome} is not a retry condition for {context.method.decode('latin-1')} "
                "(retries.on, retries.methods)")
    return "the backoff would pass the deadline, or the retry budget is spent"
