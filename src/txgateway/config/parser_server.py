# -*- test-case-name: tests.test_config -*-
"""
Parsing the process-wide sections: server, admin, logging, stores, access, tracing.
"""

from __future__ import annotations

from typing import Any

from txgateway.config.errors import Invalid, keyPath
from txgateway.config.fields import level, loopbackOnly, redisURL, viaPseudonym, watchInterval, workers
from txgateway.config.parser_base import ParserBase
from txgateway.config.schema import (
    AccessConfig,
    AdminConfig,
    Endpoints,
    LoggingConfig,
    ServerConfig,
    ServerTimeouts,
    StoresConfig,
    TracingConfig,
    TracingOTLP,
)
from txgateway.config.values import (
    boolean,
    duration,
    fraction,
    headerName,
    headerValue,
    integer,
    network,
    oneOf,
    positive,
    size,
    string,
)

__all__ = ["ServerSections"]


class ServerSections(ParserBase):
    """The sections that configure the process rather than a request's path through it."""

    def server(self, value: Any, line: int | None) -> ServerConfig:
        p = "server"
        m = self.mapping(value, p, line, ["listen", "max_request_body", "max_header_bytes", "max_uri_bytes",
                                          "max_connections_per_ip", "timeouts", "trusted_proxies", "endpoints",
                                          "workers", "via", "watch_config", "backlog", "environment",
                                          "forwarded_header", "http2", "h2c", "http2_max_concurrent_streams",
                                          "http2_max_requests_per_connection", "http2_max_resets"])
        if m is None:
            return ServerConfig()
        d = ServerConfig()
        tp, ep = keyPath(p, "timeouts"), keyPath(p, "endpoints")
        tv, tl = self.child(m, "timeouts")
        tm = self.mapping(tv, tp, tl, ["request_header", "request_body", "idle", "drain", "write"])
        timeouts = ServerTimeouts()
        if tm is not None:
            timeouts = ServerTimeouts(
                request_header=self.get(tm, "request_header", tp, duration, timeouts.request_header),
                request_body=self.get(tm, "request_body", tp, duration, timeouts.request_body),
                idle=self.get(tm, "idle", tp, duration, timeouts.idle),
                drain=self.get(tm, "drain", tp, duration, timeouts.drain),
                write=self.get(tm, "write", tp, duration, timeouts.write),
            )
        ev, el = self.child(m, "endpoints")
        em = self.mapping(ev, ep, el, ["health", "ready", "metrics"])
        endpoints = Endpoints()
        if em is not None:
            endpoints = Endpoints(
                health=self.optionalPath(em, "health", ep, endpoints.health),
                ready=self.optionalPath(em, "ready", ep, endpoints.ready),
                metrics=self.optionalPath(em, "metrics", ep, endpoints.metrics),
            )
        listen = self.get(m, "listen", p, string, d.listen)
        self.checkEndpoint(listen, keyPath(p, "listen"), m.lines.get("listen"))
        return ServerConfig(
            listen=listen,
            max_request_body=self.get(m, "max_request_body", p, size, d.max_request_body),
            max_header_bytes=self.get(m, "max_header_bytes", p, size, d.max_header_bytes),
            max_uri_bytes=self.get(m, "max_uri_bytes", p, size, d.max_uri_bytes),
            max_connections_per_ip=self.get(m, "max_connections_per_ip", p, integer(0), d.max_connections_per_ip),
            timeouts=timeouts,
            trusted_proxies=self.seq(m, "trusted_proxies", p, network),
            endpoints=endpoints,
            workers=self.get(m, "workers", p, workers, d.workers),
            via=self.get(m, "via", p, viaPseudonym, d.via),
            watch_config=self.get(m, "watch_config", p, watchInterval, d.watch_config),
            backlog=self.get(m, "backlog", p, integer(1), d.backlog),
            environment=self.get(m, "environment", p, string, d.environment),
            forwarded_header=self.get(m, "forwarded_header", p, oneOf("x-forwarded", "forwarded", "both"),
                                      d.forwarded_header),
            http2=self.get(m, "http2", p, boolean, d.http2),
            h2c=self.get(m, "h2c", p, boolean, d.h2c),
            http2_max_concurrent_streams=self.get(m, "http2_max_concurrent_streams", p, integer(1),
                                                  d.http2_max_concurrent_streams),
            http2_max_requests_per_connection=self.get(m, "http2_max_requests_per_connection", p, integer(0),
                                                       d.http2_max_requests_per_connection),
            http2_max_resets=self.get(m, "http2_max_resets", p, integer(1), d.http2_max_resets),
        )

    def admin(self, value: Any, line: int | None) -> AdminConfig | None:
        if value is None:
            return None
        m = self.mapping(value, "admin", line, ["listen", "token", "token_file"])
        if m is None:
            return None
        listen = self.required(m, "listen", "admin", m.line)
        if listen is None:
            return None
        listen = str(listen)
        self.checkEndpoint(listen, "admin.listen", m.lines.get("listen"))
        token = self.get(m, "token", "admin", string, None)
        tokenBytes = self.readFile(m, "token_file", "admin")
        if tokenBytes is not None:
            token = tokenBytes.decode("utf-8", "replace").strip()
        if token is not None and not token.strip():
            self.problem("admin.token", m.lines.get("token", m.lines.get("token_file")),
                         "is empty: give a real token, or leave the key out")
        if token is None and not loopbackOnly(listen):
            self.problem("admin.listen", m.lines.get("listen"),
                         "binds beyond loopback: set admin.token (or listen on interface=127.0.0.1)")
        return AdminConfig(listen=listen, token=token)

    def logging(self, value: Any, line: int | None) -> LoggingConfig:
        m = self.mapping(value, "logging", line, ["level", "format", "access_log", "access_log_file"])
        d = LoggingConfig()
        if m is None:
            return d
        return LoggingConfig(
            level=self.get(m, "level", "logging", level, d.level),
            format=self.get(m, "format", "logging", oneOf("json", "text"), d.format),
            access_log=self.get(m, "access_log", "logging", boolean, d.access_log),
            access_log_file=self.get(m, "access_log_file", "logging", lambda v: str(self.file(v)), None),
        )

    def tracing(self, value: Any, line: int | None) -> TracingConfig | None:
        """C{tracing:}: absent means None, so the gateway builds no tracer at all."""
        if value is None:
            return None
        p = "tracing"
        m = self.mapping(value, p, line, ["otlp", "sample", "always_sample_errors", "max_queue", "batch_size",
                                          "flush_interval", "timeout"])
        if m is None:
            return None
        op = keyPath(p, "otlp")
        ov, ol = self.child(m, "otlp")
        if ov is None:
            self.problem(op, m.line, "is required (otlp: {endpoint: http://collector:4318})")
            return None
        om = self.mapping(ov, op, ol, ["endpoint", "headers"])
        if om is None:
            return None
        endpoint = self.required(om, "endpoint", op, om.line)
        if endpoint is None:
            return None
        endpoint = str(endpoint).rstrip("/")
        if not endpoint.startswith(("http://", "https://")):
            self.problem(keyPath(op, "endpoint"), om.lines.get("endpoint"), "must be an http:// or https:// URL")
            return None
        if not endpoint.endswith("/v1/traces"):
            endpoint += "/v1/traces"  # the OTLP/HTTP exporters' convention: the base URL, the signal's path added
        headers: dict[str, str] = {}
        hp = keyPath(op, "headers")
        hv, hl = self.child(om, "headers")
        if hv is not None and not isinstance(hv, dict):
            self.problem(hp, hl, "must be a mapping of header names to values")
        elif hv is not None:
            lines = getattr(hv, "lines", {})
            for k, v in hv.items():
                try:
                    headers[headerName(k)] = headerValue(str(v))
                except Invalid as e:
                    self.problem(keyPath(hp, str(k)), lines.get(k, hl), str(e))
        d = TracingConfig(otlp=TracingOTLP(endpoint))
        return TracingConfig(
            otlp=TracingOTLP(endpoint, headers),
            sample=self.get(m, "sample", p, fraction, d.sample),
            always_sample_errors=self.get(m, "always_sample_errors", p, boolean, d.always_sample_errors),
            max_queue=self.get(m, "max_queue", p, integer(1), d.max_queue),
            batch_size=self.get(m, "batch_size", p, integer(1), d.batch_size),
            flush_interval=self.get(m, "flush_interval", p, positive(duration), d.flush_interval),
            timeout=self.get(m, "timeout", p, positive(duration), d.timeout),
        )

    def stores(self, value: Any, line: int | None) -> StoresConfig:
        m = self.mapping(value, "stores", line, ["redis", "redis_timeout"])
        d = StoresConfig()
        if m is None:
            return d
        return StoresConfig(
            redis=self.get(m, "redis", "stores", redisURL, None),
            redis_timeout=self.get(m, "redis_timeout", "stores", duration, d.redis_timeout),
        )

    def access(self, value: Any, line: int | None, path: str) -> AccessConfig:
        m = self.mapping(value, path, line, ["ip_allow", "ip_deny"])
        if m is None:
            return AccessConfig()
        return AccessConfig(self.seq(m, "ip_allow", path, network), self.seq(m, "ip_deny", path, network))
