# -*- test-case-name: tests.test_caching -*-
"""
The RFC 9111 shared response cache of a route (C{cache:} in its config).

L{cacheFor} gives a route its L{ResponseCache}, which wraps the route's way
upstream (an L{IForwarder}) the way Twisted's C{ContentDecoderAgent} wraps an
C{IAgent} (L{ResponseCache.wrap}): asked for a response, it answers from the
store, or asks the forwarder it wraps (plainly, conditionally, or once for
many concurrent requests) and gives that response on with a body that is
stored as it streams.  The forward sequence (L{txgateway.forwarding.forward})
writes either kind to the client the same way.

Every rule about what may be stored and reused lives in
L{txgateway.caching.policy} (pure functions); where entries live is
L{txgateway.caching.stores}.  This module is the I/O between them.

Why not hishel: its sans-I/O core (2.x) is a good private-cache state
machine, but it reads the wall clock itself (no injectable clock, so no
deterministic tests), has no request max-stale/min-fresh/only-if-cached, no
stale-while-revalidate or stale-if-error, matches HEAD only against stored
HEAD responses, and would add a model conversion per request.  See the
commit message for the full evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer

from txgateway.attempts import UpstreamFailure, discard
from txgateway.caching import policy
from txgateway.caching.collapsing import Flight, UncacheableMarks
from txgateway.caching.exchanges import Exchange, Tee, TeeResponse, storedResponse
from txgateway.caching.keys import cacheKey, originFields
from txgateway.caching.policy import StoredResponse
from txgateway.caching.ranges import requestedSpan
from txgateway.caching.revalidation import revalidateLater
from txgateway.caching.stores import MemoryStore, RedisStore
from txgateway.caching.variants import VaryingStore
from txgateway.context import RequestContext
from txgateway.interfaces import IForwarder

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import CacheConfig
    from txgateway.interfaces import ICacheStore
    from txgateway.middleware import Deps
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

__all__ = ["CachingForwarder", "ResponseCache", "UNCACHEABLE_MARK", "cacheFor"]

log = Logger(namespace="txgateway.cache")

_GET = b"GET"
_HEAD = b"HEAD"
# How long a key whose last response could not be stored stops concurrent
# misses from being collapsed (a "hit-for-miss" mark: L{UncacheableMarks}).
UNCACHEABLE_MARK = 10.0
_UNCACHEABLE_KEYS = 4096
# Store refusals that say something about the resource, not this exchange.
_MARKING_REFUSALS = frozenset(("no-store", "private", "set-cookie", "vary-star", "stale", "too-big", "status"))


def cacheFor(route: CompiledRoute, deps: Deps) -> ResponseCache | None:
    """
    The route's cache, or None.  The memory store is kept in C{deps.shared}
    so that a config reload keeps what is cached (entries are raw origin
    responses; the route's limits such as C{max_ttl} apply when reading).
    """
    config = route.config.cache
    if config is None:
        return None
    sharedKey = f"cache.memory:{route.name}:{route.upstreamName}"
    memory = deps.shared.get(sharedKey)
    if isinstance(memory, MemoryStore):
        memory.resize(config.max_bytes)
    else:
        memory = deps.shared[sharedKey] = MemoryStore(deps.clock, config.max_bytes)
    store: ICacheStore = memory
    if config.store == "redis":
        if deps.redis is None:
            log.warn("route {route}: cache store is redis but no redis pool exists; using memory", route=route.name)
        else:
            store = RedisStore(deps.redis, deps.clock, deps.config.stores.redis_timeout, memory, deps.metrics,
                               prefix=b"txgateway:cache:" + route.name.encode() + b":")
    return ResponseCache(route.name, config, store, deps.clock, deps.metrics, deps.rng, deps.config.server.via)


def _nothing() -> None:
    pass


def _pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, vs in headers.getAllRawHeaders() for v in vs]


class ResponseCache:
    """
    A route's shared cache.

    Collapsed forwarding: the first miss for a key becomes the leader and
    forwards; later misses for the key wait (at most C{collapse_timeout}).
    When the leader's response is stored, every waiter whose request it
    satisfies (Vary, request directives) is answered from it; as soon as the
    leader learns there will be nothing to share (not storable, too big,
    failed, client gone), the waiters are released and each forwards on its
    own, never collapsing again, so one slow uncacheable response never
    serialises a queue.  A key whose response was not storable is marked for
    L{UNCACHEABLE_MARK} seconds, during which its misses are not collapsed.
    """

    def __init__(self, routeName: str, config: CacheConfig, store: ICacheStore, clock: IReactorTime,
                 metrics: Metrics | None, rng: Any, pseudonym: str = "txgateway") -> None:
        self.routeName = routeName
        self.config = config
        self.store = store
        self.targeted = tuple(f.lower().encode("latin-1") for f in config.targeted_fields)
        self.storeSetCookie = config.store_set_cookie
        self.staleOnError = config.serve_stale_on_error
        self.entries = VaryingStore(store, clock, rng, self.targeted, self.staleOnError,
                                    config.tag_field.lower().encode("latin-1"))
        self.clock = clock
        self.metrics = metrics
        self.name = policy.cacheName(pseudonym)
        self.maxTTL = config.max_ttl
        self.defaultTTL = config.default_ttl
        self.maxObject = config.max_object_size
        self.collapseTimeout = config.collapse_timeout
        self._pending: dict[bytes, Flight] = {}
        self.revalidating: set[bytes] = set()
        self._uncacheable = UncacheableMarks(clock, UNCACHEABLE_MARK, _UNCACHEABLE_KEYS)
        self._counters: dict[str, Any] = {}

    # -- bookkeeping

    def _count(self, context: RequestContext, result: str) -> None:
        context.cacheStatus = result
        if self.metrics is None:
            return
        child = self._counters.get(result)
        if child is None:
            child = self._counters[result] = self.metrics.cacheRequests.labels(self.routeName, result)
        child.inc()

    def _status(self, context: RequestContext, **params: Any) -> None:
        context.responseHeaders.append((b"Cache-Status", policy.cacheStatus(self.name, **params)))

    # -- the request path

    def wrap(self, upstream: IForwarder) -> CachingForwarder:
        """C{upstream} (the route's attempt loop), with this cache in front of it."""
        return CachingForwarder(self, upstream)

    async def fetch(self, context: RequestContext, upstream: IForwarder) -> Any:
        """
        The exchange that answers C{context}: from the store, or from
        C{upstream} (plainly, conditionally, or once for many concurrent
        requests), its body stored while it streams to the client when
        it may be.
        """
        method = context.method
        if method != _GET and method != _HEAD:
            return await self._writeThrough(context, upstream, "method", "bypass")
        raw = context.request.requestHeaders.getRawHeaders
        ranged = raw(b"range") if method == _GET else None
        rules = policy.requestRules(raw)
        key = cacheKey(context, context.path, context.query)
        fields = originFields(context)
        entry, varyMiss = await self.entries.lookup(key, fields)
        now = self.clock.seconds()
        if entry is not None:
            a = policy.assess(entry, rules, now, self.maxTTL, self.defaultTTL)
            if a.action == policy.FRESH:
                # RFC 9111 §3.3: a stored complete response answers a Range itself.
                span = requestedSpan(raw, entry, ranged) if ranged is not None and entry.code == 200 else None
                return self._serve(context, entry, a.age, "hit", span=span, hit=True, ttl=a.ttl)
        if ranged is not None:  # nothing fresh: passed through untouched (only whole responses are stored)
            return await self._writeThrough(context, upstream, "bypass", "bypass", detail="range")
        if entry is not None:
            if a.action == policy.STALE_OK:
                return self._serve(context, entry, a.age, "stale", hit=True, ttl=a.ttl, detail="max-stale")
            if a.action == policy.REVALIDATE_LATER:
                revalidateLater(self, key, entry, context, upstream, rules)
                return self._serve(context, entry, a.age, "stale", hit=True, ttl=a.ttl,
                                   detail="stale-while-revalidate")
            if rules.onlyIfCached:
                self._onlyIfCached(context)
            if method == _HEAD:
                return await self._writeThrough(context, upstream, a.reason, "miss")
            return await self._fetch(context, upstream, key, rules, a.reason, entry, None)
        if rules.onlyIfCached:
            self._onlyIfCached(context)
        fwd = "vary-miss" if varyMiss else "uri-miss"
        if method == _HEAD:
            return await self._writeThrough(context, upstream, fwd, "miss")
        return await self._miss(context, upstream, key, rules, fwd, fields)

    def _onlyIfCached(self, context: RequestContext) -> NoReturn:
        """§5.2.1.7: nothing usable is stored, and the client forbade going further: 504."""
        self._count(context, "miss")
        self._status(context, detail="only-if-cached")
        raise UpstreamFailure(504, "only-if-cached",
                              message="gateway timeout: no usable cached response (only-if-cached)")

    async def _miss(self, context: RequestContext, upstream: IForwarder, key: bytes, rules: policy.RequestRules,
                    fwd: str, fields: policy.HeaderLookup) -> Any:
        flight = self._pending.get(key)
        if flight is not None:
            try:
                entry = await flight.wait(self.collapseTimeout, self.clock)
            except DeferTimeout:
                entry = None
            if entry is not None and policy.varyMatches(entry, fields):
                a = policy.assess(entry, rules, self.clock.seconds(), self.maxTTL, self.defaultTTL)
                if a.action in (policy.FRESH, policy.STALE_OK):
                    return self._serve(context, entry, a.age, "collapsed", fwd=fwd, fwdStatus=entry.code,
                                       collapsed=True, ttl=a.ttl)
            return await self._fetch(context, upstream, key, rules, fwd, None, None)
        if key in self._uncacheable:
            return await self._fetch(context, upstream, key, rules, fwd, None, None)
        flight = self._pending[key] = Flight()

        def land() -> None:
            if self._pending.get(key) is flight:
                del self._pending[key]
            flight.release(None)

        try:
            exchange = await self._fetch(context, upstream, key, rules, fwd, None, flight)
        except BaseException:
            land()
            raise
        return Exchange(exchange.response, exchange, land)

    async def _fetch(self, context: RequestContext, upstream: IForwarder, key: bytes, rules: policy.RequestRules,
                     fwd: str, entry: StoredResponse | None, flight: Flight | None) -> Any:
        """
        Forward (conditionally when C{entry} has validators), then: freshen
        and serve C{entry} on a matching 304; serve it stale on an error
        when stale-if-error allows; otherwise give the response on, storing
        it as it streams when §3 allows and it fits C{max_object_size}.
        """
        conditional = policy.conditionalHeaders(entry) if entry is not None else []
        requestTime = self.clock.seconds()
        try:
            exchange = await upstream.fetch(context, None, conditional or None)
        except UpstreamFailure as e:
            why = None if entry is None else policy.staleIfError(entry, rules, self.clock.seconds(), self.maxTTL,
                                                                 self.defaultTTL, self.staleOnError)
            if entry is not None and why is not None:
                now = self.clock.seconds()
                age, ttl = policy.currentAge(entry, now), policy.lifetimeOf(entry, self.maxTTL, self.defaultTTL)
                return self._serve(context, entry, age, "stale", fwd=fwd, fwdStatus=e.status, ttl=ttl - age,
                                   detail=why)
            self._count(context, "miss")
            self._status(context, fwd=fwd, detail="upstream-failure")
            raise
        response = exchange.response
        passOn = False
        try:
            responseTime = self.clock.seconds()
            code = response.code
            headers = _pairs(response.headers)
            if entry is not None and code == 304 and policy.notModifiedMatches(entry, headers):
                discard(response)
                fresh = policy.freshen(entry, headers, requestTime, responseTime)
                refusal = policy.storeRefusal(_GET, fresh.code, fresh.headers, fresh.cacheControl, rules,
                                              responseTime, self.maxTTL, self.defaultTTL, self.storeSetCookie)
                if refusal is None:
                    self.entries.saveLater(key, fresh, self.maxTTL, self.defaultTTL)
                else:
                    self.entries.forget(key)
                age = policy.currentAge(fresh, responseTime)
                ttl = policy.lifetimeOf(fresh, self.maxTTL, self.defaultTTL) - age
                if flight is not None:
                    flight.release(fresh if refusal is None else None)
                return self._serve(context, fresh, age, "revalidated", fwd=fwd, fwdStatus=304,
                                   stored=refusal is None, ttl=ttl, detail=refusal)
            if entry is not None and code == 304 and not self._clientConditional(context):
                # §4.3.4: a 304 whose validator matches nothing stored updates nothing; the client
                # gets the stored response as it is, and the origin is not asked again unconditionally.
                discard(response)
                if flight is not None:
                    flight.release(None)
                age = policy.currentAge(entry, responseTime)
                ttl = policy.lifetimeOf(entry, self.maxTTL, self.defaultTTL) - age
                return self._serve(context, entry, age, "revalidated", fwd=fwd, fwdStatus=304, ttl=ttl,
                                   detail="validator-mismatch")
            why = None if entry is None or code not in policy.ERROR_STATUS else policy.staleIfError(
                entry, rules, responseTime, self.maxTTL, self.defaultTTL, self.staleOnError)
            if entry is not None and why is not None:
                discard(response)
                age = policy.currentAge(entry, responseTime)
                ttl = policy.lifetimeOf(entry, self.maxTTL, self.defaultTTL) - age
                return self._serve(context, entry, age, "stale", fwd=fwd, fwdStatus=code, ttl=ttl, detail=why)
            cc = policy.responseDirectives(headers, self.targeted)
            refusal = policy.storeRefusal(context.method, code, headers, cc, rules, responseTime, self.maxTTL,
                                          self.defaultTTL, self.storeSetCookie)
            length = response.length
            if refusal is None and length is not UNKNOWN_LENGTH and length > self.maxObject:
                refusal = "too-big"
            if refusal is not None:
                if flight is not None:
                    flight.release(None)
                if code != 304 and refusal in _MARKING_REFUSALS:
                    self._uncacheable.mark(key)
                if entry is not None and 200 <= code < 500 and code != 304:
                    self.entries.forget(key)  # §4: a newer response supersedes the stored one
            else:
                self._uncacheable.clear(key)
            self._count(context, "miss")
            self._status(context, fwd=fwd, fwdStatus=code, stored=refusal is None, detail=refusal)
            if refusal is not None:
                passOn = True
                return exchange
            # Waiters learn at once that a body too big to store will not be shared.
            tee = Tee(self.maxObject, (lambda: flight.release(None)) if flight is not None else _nothing)

            def bodyEnded(complete: bool) -> None:
                if not complete or tee.overflow:
                    return
                vary = policy.varyOf(headers) or ()
                stored = StoredResponse(code, response.phrase or b"", policy.storableHeaders(headers, cc),
                                        b"".join(tee.chunks), requestTime, responseTime, vary,
                                        policy.varyValues(vary, originFields(context))).withTargets(self.targeted)
                self.entries.saveLater(key, stored, self.maxTTL, self.defaultTTL)
                if flight is not None:
                    flight.release(stored)

            teed = Exchange(TeeResponse(response, tee, bodyEnded), exchange)
            passOn = True
            return teed
        finally:
            if not passOn and exchange is not None:
                exchange.finish(True, False)

    @staticmethod
    def _clientConditional(context: RequestContext) -> bool:
        raw = context.request.requestHeaders.getRawHeaders
        return raw(b"if-none-match") is not None or raw(b"if-modified-since") is not None

    async def _writeThrough(self, context: RequestContext, upstream: IForwarder, fwd: str, result: str,
                            detail: str | None = None) -> Any:
        """
        Forward without storing.  For unsafe methods, §4.4: a non-error
        answer invalidates the target URI and the same-origin Location /
        Content-Location.
        """
        self._count(context, result)
        try:
            exchange = await upstream.fetch(context)
        except UpstreamFailure:
            self._status(context, fwd=fwd, detail=detail or "upstream-failure")
            raise
        response = exchange.response
        headers = _pairs(response.headers)
        for path, query in policy.invalidationTargets(context.method, response.code, headers, context.host,
                                                      context.path, context.query):
            self.entries.forget(cacheKey(context, path, query))
        self._status(context, fwd=fwd, fwdStatus=response.code, detail=detail)
        return exchange

    def _serve(self, context: RequestContext, entry: StoredResponse, age: float, result: str,
               span: tuple[int, int] | None = None, **status: Any) -> Exchange:
        """
        An answer from a stored response: its status and fields (the
        route's response rules apply as to any response), a fresh C{Age}
        (§4.2.3), a 304 instead when the client's own conditions say it
        already has this representation (§4.3.2), or the byte range C{span}.
        """
        self._count(context, result)
        notModified = policy.clientNotModified(context.request.requestHeaders.getRawHeaders, entry)
        self._status(context, **status)
        return Exchange(storedResponse(entry, age, notModified, span), None)


@implementer(IForwarder)
class CachingForwarder:
    """A route's upstream with its cache in front, as C{ContentDecoderAgent} is in front of an C{IAgent}."""

    __slots__ = ("cache", "upstream")

    def __init__(self, cache: ResponseCache, upstream: IForwarder) -> None:
        self.cache = cache
        self.upstream = upstream

    def fetch(self, context: RequestContext, method: bytes | None = None,
              extraHeaders: list[tuple[bytes, bytes]] | None = None) -> Any:
        return self.cache.fetch(context, self.upstream)
