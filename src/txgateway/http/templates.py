# -*- test-case-name: tests.test_edge_answers -*-
"""
Config templates (C{"https://new.example.com{path}"}, C{"X-Client: {client_ip}"}): parsed once, filled per request.

A template is split at config load into literal text and variables, so a
request only joins strings.  Only the names in L{VARIABLES} are variables;
any other C{{...}} is literal text, so header values that already hold
braces (JSON, say) keep meaning what they meant.

The values come from the client (its Host, path and query), so each use
escapes for where the text lands:

- C{url}: a Location.  Everything outside RFC 3986's path / query
  characters is percent-encoded (CR, LF, quotes, spaces, backslashes,
  C{<>}); a path always starts with exactly one C{/} so that C{//evil.com}
  cannot turn a relative redirect into a protocol-relative one; and a host
  that is not a plain host name or IP literal is refused (L{BadValue}).
- C{header}: a header value: control characters are removed.
- C{html}, C{json}, C{text}: a body, escaped for its media type.

A primitive module: it imports nothing from txgateway.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

__all__ = ["VARIABLES", "BadValue", "Template", "escaperFor", "requestValues", "safeHost"]

VARIABLES = frozenset(("host", "path", "query", "client_ip", "scheme", "method", "request_id",
                       "request_uri"))
_VAR = re.compile(r"\{(" + "|".join(sorted(VARIABLES)) + r")\}")
_HOST = re.compile(r"^(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*"
                   r"|\[[0-9a-f:.]+\]|[0-9.]+)(?::[0-9]{1,5})?$")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]")
# RFC 3986 pchar plus "/" (path) and plus "?" (query), with "%" kept so that
# escapes already in a normalised path are not escaped twice.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


def requestValues(context: Any) -> dict[str, str]:
    """The template variables of one request (a L{txgateway.context.RequestContext})."""
    query = context.query.decode("latin-1") if context.query is not None else ""
    return {
        "host": context.host,
        "path": context.path,
        "query": query,
        "request_uri": context.path + ("?" + query if context.query is not None else ""),
        "client_ip": context.clientIP,
        "scheme": "https" if context.request.isSecure() else "http",
        "method": context.method.decode("latin-1"),
        "request_id": context.requestId,
    }


class BadValue(ValueError):
    """A request value that cannot be put where the template puts it (a hostile Host)."""


def safeHost(host: str) -> str:
    """C{host} if it is a plain host name, IPv4 or bracketed IPv6 literal (with a port), else L{BadValue}."""
    if not _HOST.match(host):
        raise BadValue(f"host {host[:80]!r} is not a plain host name")
    return host


def _urlValue(name: str, value: str) -> str:
    if name == "host":
        return safeHost(value.lower())
    if name == "path":
        return "/" + quote(value.lstrip("/\\"), safe=_PATH_SAFE)
    if name == "request_uri":
        return "/" + quote(value.lstrip("/\\"), safe=_QUERY_SAFE)
    if name == "query":
        return quote(value, safe=_QUERY_SAFE)
    return quote(value, safe="")


def _headerValue(name: str, value: str) -> str:
    return _CONTROLS.sub("", value)


def _htmlValue(name: str, value: str) -> str:
    return html.escape(value, quote=True)


def _jsonValue(name: str, value: str) -> str:
    return json.dumps(value)[1:-1]


def _textValue(name: str, value: str) -> str:
    return _CONTROLS.sub("", value)


_ESCAPERS: Mapping[str, Callable[[str, str], str]] = {
    "url": _urlValue, "header": _headerValue, "html": _htmlValue, "json": _jsonValue, "text": _textValue}


def escaperFor(contentType: str | None) -> str:
    """The escaping of a body template, from the media type it is served as."""
    ct = (contentType or "").lower()
    if "html" in ct or "xml" in ct:
        return "html"
    if "json" in ct:
        return "json"
    return "text"


class Template:
    """One config string, split once into literal text and variables."""

    __slots__ = ("source", "parts", "names", "escape")

    def __init__(self, source: str, escape: str = "header") -> None:
        self.source = source
        self.escape = _ESCAPERS[escape]
        parts: list[tuple[bool, str]] = []
        at = 0
        for m in _VAR.finditer(source):
            if m.start() > at:
                parts.append((False, source[at:m.start()]))
            parts.append((True, m.group(1)))
            at = m.end()
        if at < len(source):
            parts.append((False, source[at:]))
        self.parts = tuple(parts)
        self.names = frozenset(p for isVar, p in parts if isVar)

    @property
    def static(self) -> bool:
        """Whether the template has no variable (so it is plain text)."""
        return not self.names

    def startsWithVariable(self) -> bool:
        return bool(self.parts) and self.parts[0][0]

    def render(self, values: Mapping[str, str]) -> str:
        """The text for one request; L{BadValue} if a value cannot be used here."""
        escape = self.escape
        return "".join(escape(p, values.get(p, "")) if isVar else p for isVar, p in self.parts)
