# -*- test-case-name: tests.test_routing -*-
"""
Request paths and hosts in their one canonical form.

Routing, the cache key, rate-limit keys and the upstream request all read
the path that L{normalizePath} makes, so a path cannot mean one thing to the
gateway and another to a backend; L{pathHazards} names what the gateway
refuses because a backend could still read it differently.  A primitive
module: it imports nothing from txgateway.
"""

from __future__ import annotations

import re

__all__ = ["PathError", "normalizeConfigPath", "normalizeHost", "normalizePath", "pathHazards"]


class PathError(ValueError):
    """A request path that cannot be routed safely; answered with 400."""


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PCT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Bytes that are never valid raw in a URI path: controls, space, DEL, non-ASCII.
_RAW_UNSAFE = re.compile(rb"[^\x21-\x7e]")


def _pctRepl(m: re.Match[bytes]) -> bytes:
    byte = int(m.group(1), 16)
    if byte in _UNRESERVED:
        return bytes((byte,))
    return b"%" + m.group(1).upper()


def _pctEncode(m: re.Match[bytes]) -> bytes:
    return b"%%%02X" % m.group()[0]


def normalizePath(raw: bytes) -> str:
    """
    The one canonical form of a request path (RFC 3986 §6.2.2).

    Unreserved characters are percent-decoded and other escapes upper-cased
    (never decoded: C{%2F} stays data, not a separator); raw bytes that a URI
    may not carry (non-ASCII, controls) are percent-encoded, so C{/café} and
    C{/caf%C3%A9} are one path.  Duplicate slashes are merged and dot
    segments resolved.  A path that climbs above the root is refused rather
    than clamped, so C{/public/../../admin} cannot pose as anything.
    Idempotent: normalising a normalised path changes nothing.
    """
    if not raw.startswith(b"/"):
        raise PathError("the request path must start with '/'")
    if _RAW_UNSAFE.search(raw) is not None:
        raw = _RAW_UNSAFE.sub(_pctEncode, raw)
    if b"%" in raw:
        if _BAD_PCT.search(raw) is not None:
            raise PathError("malformed percent-encoding in the path")
        raw = _PCT.sub(_pctRepl, raw)
    if b"/." not in raw and b"//" not in raw:
        return raw.decode("ascii")
    out: list[bytes] = []
    segments = raw.split(b"/")[1:]
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == b"" and i != last:
            continue
        if seg == b".":
            if i == last:
                out.append(b"")
            continue
        if seg == b"..":
            if not out:
                raise PathError("the path climbs above the root")
            out.pop()
            if i == last:
                out.append(b"")
            continue
        out.append(seg)
    return "/" + b"/".join(out).decode("ascii")


def normalizeConfigPath(text: str) -> str:
    """
    A path written in the config, in the form request paths are matched in.

    Users may write C{/café}, C{/a//b} or C{/%7Euser}; requests arrive
    normalised, so a route path must be normalised the same way or it could
    never match.
    """
    if "?" in text or "#" in text:
        raise PathError("a route path has no query or fragment")
    return normalizePath(text.encode("utf-8"))


def normalizeHost(value: bytes | str | None) -> str:
    """Lower case, port and trailing dot removed; C{''} when absent."""
    if not value:
        return ""
    host = value.decode("latin-1") if isinstance(value, bytes) else value
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


def pathHazards(raw: bytes) -> tuple[str | None, bool]:
    """
    What in a raw request path a backend could read differently from us.

    Returns C{(reason, slashy)}: C{reason} names what is always refused (an
    encoded NUL; a dot segment spelled with escapes or carrying C{;}
    parameters, which some servers resolve and we do not); C{slashy} is true
    for an encoded C{/} or C{\\}, or a raw C{\\}, refused unless the route
    sets C{allow_encoded_slash}.
    """
    if b"%" not in raw and b"\\" not in raw and b";" not in raw:
        return None, False
    upper = raw.upper()
    if b"%00" in upper:
        return "encoded NUL in the path", False
    if b"%2E" in upper or b";" in raw:
        for seg in upper.split(b"/"):
            bare = seg.replace(b"%2E", b".").split(b";", 1)[0]
            if bare in (b".", b"..") and bare != seg:
                return "encoded or parameterised dot segment in the path", False
    return None, b"%2F" in upper or b"%5C" in upper or b"\\" in raw
