# -*- test-case-name: tests.test_caching_policy -*-
"""
The C{Cache-Status} response field (RFC 9211).

Pure functions, like all of the cache's rules (see L{txgateway.caching.policy}).
"""

from __future__ import annotations

import re

_TOKEN = re.compile(rb"^[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]*$")


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


__all__ = ["cacheName", "cacheStatus"]
