# -*- test-case-name: tests.test_config -*-
"""
Value converters for the units every config file uses: durations, sizes,
rates, fractions, numbers, names.

Each takes the raw YAML value and returns the typed one, or raises
L{Invalid} with a message a user can act on; the parser adds the key path
and line.  Converting here, once per load, is what keeps string parsing off
the request path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from txgateway.config.errors import Invalid

__all__ = [
    "TOKEN", "IPNetwork", "Rate", "boolean", "duration", "fraction", "headerName", "headerValue", "integer",
    "method", "network", "oneOf", "positive", "rate", "size", "string", "urlPath",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB|K|M|G)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "k": 1024, "m": 1024**2, "g": 1024**3,
}


def duration(value: Any) -> float:
    """C{250ms}, C{5s}, C{1m}, C{1h}, or a bare number of seconds."""
    if isinstance(value, bool):
        raise Invalid("not a duration (write e.g. 250ms, 5s, 1m)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise Invalid(f"not a duration: {value!r} (write e.g. 250ms, 5s, 1m)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise Invalid("must not be negative")
    return seconds


def size(value: Any) -> int:
    """C{512KiB}, C{10MiB}, C{100KB}, or a bare number of bytes."""
    if isinstance(value, bool):
        raise Invalid("not a size (write e.g. 512KiB, 10MiB)")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise Invalid(f"not a size: {value!r} (write e.g. 512KiB, 10MiB)")
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    if n < 0:
        raise Invalid("must not be negative")
    return n


@dataclass(frozen=True)
class Rate:
    """C{count} events per C{per} seconds."""

    count: int
    per: float

    @property
    def perSecond(self) -> float:
        return self.count / self.per


def rate(value: Any) -> Rate:
    """C{100/s}, C{600/m}, C{10/5s}."""
    text = str(value).strip()
    count, sep, unit = text.partition("/")
    if not sep or not count.strip().isdigit():
        raise Invalid(f"not a rate: {value!r} (write e.g. 100/s, 600/m)")
    unit = unit.strip()
    per = duration("1" + unit if unit in ("s", "m", "h", "d") else unit)
    if per <= 0 or int(count) <= 0:
        raise Invalid("a rate needs a positive count and period")
    return Rate(int(count), per)


def fraction(value: Any) -> float:
    """C{20%} or C{0.2}."""
    if isinstance(value, bool):
        raise Invalid("not a fraction")
    try:
        if isinstance(value, str) and value.strip().endswith("%"):
            f = float(value.strip()[:-1]) / 100
        else:
            f = float(value)
    except ValueError:
        raise Invalid(f"not a fraction: {value!r} (write e.g. 20% or 0.2)") from None
    if not 0 <= f <= 1:
        raise Invalid("must be between 0 and 1 (0% and 100%)")
    return f


def integer(minimum: int = 0) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"not a whole number: {value!r}")
        if value < minimum:
            raise Invalid(f"must be at least {minimum}")
        return value

    return conv


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"not true or false: {value!r}")
    return value


def string(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise Invalid("not a string")
    return str(value)


def oneOf(*choices: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in choices:
            raise Invalid(f"{value!r} is not one of: {', '.join(choices)}")
        return str(value)

    return conv


def network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise Invalid(f"not an IP address or CIDR: {value!r}") from None


def urlPath(value: Any) -> str:
    text = string(value)
    if not text.startswith("/"):
        raise Invalid(f"a path must start with '/': {text!r}")
    return text


TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def headerName(value: Any) -> str:
    text = string(value)
    if not TOKEN.match(text):
        raise Invalid(f"not a valid header name: {text!r}")
    return text


def method(value: Any) -> str:
    text = string(value).upper()
    if not TOKEN.match(text):
        raise Invalid(f"not an HTTP method: {value!r}")
    return text


def headerValue(value: Any) -> str:
    text = string(value)
    if any(c in text for c in "\r\n\x00"):
        raise Invalid("header values must not contain CR, LF or NUL")
    return text



def positive(conv: Callable[[Any], float]) -> Callable[[Any], float]:
    """C{conv}, refusing zero: a period or timeout of nothing means a mistake."""

    def wrapped(value: Any) -> float:
        v = conv(value)
        if v <= 0:
            raise Invalid("must be greater than zero")
        return v

    return wrapped
