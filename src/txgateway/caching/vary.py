# -*- test-case-name: tests.test_caching_policy -*-
"""
Which stored variant answers which request: C{Vary} (RFC 9111 §4.1).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from txgateway.caching.directives import HeaderLookup, HeaderPairs, headerValues, splitList
from txgateway.caching.stored import StoredResponse


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


def normalizedLanguages(values: Sequence[bytes] | None) -> bytes | None:
    """
    §4.1 allows normalising a field whose semantics are known: two
    C{Accept-Language} values (RFC 9110 §12.5.4) match when they name the
    same ranges with the same weights, whatever the case, the order of
    equally weighted ranges, or how a weight is written (C{q=0.50}, C{q=.5}
    is invalid and kept as written).  Ranges are listed by weight, highest
    first, then by name.
    """
    if values is None:
        return None
    ranges: dict[bytes, bytes] = {}
    for member in splitList(values):
        name, _, params = member.partition(b";")
        tag = name.strip().lower()
        weight = b"1"
        for p in params.split(b";"):
            k, _, v = p.strip().partition(b"=")
            if k.strip().lower() == b"q":
                weight = _weight(v.strip())
        if tag and tag not in ranges:
            ranges[tag] = weight
    ordered = sorted(ranges.items(), key=lambda tw: (-_numeric(tw[1]), tw[0]))
    return b",".join(t if w == b"1" else t + b";q=" + w for t, w in ordered)


def _weight(q: bytes) -> bytes:
    """A qvalue (RFC 9110 §12.4.2) without trailing zeros; an invalid one as it was written."""
    try:
        n = float(q)
    except ValueError:
        return q
    if not 0 <= n <= 1:
        return q
    text = (b"%.3f" % n).rstrip(b"0").rstrip(b".")
    return text or b"0"


def _numeric(w: bytes) -> float:
    try:
        return float(w)
    except ValueError:
        return -1.0


# Fields whose values are normalised by their meaning, not only their list syntax.
_NORMALISERS = {b"accept-language": normalizedLanguages}


def varyValues(fields: tuple[bytes, ...], get: HeaderLookup) -> tuple[bytes | None, ...]:
    return tuple(_NORMALISERS.get(f, normalizedField)(get(f)) for f in fields)


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


__all__ = ["normalizedField", "normalizedLanguages", "varyKeySuffix", "varyMatches", "varyOf", "varyValues"]
