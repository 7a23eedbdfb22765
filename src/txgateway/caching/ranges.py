# -*- test-case-name: tests.test_caching_policy -*-
"""
Answering a C{Range} request from a stored complete response (RFC 9110 §14, RFC 9111 §3.3).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
A single byte range is served as a 206 with C{Content-Range}; a range
beyond the end is a 416; anything else (several ranges, another unit, a
malformed header, an C{If-Range} that does not match) gets the whole
stored response, which RFC 9110 §14.2 allows a server to send instead.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from txgateway.caching.directives import HeaderLookup, httpDate
from txgateway.caching.stored import StoredResponse

__all__ = ["UNSATISFIABLE", "byteRange", "ifRangeMatches", "requestedSpan"]

UNSATISFIABLE = (-1, -1)
_SPEC = re.compile(rb"^\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*$", re.I)


def byteRange(header: bytes, length: int) -> tuple[int, int] | None:
    """
    §14.1.2: the one range C{header} asks of a C{length}-byte body, as
    C{(first, last)} inclusive; L{UNSATISFIABLE} when it lies past the end
    (§15.5.17: a 416); None when the whole response should be sent instead.
    """
    m = _SPEC.match(header)
    if m is None:
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = int(last) if last else length - 1
        if last and end < start:
            return None  # invalid: §14.1.1 says ignore it
        if start >= length:
            return UNSATISFIABLE
        return start, min(end, length - 1)
    if not last:
        return None
    suffix = int(last)
    if suffix == 0 or length == 0:
        return UNSATISFIABLE
    return max(0, length - suffix), length - 1


def ifRangeMatches(value: bytes, entry: StoredResponse) -> bool:
    """
    §13.1.5: an entity tag matches the stored ETag by strong comparison
    (a weak tag never does); a date matches only a Last-Modified equal to it.
    """
    value = value.strip()
    if value[:1] == b'"' or value[:2] == b"W/":
        mine = entry.header(b"etag")
        return mine is not None and value[:2] != b"W/" and mine.strip()[:2] != b"W/" and mine.strip() == value
    when = httpDate(value)
    modified = httpDate(entry.header(b"last-modified"))
    return when is not None and modified is not None and when == modified


def requestedSpan(get: HeaderLookup, entry: StoredResponse, ranged: Sequence[bytes]) -> tuple[int, int] | None:
    """RFC 9110 §14.2, §13.1.5: the one range of C{entry} to serve for these C{Range} lines, or None for all of it."""
    if len(ranged) != 1:
        return None
    ifRange = get(b"if-range")
    if ifRange is not None and (len(ifRange) != 1 or not ifRangeMatches(ifRange[0], entry)):
        return None
    return byteRange(ranged[0], len(entry.body))
