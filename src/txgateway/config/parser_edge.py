# -*- test-case-name: tests.test_edge_answers -*-
"""
Parsing a route's edge keys: the C{path_regex} / C{query} / C{client_ip} matchers,
C{redirect}, C{respond}, C{rewrite_regex} and C{compress} (issue #28).

Kept beside L{txgateway.config.parser_routes} so that a route's older keys
and these read the same way (key paths and lines in every problem) without
one module growing past what a reader holds in mind.  Patterns and templates
are checked here, once, with the same code the request path runs.
"""

from __future__ import annotations

from typing import Any

from txgateway.config.errors import Invalid, keyPath
from txgateway.config.fields import yamlText
from txgateway.config.parser_base import ParserBase
from txgateway.config.schema import CompressConfig, QueryMatch, RedirectConfig, RespondConfig, RewriteRegex
from txgateway.config.source import YAMLMap, lines
from txgateway.config.values import integer, oneOf, size, string
from txgateway.http.patterns import PatternError, compilePattern
from txgateway.http.templates import Template

__all__ = ["CODINGS", "EdgeSections"]

CODINGS = ("zstd", "br", "gzip")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)


class EdgeSections(ParserBase):
    """The issue #28 keys of a route."""

    def routeEdge(self, m: YAMLMap, path: str) -> dict[str, Any]:
        """The edge fields of a C{RouteConfig}, as keyword arguments."""
        def sub(key: str, parse: Any) -> Any:
            if m.get(key) in (None, False):
                return None
            return parse(m[key], keyPath(path, key), m.lines.get(key, m.line))

        out = {"redirect": sub("redirect", self.redirect), "respond": sub("respond", self.respond),
               "rewrite_regex": sub("rewrite_regex", self.rewriteRegex), "compress": sub("compress", self.compress)}
        if out["redirect"] is not None and out["respond"] is not None:
            self.problem(path, m.lines.get("respond", m.line), "give redirect or respond, not both")
        return out

    def pattern(self, value: Any, path: str, line: int | None) -> str | None:
        try:
            text = string(value)
            compilePattern(text)
        except (Invalid, PatternError) as e:
            self.problem(path, line, str(e))
            return None
        return text

    def queryMatch(self, value: Any, path: str, line: int | None) -> tuple[QueryMatch, ...]:
        """C{{name: value | present | {regex: ...}}}."""
        if value is None:
            return ()
        if not isinstance(value, dict):
            self.problem(path, line, "must map a query parameter to a value, \"present\" or {regex: ...}")
            return ()
        out = []
        where = lines(value)
        for name, want in value.items():
            p, ln = keyPath(path, str(name)), where.get(name, line)
            if isinstance(want, dict):
                m = self.mapping(want, p, ln, ["regex", "value"])
                if m is None:
                    continue
                if "regex" in m:
                    pat = self.pattern(m["regex"], keyPath(p, "regex"), m.lines.get("regex", ln))
                    if pat is not None:
                        out.append(QueryMatch(str(name), "regex", pat))
                elif "value" in m:
                    out.append(QueryMatch(str(name), "value", str(yamlText(m["value"]))))
                else:
                    self.problem(p, ln, "give regex or value")
            elif want == "present":
                out.append(QueryMatch(str(name), "present"))
            elif want is None or isinstance(want, list):
                self.problem(p, ln, "must be a value, \"present\" or {regex: ...}")
            else:
                out.append(QueryMatch(str(name), "value", str(yamlText(want))))
        return tuple(out)

    def redirect(self, value: Any, path: str, line: int | None) -> RedirectConfig | None:
        m = self.mapping(value, path, line, ["to", "scheme", "status"])
        if m is None:
            return None
        to = self.get(m, "to", path, string, None)
        scheme = self.get(m, "scheme", path, oneOf("http", "https"), None)
        status = self.get(m, "status", path, integer(0), 308 if to is None else 301)
        if status not in REDIRECT_STATUSES:
            self.problem(keyPath(path, "status"), m.lines.get("status"), f"must be one of {REDIRECT_STATUSES}")
        if (to is None) == (scheme is None):
            self.problem(path, line, "give to (a URL template) or scheme, exactly one")
            return None
        if to is not None:
            t = Template(to, "url")
            if any(c in to for c in "\r\n\x00 "):
                self.problem(keyPath(path, "to"), m.lines.get("to"), "must not contain spaces, CR, LF or NUL")
            elif not (to.startswith(("http://", "https://")) or (to.startswith("/") and not to.startswith("//"))
                      or t.startsWithVariable()):
                self.problem(keyPath(path, "to"), m.lines.get("to"),
                             "must be an absolute http(s) URL or a path starting with one /")
        return RedirectConfig(status=status, to=to, scheme=scheme)

    def respond(self, value: Any, path: str, line: int | None) -> RespondConfig | None:
        m = self.mapping(value, path, line, ["status", "body", "headers"])
        if m is None:
            return None
        headers = self.headerPairs(m, path, "must map a header name to a value")
        status = self.get(m, "status", path, integer(200), 200)
        if status > 599:
            self.problem(keyPath(path, "status"), m.lines.get("status"), "must be an HTTP status (200 to 599)")
        return RespondConfig(status=status,
                             body=self.get(m, "body", path, string, ""), headers=tuple(headers))

    def rewriteRegex(self, value: Any, path: str, line: int | None) -> RewriteRegex | None:
        m = self.mapping(value, path, line, ["pattern", "replacement"])
        if m is None:
            return None
        raw = self.required(m, "pattern", path, m.line)
        pat = self.pattern(raw, keyPath(path, "pattern"), m.lines.get("pattern", line)) if raw is not None else None
        replacement = self.get(m, "replacement", path, string, "")
        if pat is None:
            return None
        return RewriteRegex(pat, replacement)

    def compress(self, value: Any, path: str, line: int | None) -> CompressConfig | None:
        if value is True:
            return CompressConfig()
        m: YAMLMap | None = self.mapping(value, path, line, ["encodings", "min_bytes", "types", "level"])
        if m is None:
            return None
        d = CompressConfig()
        encodings = self.seq(m, "encodings", path, oneOf(*CODINGS)) if "encodings" in m else d.encodings
        if not encodings:
            self.problem(keyPath(path, "encodings"), m.lines.get("encodings"), "must list at least one of zstd, br, gzip")
        types = self.seq(m, "types", path, _mediaRange) if "types" in m else d.types
        return CompressConfig(encodings=encodings, min_bytes=self.get(m, "min_bytes", path, size, d.min_bytes),
                              types=types, level=self.get(m, "level", path, integer(1), None))


def _mediaRange(value: Any) -> str:
    text = string(value).strip().lower()
    if text.count("/") != 1 or not all(text.split("/")) or (text.startswith("*") and text != "*/*"):
        raise Invalid(f"not a media type or range (text/html, text/*): {value!r}")
    return text
