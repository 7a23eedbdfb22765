# -*- test-case-name: tests.test_limiting -*-
"""What C{rate_limit.key} means: a function from a request to the client's key, compiled once per route."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from txgateway.context import RequestContext

__all__ = ["ANONYMOUS", "MAX_KEY_LENGTH", "keyFunction"]

ANONYMOUS = "anonymous"
# Keys longer than this (a huge API key header) are stored as a digest, so one
# client cannot make each bucket cost kilobytes.
MAX_KEY_LENGTH = 128


def keyFunction(parts: tuple[str, ...], routeName: str) -> Callable[[RequestContext], str]:
    """What C{rate_limit.key} means, compiled once per route."""
    if parts == ("client_ip",):
        return _clientIPKey  # the default key, read without the generic wrapping below
    getters: list[Callable[[RequestContext], str]] = []
    for part in parts:
        if part == "client_ip":
            getters.append(_clientIP)
        elif part == "route":
            getters.append(_constant(routeName))
        elif part == "consumer":
            getters.append(_consumer)
        elif part.startswith("header:"):
            getters.append(_headerGetter(part[len("header:"):].lower().encode("ascii")))
        else:
            raise ValueError(f"unknown rate_limit key part {part!r}")
    if len(getters) == 1:
        only = getters[0]
        return lambda context: _bounded(only(context))
    # Header values never contain a newline, so joined keys cannot collide.
    return lambda context: _bounded("\n".join([g(context) for g in getters]))


def _clientIP(context: RequestContext) -> str:
    return context.clientIP


def _clientIPKey(context: RequestContext) -> str:
    key = context.clientIP
    return key if len(key) <= MAX_KEY_LENGTH else _bounded(key)


def _constant(value: str) -> Callable[[RequestContext], str]:
    def get(context: RequestContext) -> str:
        return value

    return get


def _consumer(context: RequestContext) -> str:
    return context.identity or ANONYMOUS


def _headerGetter(name: bytes) -> Callable[[RequestContext], str]:
    def get(context: RequestContext) -> str:
        value = context.header(name)
        return value.decode("latin-1") if value else ANONYMOUS

    return get


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "\x00" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
