# -*- test-case-name: tests.test_discovery_config -*-
"""
Parsing the discovery keys into frozen specs: pure functions, no I/O.

The config package calls these while it walks C{upstreams.NAME.targets},
C{upstreams.NAME.slow_start} and C{discovery}, and adds the problems they
return to its own (each a C{(key path, line, message)} triple; the line is
read from the C{lines} mapping the config loader attaches to YAML
mappings, and is None for plain dicts).  Nothing here imports
L{txgateway.config}: the dependency points one way, from the config
package to this module.

Duration and URL syntax match the config package's (C{250ms}, C{5s},
C{1m}; C{scheme://host:port}), so a discovery item reads like the rest of
the file.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from txgateway.discovery.interfaces import DiscoveredTarget

__all__ = ["DEFAULT_REFRESH", "DEFAULT_WATCH", "DiscoveryConfig", "DnsSpec", "DnsSrvSpec", "FileSpec", "Problem",
           "SOURCE_KEYS", "SourceSpec", "dnsName", "duration", "isSourceItem", "nameserver", "oneOf",
           "parseDiscovery", "parseSlowStart", "parseSourceItem", "port", "positiveDuration", "targetFromURL",
           "weight"]

T = TypeVar("T")

#: (key path, line or None, message)
Problem = tuple[str, int | None, str]

SOURCE_KEYS = ("dns", "dns_srv", "file")
DEFAULT_REFRESH = 10.0
DEFAULT_WATCH = 2.0


@dataclass(frozen=True)
class DnsSpec:
    """C{{dns: NAME, port: P, scheme: http, refresh: 10s, on_empty: keep, family: any}}"""

    name: str
    port: int
    scheme: str = "http"
    refresh: float = DEFAULT_REFRESH
    on_empty: str = "keep"
    family: str = "any"


@dataclass(frozen=True)
class DnsSrvSpec:
    """C{{dns_srv: _http._tcp.NAME, scheme: http, refresh: 10s, on_empty: keep, family: any}}"""

    name: str
    scheme: str = "http"
    refresh: float = DEFAULT_REFRESH
    on_empty: str = "keep"
    family: str = "any"


@dataclass(frozen=True)
class FileSpec:
    """C{{file: PATH, watch: 2s, on_empty: keep}}; C{path} is absolute (relative to the config file)."""

    path: Path
    watch: float = DEFAULT_WATCH
    on_empty: str = "keep"


SourceSpec = DnsSpec | DnsSrvSpec | FileSpec


@dataclass(frozen=True)
class DiscoveryConfig:
    """The top-level C{discovery:} section; no nameservers means the system's (resolv.conf)."""

    nameservers: tuple[tuple[str, int], ...] = ()


# --------------------------------------------------------------------------
# Value converters (raise ValueError with the message to report)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def duration(value: Any) -> float:
    """C{250ms}, C{5s}, C{1m}, or a bare number of seconds; never negative."""
    if isinstance(value, bool):
        raise ValueError("not a duration (write e.g. 250ms, 5s, 1m)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise ValueError(f"not a duration: {value!r} (write e.g. 250ms, 5s, 1m)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def positiveDuration(value: Any) -> float:
    seconds = duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"not a port number: {value!r} (1-65535)")
    return value


def weight(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"not a weight: {value!r} (a whole number, 1 or more)")
    return value


def oneOf(*choices: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)} (not {value!r})")
        return str(value)

    return conv


def dnsName(value: Any) -> str:
    """A DNS name to look up (not an address: a fixed address is a plain URL target)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a DNS name")
    text = value.strip().rstrip(".").lower()
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise ValueError(f"{text!r} is an address, not a name: list it as a URL target instead")
    labels = text.split(".")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"not a DNS name: {value!r}")
    return text


def targetFromURL(value: Any, weight: int = 1, source: str = "static") -> DiscoveredTarget:
    """C{http://10.0.0.5:8000} as a target (the same rules as a plain URL in C{targets:})."""
    if not isinstance(value, str):
        raise ValueError(f"not a URL: {value!r} (write e.g. http://10.0.0.5:8000)")
    text = value.strip()
    try:
        parts = urlsplit(text)
        number = parts.port
    except ValueError:
        raise ValueError(f"not a URL: {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a URL: {text!r} (write e.g. http://10.0.0.5:8000)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"a target is scheme://host:port only, without path, query or credentials: {text!r}")
    if number is None:
        number = 443 if parts.scheme == "https" else 80
    return DiscoveredTarget(parts.scheme, parts.hostname.lower(), number, weight, source)


def nameserver(value: Any) -> tuple[str, int]:
    """C{127.0.0.1:53}, C{10.0.0.10} (port 53), C{[::1]:5353}."""
    if not isinstance(value, str):
        raise ValueError(f"not a nameserver address: {value!r} (write e.g. 127.0.0.1:53)")
    text = value.strip()
    host, number = text, 53
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not a nameserver address: {text!r}")
        if rest:
            number = _portText(rest[1:], text)
    elif text.count(":") == 1:
        host, rest = text.split(":")
        number = _portText(rest, text)
    try:
        return str(ipaddress.ip_address(host)), number
    except ValueError:
        raise ValueError(f"a nameserver is an IP address (with an optional port), not {text!r}") from None


def _portText(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"not a port number in {whole!r}")
    return int(text)


# --------------------------------------------------------------------------
# Sections


class _Collector:
    """Reads keys of one mapping, converting and collecting problems with their lines."""

    def __init__(self, mapping: dict[Any, Any], path: str, line: int | None) -> None:
        self.m = mapping
        self.path = path
        self.line = line
        self.lines: dict[Any, int] = getattr(mapping, "lines", {})
        self.problems: list[Problem] = []

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
        except ValueError as e:
            self.add(key, str(e))
            return default


def isSourceItem(value: Any) -> bool:
    """Whether a C{targets:} item is a discovery source rather than a URL or C{{url:, weight:}}."""
    return isinstance(value, dict) and any(k in value for k in SOURCE_KEYS)


def parseSourceItem(value: dict[Any, Any], path: str, line: int | None,
                    baseDir: Path) -> tuple[SourceSpec | None, list[Problem]]:
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
                                    c.get("watch", positiveDuration, DEFAULT_WATCH), onEmpty)
        return (spec if not c.problems else None), c.problems
    scheme = c.get("scheme", oneOf("http", "https"), "http")
    refresh = c.get("refresh", positiveDuration, DEFAULT_REFRESH)
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


def parseDiscovery(value: Any, path: str = "discovery", line: int | None = None) -> tuple[DiscoveryConfig, list[Problem]]:
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
            except ValueError as e:
                itemLine = itemLines[i] if i < len(itemLines) else c.lineOf("nameservers")
                c.problems.append((f"{path}.nameservers[{i}]", itemLine, str(e)))
    return DiscoveryConfig(tuple(servers)), c.problems


def parseSlowStart(value: Any, path: str, line: int | None) -> tuple[float, list[Problem]]:
    """C{upstreams.NAME.slow_start}: a duration, C{0s} (off) when absent."""
    if value is None:
        return 0.0, []
    try:
        return duration(value), []
    except ValueError as e:
        return 0.0, [(path, line, str(e))]
