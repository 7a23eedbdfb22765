"""
The RFC 9111 shared response cache of a route (C{cache:} in its config).

L{cacheFor} gives a route its L{ResponseCache}; L{RouteResource.handle}
then calls L{ResponseCache.handle} instead of forwarding, so the cache owns
the whole exchange: look up, answer from the store, or forward (plainly,
conditionally, or once for many concurrent requests) and store what may be
stored while it streams to the client.

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

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.defer import TimeoutError as DeferTimeout
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from txgateway.caching import policy
from txgateway.caching.policy import StoredResponse
from txgateway.caching.stores import MemoryStore, RedisStore, VaryIndex
from txgateway.context import RequestContext
from txgateway.http.proxy import UpstreamFailure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txgateway.config import CacheConfig
    from txgateway.interfaces import ICacheStore
    from txgateway.middleware import Deps
    from txgateway.observe import Metrics
    from txgateway.routing import CompiledRoute

log = Logger(namespace="txgateway.cache")

_GET = b"GET"
_HEAD = b"HEAD"
# How long a key whose last response could not be stored stops concurrent
# misses from being collapsed (a "hit-for-miss" mark): without it every burst
# for an uncacheable URL would wait for one request before all go anyway.
UNCACHEABLE_MARK = 10.0
_UNCACHEABLE_KEYS = 4096
# Store refusals that say something about the resource, not this exchange.
_MARKING_REFUSALS = frozenset(("no-store", "private", "set-cookie", "vary-star", "stale", "too-big", "status"))
_INDEX_TTL = 3600.0


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


class _Flight:
    """
    One backend request that concurrent misses for the same key wait on.
    Released exactly once: with the stored response when there is one,
    with None as soon as it is known there will not be one.
    """

    __slots__ = ("waiters", "released", "result")

    def __init__(self) -> None:
        self.waiters: list[Deferred[StoredResponse | None]] = []
        self.released = False
        self.result: StoredResponse | None = None

    def wait(self, timeout: float, clock: IReactorTime) -> Deferred[StoredResponse | None]:
        if self.released:  # the leader already knows; its body may still be streaming
            return succeed(self.result)
        def cancel(d: Deferred[Any]) -> None:
            if d in self.waiters:
                self.waiters.remove(d)

        d: Deferred[StoredResponse | None] = Deferred(cancel)
        self.waiters.append(d)
        d.addTimeout(timeout, clock)
        return d

    def release(self, entry: StoredResponse | None) -> None:
        if self.released:
            return
        self.released = True
        self.result = entry
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            if not d.called:
                d.callback(entry)


class _Tee:
    """Collects a relayed body for the store until it grows past the object limit."""

    __slots__ = ("limit", "chunks", "size", "overflow", "onOverflow")

    def __init__(self, limit: int, onOverflow: Callable[[], None]) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False
        self.onOverflow = onOverflow

    def __call__(self, data: bytes) -> None:
        if self.overflow:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.overflow = True
            self.chunks = []
            self.onOverflow()
            return
        self.chunks.append(data)


class _BodyCollector(Protocol):
    """Reads a body nobody is waiting for (background revalidation); None when too big or cut off."""

    def __init__(self, limit: int, done: Deferred[bytes | None]) -> None:
        self.done = done
        self.tee = _Tee(limit, self._tooBig)

    def _tooBig(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.tee(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        complete = reason.check(ResponseDone, PotentialDataLoss) is not None and not self.tee.overflow
        self.done.callback(b"".join(self.tee.chunks) if complete else None)


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        pass


def _nothing() -> None:
    pass


def _discard(response: Any) -> None:
    response.deliverBody(_Discard())


def _pairs(headers: Headers) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, vs in headers.getAllRawHeaders() for v in vs]


class _DetachedRequest:
    """
    What a background revalidation needs of the client's request once the
    client's own exchange may be over (Twisted frees a finished request's
    body and channel): its header fields and whether it came over TLS.
    """

    method = _GET
    content = None

    def __init__(self, request: Any) -> None:
        self.requestHeaders = Headers()
        for k, vs in request.requestHeaders.getAllRawHeaders():
            self.requestHeaders.setRawHeaders(k, list(vs))
        self._secure = bool(request.isSecure())
        self.uri = request.uri

    def isSecure(self) -> bool:
        return self._secure


def _detached(context: RequestContext, clock: IReactorTime) -> RequestContext:
    bg = RequestContext(_DetachedRequest(context.request), clock.seconds(), context.requestId,  # type: ignore[arg-type]
                        context.clientIP, context.peerIP, _GET, context.host, context.path, context.query)
    bg.route = context.route
    bg.upstreamPath = context.upstreamPath
    bg.identity = context.identity
    bg.forwardHeaders = list(context.forwardHeaders)
    bg.removeHeaders = list(context.removeHeaders)
    bg.traceId, bg.spanId, bg.traceFlags, bg.tracestate = (context.traceId, context.spanId, context.traceFlags,
                                                          context.tracestate)
    return bg


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
        self.clock = clock
        self.metrics = metrics
        self.rng = rng
        self.name = policy.cacheName(pseudonym)
        self.maxTTL = config.max_ttl
        self.defaultTTL = config.default_ttl
        self.maxObject = config.max_object_size
        self.collapseTimeout = config.collapse_timeout
        self._pending: dict[bytes, _Flight] = {}
        self._revalidating: set[bytes] = set()
        self._uncacheable: OrderedDict[bytes, float] = OrderedDict()
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

    def key(self, context: RequestContext, path: str | None = None, query: bytes | None = None,
            useContext: bool = True) -> bytes:
        """The primary cache key: the target URI as the gateway sees it (scheme, host, normalised path, query)."""
        if useContext:
            path, query = context.path, context.query
        scheme = b"https" if context.request.isSecure() else b"http"
        target = (path or "/").encode("latin-1")
        if query is not None:
            target += b"?" + query
        return scheme + b"://" + context.host.encode("latin-1") + target

    def _fields(self, context: RequestContext) -> policy.HeaderLookup:
        """
        Request fields as the origin saw them, for Vary: what the gateway set
        (identity, route rules) replaces, what it removed is absent.  An
        origin that varies on C{X-Consumer} thus varies on the identity.
        """
        route = context.route
        rules = route.config.headers.request if route is not None else None
        setHere: dict[bytes, bytes] = {}
        removed = {h.lower() for h in context.removeHeaders}
        if rules is not None:
            removed |= {h.lower().encode() for h in rules.remove}
            for k, v in rules.set:
                setHere[k.lower().encode()] = v.encode()
        for k2, v2 in context.forwardHeaders:
            setHere[k2.lower()] = v2
        raw = context.request.requestHeaders.getRawHeaders

        def get(name: bytes) -> Sequence[bytes] | None:
            if name in setHere:
                return [setHere[name]]
            if name in removed:
                return None
            return raw(name)  # type: ignore[no-any-return]

        return get

    def _isUncacheable(self, key: bytes) -> bool:
        until = self._uncacheable.get(key)
        if until is None:
            return False
        if until <= self.clock.seconds():
            del self._uncacheable[key]
            return False
        return True

    def _markUncacheable(self, key: bytes) -> None:
        self._uncacheable.pop(key, None)
        self._uncacheable[key] = self.clock.seconds() + UNCACHEABLE_MARK
        while len(self._uncacheable) > _UNCACHEABLE_KEYS:
            self._uncacheable.popitem(last=False)

    # -- the store, with Vary

    async def lookup(self, key: bytes, fields: policy.HeaderLookup) -> tuple[StoredResponse | None, bool]:
        """(the stored response that matches the request's Vary fields, or None; whether one existed for the URI)."""
        record = await self.store.get(key)
        if record is None:
            return None, False
        if isinstance(record, VaryIndex):
            values = policy.varyValues(record.fields, fields)
            entry = await self.store.get(self._variantKey(key, record.generation, values))
            if isinstance(entry, StoredResponse) and policy.varyMatches(entry, fields):
                return entry, False
            return None, True
        if isinstance(record, StoredResponse):
            if policy.varyMatches(record, fields):
                return record, False
            return None, True
        return None, False

    @staticmethod
    def _variantKey(key: bytes, generation: bytes, values: tuple[bytes | None, ...]) -> bytes:
        return key + b"#" + generation + b"#" + policy.varyKeySuffix(values)

    async def save(self, key: bytes, entry: StoredResponse) -> None:
        ttl = policy.retention(entry, self.clock.seconds(), self.maxTTL, self.defaultTTL)
        if ttl <= 0:
            await self.store.delete(key)
            return
        if not entry.varyFields:
            await self.store.set(key, entry, ttl)
            return
        existing = await self.store.get(key)
        if isinstance(existing, VaryIndex) and existing.fields == entry.varyFields:
            generation = existing.generation
        else:
            generation = b"%08x" % self.rng.getrandbits(32)
        await self.store.set(key, VaryIndex(entry.varyFields, generation), max(ttl, _INDEX_TTL))
        await self.store.set(self._variantKey(key, generation, entry.varyValues), entry, ttl)

    def _save(self, key: bytes, entry: StoredResponse) -> None:
        ensureDeferred(self.save(key, entry)).addErrback(
            lambda f: log.failure("storing a cache entry failed", f))

    def _forget(self, key: bytes) -> None:
        self.store.delete(key).addErrback(lambda f: log.failure("deleting a cache entry failed", f))

    # -- the request path

    async def handle(self, context: RequestContext, runtime: Any) -> None:
        method = context.method
        if method != _GET and method != _HEAD:
            await self._writeThrough(context, runtime, "method", "bypass")
            return
        raw = context.request.requestHeaders.getRawHeaders
        if raw(b"range") is not None:
            # Ranges are passed through: the cache stores and serves whole responses only.
            await self._writeThrough(context, runtime, "bypass", "bypass", detail="range")
            return
        rules = policy.requestRules(raw)
        key = self.key(context)
        fields = self._fields(context)
        entry, varyMiss = await self.lookup(key, fields)
        now = self.clock.seconds()
        if entry is not None:
            a = policy.assess(entry, rules, now, self.maxTTL, self.defaultTTL)
            if a.action == policy.FRESH:
                self._serve(context, runtime, entry, a.age, "hit", hit=True, ttl=a.ttl)
                return
            if a.action == policy.STALE_OK:
                self._serve(context, runtime, entry, a.age, "stale", hit=True, ttl=a.ttl, detail="max-stale")
                return
            if a.action == policy.REVALIDATE_LATER:
                self._serve(context, runtime, entry, a.age, "stale", hit=True, ttl=a.ttl,
                            detail="stale-while-revalidate")
                self._revalidateLater(key, entry, context, runtime, rules)
                return
            if rules.onlyIfCached:
                self._onlyIfCached(context)
                return
            if method == _HEAD:
                await self._writeThrough(context, runtime, a.reason, "miss")
                return
            await self._fetch(context, runtime, key, rules, a.reason, entry, None)
            return
        if rules.onlyIfCached:
            self._onlyIfCached(context)
            return
        fwd = "vary-miss" if varyMiss else "uri-miss"
        if method == _HEAD:
            await self._writeThrough(context, runtime, fwd, "miss")
            return
        await self._miss(context, runtime, key, rules, fwd, fields)

    def _onlyIfCached(self, context: RequestContext) -> None:
        """§5.2.1.7: nothing usable is stored, and the client forbade going further: 504."""
        from txgateway.gateway import respond
        from txgateway.middleware import jsonResponse

        self._count(context, "miss")
        self._status(context, detail="only-if-cached")
        respond(context, jsonResponse(context, 504, "gateway timeout: no usable cached response (only-if-cached)"))

    async def _miss(self, context: RequestContext, runtime: Any, key: bytes, rules: policy.RequestRules,
                    fwd: str, fields: policy.HeaderLookup) -> None:
        flight = self._pending.get(key)
        if flight is not None:
            try:
                entry = await flight.wait(self.collapseTimeout, self.clock)
            except DeferTimeout:
                entry = None
            if entry is not None and policy.varyMatches(entry, fields):
                a = policy.assess(entry, rules, self.clock.seconds(), self.maxTTL, self.defaultTTL)
                if a.action in (policy.FRESH, policy.STALE_OK):
                    self._serve(context, runtime, entry, a.age, "collapsed", fwd=fwd, fwdStatus=entry.code,
                                collapsed=True, ttl=a.ttl)
                    return
            await self._fetch(context, runtime, key, rules, fwd, None, None)
            return
        if self._isUncacheable(key):
            await self._fetch(context, runtime, key, rules, fwd, None, None)
            return
        flight = self._pending[key] = _Flight()
        try:
            await self._fetch(context, runtime, key, rules, fwd, None, flight)
        finally:
            if self._pending.get(key) is flight:
                del self._pending[key]
            flight.release(None)

    async def _fetch(self, context: RequestContext, runtime: Any, key: bytes, rules: policy.RequestRules,
                     fwd: str, entry: StoredResponse | None, flight: _Flight | None) -> None:
        """
        Forward (conditionally when C{entry} has validators), then: freshen
        and serve C{entry} on a matching 304; serve it stale on an error
        when stale-if-error allows; otherwise relay the response, storing
        it when §3 allows and it fits C{max_object_size}.
        """
        conditional = policy.conditionalHeaders(entry) if entry is not None else []
        requestTime = self.clock.seconds()
        try:
            response, endpoint = await runtime.forward(context, None, conditional or None)
        except UpstreamFailure as e:
            if entry is not None and policy.staleIfError(entry, rules, self.clock.seconds(), self.maxTTL, self.defaultTTL):
                now = self.clock.seconds()
                age, ttl = policy.currentAge(entry, now), policy.lifetimeOf(entry, self.maxTTL, self.defaultTTL)
                self._serve(context, runtime, entry, age, "stale", fwd=fwd, fwdStatus=e.status, ttl=ttl - age,
                            detail="stale-if-error")
                return
            self._count(context, "miss")
            self._status(context, fwd=fwd, detail="upstream-failure")
            raise
        try:
            responseTime = self.clock.seconds()
            code = response.code
            headers = _pairs(response.headers)
            if entry is not None and code == 304 and policy.notModifiedMatches(entry, headers):
                _discard(response)
                fresh = policy.freshen(entry, headers, requestTime, responseTime)
                refusal = policy.storeRefusal(_GET, fresh.code, fresh.headers, fresh.cacheControl, rules,
                                              responseTime, self.maxTTL, self.defaultTTL)
                if refusal is None:
                    self._save(key, fresh)
                else:
                    self._forget(key)
                age = policy.currentAge(fresh, responseTime)
                ttl = policy.lifetimeOf(fresh, self.maxTTL, self.defaultTTL) - age
                self._serve(context, runtime, fresh, age, "revalidated", fwd=fwd, fwdStatus=304,
                            stored=refusal is None, ttl=ttl, detail=refusal)
                if flight is not None:
                    flight.release(fresh if refusal is None else None)
                return
            if entry is not None and code == 304 and not self._clientConditional(context):
                # §4.3.4: a 304 that matches nothing stored answers our validators,
                # not the client's request: forget the entry and ask again plainly.
                _discard(response)
                self._forget(key)
                await self._fetch(context, runtime, key, rules, fwd, None, flight)
                return
            if entry is not None and code in policy.ERROR_STATUS and policy.staleIfError(
                    entry, rules, responseTime, self.maxTTL, self.defaultTTL):
                _discard(response)
                age = policy.currentAge(entry, responseTime)
                ttl = policy.lifetimeOf(entry, self.maxTTL, self.defaultTTL) - age
                self._serve(context, runtime, entry, age, "stale", fwd=fwd, fwdStatus=code, ttl=ttl,
                            detail="stale-if-error")
                return
            cc = policy.parseCacheControl(policy.headerValues(headers, b"cache-control"))
            refusal = policy.storeRefusal(context.method, code, headers, cc, rules, responseTime, self.maxTTL, self.defaultTTL)
            length = response.length
            if refusal is None and length is not UNKNOWN_LENGTH and length > self.maxObject:
                refusal = "too-big"
            if refusal is not None:
                if flight is not None:
                    flight.release(None)
                if code != 304 and refusal in _MARKING_REFUSALS:
                    self._markUncacheable(key)
                if entry is not None and 200 <= code < 500 and code != 304:
                    self._forget(key)  # §4: a newer response supersedes the stored one
            else:
                self._uncacheable.pop(key, None)
            self._count(context, "miss")
            self._status(context, fwd=fwd, fwdStatus=code, stored=refusal is None, detail=refusal)
            tee = None
            if refusal is None:
                # Waiters learn at once that a body too big to store will not be shared.
                tee = _Tee(self.maxObject, (lambda: flight.release(None)) if flight is not None else _nothing)
            runtime.forwarder.startResponse(context, response)
            complete = await runtime.forwarder.relay(context, response, tee=tee)
            if tee is not None and complete and not tee.overflow:
                vary = policy.varyOf(headers) or ()
                fields = self._fields(context)
                stored = StoredResponse(code, response.phrase or b"", policy.storableHeaders(headers, cc),
                                        b"".join(tee.chunks), requestTime, responseTime, vary,
                                        policy.varyValues(vary, fields))
                self._save(key, stored)
                if flight is not None:
                    flight.release(stored)
        finally:
            runtime.forwarder.finished(endpoint)

    @staticmethod
    def _clientConditional(context: RequestContext) -> bool:
        raw = context.request.requestHeaders.getRawHeaders
        return raw(b"if-none-match") is not None or raw(b"if-modified-since") is not None

    async def _writeThrough(self, context: RequestContext, runtime: Any, fwd: str, result: str,
                            detail: str | None = None) -> None:
        """
        Forward and relay without storing.  For unsafe methods, §4.4: a
        non-error answer invalidates the target URI and the same-origin
        Location / Content-Location.
        """
        self._count(context, result)
        try:
            response, endpoint = await runtime.forward(context)
        except UpstreamFailure:
            self._status(context, fwd=fwd, detail=detail or "upstream-failure")
            raise
        try:
            headers = _pairs(response.headers)
            for path, query in policy.invalidationTargets(context.method, response.code, headers, context.host,
                                                          context.path, context.query):
                self._forget(self.key(context, path, query, useContext=False))
            self._status(context, fwd=fwd, fwdStatus=response.code, detail=detail)
            runtime.forwarder.startResponse(context, response)
            await runtime.forwarder.relay(context, response)
        finally:
            runtime.forwarder.finished(endpoint)

    def _serve(self, context: RequestContext, runtime: Any, entry: StoredResponse, age: float, result: str,
               **status: Any) -> None:
        """
        Answer from a stored response: its status and fields as the route's
        response rules would have left them, a fresh C{Age} (§4.2.3), our
        C{Via}, and a 304 instead when the client's own conditions say it
        already has this representation (§4.3.2).
        """
        self._count(context, result)
        request = context.request
        if getattr(request, "gone", False) or request.finished:
            return
        notModified = policy.clientNotModified(request.requestHeaders.getRawHeaders, entry)
        code = 304 if notModified else entry.code
        request.setResponseCode(code, None if notModified else (entry.phrase or None))
        out: Headers = request.responseHeaders
        out.removeHeader(b"date")
        route = context.route
        rules = route.config.headers.response if route is not None else None
        drop = {b"age", b"via", b"content-length", b"cache-status"} | policy.HOP_BY_HOP
        if rules is not None and rules.remove:
            drop |= {h.lower().encode() for h in rules.remove}
        headers = policy.notModifiedFields(entry.headers) if notModified else entry.headers
        vias: list[bytes] = []
        for k, v in headers:
            lk = k.lower()
            if lk == b"via":
                vias.append(v)
            elif lk == b"cache-status":
                out.addRawHeader(k, v)  # an upstream cache's own member stays first (RFC 9211 §2)
            elif lk not in drop:
                out.addRawHeader(k, v)
        out.setRawHeaders(b"Age", [policy.formatDelta(age)])
        out.setRawHeaders(b"Via", vias + [runtime.forwarder.via])
        body = entry.body
        if not notModified and code >= 200 and code not in (204, 304):
            out.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        self._status(context, **status)
        runtime.forwarder.finishHeaders(context)
        if rules is not None:
            for k2, v2 in rules.set:
                out.setRawHeaders(k2.encode(), [v2.encode()])
        if body and not notModified and context.method != _HEAD and code not in (204, 304):
            context.bytesOut += len(body)
            request.write(body)
        request.finish()

    # -- background revalidation (RFC 5861 §3)

    def _revalidateLater(self, key: bytes, entry: StoredResponse, context: RequestContext, runtime: Any,
                         rules: policy.RequestRules) -> None:
        if key in self._revalidating:
            return
        self._revalidating.add(key)
        bg = _detached(context, self.clock)
        d = ensureDeferred(self._refresh(key, entry, bg, runtime, rules))

        def failed(f: Failure) -> None:
            if not f.check(CancelledError):
                log.failure("background revalidation of {key} failed", f, key=key)

        d.addErrback(failed)
        d.addBoth(lambda _: self._revalidating.discard(key))

    async def _refresh(self, key: bytes, entry: StoredResponse, context: RequestContext, runtime: Any,
                       rules: policy.RequestRules) -> None:
        requestTime = self.clock.seconds()
        try:
            response, endpoint = await runtime.forward(context, None, policy.conditionalHeaders(entry) or None)
        except UpstreamFailure as e:
            log.info("background revalidation of {key} got no answer ({reason}); the stale copy stays",
                     key=key, reason=e.reason)
            return
        try:
            responseTime = self.clock.seconds()
            code = response.code
            headers = _pairs(response.headers)
            if code == 304 and policy.notModifiedMatches(entry, headers):
                _discard(response)
                fresh = policy.freshen(entry, headers, requestTime, responseTime)
                if policy.storeRefusal(_GET, fresh.code, fresh.headers, fresh.cacheControl, rules, responseTime,
                                       self.maxTTL, self.defaultTTL) is None:
                    await self.save(key, fresh)
                else:
                    await self.store.delete(key)
                return
            cc = policy.parseCacheControl(policy.headerValues(headers, b"cache-control"))
            refusal = policy.storeRefusal(_GET, code, headers, cc, rules, responseTime, self.maxTTL, self.defaultTTL)
            length = response.length
            if refusal is None and (length is UNKNOWN_LENGTH or length <= self.maxObject):
                done: Deferred[bytes | None] = Deferred()
                response.deliverBody(_BodyCollector(self.maxObject, done))
                body = await done
                if body is not None:
                    vary = policy.varyOf(headers) or ()
                    await self.save(key, StoredResponse(
                        code, response.phrase or b"", policy.storableHeaders(headers, cc), body, requestTime,
                        responseTime, vary, policy.varyValues(vary, self._fields(context))))
                return
            _discard(response)
            if code in policy.ERROR_STATUS:
                return  # keep the stale copy: stale-if-error may still want it
            if 200 <= code < 500 and code != 304:
                await self.store.delete(key)
        finally:
            runtime.forwarder.finished(endpoint)
