# -*- test-case-name: tests.test_caching_policy -*-
"""
Reading the fields a cache decides on: list fields, C{Cache-Control} directives, HTTP dates (RFC 9111 §1.2, §5.2).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterable, Sequence

from twisted.web.http import stringToDatetime

HeaderPairs = Sequence[tuple[bytes, bytes]]
HeaderLookup = Callable[[bytes], "Sequence[bytes] | None"]


# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA = 2**31


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

    __slots__ = ("values", "conflicts", "targeted")

    def __init__(self, values: dict[bytes, bytes | None], conflicts: frozenset[bytes] = frozenset(),
                 targeted: bool = False) -> None:
        self.values = values
        self.conflicts = conflicts
        # RFC 9213 §2.2: read from a targeted field (CDN-Cache-Control...), so Expires is ignored.
        self.targeted = targeted

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


# RFC 9213 §2.1: the targeted fields a CDN-like cache obeys when no other list is configured.
DEFAULT_TARGETED = (b"cdn-cache-control",)


def responseDirectives(headers: HeaderPairs, targeted: Sequence[bytes] = DEFAULT_TARGETED) -> Directives:
    """
    The directives that govern storing and freshness (RFC 9213 §2.1): the
    first of C{targeted} (lower-case names, highest priority first) present
    with a valid, non-empty value, which then replaces C{Cache-Control} and
    C{Expires} altogether; otherwise C{Cache-Control}.  A targeted field is
    a Structured Fields dictionary (RFC 8941 §3.2) whose members read as
    C{Cache-Control} directives do (C{max-age=60, private}); a value that is
    not one (a parameter, an inner list) makes the field invalid, and the
    next one is tried.
    """
    for name in targeted:
        values = headerValues(headers, name)
        if not values:
            continue
        members = splitList(values)
        if not members or any(not _SF_MEMBER.match(m) for m in members):
            continue
        cc = parseCacheControl(members)
        # RFC 8941 booleans: "private=?0" is absent, "private=?1" present.
        present = {k: v for k, v in cc.values.items() if v != b"?0"}
        for k, v in present.items():
            if v == b"?1":
                present[k] = None
        return Directives(present, cc.conflicts, targeted=True)
    return parseCacheControl(headerValues(headers, b"cache-control"))


_SF_MEMBER = re.compile(rb'^[a-z*][a-z0-9_.*-]*(=(\?[01]|-?[0-9]+|"([^"\\]|\\.)*"|[A-Za-z*][A-Za-z0-9!#$%&\'*+.^_`|~:/-]*))?$')

_MONTHS = {m.encode(): i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_DAY = rb"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MON = rb"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = rb"([0-9]{2}):([0-9]{2}):([0-9]{2})"
# RFC 9110 §5.6.7: exactly the three forms, case-sensitive, single spaces, GMT.
_IMF_FIXDATE = re.compile(_DAY + rb", ([0-9]{2}) " + _MON + rb" ([0-9]{4}) " + _TIME + rb" GMT$")
_RFC850 = re.compile(rb"(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), ([0-9]{2})-" + _MON
                     + rb"-([0-9]{2}) " + _TIME + rb" GMT$")
_ASCTIME = re.compile(_DAY + rb" " + _MON + rb" ([ 0-9][0-9]) " + _TIME + rb" ([0-9]{4})$")


def strictHttpDate(value: bytes) -> float | None:
    """
    An HTTP-date exactly as RFC 9110 §5.6.7 writes it (IMF-fixdate, or the
    obsolete RFC 850 and asctime forms), else None.  For C{Expires}, where
    §5.3 of RFC 9111 makes anything else (another zone, a missing comma,
    doubled spaces, a one-digit hour) a time in the past.
    """
    value = value.strip()
    try:
        if m := _IMF_FIXDATE.match(value):
            _, day, mon, year, hh, mm, ss = m.groups()
        elif m := _RFC850.match(value):
            _, day, mon, yy, hh, mm, ss = m.groups()
            # §5.6.7 wants "more than 50 years in the future" read as the past century; without
            # a clock here, a fixed pivot does the same for every date this form still carries.
            year = b"%d" % ((1900 if int(yy) >= 70 else 2000) + int(yy))
        elif m := _ASCTIME.match(value):
            _, mon, day, hh, mm, ss, year = m.groups()
        else:
            return None
        if int(hh) > 23 or int(mm) > 59 or int(ss) > 60:
            return None
        return float(calendar.timegm((int(year), _MONTHS[mon], int(day), int(hh), int(mm), int(ss), 0, 0, 0)))
    except (ValueError, OverflowError):
        return None


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


__all__ = ["MAX_DELTA", "Directives", "HeaderLookup", "HeaderPairs", "RequestRules", "formatDelta", "headerValues",
           "httpDate", "parseCacheControl", "requestRules", "responseDirectives", "splitList", "strictHttpDate",
           "DEFAULT_TARGETED"]
