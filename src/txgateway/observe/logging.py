# -*- test-case-name: tests.test_observe -*-
"""
How the gateway's log lines are written: JSON or text, one level threshold, credentials redacted.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import (
    LogLevel,
    eventAsText,
    formatEventAsClassicLogText,
)

from txgateway.observe.accesslog import accessText
from txgateway.observe.timestamps import isoTime

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}

# Fields of a log event copied into its JSON line, so that every line about
# one request can be found by its request_id.
_EVENT_FIELDS = ("request_id", "route", "upstream", "target", "client", "trace_id")

# Credentials must never reach a log line, whatever a caller formats into a
# message: a header name followed by its value (as text, key=value, or the
# repr of a Headers object) loses the value.
_SECRET = re.compile(
    r"""(?i)\b((?:proxy-)?authorization|cookie|set-cookie|x-api-key)(['"]?\s*[:=,]\s*\[?\s*b?['"]?)([^'"\]\r\n]+)""")


def redact(text: str) -> str:
    """C{text} with the values of credential-bearing headers replaced."""
    if not _SECRET.search(text):
        return text
    return _SECRET.sub(lambda m: m.group(1) + m.group(2) + "[redacted]", text)


def _jsonSafe(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def jsonFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    """
    One JSON object per line; events below C{level} are dropped.

    Access-log events are kept whatever the level: C{logging.access_log}
    decides about those, so an operator who turns the level to C{warn} to
    quieten the gateway keeps the one line per request.
    """
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        access = event.get("access")
        if access is not None:
            return json.dumps(access, separators=(",", ":")) + "\n"
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        out: dict[str, Any] = {
            "time": isoTime(event.get("log_time", time.time())),
            "level": lvl.name,
            "logger": event.get("log_namespace", ""),
            "message": redact(eventAsText(event, includeTimestamp=False, includeSystem=False)),
        }
        for key in _EVENT_FIELDS:
            if key in event:
                out[key] = _jsonSafe(event[key])
        return json.dumps(out, separators=(",", ":")) + "\n"

    return fmt


def textFormatter(level: str = "info") -> Callable[[dict[str, Any]], str | None]:
    """Twisted's classic lines, with the same level and redaction rules as JSON."""
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        access = event.get("access")
        if access is not None:
            return f"{access.get('time', isoTime(event.get('log_time', time.time())))} [access] {accessText(access)}\n"
        lvl = event.get("log_level", LogLevel.info)
        if lvl < threshold:
            return None
        text = formatEventAsClassicLogText(event)
        if text is None:
            return None
        rid = event.get("request_id")
        if rid is not None and str(rid) not in text:
            text = text.rstrip("\n") + f" request_id={rid}\n"
        return redact(text)

    return fmt



def formatterFor(level: str, format: str) -> Callable[[dict[str, Any]], str | None]:
    return jsonFormatter(level) if format == "json" else textFormatter(level)


__all__ = ["formatterFor", "jsonFormatter", "redact", "textFormatter"]
