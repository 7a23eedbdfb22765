# -*- test-case-name: tests.test_edge_matching,tests.test_edge_answers,tests.test_edge_compression -*-
"""
The typed configuration of a route's edge behaviour (issue #28): query
matchers, redirects and direct answers, path rewrites by pattern, and
response compression.  Re-exported by L{txgateway.config.schema}.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CompressConfig", "QueryMatch", "RedirectConfig", "RespondConfig", "RewriteRegex"]


@dataclass(frozen=True)
class QueryMatch:
    """One C{match.query} entry: C{kind} is C{value} (exact), C{present} or C{regex} (anchored)."""

    name: str
    kind: str
    value: str = ""


@dataclass(frozen=True)
class RedirectConfig:
    """C{routes[].redirect}: C{to} (a URL template) or C{scheme} (the same URL, another scheme)."""

    status: int = 308
    to: str | None = None
    scheme: str | None = None


@dataclass(frozen=True)
class RespondConfig:
    """C{routes[].respond}: an answer written in the config (body a template)."""

    status: int = 200
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class RewriteRegex:
    pattern: str
    replacement: str


@dataclass(frozen=True)
class CompressConfig:
    encodings: tuple[str, ...] = ("zstd", "br", "gzip")  # the gateway's preference when q-values tie
    min_bytes: int = 1024
    types: tuple[str, ...] = ("text/*", "application/json", "application/javascript", "application/xml",
                              "image/svg+xml")
    level: int | None = None  # None: each codec's streaming-friendly default
