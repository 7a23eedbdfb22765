# -*- test-case-name: tests.test_balancing -*-
"""
Every pluggable part of the gateway, as a zope Interface.

Each concern module provides implementations; L{txgateway.cluster} and
L{txgateway.middleware} only talk to these interfaces, so a user can register
their own balancer (by dotted name in C{balancer:}) or swap a store without
the request path knowing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.web.http_headers import Headers
    from twisted.web.iweb import IBodyProducer, IResponse

    from txgateway.cluster import Endpoint
    from txgateway.context import RequestContext

__all__ = ["IAuthenticator", "IBalancer", "IBreaker", "ICacheStore", "IForwarder", "IHealthCheck", "IPassiveHealth",
           "IRateLimiter", "IRequestFilter", "IRetryPolicy", "IUpstreamClient"]


class IUpstreamClient(Interface):
    """
    Sends one request to one target and gives back its response as it arrives.

    The HTTP/1.1 client (L{txgateway.http.client.agent.UpstreamAgent}, over
    the pool) provides it; an HTTP/2 or gRPC client can provide it later and
    the attempt loop, the cache and the relay will not know the difference.
    The shape is Twisted's C{IAgent.request}, so any C{IAgent} (treq's
    C{RequestTraversalAgent} in tests) can stand for a client.
    """

    def request(method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        """
        Send C{method} C{uri} (an absolute URL naming the target) with these
        exact C{headers} and body; fire with the response once its head is in
        (C{code}, C{phrase}, C{headers}, C{length}; the body streams through
        C{deliverBody}, and the protocol's transport pauses and resumes the
        target).  Cancelling the Deferred aborts the exchange.  Fails with
        the Agent's C{ResponseNeverReceived} / C{ResponseFailed} (wrapping
        what went wrong) or a connect error.
        """

    def close() -> Deferred[None]:
        """Close idle connections; fires when they are closed."""


class IForwarder(Interface):
    """
    A route's way to an upstream response: the attempt loop, or a decorator
    of it (the cache), as Twisted's C{ContentDecoderAgent} decorates an
    C{IAgent}.  L{txgateway.forwarding.forward} writes what it gives back.
    """

    def fetch(context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Awaitable[Any]:
        """
        An awaitable (a coroutine, or a Deferred) of an exchange: its
        C{response} (an C{IResponse}: status, headers, streaming body) and
        C{finish(complete, clientGone)}, to be called once when the body has
        been relayed or broke off.  C{method} and C{extraHeaders} (a
        conditional request's validators) change what is sent upstream.
        Fails with L{txgateway.attempts.UpstreamFailure} (carrying the
        status the client gets) or CancelledError when the client went away.
        """


class IBalancer(Interface):
    """
    Picks one target of an upstream for a request.

    A balancer is told the full target list once (and again on reload), and
    on each request is handed the subset that health checks and breakers
    currently allow.  It must not keep per-request allocations.
    """

    def setTargets(targets: Sequence[Endpoint]) -> None:
        """
        Every configured target, in config order.  Called at build time and
        whenever the upstream's target list or weights change on reload.
        """

    def pick(eligible: Sequence[Endpoint], context: RequestContext) -> Endpoint | None:
        """
        Choose one of C{eligible} (never empty; a subset of the targets last
        given to L{setTargets}, in the same order).  Return L{None} only if no
        choice can be made.
        """


class IBreaker(Interface):
    """
    A per-target circuit breaker: closed, open or half-open.

    State is derived lazily from the injected clock, so no timer runs per
    breaker.
    """

    state = Attribute("One of 'closed', 'open', 'half_open', computed from the clock.")

    def allow() -> bool:
        """
        May a request be sent to this target now?  In half-open state a
        C{True} answer takes one of the limited probe slots, which the
        caller must give back through L{recordSuccess}, L{recordFailure} or
        L{release}.
        """

    def recordSuccess() -> None:
        """The request that L{allow} admitted succeeded."""

    def recordFailure() -> None:
        """The request that L{allow} admitted failed (connect error, timeout, 5xx)."""

    def release() -> None:
        """The request that L{allow} admitted was never sent (cancelled); free its slot."""

    def retryAfter() -> float:
        """Seconds until an open breaker lets a probe through (0 when not open)."""


class IHealthCheck(Interface):
    """Tells whether a target may receive traffic, from probes or from real traffic."""

    def isHealthy(endpoint: Endpoint) -> bool:
        """The verdict of this check for C{endpoint} right now."""


class IPassiveHealth(IHealthCheck):
    """A health check fed by the outcome of real requests."""

    def record(endpoint: Endpoint, ok: bool) -> None:
        """One request to C{endpoint} finished; C{ok} is False for connect errors, timeouts and 5xx."""


class IRetryPolicy(Interface):
    """Decides whether a failed attempt is tried again on another target."""

    def shouldRetry(context: RequestContext, outcome: str | int, bodySent: bool,
                    remaining: float = float("inf")) -> float | None:
        """
        C{outcome} is 'connect_failure', 'timeout', 'reset' or a status code;
        C{bodySent} is False when nothing reached the backend (connect
        failure), which makes any method safe to replay.  C{context.attempts}
        counts the attempts made so far.  C{remaining} is the time left in
        the request's total deadline (infinite when omitted): a retry whose
        backoff would not fit is refused.  Return the delay in seconds before
        the next attempt, or L{None} to give up.  Charging the retry budget is
        part of saying yes.
        """

    def recordRequest() -> None:
        """One first attempt was sent (feeds the retry budget)."""


class IRateLimiter(Interface):
    """Admits or refuses a request for a client key."""

    def check(key: str) -> Deferred[Any] | Any:
        """
        Return a L{txgateway.limiting.Decision}, or a Deferred firing with
        one when the counter lives elsewhere (Redis).  Must never fail: a
        limiter whose store is down falls back to a local decision.
        """


class ICacheStore(Interface):
    """Where cached responses live: memory or Redis."""

    def get(key: bytes) -> Deferred[Any]:
        """Fire with the stored entry, or L{None}.  Never fails; a broken store is a miss."""

    def set(key: bytes, entry: Any, ttl: float) -> Deferred[None]:
        """Store C{entry} for at most C{ttl} seconds.  Never fails."""

    def delete(key: bytes) -> Deferred[None]:
        """Forget C{key}.  Never fails."""


class IAuthenticator(Interface):
    """Verifies one kind of credential (API key, JWT, basic)."""

    challenge = Attribute("The C{WWW-Authenticate} value (bytes) that invites this kind of credential.")

    def authenticate(context: RequestContext) -> Deferred[Any] | Any:
        """
        Return (or fire with) a L{txgateway.auth.AuthResult}: an identity, a
        refusal with its C{WWW-Authenticate} challenge, 'absent' when the
        request carries no credential of this kind, or 'unavailable' when
        it cannot be checked right now (answered 503).  Never fails.
        """

    def removeCredential(context: RequestContext) -> None:
        """Keep this kind of credential from reaching the backend (a header, a query parameter)."""


class IRequestFilter(Interface):
    """
    One step of a route's chain (Envoy's HTTP filter): may answer locally
    (401, 429, a cache hit) or let the request continue.
    """

    def filterRequest(context: RequestContext) -> Deferred[Any] | Any:
        """
        Return L{None} to continue, or a L{txgateway.context.LocalResponse}
        to answer without reaching the backend.  May return a Deferred.
        """

