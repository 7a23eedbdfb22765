# -*- test-case-name: tests.test_reloading,tests.test_balancing -*-
"""
Building a runtime from a config: the clusters, routes and filter chains one
config compiles into, reusing what survives from the previous runtime.

Like buildbot's reconfig, an upstream whose targets stay keeps their Endpoint
objects (health, breakers, in-flight counts) and, when its pool settings are
unchanged, its connection pool; a balancer of the same kind keeps its
rotation.  L{txgateway.service.GatewayService} calls L{buildRuntime} at start
and on every reload; tests call it directly.
"""

from __future__ import annotations

import os
import random as _random
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txgateway import balancing, breaking, health, retrying
from txgateway.cluster import Cluster, Endpoint
from txgateway.config import ConfigError, GatewayConfig, UpstreamConfig
from txgateway.config.errors import Problem
from txgateway.forwarding import Forwarder
from txgateway.gateway import GatewayState, Runtime
from txgateway.http.client.agent import makeClient
from txgateway.http.client.h2client import makeH2Client
from txgateway.http.sending import WriteBatcher
from txgateway.interfaces import IUpstreamClient
from txgateway.middleware import Deps, buildChain
from txgateway.observe import AccessLog, Metrics
from txgateway.protection.build import attachAdmission
from txgateway.routing import RouteTable, compileRoutes
from txgateway.splitting import attachCanaries

__all__ = ["ClientFactory", "Gateway", "accessLogFor", "breakerObserver", "buildRuntime", "needsRedis"]

log = Logger(namespace="txgateway")

# Makes the client of one upstream (see buildRuntime's C{clients}).
ClientFactory = Callable[[UpstreamConfig], IUpstreamClient]


def _circuitCode(state: str) -> int:
    return {"closed": 0, "open": 1, "half_open": 2}.get(state, 0)


class Gateway:
    """What the resource tree reads: the current runtime, and state that outlives it."""

    def __init__(self, runtime: Runtime | None = None) -> None:
        self.runtime: Runtime = runtime  # type: ignore[assignment]
        self.state = GatewayState()
        self.history: list[dict[str, Any]] = []  # recent reloads, newest last


def buildRuntime(config: GatewayConfig, *, reactor: Any, clock: IReactorTime, metrics: Metrics,
                 previous: Runtime | None = None, rng: _random.Random | None = None,
                 accessLog: AccessLog | None = None, redis: Any = None,
                 shared: dict[str, Any] | None = None, writes: WriteBatcher | None = None,
                 clients: ClientFactory | None = None) -> Runtime:
    """
    Compile one config into a runtime, reusing what survives from C{previous}.

    C{clients}, when given, makes every upstream's client (called for each
    upstream on every build, so a reload gets one too): the seam through
    which a test puts an in-memory or scripted L{IUpstreamClient} in front
    of the gateway.  Without it each upstream gets the pooled HTTP/1.1 client.
    """
    rng = rng or _random.Random()
    old = previous.clusters if previous is not None else {}
    clusters: dict[str, Cluster] = {}
    for name, upstream in config.upstreams.items():
        clusters[name] = _buildCluster(upstream, old.get(name), reactor, clock, metrics, rng, writes, clients)
    attachAdmission(clusters, old, clock, metrics)  # before the route leaves wrap their forwarders
    routes = compileRoutes(config.routes)
    deps = Deps(clock=clock, reactor=reactor, metrics=metrics, config=config, rng=rng, redis=redis,
                shared=shared if shared is not None else {})
    for r in routes:
        r.cluster = clusters.get(r.upstreamName)  # None for a route that answers itself (redirect / respond)
        r.chain = buildChain(r, deps)
    attachCanaries(routes, clusters, clock, rng, metrics, previous.routes.routes if previous is not None else ())
    # Decided here, once per config: the request path never asks the log level.
    forwarder = Forwarder(reactor, clock, config.server, metrics, debug=config.logging.level == "debug")
    if accessLog is None:
        accessLog = AccessLog(config.logging.access_log)
    return Runtime(config, RouteTable(routes), clusters, forwarder, metrics, accessLog, clock, redis=redis,
                   websockets=previous.websockets if previous is not None else None)  # open WebSockets stay open


def _buildCluster(config: UpstreamConfig, old: Cluster | None, reactor: Any, clock: IReactorTime,
                  metrics: Metrics, rng: _random.Random, writes: WriteBatcher | None = None,
                  clients: ClientFactory | None = None) -> Cluster:
    endpoints = []
    for target in config.targets:
        e = old.endpointByURL(target.url) if old is not None else None
        if e is None:
            e = Endpoint(target, config.name)
        else:
            e.weight = target.weight
        if old is None or old.config.circuit_breaker != config.circuit_breaker or e.breaker is None:
            e.breaker = breaking.makeBreaker(config.circuit_breaker, clock, breakerObserver(metrics, config.name, e))
        metrics.circuitState.labels(config.name, e.url).set(_circuitCode(e.breaker.state if e.breaker else "closed"))
        metrics.targetHealthy.labels(config.name, e.url).set(1 if e.healthy(clock.seconds()) else 0)
        endpoints.append(e)
    # The balancer survives a reload that keeps its kind, so rotations and
    # smooth-WRR weights carry on; Cluster() hands it the new targets.
    if old is not None and balancing.sameBalancer(old.config, config):
        balancer = old.balancer
    else:
        balancer = balancing.makeBalancer(config, rng)
    cluster = Cluster(config, clock, balancer, endpoints,
                      retrying.RetryPolicy(config.retries, clock, rng), None, rng, metrics)
    cluster.passive = health.passiveFor(cluster, clock, metrics)
    reuse = old is not None and old.config.pool == config.pool and old.config.timeouts.connect == config.timeouts.connect \
        and old.config.tls == config.tls and old.config.protocol == config.protocol
    cluster.tlsPolicy = _tlsPolicy(config, old, clock, metrics) if not reuse else getattr(old, "tlsPolicy", None)  # type: ignore[attr-defined]
    if clients is not None:
        cluster.agent = clients(config)
    elif reuse:
        assert old is not None
        cluster.agent, cluster.pool = old.agent, getattr(old, "pool", None)  # type: ignore[attr-defined]
    elif config.protocol != "http1":
        # The client is its own pool: the drain and a reload close it as they close an HTTP/1.1 pool.
        h2 = makeH2Client(reactor, config, cluster.tlsPolicy)  # type: ignore[attr-defined]
        cluster.agent, cluster.pool = h2, h2  # type: ignore[attr-defined]
    else:
        client = makeClient(reactor, config.pool.max_per_target, config.pool.idle_timeout, config.timeouts.connect,
                            writes, cluster.tlsPolicy)  # type: ignore[attr-defined]
        cluster.agent, cluster.pool = client, client.pool  # type: ignore[attr-defined]
    return cluster


def _tlsPolicy(config: UpstreamConfig, old: Cluster | None, clock: IReactorTime, metrics: Metrics) -> Any:
    """
    The upstream's TLS policy (L{txgateway.tls.client}): kept across a
    reload that leaves C{tls} as it was (with what it has learnt of rotated
    files), made anew otherwise.  Without a C{tls} section an upstream with
    an https target gets the defaults (system CAs, verified); one with only
    http targets gets None (a discovered https target then gets the
    defaults when first needed), so pyOpenSSL is not loaded for nothing.
    """
    if config.tls is None and not any(t.scheme == "https" for t in config.targets):
        return None
    if old is not None and old.config.tls == config.tls and getattr(old, "tlsPolicy", None) is not None:
        return old.tlsPolicy  # type: ignore[attr-defined]
    from txgateway.tls.client import ClientTLSPolicy
    from txgateway.tls.pem import CertificateProblem

    try:
        return ClientTLSPolicy(config.name, config.tls, clock,
                               observe=metrics.certificateObserver("upstream", config.name))
    except CertificateProblem as e:  # a file changed since the config was checked
        raise ConfigError([Problem(f"upstreams.{config.name}.tls", None, str(e))]) from None


def breakerObserver(metrics: Metrics, upstream: str, endpoint: Endpoint) -> Callable[[str, str], None]:
    """A target's breaker transitions, logged and counted: for configured and discovered targets alike."""
    def onTransition(old: str, new: str) -> None:
        log.warn("circuit breaker for {target} of {upstream}: {old} -> {new}",
                 target=endpoint.url, upstream=upstream, old=old, new=new)
        metrics.circuitState.labels(upstream, endpoint.url).set(_circuitCode(new))
        metrics.breakerTransitions.labels(upstream, endpoint.url, new).inc()

    return onTransition


def needsRedis(config: GatewayConfig) -> bool:
    """Whether any route of C{config} keeps state in Redis (a shared rate limit or a Redis cache)."""
    if config.stores.redis is None:
        return False
    return any((r.rate_limit is not None and r.rate_limit.shared) or (r.cache is not None and r.cache.store == "redis")
               for r in config.routes)


def accessLogFor(config: GatewayConfig, clock: IReactorTime, fd: int | None = None) -> AccessLog:
    """
    The access log C{logging} asks for, writing to its file when one is
    named; in a worker, to the pipe C{fd} instead, whose lines the
    supervisor writes to that file (see L{txgateway.logrelay}).
    """
    lc = config.logging
    out = None
    if lc.access_log and lc.access_log_file and fd is not None:
        out = os.fdopen(fd, "w", encoding="utf-8")
    elif lc.access_log and lc.access_log_file:
        # Buffered: AccessLog flushes once per reactor turn (given the clock),
        # not once per line.
        out = open(lc.access_log_file, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    return AccessLog(lc.access_log, out, lc.format, clock)
