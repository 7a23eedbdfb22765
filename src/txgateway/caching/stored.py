# -*- test-case-name: tests.test_caching_policy -*-
"""
A response as the cache keeps it, and the header fields it keeps (RFC 9111 §3.1).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

from txgateway.caching.directives import (
    DEFAULT_TARGETED,
    Directives,
    HeaderPairs,
    headerValues,
    responseDirectives,
    splitList,
)

# §3.1 (RFC 9110 §7.6.1): connection-specific fields are never stored.
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
                        b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade"))


class StoredResponse:
    """
    One response as the cache keeps it: the origin's status and header
    fields (minus what §3.1 forbids storing), the body, and the two clock
    readings §4.2.3 needs to compute its age later.

    C{varyFields}/C{varyValues} are the request fields the origin's C{Vary}
    nominated and their normalised values in the request that caused the
    response to be stored (§4.1).  C{targeted} is the route's list of
    targeted fields (RFC 9213), read by L{cacheControl}: it is the route's
    configuration, not part of the response, so a store sets it on read
    (L{withTargets}).
    """

    __slots__ = ("code", "phrase", "headers", "body", "requestTime", "responseTime", "varyFields",
                 "varyValues", "targeted", "_cc")

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
        self.targeted: tuple[bytes, ...] = DEFAULT_TARGETED
        self._cc: Directives | None = None

    def withTargets(self, targeted: tuple[bytes, ...]) -> StoredResponse:
        """This response, its directives read from C{targeted} fields first (RFC 9213 §2.1)."""
        if targeted != self.targeted:
            self.targeted = targeted
            self._cc = None
        return self

    def __repr__(self) -> str:
        return f"<StoredResponse {self.code} {len(self.body)} bytes>"

    @property
    def cacheControl(self) -> Directives:
        cc = self._cc
        if cc is None:
            cc = self._cc = responseDirectives(self.headers, self.targeted)
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


__all__ = ["HOP_BY_HOP", "StoredResponse", "storableHeaders"]
