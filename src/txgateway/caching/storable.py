# -*- test-case-name: tests.test_caching_policy -*-
"""
Whether a response may be stored, and how long it is kept (RFC 9111 §3).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

from txgateway.caching.directives import Directives, HeaderPairs, RequestRules, headerValues
from txgateway.caching.freshness import (
    HEURISTIC_STATUS,
    currentAge,
    freshnessLifetime,
    hasValidator,
    lifetimeOf,
)
from txgateway.caching.stored import StoredResponse
from txgateway.caching.vary import varyOf

# How long past its freshness a response is kept: a later request can then
# revalidate it (one small 304) instead of fetching it whole, or use it stale
# when the client allows (max-stale, a request's stale-if-error).
STALE_RETENTION = 600.0


def storeRefusal(method: bytes, code: int, headers: HeaderPairs, cc: Directives, rules: RequestRules,
                 responseTime: float, maxTTL: float | None, defaultTTL: float | None = None,
                 storeSetCookie: bool = False) -> str | None:
    """
    Why this response must not (or need not) be stored, as a short token for
    C{Cache-Status} C{detail}; None when it is storable.

    §3 for a shared cache, plus two choices of this gateway: a response
    with C{Set-Cookie} is not stored (RFC 9111 permits it, but replaying one
    client's cookie to another is the classic shared-cache leak; the origin
    can send C{private="Set-Cookie"} to have the rest stored; a route opts
    in with C{store_set_cookie}, C{storeSetCookie} here), and a
    response nobody could reuse (no freshness, no validator, no stale
    extension) is not stored.
    """
    if method != b"GET":
        return "method"
    if code < 200 or code in (206, 304) or code > 599:
        return "status"
    if rules.noStore or b"no-store" in cc:
        return "no-store"
    if b"private" in cc and cc.fieldNames(b"private") is None:
        return "private"
    if rules.hasAuthorization and not (b"public" in cc or b"s-maxage" in cc or b"must-revalidate" in cc):
        return "authorization"
    if varyOf(headers) is None:
        return "vary-star"
    if not storeSetCookie and headerValues(headers, b"set-cookie"):
        private = cc.fieldNames(b"private")
        if private is None or b"set-cookie" not in private:
            return "set-cookie"
    explicit = (b"public" in cc or b"max-age" in cc or b"s-maxage" in cc
                or (not cc.targeted and bool(headerValues(headers, b"expires"))))
    if not explicit and code not in HEURISTIC_STATUS:
        return "status"
    lifetime = freshnessLifetime(code, headers, cc, responseTime, maxTTL, defaultTTL)
    if lifetime <= 0 and not hasValidator(headers) and not _staleExtension(cc):
        return "stale"
    return None


def _staleExtension(cc: Directives) -> bool:
    return (cc.seconds(b"stale-while-revalidate") or 0) > 0 or (cc.seconds(b"stale-if-error") or 0) > 0


def retention(entry: StoredResponse, now: float, maxTTL: float | None, defaultTTL: float | None = None,
              staleOnError: float = 0.0) -> float:
    """
    How long the store should keep the entry: its remaining freshness plus
    the longest window in which it may still be used stale (RFC 5861) or
    revalidated or served to a client's max-stale (L{STALE_RETENTION}), or
    served when the origin fails (the route's C{serve_stale_on_error}).
    """
    cc = entry.cacheControl
    remaining = max(0.0, lifetimeOf(entry, maxTTL, defaultTTL) - currentAge(entry, now))
    extra = float(max(STALE_RETENTION, cc.seconds(b"stale-while-revalidate") or 0,
                      cc.seconds(b"stale-if-error") or 0, staleOnError))
    return remaining + extra


__all__ = ["STALE_RETENTION", "retention", "storeRefusal"]
