"""
The rules of a shared HTTP cache (RFC 9111, RFC 5861, RFC 9211), as pure functions.

Nothing here does I/O or reads a clock: every decision is a function of the
request (its parsed directives and a header lookup), the stored response and
C{now}, so each rule can be tested exhaustively with plain numbers and the
cache in L{txgateway.caching.flow} only wires the decisions to the network.

The gateway is a I{shared} cache: C{s-maxage} and C{proxy-revalidate} apply,
C{private} responses are never stored, and a request carrying
C{Authorization} is only answered from the cache when the origin said so.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from urllib.parse import urljoin, urlsplit

from twisted.web.http import datetimeToString, stringToDatetime

from txgateway.http.paths import PathError, normalizeHost, normalizePath

HeaderPairs = Sequence[tuple[bytes, bytes]]
HeaderLookup = Callable[[bytes], "Sequence[bytes] | None"]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA = 2**31
# §4.2.2 allows any heuristic; a day bounds what a long-unchanged resource can earn.
HEURISTIC_FRACTION = 0.1
HEURISTIC_CAP = 86400.0
# How long past its freshness a response is kept: a later request can then
# revalidate it (one small 304) instead of fetching it whole, or use it stale
# when the client allows (max-stale, a request's stale-if-error).
STALE_RETENTION = 600.0

# §4.2.2 / RFC 9110 §15.1: status codes that are heuristically cacheable.
HEURISTIC_STATUS = frozenset((200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501))
# §4.4: methods that are not unsafe never invalidate.
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
# RFC 5861 §4: what counts as an error for stale-if-error.
ERROR_STATUS = frozenset((500, 502, 503, 504))
# §3.1 (RFC 9110 §7.6.1): connection-specific fields are never stored.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"))
# RFC 9110 §15.4.5: representation metadata a 304 leaves out.
_NOT_IN_304 = frozenset((b"content-type", b"content-length", b"content-encoding", b"content-language",
                         b"content-range", b"last-modified"))
# §3.2: a 304 never changes the stored framing.
_NOT_FRESHENED = frozenset((b"content-length",))

_TOKEN = re.compile(rb"^[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*$")


# ---------------------------------------------------------------------------
# Field parsing


def headerValues(headers: HeaderPairs, name: bytes) -> list[bytes]:
    """Every field line of C{name} (lower case) in a stored header list."""
    return [v for k, v in headers if k.lower() == name]


def splitList(values: Iterable[bytes]) -> list[bytes]:
    """
    The members of a comma-separated list field, quote-aware (an entity tag
    may contain a comma), whitespace trimmed, empty members dropped.
    """
    out: list[bytes] = []
    for value in values:
        start = 0
        quoted = False
        escaped = False
        for i, c in enumerate(value):
            if escaped:
                escaped = False
            elif quoted and c == 0x5C:  # backslash
                escaped = True
            elif c == 0x22:  # double quote
                quoted = not quoted
            elif c == 0x2C and not quoted:  # comma
                item = value[start:i].strip()
                if item:
                    out.append(item)
                start = i + 1
        item = value[start:].strip()
        if item:
            out.append(item)
    return out


def _unquote(value: bytes) -> bytes:
    if len(value) >= 2 and value[:1] == b'"' and value[-1:] == b'"':
        return re.sub(rb"\\(.)", rb"\1", value[1:-1])
    return value


class Directives:
    """
    Parsed C{Cache-Control} (§5.2).  Names are lower case; a directive given
    twice with different arguments is remembered as conflicting, which the
    freshness rules treat as stale (§4.2.1 allows either that or the first).
    """

    __slots__ = ("values", "conflicts")

    def __init__(self, values: dict[bytes, bytes | None], conflicts: frozenset[bytes] = frozenset()) -> None:
        self.values = values
        self.conflicts = conflicts

    def __contains__(self, name: object) -> bool:
        return name in self.values

    def __repr__(self) -> str:
        return f"<Directives {self.values!r}>"

    def argument(self, name: bytes) -> bytes | None:
        return self.values.get(name)

    def seconds(self, name: bytes) -> int | None:
        """
        The delta-seconds of C{name}; None when absent; -1 when present but
        invalid or conflicting (the caller decides what invalid means).
        """
        if name not in self.values:
            return None
        if name in self.conflicts:
            return -1
        arg = self.values[name]
        if arg is None or not arg.isdigit():
            return -1
        return min(int(arg), MAX_DELTA)

    def fieldNames(self, name: bytes) -> frozenset[bytes] | None:
        """
        The field names of a qualified C{private} or C{no-cache}
        (§5.2.2.4, §5.2.2.7); None when the directive is unqualified or absent.
        """
        arg = self.values.get(name)
        if arg is None:
            return None
        return frozenset(n.lower() for n in splitList([arg]))


def parseCacheControl(values: Iterable[bytes] | None) -> Directives:
    found: dict[bytes, bytes | None] = {}
    conflicts: set[bytes] = set()
    for item in splitList(values or ()):
        eq = item.find(b"=")
        if eq == -1:
            name, arg = item.strip().lower(), None
        else:
            name, arg = item[:eq].strip().lower(), _unquote(item[eq + 1:].strip())
        if not name:
            continue
        if name in found:
            if found[name] != arg:
                conflicts.add(name)
            continue
        found[name] = arg
    return Directives(found, frozenset(conflicts))


def httpDate(value: bytes | None) -> float | None:
    """An HTTP-date (any of the three RFC 9110 §5.6.7 forms) as epoch seconds, or None."""
    if value is None:
        return None
    try:
        return float(stringToDatetime(value.strip()))
    except (ValueError, IndexError, KeyError, TypeError, OverflowError):
        return None


def formatDelta(seconds: float) -> bytes:
    return b"%d" % max(0, min(int(seconds), MAX_DELTA))


# ---------------------------------------------------------------------------
# The request


class RequestRules:
    """What a request's own directives (§5.2.1) and credentials ask of the cache."""

    __slots__ = ("noStore", "noCache", "maxAge", "maxStale", "minFresh", "onlyIfCached", "staleIfError",
                 "hasAuthorization")

    def __init__(self, noStore: bool = False, noCache: bool = False, maxAge: int | None = None,
                 maxStale: float | None = None, minFresh: int | None = None, onlyIfCached: bool = False,
                 staleIfError: int | None = None, hasAuthorization: bool = False) -> None:
        self.noStore = noStore
        self.noCache = noCache
        self.maxAge = maxAge
        self.maxStale = maxStale  # None: not given; inf: any staleness
        self.minFresh = minFresh
        self.onlyIfCached = onlyIfCached
        self.staleIfError = staleIfError
        self.hasAuthorization = hasAuthorization


_PLAIN_REQUEST = RequestRules()


def requestRules(get: HeaderLookup) -> RequestRules:
    """
    The request's directives.  Invalid arguments are ignored (a client
    cannot make the cache misbehave by sending garbage); C{Pragma: no-cache}
    counts only when there is no C{Cache-Control} (§5.4).
    """
    ccValues = get(b"cache-control")
    auth = get(b"authorization") is not None
    if not ccValues:
        pragma = get(b"pragma")
        noCache = bool(pragma) and any(p.lower() == b"no-cache" for p in splitList(pragma or ()))
        if not noCache and not auth:
            return _PLAIN_REQUEST
        return RequestRules(noCache=noCache, hasAuthorization=auth)
    cc = parseCacheControl(ccValues)

    def valid(name: bytes) -> int | None:
        v = cc.seconds(name)
        return None if v is None or v < 0 else v

    maxStale: float | None = None
    if b"max-stale" in cc:
        arg = cc.argument(b"max-stale")
        if arg is None:
            maxStale = float("inf")
        else:
            v = cc.seconds(b"max-stale")
            maxStale = None if v is None or v < 0 else float(v)
    return RequestRules(
        noStore=b"no-store" in cc, noCache=b"no-cache" in cc, maxAge=valid(b"max-age"), maxStale=maxStale,
        minFresh=valid(b"min-fresh"), onlyIfCached=b"only-if-cached" in cc,
        staleIfError=valid(b"stale-if-error"), hasAuthorization=auth,
    )


# ---------------------------------------------------------------------------
# The stored response


class StoredResponse:
    """
    One response as the cache keeps it: the origin's status and header
    fields (minus what §3.1 forbids storing), the body, and the two clock
    readings §4.2.3 needs to compute its age later.

    C{varyFields}/C{varyValues} are the request fields the origin's C{Vary}
    nominated and their normalised values in the request that caused the
    response to be stored (§4.1).
    """

    __slots__ = ("code", "phrase", "headers", "body", "requestTime", "responseTime", "varyFields",
                 "varyValues", "_cc")

    def __init__(self, code: int, phrase: bytes, headers: HeaderPairs, body: bytes, requestTime: float,
                 responseTime: float, varyFields: tuple[bytes, ...] = (),
                 varyValues: tuple[bytes | None, ...] = ()) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = tuple(headers)
        self.body = body
        self.requestTime = requestTime
        self.responseTime = responseTime
        self.varyFields = varyFields
        self.varyValues = varyValues
        self._cc: Directives | None = None

    def __repr__(self) -> str:
        return f"<StoredResponse {self.code} {len(self.body)} bytes>"

    @property
    def cacheControl(self) -> Directives:
        cc = self._cc
        if cc is None:
            cc = self._cc = parseCacheControl(headerValues(self.headers, b"cache-control"))
        return cc

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def size(self) -> int:
        """Roughly what the entry costs in memory, for the store's byte bound."""
        return len(self.body) + sum(len(k) + len(v) + 16 for k, v in self.headers) + 200


def storableHeaders(headers: HeaderPairs, cc: Directives) -> list[tuple[bytes, bytes]]:
    """
    The fields that may be stored (§3.1): no hop-by-hop fields, none named
    in C{Connection}, and none named by a qualified C{private} (§5.2.2.7),
    which a shared cache must not store.
    """
    drop = set(HOP_BY_HOP)
    for token in splitList(headerValues(headers, b"connection")):
        drop.add(token.lower())
    private = cc.fieldNames(b"private")
    if private:
        drop |= private
    return [(k, v) for k, v in headers if k.lower() not in drop]


# ---------------------------------------------------------------------------
# Freshness (§4.2)


def _dateOf(headers: HeaderPairs, fallback: float) -> float:
    """The origin's Date, or when the response arrived when it has none or a bad one (RFC 9110 §6.6.1)."""
    values = headerValues(headers, b"date")
    date = httpDate(values[0]) if values else None
    return fallback if date is None else date


def freshnessLifetime(code: int, headers: HeaderPairs, cc: Directives, responseTime: float,
                      maxTTL: float | None) -> float:
    """
    §4.2.1: s-maxage (a shared cache), then max-age, then Expires minus
    Date; otherwise a heuristic (§4.2.2) only for heuristically cacheable
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
        expires = headerValues(headers, b"expires")
        if expires:
            when = httpDate(expires[0])
            # §5.3: an invalid Expires (notably "0") is a time in the past.
            lifetime = 0.0 if when is None else max(0.0, when - _dateOf(headers, responseTime))
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


def lifetimeOf(entry: StoredResponse, maxTTL: float | None) -> float:
    return freshnessLifetime(entry.code, entry.headers, entry.cacheControl, entry.responseTime, maxTTL)


def currentAge(entry: StoredResponse, now: float) -> float:
    """
    §4.2.3: the larger of the apparent age (our arrival time minus the
    origin's Date) and the Age the response came with corrected by how long
    the request took, plus how long it has been resident here.
    """
    ageValues = headerValues(entry.headers, b"age")
    ageValue = 0
    if ageValues:
        raw = ageValues[0].strip()
        ageValue = min(int(raw), MAX_DELTA) if raw.isdigit() else 0
    date = _dateOf(entry.headers, entry.responseTime)
    apparent = max(0.0, entry.responseTime - date)
    delay = max(0.0, entry.responseTime - entry.requestTime)
    initial = max(apparent, ageValue + delay)
    return initial + max(0.0, now - entry.responseTime)


def hasValidator(headers: HeaderPairs) -> bool:
    return any(k.lower() in (b"etag", b"last-modified") for k, _ in headers)


# ---------------------------------------------------------------------------
# Storing (§3)


def varyOf(headers: HeaderPairs) -> tuple[bytes, ...] | None:
    """The request fields C{Vary} nominates (lower case, sorted, unique); None for C{*} (§4.1)."""
    names = {n.lower() for n in splitList(headerValues(headers, b"vary"))}
    if b"*" in names:
        return None
    return tuple(sorted(names))


def normalizedField(values: Sequence[bytes] | None) -> bytes | None:
    """
    §4.1: two requests' fields match when they differ only in whitespace
    around list members or in how many lines they were sent on.
    """
    if values is None:
        return None
    return b",".join(splitList(values))


def varyValues(fields: tuple[bytes, ...], get: HeaderLookup) -> tuple[bytes | None, ...]:
    return tuple(normalizedField(get(f)) for f in fields)


def varyMatches(entry: StoredResponse, get: HeaderLookup) -> bool:
    """§4.1: every nominated field must match (absent matches only absent)."""
    return varyValues(entry.varyFields, get) == entry.varyValues


def varyKeySuffix(values: tuple[bytes | None, ...]) -> bytes:
    """A short, stable digest of a request's nominated values: the secondary cache key."""
    h = hashlib.blake2b(digest_size=12)
    for v in values:
        if v is None:
            h.update(b"\x00")
        else:
            h.update(b"\x01%d:" % len(v))
            h.update(v)
    return h.hexdigest().encode()


def storeRefusal(method: bytes, code: int, headers: HeaderPairs, cc: Directives, rules: RequestRules,
                 responseTime: float, maxTTL: float | None) -> str | None:
    """
    Why this response must not (or need not) be stored, as a short token for
    C{Cache-Status} C{detail}; None when it is storable.

    §3 for a shared cache, plus two choices of this gateway: a response
    with C{Set-Cookie} is not stored (RFC 9111 permits it, but replaying one
    client's cookie to another is the classic shared-cache leak; the origin
    can send C{private="Set-Cookie"} to have the rest stored), and a
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
    if headerValues(headers, b"set-cookie"):
        private = cc.fieldNames(b"private")
        if private is None or b"set-cookie" not in private:
            return "set-cookie"
    explicit = (b"public" in cc or b"max-age" in cc or b"s-maxage" in cc or bool(headerValues(headers, b"expires")))
    if not explicit and code not in HEURISTIC_STATUS:
        return "status"
    lifetime = freshnessLifetime(code, headers, cc, responseTime, maxTTL)
    if lifetime <= 0 and not hasValidator(headers) and not _staleExtension(cc):
        return "stale"
    return None


def _staleExtension(cc: Directives) -> bool:
    return (cc.seconds(b"stale-while-revalidate") or 0) > 0 or (cc.seconds(b"stale-if-error") or 0) > 0


def _neverStale(cc: Directives) -> bool:
    """§4.2.4: directives that forbid serving this response stale at all."""
    return b"must-revalidate" in cc or b"proxy-revalidate" in cc or b"no-cache" in cc


def retention(entry: StoredResponse, now: float, maxTTL: float | None) -> float:
    """
    How long the store should keep the entry: its remaining freshness plus
    the longest window in which it may still be used stale (RFC 5861) or
    revalidated or served to a client's max-stale (L{STALE_RETENTION}).
    """
    cc = entry.cacheControl
    remaining = max(0.0, lifetimeOf(entry, maxTTL) - currentAge(entry, now))
    extra = float(max(STALE_RETENTION, cc.seconds(b"stale-while-revalidate") or 0,
                      cc.seconds(b"stale-if-error") or 0))
    return remaining + extra


# ---------------------------------------------------------------------------
# Reusing (§4)

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


def assess(entry: StoredResponse, rules: RequestRules, now: float, maxTTL: float | None) -> Assessment:
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
    lifetime = lifetimeOf(entry, maxTTL)
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
    if _neverStale(cc):
        return Assessment(VALIDATE, "stale", age, lifetime)
    if rules.maxStale is not None and b"s-maxage" not in cc and staleness <= rules.maxStale:
        return Assessment(STALE_OK, "", age, lifetime)
    swr = cc.seconds(b"stale-while-revalidate")
    if swr is not None and swr > 0 and staleness <= swr and rules.minFresh is None:
        return Assessment(REVALIDATE_LATER, "", age, lifetime)
    return Assessment(VALIDATE, "stale", age, lifetime)


def staleIfError(entry: StoredResponse, rules: RequestRules, now: float, maxTTL: float | None) -> bool:
    """
    RFC 5861 §4: after an error (a 500, 502, 503 or 504, or no answer at
    all) the stored response may be used if it is not staler than the
    response's or the request's C{stale-if-error} allows, unless the
    response forbids stale use outright.
    """
    cc = entry.cacheControl
    if _neverStale(cc):
        return False
    staleness = currentAge(entry, now) - lifetimeOf(entry, maxTTL)
    windows = [w for w in (cc.seconds(b"stale-if-error"), rules.staleIfError) if w is not None and w >= 0]
    return any(staleness <= w for w in windows)


# ---------------------------------------------------------------------------
# Validation (§4.3)


def conditionalHeaders(entry: StoredResponse) -> list[tuple[bytes, bytes]]:
    """§4.3.1: the stored ETag as If-None-Match and Last-Modified as If-Modified-Since."""
    out = []
    etag = entry.header(b"etag")
    if etag is not None:
        out.append((b"If-None-Match", etag))
    lm = entry.header(b"last-modified")
    if lm is not None:
        out.append((b"If-Modified-Since", lm))
    return out


def _opaque(tag: bytes) -> bytes:
    tag = tag.strip()
    return tag[2:] if tag[:2] == b"W/" else tag


def notModifiedMatches(entry: StoredResponse, headers: HeaderPairs) -> bool:
    """
    §4.3.4: does this 304 speak for the stored response?  By entity tag when
    it carries one, else by Last-Modified, else (neither) it does when the
    stored response has no validator either.
    """
    etag = headerValues(headers, b"etag")
    if etag:
        mine = entry.header(b"etag")
        return mine is not None and _opaque(mine) == _opaque(etag[0])
    lm = headerValues(headers, b"last-modified")
    if lm:
        mine = entry.header(b"last-modified")
        return mine is not None and httpDate(mine) == httpDate(lm[0])
    return True


def freshen(entry: StoredResponse, headers: HeaderPairs, requestTime: float, responseTime: float) -> StoredResponse:
    """
    §3.2 and §4.3.4: the stored response with the 304's fields replacing
    its own (except hop-by-hop fields and Content-Length), timed as if it
    had just arrived.
    """
    incoming = storableHeaders(headers, parseCacheControl(headerValues(headers, b"cache-control")))
    replaced = {k.lower() for k, _ in incoming if k.lower() not in _NOT_FRESHENED}
    merged = [(k, v) for k, v in entry.headers if k.lower() not in replaced]
    merged.extend((k, v) for k, v in incoming if k.lower() in replaced)
    # The old Age and Date described the old exchange; without new ones the
    # 304's arrival is the best statement of when this copy was last known good.
    if b"age" not in replaced:
        merged = [(k, v) for k, v in merged if k.lower() != b"age"]
    if b"date" not in replaced:
        merged = [(k, v) for k, v in merged if k.lower() != b"date"]
        merged.append((b"Date", datetimeToString(int(responseTime))))
    return StoredResponse(entry.code, entry.phrase, merged, entry.body, requestTime, responseTime,
                          entry.varyFields, entry.varyValues)


def clientNotModified(get: HeaderLookup, entry: StoredResponse) -> bool:
    """
    §4.3.2: answer a client's own conditional GET/HEAD from the stored
    response.  If-None-Match (weak comparison) wins over If-Modified-Since
    (RFC 9110 §13.2.2), which is compared with Last-Modified, else Date.
    """
    if entry.code != 200:
        return False
    inm = get(b"if-none-match")
    if inm:
        tags = splitList(inm)
        if b"*" in tags:
            return True
        mine = entry.header(b"etag")
        if mine is None:
            return False
        return _opaque(mine) in {_opaque(t) for t in tags}
    ims = get(b"if-modified-since")
    if ims:
        since = httpDate(ims[0])
        if since is None:
            return False
        modified = httpDate(entry.header(b"last-modified")) or httpDate(entry.header(b"date"))
        return modified is not None and modified <= since
    return False


def notModifiedFields(headers: HeaderPairs) -> list[tuple[bytes, bytes]]:
    """The fields of a 304 made from a stored 200: all but representation metadata (RFC 9110 §15.4.5)."""
    return [(k, v) for k, v in headers if k.lower() not in _NOT_IN_304]


# ---------------------------------------------------------------------------
# Invalidation (§4.4)


def invalidationTargets(method: bytes, code: int, headers: HeaderPairs, host: str, path: str,
                        query: bytes | None) -> list[tuple[str, bytes | None]]:
    """
    §4.4: a non-error answer to an unsafe method invalidates the target URI
    and the URIs in Location and Content-Location when they have the same
    origin (here: the same host; the gateway serves one scheme per listener).
    Returned as (normalised path, query) pairs.
    """
    if method in SAFE_METHODS or not 200 <= code < 400:
        return []
    out: list[tuple[str, bytes | None]] = [(path, query)]
    base = path + ("?" + query.decode("latin-1") if query is not None else "")
    for name in (b"location", b"content-location"):
        for value in headerValues(headers, name):
            try:
                ref = urljoin(base, value.decode("latin-1").strip())
                parts = urlsplit(ref)
                if parts.netloc and normalizeHost(parts.netloc) != host:
                    continue
                if parts.scheme not in ("", "http", "https"):
                    continue
                target = (normalizePath((parts.path or "/").encode("latin-1")),
                          parts.query.encode("latin-1") if parts.query else None)
            except (PathError, ValueError, UnicodeError):
                continue
            if target not in out:
                out.append(target)
    return out


# ---------------------------------------------------------------------------
# Cache-Status (RFC 9211)


def cacheStatus(name: bytes, *, hit: bool = False, fwd: str | None = None, fwdStatus: int | None = None,
                stored: bool = False, collapsed: bool = False, ttl: float | None = None,
                detail: str | None = None) -> bytes:
    """One member of the C{Cache-Status} list, parameters in the RFC's order."""
    parts = [name]
    if hit:
        parts.append(b"hit")
    if fwd is not None:
        parts.append(b"fwd=" + fwd.encode())
    if fwdStatus is not None:
        parts.append(b"fwd-status=%d" % fwdStatus)
    if stored:
        parts.append(b"stored")
    if collapsed:
        parts.append(b"collapsed")
    if ttl is not None:
        parts.append(b"ttl=%d" % int(ttl))
    if detail is not None:
        parts.append(b"detail=" + detail.encode())
    return b"; ".join(parts)


def cacheName(pseudonym: str) -> bytes:
    """The cache's identifier: the Via pseudonym, as an sf-token when it is one, else an sf-string."""
    raw = pseudonym.encode("ascii", "replace")
    if _TOKEN.match(raw):
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
