# -*- test-case-name: tests.test_admin -*-
"""
Who may use the admin listener: the bearer token check and the same-origin rule for POSTs.
"""

from __future__ import annotations

import hmac
from typing import Any


def bearerToken(request: Any) -> bytes | None:
    """The token of an C{Authorization: Bearer} header, or None."""
    value = request.getHeader(b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    return token.strip()


def tokenAccepted(request: Any, expected: str | None) -> bool:
    """
    Whether C{request} may use the admin listener: always without a token,
    else only with C{Authorization: Bearer <token>}, compared in constant time.
    """
    if expected is None:
        return True
    given = bearerToken(request)
    # An empty token admits nobody rather than everybody (the parser refuses one; this holds regardless).
    return bool(given) and bool(expected) and hmac.compare_digest(given or b"", expected.encode("utf-8"))


def sameOrigin(request: Any) -> bool:
    """A browser's cross-site POST carries an Origin naming another site: refuse it."""
    origin = request.getHeader(b"origin")
    if origin is None:
        return True
    host = request.getHeader(b"host") or b""
    return origin.split(b"://", 1)[-1].rstrip(b"/").lower() == host.lower()


__all__ = ["bearerToken", "sameOrigin", "tokenAccepted"]
