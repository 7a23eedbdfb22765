# -*- test-case-name: tests.test_canary_compare -*-
"""
Comparing the primary's and the mirror's answers, and keeping redacted samples.

L{Comparer.differences} is pure: two L{Answer}s in, the list of what
differs out (C{status}, C{headers.NAME}, C{body}, or JSON paths such as
C{$.items[2].score}); an empty list means the answers agree.  JSON bodies
are compared node by node, skipping the C{ignore} paths (a path covers the
node and everything below it; C{[*]} is any index or member) and treating
two numbers as equal when they are within the absolute I{or} the relative
tolerance (C{math.isclose}), which is what model scores need.  Booleans are
never numbers here (C{true} is not C{1}).  A body that is not JSON on
either side is compared as bytes and reported as C{body}.

Samples are what an operator reads to see why two versions disagree, so
they are redacted before they are kept: credential headers
(L{CREDENTIAL_HEADERS}) always, the configured headers and JSON body paths
as well; the query string is dropped from the request path (it often
carries keys); a body that is not JSON is hidden when JSON redaction is
configured (the redaction could not be applied to it); and bodies are cut
to L{SAMPLE_BODY_BYTES} so a ring of samples stays small.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from txgateway.canary.interfaces import Answer, MirrorRequest
from txgateway.canary.jsonpath import Segment, formatPath, matchesPrefix, parsePath
from txgateway.canary.specs import CompareSpec

__all__ = [
    "CREDENTIAL_HEADERS", "MAX_DIFFERENCES", "REDACTED", "SAMPLE_BODY_BYTES", "Comparer", "SampleRing", "diffJson",
    "mirrorsReport", "redactJson",
]

#: Always hidden in samples, whatever the config says.
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")
REDACTED = "[redacted]"
#: At most this many differing paths are reported per comparison (a reordered list differs everywhere).
MAX_DIFFERENCES = 50
#: A sample keeps at most this much of each body.
SAMPLE_BODY_BYTES = 16 * 1024

_NOT_JSON = object()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _isNumber(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _close(x: float, y: float, absolute: float, relative: float) -> bool:
    try:
        return math.isclose(x, y, rel_tol=relative, abs_tol=absolute)
    except OverflowError:  # an integer beyond float range: only equal is close
        return False


def diffJson(a: Any, b: Any, ignore: Sequence[Sequence[Segment]] = (), absolute: float = 0.0,
             relative: float = 0.0, limit: int = MAX_DIFFERENCES) -> list[str]:
    """The paths at which two decoded JSON documents differ (at most C{limit})."""
    out: list[str] = []
    path: list[Segment] = []

    def ignored() -> bool:
        return any(matchesPrefix(p, path) for p in ignore)

    def walk(x: Any, y: Any) -> None:
        if len(out) >= limit or (ignore and ignored()):
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in list(x) + [k for k in y if k not in x]:
                path.append(k)
                if k in x and k in y:
                    walk(x[k], y[k])
                elif not (ignore and ignored()) and len(out) < limit:
                    out.append(formatPath(path))
                path.pop()
        elif isinstance(x, list) and isinstance(y, list):
            for i in range(max(len(x), len(y))):
                path.append(i)
                if i < len(x) and i < len(y):
                    walk(x[i], y[i])
                elif not (ignore and ignored()) and len(out) < limit:
                    out.append(formatPath(path))
                path.pop()
        elif _isNumber(x) and _isNumber(y):
            if x != y and not _close(x, y, absolute, relative):
                out.append(formatPath(path))
        elif type(x) is not type(y) or x != y:
            out.append(formatPath(path))

    walk(a, b)
    return out


def redactJson(doc: Any, paths: Sequence[Sequence[Segment]]) -> Any:
    """A copy of C{doc} with the nodes at C{paths} replaced by L{REDACTED}."""
    if not paths:
        return doc

    def walk(node: Any, path: list[Segment]) -> Any:
        if any(len(p) == len(path) and matchesPrefix(p, path) for p in paths):
            return REDACTED
        if isinstance(node, dict):
            return {k: walk(v, path + [k]) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, path + [i]) for i, v in enumerate(node)]
        return node

    return walk(doc, [])


def _headerValues(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    values = [v.decode("latin-1") for k, v in headers if k.lower() == name]
    return ", ".join(values) if values else None


class Comparer:
    """One route's C{mirror.compare}, compiled once: paths parsed, header names lowered."""

    def __init__(self, spec: CompareSpec) -> None:
        self.spec = spec
        self.headers = tuple((h, h.lower().encode("ascii")) for h in spec.headers)
        self.ignore = tuple(parsePath(p) for p in spec.json.ignore)
        self.redactHeaders = frozenset(CREDENTIAL_HEADERS) | {h.lower() for h in spec.redact.headers}
        self.redactPaths = tuple(parsePath(p) for p in spec.redact.json)
        self.bodyMode = spec.body

    def comparable(self, primary: Answer, mirror: Answer) -> bool:
        """Whether the two can be compared at all: a truncated body cannot be (unless bodies are ignored)."""
        return self.bodyMode == "ignore" or not (primary.truncated or mirror.truncated)

    def differences(self, primary: Answer, mirror: Answer) -> list[str]:
        """What differs between the answers; empty when they agree."""
        out: list[str] = []
        if self.spec.status and primary.status != mirror.status:
            out.append("status")
        for name, raw in self.headers:
            if _headerValues(primary.headers, raw) != _headerValues(mirror.headers, raw):
                out.append(f"headers.{name}")
        if self.bodyMode == "ignore" or primary.body == mirror.body:
            return out
        if self.bodyMode == "json":
            a, b = _json(primary.body), _json(mirror.body)
            if a is not _NOT_JSON and b is not _NOT_JSON:
                j = self.spec.json
                return out + diffJson(a, b, self.ignore, j.absolute, j.relative)
        out.append("body")
        return out

    # -- samples

    def sample(self, request: MirrorRequest, primary: Answer, mirror: Answer, differences: Sequence[str],
               at: float) -> dict[str, Any]:
        """A redacted, side-by-side record of one mismatch, as C{GET /api/mirrors} shows it."""
        path = request.path.split(b"?", 1)[0].decode("latin-1")
        return {
            "at": at,
            "request_id": request.requestId,
            "method": request.method.decode("latin-1"),
            "path": path,
            "request_headers": self._headers(request.headers),
            "differences": list(differences),
            "primary": self._side(primary),
            "mirror": self._side(mirror),
        }

    def _headers(self, headers: Iterable[tuple[bytes, bytes]]) -> list[list[str]]:
        out = []
        for k, v in headers:
            name = k.decode("latin-1")
            out.append([name, REDACTED if name.lower() in self.redactHeaders else v.decode("latin-1")])
        return out

    def _side(self, answer: Answer) -> dict[str, Any]:
        body: Any
        kept = answer.body[:SAMPLE_BODY_BYTES]
        cut = answer.truncated or len(answer.body) > SAMPLE_BODY_BYTES
        doc = _json(answer.body) if not cut else _NOT_JSON
        if doc is not _NOT_JSON:
            body = redactJson(doc, self.redactPaths)
        elif self.redactPaths and answer.body:
            body = f"[{len(answer.body)}{'+' if answer.truncated else ''} bytes, not shown: not JSON that "\
                   f"redact.json could be applied to]"
        else:
            body = kept.decode("utf-8", "replace")
        return {"status": answer.status, "headers": self._headers(answer.headers), "body": body,
                "body_truncated": cut}


class SampleRing:
    """The last C{size} samples of one route, oldest first (0: none kept)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[dict[str, Any]] = deque(maxlen=size or None)

    def add(self, sample: dict[str, Any]) -> None:
        if self.size:
            self._items.append(sample)

    def items(self) -> list[dict[str, Any]]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


def mirrorsReport(mirrors: Mapping[str, Any]) -> dict[str, Any]:
    """
    The body of C{GET /api/mirrors}: per route (by name) its mirror's
    L{IMirror.report}, C{{"sent": N, "dropped": N, "compared": N,
    "mismatched": N, "samples": [...], ...}}.
    """
    return {"mirrors": {name: mirrors[name].report() for name in sorted(mirrors)}}
