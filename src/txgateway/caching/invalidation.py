# -*- test-case-name: tests.test_caching_policy -*-
"""
What an unsafe request's answer invalidates (RFC 9111 §4.4).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

from urllib.parse import urljoin, urlsplit

from txgateway.caching.directives import HeaderPairs, headerValues
from txgateway.routing import PathError, normalizeHost, normalizePath

# §4.4: methods that are not unsafe never invalidate.
SAFE_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))


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


__all__ = ["SAFE_METHODS", "invalidationTargets"]
