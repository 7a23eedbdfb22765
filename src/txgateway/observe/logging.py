# -*- test-case-name: tests.test_observe -*-
"""
How the gateway's log lines are written: JSON or text, one level threshold, credentials redacted.

Every line has the same timestamp format (L{txgateway.observe.timestamps}),
names its logger (Twisted's legacy events included), and says which worker
wrote it when the gateway runs several.  L{logConfigLoaded} is the one
start-up line saying which config was loaded and what it holds.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel, eventAsText

from txgateway.observe.accesslog import accessText
from txgateway.observe.timestamps import isoTime

if TYPE_CHECKING:
    from txgateway.config import GatewayConfig

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


# Twisted's Factory logs "Starting factory <... at 0x7f...>" and "Stopping
# factory" for every factory that is not marked quiet: nothing an operator
# acts on, so they are written only at debug.
_QUIET_FORMATS = frozenset(("Starting factory {factory!r}", "Stopping factory {factory!r}"))


def _levelOf(event: dict[str, Any]) -> LogLevel:
    if event.get("log_format") in _QUIET_FORMATS:
        return LogLevel.debug
    level: LogLevel = event.get("log_level", LogLevel.info)
    return level


def _loggerOf(event: dict[str, Any]) -> str:
    """
    The event's namespace; for events from Twisted's legacy C{log.msg}
    (namespace C{log_legacy}, e.g. a port's "starting on"), their system,
    or C{twisted} when they have none.
    """
    namespace: str = event.get("log_namespace", "")
    if namespace == "log_legacy":
        system = event.get("log_system")
        return system if isinstance(system, str) and system not in ("", "-") else "twisted"
    return namespace


def jsonFormatter(level: str = "info", worker: int | None = None) -> Callable[[dict[str, Any]], str | None]:
    """
    One JSON object per line; events below C{level} are dropped.

    Access-log events are kept whatever the level: C{logging.access_log}
    decides about those, so an operator who turns the level to C{warn} to
    quieten the gateway keeps the one line per request.  In a worker
    process every line carries C{worker}, its index.
    """
    threshold = _LEVELS[level]

    def fmt(event: dict[str, Any]) -> str | None:
        access = event.get("access")
        if access is not None:
            return json.dumps(access, separators=(",", ":")) + "\n"
        lvl = _levelOf(event)
        if lvl < threshold:
            return None
        out: dict[str, Any] = {
            "time": isoTime(event.get("log_time", time.time())),
            "level": lvl.name,
            "logger": _loggerOf(event),
            "message": redact(eventAsText(event, includeTimestamp=False, includeSystem=False)),
        }
        if worker is not None:
            out["worker"] = worker
        for key in _EVENT_FIELDS:
            if key in event:
                out[key] = _jsonSafe(event[key])
        return json.dumps(out, separators=(",", ":")) + "\n"

    return fmt


def textFormatter(level: str = "info", worker: int | None = None) -> Callable[[dict[str, Any]], str | None]:
    """
    C{<time> [<logger>#<level>] <message>} lines, with the same level and
    redaction rules as JSON and the access log's timestamp format (so every
    line of a text log has the same one).  In a worker process every line
    carries C{[worker N]} after the time.
    """
    threshold = _LEVELS[level]
    workerTag = "" if worker is None else f"[worker {worker}] "

    def fmt(event: dict[str, Any]) -> str | None:
        when = isoTime(event.get("log_time", time.time()))
        access = event.get("access")
        if access is not None:
            return f"{access.get('time', when)} [access] {accessText(access)}\n"  # the entry names its worker
        lvl = _levelOf(event)
        if lvl < threshold:
            return None
        message = eventAsText(event, includeTimestamp=False, includeSystem=False)
        if not message:
            return None
        text = f"{when} {workerTag}[{_loggerOf(event)}#{lvl.name}] {message.replace(chr(10), chr(10) + chr(9))}"
        rid = event.get("request_id")
        if rid is not None and str(rid) not in text:
            text += f" request_id={rid}"
        return redact(text) + "\n"

    return fmt


def formatterFor(level: str, format: str, worker: int | None = None) -> Callable[[dict[str, Any]], str | None]:
    """The formatter C{logging.format} names, at C{logging.level}; C{worker} is this worker's index, if it is one."""
    return jsonFormatter(level, worker) if format == "json" else textFormatter(level, worker)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def configSummary(config: GatewayConfig) -> str:
    """
    One line saying which config was loaded and what it holds, for the start-up log.

    Counts and listeners only: no URL of a target or store (a Redis URL may
    hold a password) and nothing from the auth sections.
    """
    s = config.server
    targets = sum(len(u.targets) for u in config.upstreams.values())
    parts = [_count(len(config.routes), "route", "routes"),
             f"{_count(len(config.upstreams), 'upstream', 'upstreams')} ({_count(targets, 'target', 'targets')})",
             f"listening on {s.listen}"]
    if config.admin is not None:
        parts.append(f"admin on {config.admin.listen}")
    if s.workers != 1:
        parts.append(f"{s.workers} workers" if s.workers else "a worker per core")
    if config.stores.redis:
        parts.append("shared state in Redis")
    source = config.source or "<config>"
    origin = "from the environment" if source == "environment" else source
    return f"config loaded {origin}: " + ", ".join(parts)


_startupLog = Logger(namespace="txgateway")


def logConfigLoaded(config: GatewayConfig, log: Logger = _startupLog) -> None:
    """Log L{configSummary} at info: the first line an operator looks for after a start."""
    log.info("{summary}", summary=configSummary(config))


__all__ = ["configSummary", "formatterFor", "jsonFormatter", "logConfigLoaded", "redact", "textFormatter"]
