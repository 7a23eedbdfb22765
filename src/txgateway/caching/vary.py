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


__all__ = ["normalizedField", "varyKeySuffix", "varyMatches", "varyOf", "varyValues"]
