# -*- test-case-name: tests.test_discovery_config,tests.test_config -*-
"""
Parsing the discovery keys (issue 22): target items naming a source,
C{upstreams.NAME.slow_start} and the top-level C{discovery:} section.

Pure functions returning C{(spec, problems)}, each problem a C{(key path,
line, message)} triple, so L{txgateway.config.parser_upstreams} adds them
to its own and C{txgateway check} reports them like any other mistake.
Durations, choices and URLs use the package's own converters
(L{txgateway.config.values}, L{txgateway.config.fields}), so a discovery
item reads like the rest of the file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from txgateway.config.errors import Invalid
from txgateway.config.schema_discovery import (
    DEFAULT_REFRESH,
    DEFAULT_WATCH,
    DiscoveryConfig,
    DnsSpec,
    DnsSrvSpec,
    FileSpec,
    SourceSpec,
)
from txgateway.config.values import duration, oneOf, positive

__all__ = ["SOURCE_KEYS", "isSourceItem", "parseDiscovery", "parseSlowStart", "parseSourceItem"]

T = TypeVar("T")

#: (key path, line or None, message)
Triple = tuple[str, int | None, str]

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


class _Collector:
    """Reads keys of one mapping, converting and collecting problems with their lines."""

    def __init__(self, mapping: dict[Any, Any], path: str, line: int | None) -> None:
        self.m = mapping
        self.path = path
        self.line = line
        self.lines: dict[Any, int] = getattr(mapping, "lines", {})
        self.problems: list[Triple] = []

    def lineOf(self, key: str) -> int | None:
        return self.lines.get(key, self.line)

    def add(self, key: str, message: str) -> None:
        self.problems.append((f"{self.path}.{key}" if key else self.path, self.lineOf(key), message))

    def known(self, keys: tuple[str, ...]) -> None:
        for key in self.m:
            if key not in keys:
                self.add(str(key), f"unknown key (expected one of: {', '.join(sorted(keys))})")

    def get(self, key: str, conv: Callable[[Any], T], default: T) -> T:
        if self.m.get(key) is None:
            return default
        try:
            return conv(self.m[key])
        except Invalid as e:
            self.add(key, str(e))
            return default


def isSourceItem(value: Any) -> bool:
    """Whether a C{targets:} item is a discovery source rather than a URL or C{{url:, weight:}}."""
    return isinstance(value, dict) and any(k in value for k in SOURCE_KEYS)


def parseSourceItem(value: dict[Any, Any], path: str, line: int | None,
                    baseDir: Path) -> tuple[SourceSpec | None, list[Triple]]:
    """
    One C{targets:} item that L{isSourceItem}; C{path} is its key path
    (C{upstreams.api.targets[1]}).  Returns the spec (None when unusable)
    and the problems found.
    """
    c = _Collector(value, path, getattr(value, "line", None) or line)
    kinds = [k for k in SOURCE_KEYS if k in value]
    if len(kinds) > 1:
        c.add("", f"has both {kinds[0]!r} and {kinds[1]!r}: one source per item")
        return None, c.problems
    kind = kinds[0]
    common = ("refresh", "on_empty", "family")
    onEmpty = c.get("on_empty", oneOf("keep", "drop"), "keep")
    if kind == "file":
        c.known(("file", "watch", "on_empty"))
        raw = value.get("file")
        if not isinstance(raw, str) or not raw.strip():
            c.add("file", "must be the path of a targets file")
            return None, c.problems
        p = Path(raw.strip())
        spec: SourceSpec = FileSpec(p if p.is_absolute() else baseDir / p,
                                    c.get("watch", positive(duration), DEFAULT_WATCH), onEmpty)
        return (spec if not c.problems else None), c.problems
    scheme = c.get("scheme", oneOf("http", "https"), "http")
    refresh = c.get("refresh", positive(duration), DEFAULT_REFRESH)
    family = c.get("family", oneOf("any", "ipv4", "ipv6"), "any")
    name = c.get(kind, dnsName, "")
    if value.get(kind) is None:
        c.add(kind, "must be a DNS name")
    if kind == "dns":
        c.known(("dns", "port", "scheme") + common)
        number = c.get("port", port, 443 if scheme == "https" else 80)
        spec = DnsSpec(name, number, scheme, refresh, onEmpty, family)
    else:
        c.known(("dns_srv", "scheme") + common)
        spec = DnsSrvSpec(name, scheme, refresh, onEmpty, family)
    return (spec if not c.problems else None), c.problems


def parseDiscovery(value: Any, path: str = "discovery", line: int | None = None) -> tuple[DiscoveryConfig, list[Triple]]:
    """The top-level C{discovery:} mapping (absent or null: the defaults)."""
    if value is None:
        return DiscoveryConfig(), []
    if not isinstance(value, dict):
        return DiscoveryConfig(), [(path, line, "must be a mapping")]
    c = _Collector(value, path, getattr(value, "line", None) or line)
    c.known(("nameservers",))
    raw = value.get("nameservers")
    servers: list[tuple[str, int]] = []
    if isinstance(raw, str):
        raw = [raw]
    if raw is not None and not isinstance(raw, list):
        c.add("nameservers", "must be a list of addresses (e.g. [\"127.0.0.1:53\"])")
    elif raw:
        itemLines = getattr(raw, "lines", [])
        for i, item in enumerate(raw):
            try:
                servers.append(nameserver(item))
            except Invalid as e:
                itemLine = itemLines[i] if i < len(itemLines) else c.lineOf("nameservers")
                c.problems.append((f"{path}.nameservers[{i}]", itemLine, str(e)))
    return DiscoveryConfig(tuple(servers)), c.problems


def parseSlowStart(value: Any, path: str, line: int | None) -> tuple[float, list[Triple]]:
    """C{upstreams.NAME.slow_start}: a duration, C{0s} (off) when absent."""
    if value is None:
        return 0.0, []
    try:
        return duration(value), []
    except Invalid as e:
        return 0.0, [(path, line, str(e))]
