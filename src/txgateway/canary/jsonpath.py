# -*- test-case-name: tests.test_canary_compare -*-
"""
The small JSON path language of C{mirror.compare}: C{$.meta.latency},
C{$.items[*].id}, C{$.items[0]}, C{$["odd key"]}.

Only what comparing and redacting need: member names, list indexes and
the wildcard C{*} (any member or any index).  A pattern names a node and
everything below it, so C{$.meta} ignores the whole C{meta} object.  The
same notation is used for the differing paths reported, so a path copied
from a sample can be pasted into C{ignore:} as it is.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

__all__ = ["ANY", "Segment", "formatPath", "matchesPrefix", "parsePath"]


class _Any:
    """The wildcard segment: any member name or list index."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()
Segment = str | int | _Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def parsePath(text: str) -> tuple[Segment, ...]:
    """C{$.a.b[2][*]["x y"]} as segments; raises ValueError with what is wrong."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise ValueError(f"a JSON path starts with $ (e.g. $.meta.latency), not {text!r}")
    out: list[Segment] = []
    i = 1
    while i < len(text):
        c = text[i]
        if c == ".":
            if text.startswith(".*", i):
                out.append(ANY)
                i += 2
                continue
            m = _NAME.match(text, i + 1)
            if m is None:
                raise ValueError(f"expected a member name after '.' at position {i + 1} of {text!r}")
            out.append(m.group())
            i = m.end()
        elif c == "[":
            end = _closing(text, i)
            inner = text[i + 1:end].strip()
            if inner == "*":
                out.append(ANY)
            elif inner.isdigit():
                out.append(int(inner))
            elif inner[:1] in ("'", '"') and inner[-1:] == inner[:1] and len(inner) >= 2:
                out.append(inner[1:-1])
            else:
                raise ValueError(f"expected [N], [*] or [\"name\"] at position {i} of {text!r}")
            i = end + 1
        else:
            raise ValueError(f"unexpected {c!r} at position {i} of {text!r}")
    return tuple(out)


def _closing(text: str, start: int) -> int:
    quote = text[start + 1:start + 2]
    if quote in ("'", '"'):
        end = text.find(quote + "]", start + 2)
        if end < 0:
            raise ValueError(f"unclosed [{quote} in {text!r}")
        return end + 1
    end = text.find("]", start)
    if end < 0:
        raise ValueError(f"unclosed [ in {text!r}")
    return end


def formatPath(segments: Sequence[Segment]) -> str:
    """Segments back as text, plain names with dots (C{$.items[3].score})."""
    parts = ["$"]
    for s in segments:
        if s is ANY:
            parts.append("[*]")
        elif isinstance(s, int):
            parts.append(f"[{s}]")
        elif isinstance(s, str) and _PLAIN.match(s):
            parts.append("." + s)
        else:
            parts.append("[" + json.dumps(s) + "]")
    return "".join(parts)


def matchesPrefix(pattern: Sequence[Segment], path: Sequence[Segment]) -> bool:
    """Whether C{pattern} names C{path} or a node above it."""
    if len(pattern) > len(path):
        return False
    for p, s in zip(pattern, path, strict=False):
        if p is ANY:
            continue
        if p != s or isinstance(p, int) != isinstance(s, int):
            return False
    return True
