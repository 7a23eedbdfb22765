# -*- test-case-name: tests.test_auth -*-
"""
A route's access-control filter and the resources its authenticators share.

A request passes when any one of the route's methods admits it.  The
filter answers 401 with one C{WWW-Authenticate} challenge per method (so a
client learns every way in), 403 when the identity is not allowed, 503
when a credential could not be checked (JWKS not loaded yet, password
checks saturated); on success it sets C{context.identity}, forwards it in
the policy's C{forward_identity} header after removing any copy the client
sent, and removes the credentials themselves from what the backend receives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from zope.interface import implementer

from txgateway.auth.apikey import ApiKeyAuthenticator
from txgateway.auth.basic import BasicAuthenticator, PasswordChecks
from txgateway.auth.jwks import JwksKeys
from txgateway.auth.jwt import JwtAuthenticator
from txgateway.auth.result import ADMIT, REFUSE, SHARED_KEY, UNAVAILABLE, AuthResult
from txgateway.context import LocalResponse, RequestContext
from txgateway.interfaces import IRequestFilter
from txgateway.middleware import jsonResponse

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.iweb import IAgent

    from txgateway.config import AuthPolicy, JwtAuth
    from txgateway.middleware import Deps
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

log = Logger(namespace="txgateway.auth")

class AuthResources:
    """
    What the access-control filters share across routes and reloads.

    Kept in L{Deps.shared} so a reload keeps JWKS keys already fetched and
    the password threads already started.  Tests put their own instance
    there (an in-memory agent, a synchronous or manual thread runner).
    """

    def __init__(self, reactor: Any, clock: IReactorTime, agent: IAgent | None = None,
                 runInThread: Callable[..., Deferred[Any]] | None = None, threads: int = 2) -> None:
        self.reactor = reactor
        self.clock = clock
        self.agent = agent
        self.threads = threads
        self._run = runInThread
        self._pool: Any = None
        self.passwords = PasswordChecks(clock, self.runInThread)
        self.jwks: dict[str, JwksKeys] = {}

    def threadPool(self) -> Any:
        """Our own pool, started on first use and stopped when the reactor shuts down."""
        if self._pool is None:
            from twisted.python.threadpool import ThreadPool

            self._pool = ThreadPool(0, self.threads, "txgateway-auth")
            self._pool.start()
            self.reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return self._pool

    def runInThread(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        if self._run is not None:
            return self._run(f, *args)
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self.reactor, self.threadPool(), f, *args)

    def makeAgent(self) -> IAgent:
        if self.agent is not None:
            return self.agent
        from twisted.web.client import Agent

        return Agent(self.reactor)

    def jwksFor(self, config: JwtAuth) -> JwksKeys:
        assert config.jwks_url is not None
        keys = self.jwks.get(config.jwks_url)
        if keys is None:
            keys = self.jwks[config.jwks_url] = JwksKeys(config.jwks_url, self.clock, self.makeAgent,
                                                         config.jwks_timeout, config.jwks_refresh,
                                                         config.jwks_min_refresh)
        else:
            keys.configure(config.jwks_timeout, config.jwks_refresh, config.jwks_min_refresh)
        return keys


def resourcesFor(deps: Deps) -> AuthResources:
    res = deps.shared.get(SHARED_KEY)
    if res is None:
        res = deps.shared[SHARED_KEY] = AuthResources(deps.reactor, deps.clock)
    return res  # type: ignore[no-any-return]


_MESSAGES = {"missing": "authentication required"}


@implementer(IRequestFilter)
class AuthFilter:
    """A route's auth policy: any one authenticator admitting is enough."""

    def __init__(self, policy: AuthPolicy, authenticators: Sequence[Any], metrics: Metrics | None = None,
                 routeName: str = "") -> None:
        self.policy = policy
        self.authenticators = tuple(authenticators)
        self.metrics = metrics
        self.routeName = routeName
        self.forwardName = policy.forward_identity.encode() if policy.forward_identity else None
        self.allowed = frozenset(policy.allowed_identities) or None
        self.keep = policy.keep_credentials

    def filterRequest(self, context: RequestContext) -> LocalResponse | None | Deferred[LocalResponse | None]:
        if self.forwardName is not None:
            context.removeHeaders.append(self.forwardName)  # the client's copy never reaches the backend
        results: list[AuthResult] = []
        for i, authenticator in enumerate(self.authenticators):
            r = authenticator.authenticate(context)
            if isinstance(r, Deferred):
                return ensureDeferred(self._resume(context, r, i, results))
            if r.outcome == ADMIT:
                return self.admitted(context, r)
            results.append(r)
        return self.refused(context, results)

    async def _resume(self, context: RequestContext, pending: Deferred[AuthResult], index: int,
                      results: list[AuthResult]) -> LocalResponse | None:
        r = await pending
        while True:
            if r.outcome == ADMIT:
                return self.admitted(context, r)
            results.append(r)
            index += 1
            if index >= len(self.authenticators):
                return self.refused(context, results)
            nxt = self.authenticators[index].authenticate(context)
            r = await nxt if isinstance(nxt, Deferred) else nxt

    def admitted(self, context: RequestContext, result: AuthResult) -> LocalResponse | None:
        identity = result.identity
        assert identity is not None
        if self.allowed is not None and identity not in self.allowed:
            self.count("forbidden")
            log.info("route {route}: identity {identity} not allowed", route=self.routeName, identity=identity)
            return jsonResponse(context, 403, "forbidden: this identity may not use this route", reason="forbidden")
        context.identity = identity
        if self.forwardName is not None:
            context.forwardHeaders.append((self.forwardName, identity.encode("utf-8")))
        if not self.keep:
            for a in self.authenticators:
                a.removeCredential(context)
        return None

    def refused(self, context: RequestContext, results: list[AuthResult]) -> LocalResponse:
        unavailable = [r for r in results if r.outcome == UNAVAILABLE]
        if unavailable:
            reason = unavailable[0].reason
            self.count(reason)
            return jsonResponse(context, 503, "service unavailable: credentials cannot be checked right now",
                                [(b"Retry-After", b"5")], reason=reason)
        refusals = [r for r in results if r.outcome == REFUSE]
        reason = refusals[0].reason if refusals else "missing"
        self.count(reason)
        challenges: list[tuple[bytes, bytes]] = []
        for a, r in zip(self.authenticators, results, strict=True):
            challenges.append((b"WWW-Authenticate", r.challenge or a.challenge))
        message = _MESSAGES.get(reason, "invalid credentials")
        return jsonResponse(context, 401, f"unauthorized: {message}", challenges, reason=reason)

    def count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.authFailures.labels(self.routeName, reason).inc()


def authenticatorsFor(policy: AuthPolicy, resources: AuthResources) -> list[Any]:
    """The policy's methods, cheapest first: a key lookup, a signature check, then a password hash."""
    out: list[Any] = []
    if policy.api_key is not None:
        out.append(ApiKeyAuthenticator(policy.api_key))
    if policy.jwt is not None:
        jwks = resources.jwksFor(policy.jwt) if policy.jwt.jwks_url else None
        out.append(JwtAuthenticator(policy.jwt, resources.clock, jwks))
    if policy.basic is not None:
        out.append(BasicAuthenticator(policy.basic, resources.passwords))
    return out


def authFilter(route: CompiledRoute, deps: Deps) -> IRequestFilter | None:
    """The route's authentication, or None when the route has no C{auth:}."""
    policy = route.config.auth
    if policy is None:
        return None
    return AuthFilter(policy, authenticatorsFor(policy, resourcesFor(deps)), deps.metrics, route.name)


__all__ = ["AuthFilter", "AuthResources", "authFilter", "authenticatorsFor", "resourcesFor"]
