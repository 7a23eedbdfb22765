# -*- test-case-name: tests.test_caching_policy -*-
"""
Validating a stored response with the origin, and answering a client's conditional request (RFC 9111 §4.3).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

from twisted.web.http import datetimeToString

from txgateway.caching.directives import HeaderLookup, HeaderPairs, headerValues, httpDate, parseCacheControl, splitList
from txgateway.caching.stored import StoredResponse, storableHeaders

# RFC 9110 §15.4.5: representation metadata a 304 leaves out.
_NOT_IN_304 = frozenset((b"content-type", b"content-length", b"content-encoding", b"content-language",
                         b"content-range", b"last-modified"))
# §3.2: a 304 never changes the stored framing.
_NOT_FRESHENED = frozenset((b"content-length",))


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
                          entry.varyFields, entry.varyValues).withTargets(entry.targeted)


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


__all__ = ["clientNotModified", "conditionalHeaders", "freshen", "notModifiedFields", "notModifiedMatches"]
