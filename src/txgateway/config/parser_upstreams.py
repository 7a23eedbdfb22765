# -*- test-case-name: tests.test_config -*-
"""
Parsing upstreams: targets, balancer, timeouts, pool, health, breaker, retries.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from txgateway.config.errors import Invalid, itemPath, keyPath
from txgateway.config.fields import balancerName, hashOn, retryCondition, targetURL
from txgateway.config.parser_concurrency import parseConcurrency
from txgateway.config.parser_discovery import DiscoverySections, isSourceItem
from txgateway.config.parser_protocol import H2_POOL_KEYS, ProtocolSections, grpcService
from txgateway.config.parser_tls import parseUpstreamTLS
from txgateway.config.schema import (
    ActiveHealth,
    BreakerConfig,
    HealthConfig,
    PassiveHealth,
    PoolConfig,
    RetryConfig,
    Target,
    UpstreamConfig,
    UpstreamTimeouts,
)
from txgateway.config.schema_discovery import SourceSpec
from txgateway.config.source import YAMLSeq, lines
from txgateway.config.values import duration, fraction, integer, method, oneOf, positive, urlPath

__all__ = ["UpstreamSections"]


class UpstreamSections(ProtocolSections, DiscoverySections):
    """C{upstreams}: each a named cluster of targets and the policies that choose among them."""

    def upstreams(self, value: Any, line: int | None, required: bool = True) -> dict[str, UpstreamConfig]:
        if value is None:
            if required:
                self.problem("upstreams", line, "is required: at least one upstream")
            return {}
        if not isinstance(value, dict):
            self.problem("upstreams", line, "must be a mapping of upstream name to upstream")
            return {}
        out = {}
        for name, body in value.items():
            u = self.upstream(body, keyPath("upstreams", name), lines(value).get(name), str(name))
            if u is not None:
                out[str(name)] = u
        return out

    def upstream(self, value: Any, path: str, line: int | None, name: str) -> UpstreamConfig | None:
        m = self.mapping(value, path, line, ["balancer", "hash_on", "targets", "timeouts", "pool", "health",
                                             "circuit_breaker", "retries", "concurrency", "slow_start",
                                             "tls", "protocol"])
        if m is None:
            return None
        raw = self.required(m, "targets", path, m.line)
        targets: list[Target] = []
        sources: list[SourceSpec] = []
        if raw is not None and not isinstance(raw, list):
            self.problem(keyPath(path, "targets"), m.lines.get("targets"), "must be a list of URLs")
        elif raw is not None:
            for i, t in enumerate(raw):
                tline = raw.lines[i] if isinstance(raw, YAMLSeq) else None
                if isSourceItem(t):  # {dns: ...}, {dns_srv: ...}, {file: ...}: see parser_discovery
                    spec = self.sourceItem(t, itemPath(keyPath(path, "targets"), i), tline)
                    if spec is not None:
                        sources.append(spec)
                    continue
                target = self.target(t, itemPath(keyPath(path, "targets"), i), tline)
                if target is not None:
                    targets.append(target)
            if not raw:
                self.problem(keyPath(path, "targets"), m.lines.get("targets"), "needs at least one target")
        urls = [t.url for t in targets]
        if len(set(urls)) != len(urls):
            self.problem(keyPath(path, "targets"), m.lines.get("targets"), "lists the same target twice")
        d = UpstreamConfig(name=name, targets=())
        tm = self.mapping(m.get("timeouts"), keyPath(path, "timeouts"), m.lines.get("timeouts"), ["connect", "response"])
        timeouts = d.timeouts
        if tm is not None:
            timeouts = UpstreamTimeouts(
                connect=self.get(tm, "connect", keyPath(path, "timeouts"), positive(duration), timeouts.connect),
                response=self.get(tm, "response", keyPath(path, "timeouts"), positive(duration), timeouts.response),
            )
        pm = self.mapping(m.get("pool"), keyPath(path, "pool"), m.lines.get("pool"),
                          ["max_per_target", "idle_timeout", *H2_POOL_KEYS])
        pool = d.pool
        if pm is not None:
            pool = PoolConfig(
                max_per_target=self.get(pm, "max_per_target", keyPath(path, "pool"), integer(1), pool.max_per_target),
                idle_timeout=self.get(pm, "idle_timeout", keyPath(path, "pool"), duration, pool.idle_timeout),
                **self.h2Pool(pm, keyPath(path, "pool")),
            )
        breaker = None
        if m.get("circuit_breaker") not in (None, False):
            bp = keyPath(path, "circuit_breaker")
            bm = self.mapping(m["circuit_breaker"], bp, m.lines.get("circuit_breaker"), ["failures", "open_for", "half_open_probes"])
            if bm is not None:
                bd = BreakerConfig()
                breaker = BreakerConfig(
                    failures=self.get(bm, "failures", bp, integer(1), bd.failures),
                    open_for=self.get(bm, "open_for", bp, duration, bd.open_for),
                    half_open_probes=self.get(bm, "half_open_probes", bp, integer(1), bd.half_open_probes),
                )
        balancer = self.get(m, "balancer", path, balancerName, d.balancer)
        hashKey = self.get(m, "hash_on", path, hashOn, d.hash_on)
        raw, cline = self.child(m, "concurrency")
        concurrency, found = parseConcurrency(raw, keyPath(path, "concurrency"), cline)
        for p, ln, msg in found:
            self.problem(p, ln, msg)
        raw, tline = self.child(m, "tls")
        tls, tlsProblems = parseUpstreamTLS(raw, keyPath(path, "tls"), tline, self.baseDir, targets, bool(sources))
        self.problems += tlsProblems
        return UpstreamConfig(
            name=name,
            targets=tuple(targets),
            balancer=balancer,
            hash_on=hashKey,
            timeouts=timeouts,
            pool=pool,
            health=self.health(m.get("health"), keyPath(path, "health"), m.lines.get("health")),
            circuit_breaker=breaker,
            retries=self.retries(m.get("retries"), keyPath(path, "retries"), m.lines.get("retries")),
            concurrency=concurrency,
            sources=tuple(sources),
            slow_start=self.slowStart(m, path),
            tls=tls,
            protocol=self.protocol(m, path),
        )

    def target(self, value: Any, path: str, line: int | None) -> Target | None:
        weight = 1
        if isinstance(value, dict):
            m = self.mapping(value, path, line, ["url", "weight"])
            if m is None:
                return None
            url = self.required(m, "url", path, line)
            weight = self.get(m, "weight", path, integer(1), 1)
            path = keyPath(path, "url")
            line = m.lines.get("url", line)
        else:
            url = value
        if url is None:
            return None
        try:
            return replace(targetURL(url), weight=weight)
        except Invalid as e:
            self.problem(path, line, str(e))
            return None

    def health(self, value: Any, path: str, line: int | None) -> HealthConfig:
        m = self.mapping(value, path, line, ["active", "passive", "when_all_unhealthy"])
        if m is None:
            return HealthConfig()
        active = passive = None
        if m.get("active") not in (None, False):
            ap = keyPath(path, "active")
            am = self.mapping(m["active"], ap, m.lines.get("active"), ["path", "interval", "timeout", "healthy_after", "unhealthy_after",
                                                                    "grpc_service"])
            if am is not None:
                ad = ActiveHealth()
                active = ActiveHealth(
                    path=self.get(am, "path", ap, urlPath, ad.path),
                    interval=self.get(am, "interval", ap, positive(duration), ad.interval),
                    timeout=self.get(am, "timeout", ap, positive(duration), ad.timeout),
                    healthy_after=self.get(am, "healthy_after", ap, integer(1), ad.healthy_after),
                    unhealthy_after=self.get(am, "unhealthy_after", ap, integer(1), ad.unhealthy_after),
                    grpc_service=self.get(am, "grpc_service", ap, grpcService, None),
                )
        if m.get("passive") not in (None, False):
            pp = keyPath(path, "passive")
            pm = self.mapping(m["passive"], pp, m.lines.get("passive"), ["window", "min_requests", "max_error_rate", "eject_for"])
            if pm is not None:
                pd = PassiveHealth()
                passive = PassiveHealth(
                    window=self.get(pm, "window", pp, positive(duration), pd.window),
                    min_requests=self.get(pm, "min_requests", pp, integer(1), pd.min_requests),
                    max_error_rate=self.get(pm, "max_error_rate", pp, fraction, pd.max_error_rate),
                    eject_for=self.get(pm, "eject_for", pp, positive(duration), pd.eject_for),
                )
        return HealthConfig(
            active=active,
            passive=passive,
            when_all_unhealthy=self.get(m, "when_all_unhealthy", path, oneOf("fail_open", "fail_closed"), "fail_open"),
        )

    def retries(self, value: Any, path: str, line: int | None) -> RetryConfig:
        d = RetryConfig()
        if value is False:
            return replace(d, attempts=0)
        m = self.mapping(value, path, line, ["attempts", "on", "methods", "backoff", "max_backoff", "budget",
                                             "budget_window", "min_retries_per_second", "total_timeout"])
        if m is None:
            return d
        return RetryConfig(
            attempts=self.get(m, "attempts", path, integer(0), d.attempts),
            on=self.seq(m, "on", path, retryCondition) if "on" in m else d.on,
            methods=self.seq(m, "methods", path, method) if "methods" in m else d.methods,
            backoff=self.get(m, "backoff", path, duration, d.backoff),
            max_backoff=self.get(m, "max_backoff", path, duration, d.max_backoff),
            budget=self.get(m, "budget", path, fraction, d.budget),
            budget_window=self.get(m, "budget_window", path, positive(duration), d.budget_window),
            min_retries_per_second=self.get(m, "min_retries_per_second", path, lambda v: float(duration(v)), d.min_retries_per_second),
            total_timeout=self.get(m, "total_timeout", path, positive(duration), d.total_timeout),
        )
