# -*- test-case-name: tests.test_caching -*-
"""
Background revalidation (RFC 5861 §3, C{stale-while-revalidate}).

A stale entry served to one client is refreshed behind its back, through the
same L{IForwarder} the cache wraps, with a request detached from the
client's (whose exchange may be over by then).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from txgateway.attempts import UpstreamFailure, discard
from txgateway.caching import policy
from txgateway.caching.exchanges import BodyCollector, detached
from txgateway.caching.keys import originFields
from txgateway.caching.policy import StoredResponse
from txgateway.http.interim import INTERIM

if TYPE_CHECKING:
    from txgateway.caching.flow import ResponseCache
    from txgateway.context import RequestContext
    from txgateway.interfaces import IForwarder

__all__ = ["refresh", "revalidateLater"]

log = Logger(namespace="txgateway.cache")


def _pairs(headers: Any) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, vs in headers.getAllRawHeaders() for v in vs]


_GET = b"GET"


def revalidateLater(cache: ResponseCache, key: bytes, entry: StoredResponse, context: RequestContext,
                    upstream: IForwarder, rules: policy.RequestRules) -> None:
    """Refresh C{entry} in the background (once per key at a time), for a request it was served to stale."""
    if key in cache.revalidating:
        return
    cache.revalidating.add(key)
    bg = detached(context, cache.clock)
    d = ensureDeferred(refresh(cache, key, entry, bg, upstream, rules))

    def failed(f: Failure) -> None:
        if not f.check(CancelledError):
            log.failure("background revalidation of {key} failed", f, key=key)

    d.addErrback(failed)
    d.addBoth(lambda _: cache.revalidating.discard(key))

async def refresh(cache: ResponseCache, key: bytes, entry: StoredResponse, context: RequestContext,
                  upstream: IForwarder, rules: policy.RequestRules) -> None:
    """
    Ask the origin again (conditionally): store what it says, or keep the
    stale copy when it gives no answer or an error (stale-if-error may still
    want it).
    """
    # Started from a client's forward, this coroutine inherited its interim target: the client
    # already has its (stale) answer, so a 1xx of the background request is not for it.
    INTERIM.set(None)
    requestTime = cache.clock.seconds()
    try:
        exchange = await upstream.fetch(context, None, policy.conditionalHeaders(entry) or None)
    except UpstreamFailure as e:
        log.info("background revalidation of {key} got no answer ({reason}); the stale copy stays",
                 key=key, reason=e.reason)
        return
    response = exchange.response
    complete, ours = True, False
    try:
        responseTime = cache.clock.seconds()
        code = response.code
        headers = _pairs(response.headers)
        if code == 304 and policy.notModifiedMatches(entry, headers):
            discard(response)
            fresh = policy.freshen(entry, headers, requestTime, responseTime)
            if policy.storeRefusal(_GET, fresh.code, fresh.headers, fresh.cacheControl, rules, responseTime,
                                   cache.maxTTL, cache.defaultTTL, cache.storeSetCookie) is None:
                await cache.entries.save(key, fresh, cache.maxTTL, cache.defaultTTL)
            else:
                await cache.entries.store.delete(key)
            return
        cc = policy.responseDirectives(headers, cache.targeted)
        refusal = policy.storeRefusal(_GET, code, headers, cc, rules, responseTime, cache.maxTTL, cache.defaultTTL,
                                      cache.storeSetCookie)
        length = response.length
        if refusal is None and (length is UNKNOWN_LENGTH or length <= cache.maxObject):
            done: Deferred[tuple[bytes | None, bool]] = Deferred()
            response.deliverBody(BodyCollector(cache.maxObject, done))
            body, ours = await done
            complete = body is not None
            if body is not None:
                vary = policy.varyOf(headers) or ()
                await cache.entries.save(key, StoredResponse(
                    code, response.phrase or b"", policy.storableHeaders(headers, cc), body, requestTime,
                    responseTime, vary, policy.varyValues(vary, originFields(context))).withTargets(cache.targeted),
                    cache.maxTTL, cache.defaultTTL)
            return
        discard(response)
        if code in policy.ERROR_STATUS:
            return  # keep the stale copy: stale-if-error may still want it
        if 200 <= code < 500 and code != 304:
            await cache.entries.store.delete(key)
    finally:
        # A body the collector gave up on (too big) says nothing about the target.
        exchange.finish(complete, ours)
