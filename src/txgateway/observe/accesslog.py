# -*- test-case-name: tests.test_observe_accesslog -*-
"""
The access log: one line per request, written without building a dict on the hot path.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from txgateway.context import RequestContext
from txgateway.observe.metrics import KNOWN_METHODS
from txgateway.observe.timestamps import MILLIS, isoSecond, isoTime

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.logger import Logger

    from txgateway.observe.ids import IdSource


class AccessLog:
    """
    One line per request, through twisted.logger (or a file of its own).

    The entry carries no header values at all, only what the gateway
    decided (route, target, status...): credentials cannot leak through it.
    The path is the normalised one without its query string, which may
    hold tokens too.
    """

    def __init__(self, enabled: bool, outFile: IO[str] | None = None, format: str = "json",
                 clock: IReactorTime | None = None, *, logger: Logger | None = None,
                 now: Callable[[], float] = time.time) -> None:
        """
        @param logger: where lines go without C{outFile} (a test passes one
            with its own observer); by default C{Logger("txgateway.access")}.
        @param now: the wall clock that stamps each line (a test pins it).
        """
        from twisted.logger import Logger

        self.enabled = enabled
        self._log = logger if logger is not None else Logger(namespace="txgateway.access")
        self._now = now
        self._file = outFile
        # With a clock, lines written to a buffered file are flushed once per
        # reactor turn instead of once per line: every request that ends in
        # the same turn shares one write(2).  Without one, the file's own
        # buffering decides (line-buffered files flush every line).
        self._clock = clock
        self._flushPending = False
        self.worker: int | None = None  # the worker's index when running with server.workers
        self._jsonFile = outFile is not None and format == "json"
        # The start of the time field for the current second, made once a second.
        self._second = -1
        self._timePrefix = ""
        # The JSON of strings from small sets (route, upstream and target
        # names, methods, cache results, outcomes), encoded once each.
        self._encoded: dict[str, str] = {}
        self._methods: dict[bytes, str] = {}

    def entry(self, context: RequestContext, duration: float) -> dict[str, Any]:
        route = context.route
        return {
            "time": isoTime(self._now()),
            "request_id": context.requestId,
            "client": context.clientIP,
            "method": context.method.decode("latin-1"),
            "protocol": protocolOf(context.request),
            "host": context.host,
            "path": context.path,
            "route": route.name if route is not None else None,
            "upstream": context.upstream,
            "upstream_choice": context.upstreamChoice,
            "target": context.target,
            "attempts": context.attempts,
            "targets_tried": context.targetsTried or None,
            "status": context.status,
            "grpc_status": context.grpcStatus,
            "duration_ms": round(duration * 1000, 3),
            "request_processing_ms": _processingMs(context.forwarded, context.started),
            "response_processing_ms": _processingMs(context.answered, context.started + duration, True),
            "bytes_in": _bytesIn(context),
            "bytes_out": context.bytesOut,
            "cache": context.cacheStatus,
            "identity": context.identity,
            "outcome": context.outcome,
            "trace_id": context.traceId,
            "worker": self.worker,
            **(context.extra or {}),
        }

    def refused(self, ids: IdSource, now: float, client: str, method: bytes, target: bytes, headers: Any,
                status: int) -> str:
        """
        A request the listening channel refused (400, 408, 413, 414, 431):
        its request id (the client's, if plain, as for any request) and its
        access-log line, as every answered request has.
        """
        sent = headers.getRawHeaders(b"x-request-id") if headers is not None else None
        requestId = ids.requestId(sent[0] if sent else None)
        hosts = headers.getRawHeaders(b"host") if headers is not None else None
        # The raw target, without its query (which may hold tokens) and cut
        # short: it may be the very thing refused for its length.
        path = target.partition(b"?")[0][:256].decode("latin-1")
        # No Request object: the channel refused the bytes before making one.
        context = RequestContext(None, now, requestId, client, client, method[:32],  # type: ignore[arg-type]
                                 hosts[0][:256].decode("latin-1") if hosts else "", path, None)
        context.status = status
        context.outcome = "refused"
        self.record(context, 0.0)
        return requestId

    def record(self, context: RequestContext, duration: float) -> None:
        if not self.enabled:
            return
        out = self._file
        if out is None:
            entry = self.entry(context, duration)
            self._log.info("{access[method]} {access[path]} {access[status]}", access=entry,
                           request_id=context.requestId)
            return
        if self._jsonFile:
            try:
                line = self.jsonLine(context, duration)
            except TypeError:  # a field of an unexpected type: let json say what it makes of it
                line = json.dumps(self.entry(context, duration), separators=(",", ":")) + "\n"
            out.write(line)
        else:
            entry = self.entry(context, duration)
            out.write(f"{entry['time']} {accessText(entry)}\n")
        if not self._flushPending and self._clock is not None:
            self._flushPending = True
            self._clock.callLater(0, self.flush)

    def jsonLine(self, context: RequestContext, duration: float) -> str:
        """
        C{json.dumps(self.entry(context, duration), separators=(",", ":"))}
        and a newline, without the dict: the fields are known, so each is
        encoded in place with json's own (C) string encoder, and strings
        that repeat from request to request (route, upstream, target,
        method, cache, outcome) are encoded once and looked up after.
        A test holds the two to the same bytes.
        """
        c = context
        t = self._now()
        second = int(t)
        if second != self._second:
            self._second = second
            self._timePrefix = '{"time":"' + isoSecond(second) + "."
        enc = _encodeString
        known = self._encoded
        get = known.get
        route = c.route
        upstream = c.upstream
        choice = c.upstreamChoice
        target = c.target
        tried = c.targetsTried
        cache = c.cacheStatus
        outcome = c.outcome
        identity = c.identity
        traceId = c.traceId
        worker = self.worker
        if tried:
            if len(tried) == 1:
                t0 = tried[0]
                triedJson = "[" + (get(t0) or self._encode(t0)) + "]"
            else:
                triedJson = "[" + ",".join([get(x) or self._encode(x) for x in tried]) + "]"
        else:
            triedJson = "null"
        # repr(round(ms, 3)), as json.dumps writes it, without the costly
        # round trip through a float: for up to 15 significant digits the
        # shortest repr of the rounded float is the 3-decimal text less its
        # trailing zeros (both round with the same correctly rounded dtoa).
        ms = duration * 1000
        if 0.0 <= ms < 1e12:
            durationJson = f"{ms:.3f}".rstrip("0")
            if durationJson[-1] == ".":
                durationJson += "0"
        else:
            durationJson = repr(round(ms, 3))
        return (
            f'{self._timePrefix}{MILLIS[int((t % 1) * 1000)]}Z","request_id":{enc(c.requestId)},'
            f'"client":{enc(c.clientIP)},"method":{self._methods.get(c.method) or self._encodeMethod(c.method)},'
            f'"protocol":{_PROTOCOL_JSON.get(getattr(c.request, "clientproto", b""), "null")},'
            f'"host":{enc(c.host)},"path":{enc(c.path)},'
            f'"route":{"null" if route is None else get(route.name) or self._encode(route.name)},'
            f'"upstream":{"null" if upstream is None else get(upstream) or self._encode(upstream)},'
            f'"upstream_choice":{"null" if choice is None else get(choice) or self._encode(choice)},'
            f'"target":{"null" if target is None else get(target) or self._encode(target)},'
            f'"attempts":{c.attempts!r},"targets_tried":{triedJson},"status":{c.status!r},'
            f'"grpc_status":{"null" if c.grpcStatus is None else repr(c.grpcStatus)},"duration_ms":{durationJson},'
            f'"request_processing_ms":{_processingJson(c.forwarded, c.started)},'
            f'"response_processing_ms":{_processingJson(c.answered, c.started + duration, True)},'
            f'"bytes_in":{_bytesIn(c)!r},"bytes_out":{c.bytesOut!r},'
            f'"cache":{"null" if cache is None else get(cache) or self._encode(cache)},'
            f'"identity":{"null" if identity is None else enc(identity)},'
            f'"outcome":{"null" if outcome is None else get(outcome) or self._encode(outcome)},'
            f'"trace_id":{"null" if traceId is None else enc(traceId)},'
            f'"worker":{"null" if worker is None else repr(worker)}'
            f'{"" if c.extra is None else _extraJson(c.extra)}}}\n'
        )

    def _encode(self, value: str) -> str:
        """The JSON of a string from a small set, remembered (a bounded number of them)."""
        encoded = _encodeString(value)  # raises TypeError for what is not a string
        known = self._encoded
        if len(known) >= 4096:
            known.clear()
        known[value] = encoded
        return encoded

    def _encodeMethod(self, method: bytes) -> str:
        encoded = _encodeString(method.decode("latin-1"))
        if method in KNOWN_METHODS:  # a client's invented methods are not kept
            self._methods[method] = encoded
        return encoded

    def reopen(self) -> None:
        """
        SIGUSR1: after log rotation moved C{logging.access_log_file} away,
        lines from now on go to a new file at its path (swapped between two
        lines, so none is lost or split).  Nothing to do without a file of
        its own, or when writing to a pipe (a worker's go to the supervisor).
        """
        old = self._file
        path = getattr(old, "name", None)
        if old is None or not isinstance(path, str):
            return
        self.flush()
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
        old.close()

    def flush(self) -> None:
        """Write out the lines buffered this reactor turn (also called by the drain)."""
        self._flushPending = False
        if self._file is None:
            return
        try:
            self._file.flush()
        except (OSError, ValueError):
            # A full disk or a closed file must not take the request path down.
            from twisted.logger import Logger

            Logger(namespace="txgateway.access").failure("flushing the access log failed")


_encodeString = json.encoder.encode_basestring_ascii  # json.dumps' own (C) string encoder


def _extraJson(extra: dict[str, Any]) -> str:
    """The fields a request added with C{RequestContext.note}, each after a comma, as json.dumps writes them."""
    return "".join(f",{_encodeString(k)}:{json.dumps(v, separators=(',', ':'))}" for k, v in extra.items())


# The protocol a client spoke (twisted.web's clientproto), as the access log
# writes it: a field, not a metric label.
_PROTOCOLS = {b"HTTP/1.1": "HTTP/1.1", b"HTTP/1.0": "HTTP/1.0", b"HTTP/2": "HTTP/2"}
_PROTOCOL_JSON = {k: _encodeString(v) for k, v in _PROTOCOLS.items()}


def protocolOf(request: Any) -> str | None:
    """C{"HTTP/1.1"}, C{"HTTP/2"}...: what the client spoke; None for a request refused before it had one."""
    return _PROTOCOLS.get(getattr(request, "clientproto", b""))


def _processingMs(mark: float, other: float, reverse: bool = False) -> float | None:
    """
    Milliseconds between a mark of a forwarded request and C{other}:
    request read -> forwarded (C{mark} the forward), upstream answer ->
    last byte to the client (C{mark} the answer, C{reverse}).  None when the
    request never got that far (the mark still -1.0: a local answer, a cache hit).
    """
    if mark < 0:
        return None
    return round(max(other - mark if reverse else mark - other, 0.0) * 1000, 3)


def _processingJson(mark: float, other: float, reverse: bool = False) -> str:
    ms = _processingMs(mark, other, reverse)
    return "null" if ms is None else repr(ms)


def _bytesIn(context: RequestContext) -> int:
    return int(getattr(context.request, "bytesIn", 0))


def requestBodySize(request: Any) -> int:
    """
    The size of the request body, from the count L{GatewayRequest} keeps as
    it reads it (no seeking in the buffer); L{bodySize} for other requests.
    """
    n = getattr(request, "_bodyBytes", None)
    return n if isinstance(n, int) else bodySize(request)


def bodySize(request: Any) -> int:
    """
    The size of the request body the Site buffered.

    Measured when the request is routed: Twisted closes the buffer before
    the request's finish notification, where the access log is written.
    """
    content = getattr(request, "content", None)
    if content is None:
        return 0
    try:
        pos = content.tell()
        content.seek(0, 2)
        n = content.tell()
        content.seek(pos)
        return int(n)
    except (OSError, ValueError):
        return 0


def accessText(entry: dict[str, Any]) -> str:
    """An access entry as C{key=value} pairs (values with spaces quoted)."""
    parts = []
    for k, v in entry.items():
        if v is None or k == "time":
            continue
        if isinstance(v, list):
            v = ",".join(map(str, v))
        elif isinstance(v, bool):
            v = "true" if v else "false"  # as in JSON (coalesced=true)
        v = str(v)
        if not v or " " in v or '"' in v:
            v = json.dumps(v)
        parts.append(f"{k}={v}")
    return " ".join(parts)


__all__ = ["AccessLog", "accessText", "bodySize", "protocolOf", "requestBodySize"]
