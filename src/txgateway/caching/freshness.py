# -*- test-case-name: tests.test_caching_policy -*-
"""
How long a stored response is fresh, how old it is, and what a request may do with it (RFC 9111 §4.2, RFC 5861).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

from txgateway.caching.directives import (
    MAX_DELTA,
    Directives,
    HeaderPairs,
    RequestRules,
    headerValues,
    httpDate,
    splitList,
    strictHttpDate,
)
from txgateway.caching.stored import StoredResponse

# §4.2.2 allows any heuristic; a day bounds what a long-unchanged resource can earn.
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP = 86400.0


# §4.2.2 / RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUS = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
# A route's cache.default_ttl (like nginx's proxy_cache_valid without codes) gives freshness to these
# when the response has none of its own: success and permanent redirects, never an error.
DEFAULT_TTL_STATUS = frozenset((200, 203, 204, 300, 301, 308))


# RFC 5861 §4: what counts as an error for stale-if-error.
ERROR_STATUS = frozenset((500, 502, 503, 504))


def _dateOf(headers: HeaderPairs, fallback: float) -> float:
    """The origin's Date, or when the response arrived when it has none or a bad one (RFC 9110 §6.6.1)."""
    values = headerValues(headers, b"date")
    date = httpDate(values[0]) if values else None
    return fallback if date is None else date


def freshnessLifetime(code: int, headers: HeaderPairs, cc: Directives, responseTime: float,
                      maxTTL: float | None, defaultTTL: float | None = None) -> float:
    """
    §4.2.1: s-maxage (a shared cache), then max-age, then Expires minus
    Date; otherwise the route's C{defaultTTL} for L{DEFAULT_TTL_STATUS}
    when it has one, else a heuristic (§4.2.2) only for heuristically cacheable
    status codes or C{public}, as 10% of the time since Last-Modified.  An
    invalid or conflicting value means stale (0).  C{maxTTL} caps the result.
    """
    lifetime: float
    smax = cc.seconds(b"s-maxage")
    maxAge = cc.seconds(b"max-age")
    if smax is not None:
        lifetime = max(0, smax)
    elif maxAge is not None:
        lifetime = max(0, maxAge)
    else:
        # RFC 9213 §2.2: a targeted field replaces Expires as well as Cache-Control.
        expires = [] if cc.targeted else headerValues(headers, b"expires")
        if expires:
            # §5.3: an invalid Expires (notably "0", another zone than GMT, a date not written
            # exactly as RFC 9110 §5.6.7 says, or two Expires lines) is a time in the past.
            when = strictHttpDate(expires[0]) if len(expires) == 1 else None
            lifetime = 0.0 if when is None else max(0.0, when - _dateOf(headers, responseTime))
        elif defaultTTL is not None and code in DEFAULT_TTL_STATUS:
            lifetime = defaultTTL
        elif code in HEURISTIC_STATUS or b"public" in cc:
            lm = headerValues(headers, b"last-modified")
            modified = httpDate(lm[0]) if lm else None
            if modified is None:
                lifetime = 0.0
            else:
                since = _dateOf(headers, responseTime) - modified
                lifetime = min(HEURISTIC_CAP, max(0.0, since * HEURISTIC_FRACTION))
        else:
            lifetime = 0.0
    if maxTTL is not None and lifetime > maxTTL:
        lifetime = maxTTL
    return float(lifetime)


def neverStale(cc: Directives) -> bool:
    """§4.2.4: directives that forbid serving this response stale at all."""
    return b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"no-cache" in cc


def lifetimeOf(entry: StoredResponse, maxTTL: float | None, defaultTTL: float | None = None) -> float:
    return freshnessLifetime(entry.code, entry.headers, entry.cacheControl, entry.responseTime, maxTTL, defaultTTL)


def currentAge(entry: StoredResponse, now: float) -> float:
    """
    §4.2.3: the larger of the apparent age (our arrival time minus the
    origin's Date) and the Age the response came with corrected by how long
    the request took, plus how long it has been resident here.
    """
    ageValue = ageOf(entry.headers)
    date = _dateOf(entry.headers, entry.responseTime)
    apparent = max(0.0, entry.responseTime - date)
    delay = max(0.0, entry.responseTime - entry.requestTime)
    initial = max(apparent, ageValue + delay)
    return initial + max(0.0, now - entry.responseTime)


def ageOf(headers: HeaderPairs) -> int:
    """
    §5.1: the origin's C{Age}.  A list (one line C{7200, 0}, or several
    lines) counts by its first member, as §5.1 says, so a list cannot hide
    a large age behind a small one; a value that is not a non-negative
    integer is ignored (0), as §5.1 says too (the apparent age from C{Date}
    still counts).
    """
    members = splitList(headerValues(headers, b"age"))
    if not members or not members[0].isdigit():
        return 0
    return min(int(members[0]), MAX_DELTA)


def hasValidator(headers: HeaderPairs) -> bool:
    return any(k.lower() in (b"etag", b"last-modified") for k, _ in headers)


FRESH = "fresh"  # serve it
STALE_OK = "stale-ok"  # serve it stale: the client allowed it (max-stale)
REVALIDATE_LATER = "stale-while-revalidate"  # serve it stale, revalidate in the background (RFC 5861 §3)
VALIDATE = "validate"  # forward (conditionally when it has validators) before using it


class Assessment:
    """What may be done with a stored response for one request, and the numbers behind it."""

    __slots__ = ("action", "reason", "age", "lifetime")

    def __init__(self, action: str, reason: str, age: float, lifetime: float) -> None:
        self.action = action
        self.reason = reason  # for VALIDATE: "stale" or "request" (RFC 9211 fwd values)
        self.age = age
        self.lifetime = lifetime

    @property
    def ttl(self) -> float:
        """Remaining freshness, negative once stale (RFC 9211 §2.7)."""
        return self.lifetime - self.age

    def __repr__(self) -> str:
        return f"<Assessment {self.action} {self.reason} age={self.age:.1f} lifetime={self.lifetime:.1f}>"


def assess(entry: StoredResponse, rules: RequestRules, now: float, maxTTL: float | None,
           defaultTTL: float | None = None) -> Assessment:
    """
    §4 and §4.2.4 with RFC 5861: whether a stored response (already matched
    on URI and Vary) can be used for this request as it is.

    A fresh response is used unless the response says C{no-cache} (always
    validate, §5.2.2.4) or the request's C{no-cache}, C{max-age} or
    C{min-fresh} asks for more (§5.2.1).  A stale one is used only when the
    client allows it with C{max-stale}, or the origin with
    C{stale-while-revalidate}, and never when C{must-revalidate},
    C{proxy-revalidate} or C{no-cache} forbid it; C{s-maxage} also forbids
    C{max-stale} (§5.2.2.10) but not the origin's own C{stale-while-revalidate}.
    """
    cc = entry.cacheControl
    age = currentAge(entry, now)
    lifetime = lifetimeOf(entry, maxTTL, defaultTTL)
    if b"no-cache" in cc:
        return Assessment(VALIDATE, "stale", age, lifetime)
    if rules.noCache:
        return Assessment(VALIDATE, "request", age, lifetime)
    if rules.maxAge is not None and age > rules.maxAge:
        return Assessment(VALIDATE, "request", age, lifetime)
    if lifetime > age:
        if rules.minFresh is not None and lifetime - age < rules.minFresh:
            return Assessment(VALIDATE, "request", age, lifetime)
        return Assessment(FRESH, "", age, lifetime)
    staleness = age - lifetime
    if neverStale(cc):
        return Assessment(VALIDATE, "stale", age, lifetime)
    if rules.maxStale is not None and b"s-maxage" not in cc and staleness <= rules.maxStale:
        return Assessment(STALE_OK, "", age, lifetime)
    swr = cc.seconds(b"stale-while-revalidate")
    if swr is not None and swr > 0 and staleness <= swr and rules.minFresh is None:
        return Assessment(REVALIDATE_LATER, "", age, lifetime)
    return Assessment(VALIDATE, "stale", age, lifetime)


def staleIfError(entry: StoredResponse, rules: RequestRules, now: float, maxTTL: float | None,
                 defaultTTL: float | None = None, onError: float = 0.0) -> str | None:
    """
    RFC 5861 §4: after an error (a 500, 502, 503 or 504, or no answer at
    all) the stored response may be used if it is not staler than the
    response's or the request's C{stale-if-error} allows, unless the
    response forbids stale use outright.  RFC 9111 §4.2.4 also lets a cache
    disconnected from the origin serve stale: the route's
    C{serve_stale_on_error} (C{onError} seconds), never where
    C{must-revalidate}, C{proxy-revalidate}, C{no-cache} or C{s-maxage}
    (§5.2.2.10) forbid it.  The reason for C{Cache-Status} C{detail}, or None.
    """
    cc = entry.cacheControl
    if neverStale(cc):
        return None
    staleness = currentAge(entry, now) - lifetimeOf(entry, maxTTL, defaultTTL)
    windows = [w for w in (cc.seconds(b"stale-if-error"), rules.staleIfError) if w is not None and w >= 0]
    if any(staleness <= w for w in windows):
        return "stale-if-error"
    if onError > 0 and b"s-maxage" not in cc and staleness <= onError:
        return "serve-stale-on-error"
    return None


__all__ = ["ERROR_STATUS", "FRESH", "HEURISTIC_CAP", "HEURISTIC_FRACTION", "HEURISTIC_STATUS", "REVALIDATE_LATER",
           "STALE_OK", "VALIDATE", "Assessment", "ageOf", "assess", "currentAge", "freshnessLifetime", "hasValidator",
           "lifetimeOf", "neverStale", "staleIfError"]
