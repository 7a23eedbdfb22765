# -*- test-case-name: tests.test_config -*-
"""
The typed configuration: frozen dataclasses, one per section of the file.

A loaded config is immutable, so the request path reads it without locks and
a reload swaps one whole object for another.  Field names are the YAML keys;
values are already converted (seconds, bytes, networks, hashed keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from txgateway.canary.specs import CanaryRouteSpec
from txgateway.concurrency.specs import ConcurrencySpec, RouteConcurrency
from txgateway.config.schema_discovery import DiscoveryConfig, SourceSpec
from txgateway.config.schema_edge import CompressConfig, QueryMatch, RedirectConfig, RespondConfig, RewriteRegex
from txgateway.config.schema_tls import UpstreamTLS
from txgateway.config.schema_websocket import WebSocketSpec
from txgateway.config.values import IPNetwork, Rate

__all__ = [
    "AccessConfig",
    "ActiveHealth",
    "AdminConfig",
    "ApiKeyAuth",
    "AuthPolicy",
    "BasicAuth",
    "BreakerConfig",
    "CacheConfig",
    "CompressConfig",
    "CorsConfig",
    "Endpoints",
    "GatewayConfig",
    "HeaderOps",
    "HeaderRules",
    "HealthConfig",
    "JwtAuth",
    "LoggingConfig",
    "MatchConfig",
    "PassiveHealth",
    "PoolConfig",
    "QueryMatch",
    "RateLimitConfig",
    "RedirectConfig",
    "RespondConfig",
    "RewriteRegex",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "ServerTimeouts",
    "StoresConfig",
    "Target",
    "TracingConfig",
    "TracingOTLP",
    "UpstreamConfig",
    "UpstreamTLS",
    "UpstreamTimeouts",
    "WebSocketSpec",
]

@dataclass(frozen=True)
class ServerTimeouts:
    request_header: float = 15.0
    request_body: float = 60.0
    idle: float = 60.0
    drain: float = 30.0
    write: float = 60.0  # a response that makes no progress this long is aborted (a client that stopped reading)


@dataclass(frozen=True)
class Endpoints:
    health: str | None = "/health"
    ready: str | None = "/ready"
    metrics: str | None = "/metrics"


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "tcp:8080"
    max_request_body: int = 10 * 1024**2
    max_header_bytes: int = 64 * 1024
    max_uri_bytes: int = 8000
    max_connections_per_ip: int = 256
    timeouts: ServerTimeouts = ServerTimeouts()
    trusted_proxies: tuple[IPNetwork, ...] = ()
    endpoints: Endpoints = Endpoints()
    workers: int = 1
    via: str = "txgateway"
    watch_config: float = 2.0  # seconds between checks of the config file; 0 turns the watcher off
    backlog: int | None = None  # the listen queue; None: the kernel's somaxconn
    environment: str | None = None  # a label (production, staging) on /health, the status page and JSON logs
    # Which forwarding headers are written upstream and read from trusted
    # proxies: X-Forwarded-* (today's), RFC 7239 Forwarded, or both.
    forwarded_header: str = "x-forwarded"
    http2: bool = True  # ssl: listeners offer h2 by ALPN
    h2c: bool = False  # tcp: listeners also take prior-knowledge cleartext HTTP/2
    http2_max_concurrent_streams: int = 100
    http2_max_requests_per_connection: int = 10000  # then a graceful GOAWAY; 0: no budget
    http2_max_resets: int = 200  # client stream resets in a burst; refilled at a tenth a second


@dataclass(frozen=True)
class AdminConfig:
    listen: str
    token: str | None = None


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "json"
    access_log: bool = True
    access_log_file: str | None = None


@dataclass(frozen=True)
class TracingOTLP:
    endpoint: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TracingConfig:
    """Spans over OTLP/HTTP; absent (None on L{GatewayConfig}) means no tracing code runs at all."""

    otlp: TracingOTLP
    sample: float = 1.0
    always_sample_errors: bool = False
    max_queue: int = 2048
    batch_size: int = 512
    flush_interval: float = 1.0
    timeout: float = 5.0


@dataclass(frozen=True)
class StoresConfig:
    redis: str | None = None
    redis_timeout: float = 0.25


@dataclass(frozen=True)
class AccessConfig:
    ip_allow: tuple[IPNetwork, ...] = ()
    ip_deny: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class ApiKeyAuth:
    header: str = "X-API-Key"
    query_param: str | None = None
    # name -> (algorithm, hex digest); the plaintext never lives in memory.
    keys: tuple[tuple[str, str, str], ...] = ()


@dataclass(frozen=True)
class JwtAuth:
    algorithms: tuple[str, ...] = ("RS256",)
    secret: bytes | None = None
    public_key: bytes | None = None
    jwks_url: str | None = None
    jwks_refresh: float = 300.0
    jwks_timeout: float = 5.0
    jwks_min_refresh: float = 30.0
    issuer: str | None = None
    audience: str | None = None
    identity_claim: str = "sub"
    required_claims: tuple[str, ...] = ()
    leeway: float = 30.0
    header: str = "Authorization"


@dataclass(frozen=True)
class BasicAuth:
    users: tuple[tuple[str, str], ...] = ()  # name -> password hash (bcrypt/argon2)
    realm: str = "txgateway"
    cache_ttl: float = 60.0


@dataclass(frozen=True)
class AuthPolicy:
    name: str
    api_key: ApiKeyAuth | None = None
    jwt: JwtAuth | None = None
    basic: BasicAuth | None = None
    forward_identity: str | None = None
    keep_credentials: bool = False
    allowed_identities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    weight: int = 1


@dataclass(frozen=True)
class UpstreamTimeouts:
    connect: float = 5.0
    response: float = 30.0


@dataclass(frozen=True)
class PoolConfig:
    max_per_target: int = 100
    idle_timeout: float = 90.0
    # HTTP/2 and gRPC upstreams (issue 21): connections per target, streams per connection, keep-alive PINGs.
    max_connections: int = 4
    max_streams: int = 100
    ping_interval: float = 0.0
    ping_timeout: float = 10.0


@dataclass(frozen=True)
class ActiveHealth:
    path: str = "/health"
    grpc_service: str | None = None  # issue 21: probe with grpc.health.v1.Health/Check for this service
    interval: float = 5.0
    timeout: float = 2.0
    healthy_after: int = 2
    unhealthy_after: int = 3


@dataclass(frozen=True)
class PassiveHealth:
    window: float = 30.0
    min_requests: int = 10
    max_error_rate: float = 0.5
    eject_for: float = 30.0


@dataclass(frozen=True)
class HealthConfig:
    active: ActiveHealth | None = None
    passive: PassiveHealth | None = None
    when_all_unhealthy: str = "fail_open"


@dataclass(frozen=True)
class BreakerConfig:
    failures: int = 5
    open_for: float = 30.0
    half_open_probes: int = 1


@dataclass(frozen=True)
class RetryConfig:
    attempts: int = 1
    # reset too: a pooled keep-alive connection the backend closed just as a
    # request went out fails that way, and for the idempotent methods (only
    # those are retried after a reset) a 502 for that race is worse than a retry.
    on: tuple[str | int, ...] = ("connect_failure", "reset")
    methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")
    backoff: float = 0.025
    max_backoff: float = 1.0
    budget: float = 0.2
    budget_window: float = 10.0
    min_retries_per_second: float = 3.0
    # The longest the upstream phase of one request may take, all attempts
    # and backoffs included; None means timeouts.response x (attempts + 1).
    total_timeout: float | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    name: str
    targets: tuple[Target, ...]
    balancer: str = "round_robin"
    hash_on: str = "client_ip"
    timeouts: UpstreamTimeouts = UpstreamTimeouts()
    pool: PoolConfig = PoolConfig()
    health: HealthConfig = HealthConfig()
    circuit_breaker: BreakerConfig | None = None
    retries: RetryConfig = RetryConfig()
    concurrency: ConcurrencySpec | None = None  # issue 24: the admission limit and queue
    # Discovery (issue 22): the target items naming a source, and the ramp of new targets.
    sources: tuple[SourceSpec, ...] = ()
    slow_start: float = 0.0
    tls: UpstreamTLS | None = None  # issue 21: TLS to https:// targets (see schema_tls)
    protocol: str = "http1"  # issue 21: http1 | http2 | grpc, to the targets


@dataclass(frozen=True)
class MatchConfig:
    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    path_regex: str | None = None  # anchored: the whole path must match
    query: tuple[QueryMatch, ...] = ()
    client_ip: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class HeaderOps:
    set: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class HeaderRules:
    request: HeaderOps = HeaderOps()
    response: HeaderOps = HeaderOps()


@dataclass(frozen=True)
class RateLimitConfig:
    algorithm: str
    rate: Rate
    burst: int
    key: tuple[str, ...] = ("client_ip",)
    shared: bool = False
    max_keys: int = 100_000


@dataclass(frozen=True)
class CacheConfig:
    max_ttl: float | None = None
    max_bytes: int = 64 * 1024**2
    max_object_size: int = 1024**2
    store: str = "memory"
    collapse_timeout: float = 5.0
    default_ttl: float | None = None  # freshness of a response that carries none (as nginx's proxy_cache_valid)
    targeted_fields: tuple[str, ...] = ("CDN-Cache-Control",)  # RFC 9213, highest priority first
    serve_stale_on_error: float = 0.0  # RFC 9111 §4.2.4: stale while the origin fails (0: off)
    tag_field: str = "Surrogate-Key"  # space-separated purge tags
    store_set_cookie: bool = False  # store responses with Set-Cookie (off: never shared)


@dataclass(frozen=True)
class CorsConfig:
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: float | None = None


@dataclass(frozen=True)
class RouteConfig:
    name: str
    index: int
    match: MatchConfig
    upstream: str
    strip_prefix: str | None = None
    rewrite_prefix: str | None = None
    preserve_host: bool = True
    headers: HeaderRules = HeaderRules()
    auth: AuthPolicy | None = None
    rate_limit: RateLimitConfig | None = None
    cache: CacheConfig | None = None
    cors: CorsConfig | None = None
    ip_allow: tuple[IPNetwork, ...] = ()
    ip_deny: tuple[IPNetwork, ...] = ()
    allow_encoded_slash: bool = False
    concurrency: RouteConcurrency = RouteConcurrency()  # issue 24: batch, coalesce, idempotent_post
    redirect: RedirectConfig | None = None
    respond: RespondConfig | None = None
    rewrite_regex: RewriteRegex | None = None
    compress: CompressConfig | None = None
    # upstreams (a weighted split), sticky, canary_override, mirror: issue 23.
    # With a split, upstream above is its first upstream.
    canary: CanaryRouteSpec = CanaryRouteSpec()
    websocket: WebSocketSpec = WebSocketSpec()  # issue 20: websocket, websocket_idle_timeout, max_websockets...


@dataclass(frozen=True)
class GatewayConfig:
    server: ServerConfig = ServerConfig()
    admin: AdminConfig | None = None
    logging: LoggingConfig = LoggingConfig()
    stores: StoresConfig = StoresConfig()
    access: AccessConfig = AccessConfig()
    auth_policies: Mapping[str, AuthPolicy] = field(default_factory=dict)
    upstreams: Mapping[str, UpstreamConfig] = field(default_factory=dict)
    routes: tuple[RouteConfig, ...] = ()
    source: str | None = None
    tracing: TracingConfig | None = None
    discovery: DiscoveryConfig = DiscoveryConfig()
