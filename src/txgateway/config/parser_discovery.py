# -*- test-case-name: tests.test_discovery_config,tests.test_config -*-
"""
Parsing the discovery keys (issue 22): target items naming a source,
C{upstreams.NAME.slow_start} and the top-level C{discovery:} section.

L{DiscoverySections} is a part of the parser (L{UpstreamSections} and the
top level call it), so C{txgateway check} reports a mistake here with its
key path and line like any other.  Durations, choices and URLs use the package's own converters
(L{txgateway.config.values}, L{txgateway.config.fields}), so a discovery
item reads like the rest of the file.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from txgateway.config.errors import Invalid, Problem, keyPath
from txgateway.config.parser_base import ParserBase
from txgateway.config.schema_discovery import (
    DEFAULT_REFRESH,
    DEFAULT_WATCH,
    DiscoveryConfig,
    DnsSpec,
    DnsSrvSpec,
    FileSpec,
    SourceSpec,
)
from txgateway.config.source import YAMLMap
from txgateway.config.values import duration, oneOf, positive

__all__ = ["SOURCE_KEYS", "DiscoverySections", "isSourceItem", "parseDiscovery", "parseSlowStart", "parseSourceItem"]

SOURCE_KEYS = ("dns", "dns_srv", "file")
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise Invalid(f"not a port number: {value!r} (1-65535)")
    return value


def dnsName(value: Any) -> str:
    """A DNS name to look up (not an address: a fixed address is a plain URL target)."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid("must be a DNS name")
    text = value.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise Invalid(f"{text!r} is an address, not a name: list it as a URL target instead")
    if len(text) > 253 or not all(_LABEL.match(label) for label in text.split(".")):
        raise Invalid(f"not a DNS name: {value!r}")
    return text


def nameserver(value: Any) -> tuple[str, int]:
    """C{127.0.0.1:53}, C{10.0.0.10} (port 53), C{[::1]:5353}."""
    if not isinstance(value, str):
        raise Invalid(f"not a nameserver address: {value!r} (write e.g. 127.0.0.1:53)")
    text = value.strip()
    host, number = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(f"not a nameserver address: {text!r}")
        if rest:
            number = _portText(rest[1:], text)
    elif text.count(":") == 1:
        host, rest = text.split(":")
        number = _portText(rest, text)
    try:
        return str(ipaddress.ip_address(host)), number
    except ValueError:
        raise Invalid(f"a nameserver is an IP address (with an optional port), not {text!r}") from None


def _portText(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise Invalid(f"not a port number in {whole!r}")
    return int(text)


class DiscoverySections(ParserBase):
    """The discovery keys, on the parser's own plumbing (known keys, converters, problems with lines)."""

    def sourceItem(self, value: dict[Any, Any], path: str, line: int | None) -> SourceSpec | None:
        """
        One C{targets:} item that L{isSourceItem}; C{path} is its key path
        (C{upstreams.api.targets[1]}).  None when unusable (the problems are recorded).
        """
        kinds = [k for k in SOURCE_KEYS if k in value]
        if len(kinds) > 1:
            self.problem(path, line, f"has both {kinds[0]!r} and {kinds[1]!r}: one source per item")
            return None
        kind = kinds[0]
        common = ["refresh", "on_empty", "family"]
        known = {"file": ["file", "watch", "on_empty"], "dns": ["dns", "port", "scheme", *common],
                 "dns_srv": ["dns_srv", "scheme", *common]}[kind]
        before = len(self.problems)
        m = self.mapping(value, path, line, known)
        assert m is not None  # a dict, see isSourceItem
        onEmpty = self.get(m, "on_empty", path, oneOf("keep", "drop"), "keep")
        if kind == "file":
            raw = m.get("file")
            if not isinstance(raw, str) or not raw.strip():
                self.problem(keyPath(path, "file"), m.lines.get("file", line), "must be the path of a targets file")
                return None
            spec: SourceSpec = FileSpec(self.file(raw.strip()), self.get(m, "watch", path, positive(duration),
                                                                         DEFAULT_WATCH), onEmpty)
            return spec if len(self.problems) == before else None
        scheme = self.get(m, "scheme", path, oneOf("http", "https"), "http")
        refresh = self.get(m, "refresh", path, positive(duration), DEFAULT_REFRESH)
        family = self.get(m, "family", path, oneOf("any", "ipv4", "ipv6"), "any")
        name = self.get(m, kind, path, dnsName, "")
        if m.get(kind) is None:
            self.problem(keyPath(path, kind), m.lines.get(kind, line), "must be a DNS name")
        if kind == "dns":
            spec = DnsSpec(name, self.get(m, "port", path, port, 443 if scheme == "https" else 80), scheme, refresh,
                           onEmpty, family)
        else:
            spec = DnsSrvSpec(name, scheme, refresh, onEmpty, family)
        return spec if len(self.problems) == before else None

    def discovery(self, value: Any, line: int | None, path: str = "discovery") -> DiscoveryConfig:
        """The top-level C{discovery:} mapping (absent or null: the defaults)."""
        m = self.mapping(value, path, line, ["nameservers"])
        if m is None:
            return DiscoveryConfig()
        return DiscoveryConfig(self.seq(m, "nameservers", path, nameserver))

    def slowStart(self, m: YAMLMap, path: str) -> float:
        """C{upstreams.NAME.slow_start}: a duration, C{0s} (off) when absent."""
        return self.get(m, "slow_start", path, duration, 0.0)


def isSourceItem(value: Any) -> bool:
    """Whether a C{targets:} item is a discovery source rather than a URL or C{{url:, weight:}}."""
    return isinstance(value, dict) and any(k in value for k in SOURCE_KEYS)


def parseSourceItem(value: dict[Any, Any], path: str, line: int | None,
                    baseDir: Path) -> tuple[SourceSpec | None, list[Problem]]:
    """L{DiscoverySections.sourceItem} on its own: the spec and the problems (for tests and tools)."""
    parser = DiscoverySections(baseDir)
    return parser.sourceItem(value, path, line), parser.problems


def parseDiscovery(value: Any, path: str = "discovery", line: int | None = None) -> tuple[DiscoveryConfig, list[Problem]]:
    parser = DiscoverySections(Path.cwd())
    return parser.discovery(value, line, path), parser.problems


def parseSlowStart(value: Any, path: str, line: int | None) -> tuple[float, list[Problem]]:
    """C{path} is the key's own (C{upstreams.api.slow_start})."""
    parser = DiscoverySections(Path.cwd())
    m = YAMLMap({"slow_start": value})
    if line is not None:
        m.lines["slow_start"] = line
    return parser.slowStart(m, path.rpartition(".")[0]), parser.problems
