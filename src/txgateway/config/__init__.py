"""
Configuration: YAML in, frozen typed objects out.

The file is parsed exactly once per load.  Everything the request path needs
is converted here (durations to seconds, sizes to bytes, CIDRs to networks,
secret files to bytes) so that no request ever re-parses a string, and so
that every mistake a user can make is reported up front, all at once, with
the key path and the line it sits on.  A config that fails here never
replaces a running one.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import yaml

T = TypeVar("T")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# --------------------------------------------------------------------------
# Errors


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, where it is, and why."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path}: {self.message}" if self.path else f"{where}{self.message}"


class ConfigError(Exception):
    """A config was rejected; C{problems} lists every reason, not just the first."""

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = tuple(sorted(problems, key=lambda p: p.line or 0))
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + str(p) for p in self.problems)


class _Invalid(Exception):
    """Raised inside a converter; the parser adds the path and line."""


# --------------------------------------------------------------------------
# Value converters: each takes the raw YAML value and returns the typed one.

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
        raise _Invalid("not a duration (write e.g. 250ms, 5s, 1m)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise _Invalid(f"not a duration: {value!r} (write e.g. 250ms, 5s, 1m)")
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    if seconds < 0:
        raise _Invalid("must not be negative")
    return seconds


def size(value: Any) -> int:
    """C{512KiB}, C{10MiB}, C{100KB}, or a bare number of bytes."""
    if isinstance(value, bool):
        raise _Invalid("not a size (write e.g. 512KiB, 10MiB)")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise _Invalid(f"not a size: {value!r} (write e.g. 512KiB, 10MiB)")
        n = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    if n < 0:
        raise _Invalid("must not be negative")
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
        raise _Invalid(f"not a rate: {value!r} (write e.g. 100/s, 600/m)")
    unit = unit.strip()
    per = duration("1" + unit if unit in ("s", "m", "h", "d") else unit)
    if per <= 0 or int(count) <= 0:
        raise _Invalid("a rate needs a positive count and period")
    return Rate(int(count), per)


def fraction(value: Any) -> float:
    """C{20%} or C{0.2}."""
    if isinstance(value, bool):
        raise _Invalid("not a fraction")
    try:
        if isinstance(value, str) and value.strip().endswith("%"):
            f = float(value.strip()[:-1]) / 100
        else:
            f = float(value)
    except ValueError:
        raise _Invalid(f"not a fraction: {value!r} (write e.g. 20% or 0.2)") from None
    if not 0 <= f <= 1:
        raise _Invalid("must be between 0 and 1 (0% and 100%)")
    return f


def integer(minimum: int = 0) -> Callable[[Any], int]:
    def conv(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"not a whole number: {value!r}")
        if value < minimum:
            raise _Invalid(f"must be at least {minimum}")
        return value

    return conv


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"not true or false: {value!r}")
    return value


def string(value: Any) -> str:
    if isinstance(value, (dict, list)) or value is None:
        raise _Invalid("not a string")
    return str(value)


def oneOf(*choices: str) -> Callable[[Any], str]:
    def conv(value: Any) -> str:
        if value not in choices:
            raise _Invalid(f"{value!r} is not one of: {', '.join(choices)}")
        return str(value)

    return conv


def network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=False)
    except ValueError:
        raise _Invalid(f"not an IP address or CIDR: {value!r}") from None


def urlPath(value: Any) -> str:
    text = string(value)
    if not text.startswith("/"):
        raise _Invalid(f"a path must start with '/': {text!r}")
    return text


_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def headerName(value: Any) -> str:
    text = string(value)
    if not _TOKEN.match(text):
        raise _Invalid(f"not a valid header name: {text!r}")
    return text


def method(value: Any) -> str:
    text = string(value).upper()
    if not _TOKEN.match(text):
        raise _Invalid(f"not an HTTP method: {value!r}")
    return text


def headerValue(value: Any) -> str:
    text = string(value)
    if any(c in text for c in "\r\n\x00"):
        raise _Invalid("header values must not contain CR, LF or NUL")
    return text


# --------------------------------------------------------------------------
# The typed configuration.


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


@dataclass(frozen=True)
class ActiveHealth:
    path: str = "/health"
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


@dataclass(frozen=True)
class MatchConfig:
    host: str | None = None
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()


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


# --------------------------------------------------------------------------
# YAML with line numbers.


class _Map(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of each key."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.lines: dict[Any, int] = {}


class _Seq(list):  # type: ignore[type-arg]
    """A YAML sequence that remembers the line of each item."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.line: int | None = None
        self.lines: list[int] = []


def _convert(node: yaml.Node, loader: yaml.SafeLoader) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        m = _Map()
        m.line = node.start_mark.line + 1
        m.lines = {}
        for knode, vnode in node.value:
            # Keys stay the text the user wrote: YAML 1.1 would read `on:` as True.
            key = knode.value if isinstance(knode, yaml.ScalarNode) else loader.construct_object(knode, deep=True)
            m[key] = _convert(vnode, loader)
            m.lines[key] = knode.start_mark.line + 1
        return m
    if isinstance(node, yaml.SequenceNode):
        s = _Seq(_convert(v, loader) for v in node.value)
        s.line = node.start_mark.line + 1
        s.lines = [v.start_mark.line + 1 for v in node.value]
        return s
    return loader.construct_object(node, deep=True)


def _loadYAML(text: str, source: str) -> Any:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return _Map() if node is None else _convert(node, loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise ConfigError([Problem("", line, f"not valid YAML: {getattr(e, 'problem', e)}")], source) from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------
# The parser.


class _Parser:
    """Walks the YAML tree, collecting every problem rather than stopping at the first."""

    def __init__(self, baseDir: Path) -> None:
        self.baseDir = baseDir
        self.problems: list[Problem] = []

    # -- plumbing

    def problem(self, path: str, line: int | None, message: str) -> None:
        self.problems.append(Problem(path, line, message))

    def mapping(self, value: Any, path: str, line: int | None, known: Iterable[str]) -> _Map | None:
        if value is None:
            return _Map()
        if not isinstance(value, dict):
            self.problem(path, line, "must be a mapping")
            return None
        known = set(known)
        m = value if isinstance(value, _Map) else _Map(value)
        for key in m:
            if key not in known:
                self.problem(_join(path, key), m.lines.get(key), f"unknown key (expected one of: {', '.join(sorted(known))})")
        return m

    def get(self, m: _Map, key: str, path: str, conv: Callable[[Any], T], default: T) -> T:
        if key not in m or m[key] is None:
            return default
        try:
            return conv(m[key])
        except _Invalid as e:
            self.problem(_join(path, key), m.lines.get(key), str(e))
            return default

    def required(self, m: _Map, key: str, path: str, line: int | None) -> Any:
        if key not in m or m[key] is None:
            self.problem(_join(path, key), line, "is required")
            return None
        return m[key]

    def seq(self, m: _Map, key: str, path: str, conv: Callable[[Any], T]) -> tuple[T, ...]:
        value = m.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = _Seq([value])
            value.lines = [m.lines.get(key, 0)]
        if not isinstance(value, list):
            self.problem(_join(path, key), m.lines.get(key), "must be a list")
            return ()
        lines = getattr(value, "lines", [m.lines.get(key)] * len(value))
        out: list[T] = []
        for i, item in enumerate(value):
            try:
                out.append(conv(item))
            except _Invalid as e:
                self.problem(f"{_join(path, key)}[{i}]", lines[i], str(e))
        return tuple(out)

    def child(self, m: _Map, key: str) -> tuple[Any, int | None]:
        return m.get(key), m.lines.get(key, m.line)

    def file(self, value: Any) -> Path:
        p = Path(string(value))
        return p if p.is_absolute() else self.baseDir / p

    def readFile(self, m: _Map, key: str, path: str) -> bytes | None:
        if m.get(key) is None:
            return None
        try:
            return self.file(m[key]).read_bytes()
        except (OSError, _Invalid) as e:
            self.problem(_join(path, key), m.lines.get(key), f"cannot read {m[key]!r}: {getattr(e, 'strerror', None) or e}")
            return None

    # -- sections

    def gateway(self, doc: Any, source: str | None) -> GatewayConfig:
        top = self.mapping(doc, "", 1, ["server", "admin", "logging", "stores", "access", "auth_policies", "upstreams", "routes"])
        if top is None:
            raise ConfigError(self.problems)
        server = self.server(*self.child(top, "server"))
        admin = self.admin(*self.child(top, "admin"))
        logging_ = self.logging(*self.child(top, "logging"))
        stores = self.stores(*self.child(top, "stores"))
        access = self.access(*self.child(top, "access"), "access")
        policies = self.authPolicies(*self.child(top, "auth_policies"))
        upstreams = self.upstreams(*self.child(top, "upstreams"))
        routes = self.routes(*self.child(top, "routes"), upstreams, policies, stores)
        return GatewayConfig(server, admin, logging_, stores, access, policies, upstreams, routes, source)

    def server(self, value: Any, line: int | None) -> ServerConfig:
        p = "server"
        m = self.mapping(value, p, line, ["listen", "max_request_body", "max_header_bytes", "max_uri_bytes",
                                          "max_connections_per_ip", "timeouts", "trusted_proxies", "endpoints",
                                          "workers", "via", "watch_config", "backlog"])
        if m is None:
            return ServerConfig()
        d = ServerConfig()
        tv, tl = self.child(m, "timeouts")
        tm = self.mapping(tv, "server.timeouts", tl, ["request_header", "request_body", "idle", "drain", "write"])
        timeouts = ServerTimeouts()
        if tm is not None:
            timeouts = ServerTimeouts(
                request_header=self.get(tm, "request_header", "server.timeouts", duration, timeouts.request_header),
                request_body=self.get(tm, "request_body", "server.timeouts", duration, timeouts.request_body),
                idle=self.get(tm, "idle", "server.timeouts", duration, timeouts.idle),
                drain=self.get(tm, "drain", "server.timeouts", duration, timeouts.drain),
                write=self.get(tm, "write", "server.timeouts", duration, timeouts.write),
            )
        ev, el = self.child(m, "endpoints")
        em = self.mapping(ev, "server.endpoints", el, ["health", "ready", "metrics"])
        endpoints = Endpoints()
        if em is not None:
            endpoints = Endpoints(
                health=self.optionalPath(em, "health", "server.endpoints", endpoints.health),
                ready=self.optionalPath(em, "ready", "server.endpoints", endpoints.ready),
                metrics=self.optionalPath(em, "metrics", "server.endpoints", endpoints.metrics),
            )
        listen = self.get(m, "listen", p, string, d.listen)
        self.checkEndpoint(listen, "server.listen", m.lines.get("listen"))
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
            via=self.get(m, "via", p, _viaPseudonym, d.via),
            watch_config=self.get(m, "watch_config", p, _watchInterval, d.watch_config),
            backlog=self.get(m, "backlog", p, integer(1), d.backlog),
        )

    def optionalPath(self, m: _Map, key: str, path: str, default: str | None) -> str | None:
        if key in m and (m[key] is None or m[key] is False):
            return None
        return self.get(m, key, path, urlPath, default)

    def checkEndpoint(self, description: str, path: str, line: int | None) -> None:
        kind = description.split(":", 1)[0]
        if kind not in ("tcp", "ssl", "tcp6", "unix", "systemd"):
            self.problem(path, line, f"not a Twisted server endpoint string: {description!r} (write e.g. tcp:8080)")

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
        if token is None and not _loopbackOnly(listen):
            self.problem("admin.listen", m.lines.get("listen"),
                         "binds beyond loopback: set admin.token (or listen on interface=127.0.0.1)")
        return AdminConfig(listen=listen, token=token)

    def logging(self, value: Any, line: int | None) -> LoggingConfig:
        m = self.mapping(value, "logging", line, ["level", "format", "access_log", "access_log_file"])
        d = LoggingConfig()
        if m is None:
            return d
        return LoggingConfig(
            level=self.get(m, "level", "logging", _level, d.level),
            format=self.get(m, "format", "logging", oneOf("json", "text"), d.format),
            access_log=self.get(m, "access_log", "logging", boolean, d.access_log),
            access_log_file=self.get(m, "access_log_file", "logging", lambda v: str(self.file(v)), None),
        )

    def stores(self, value: Any, line: int | None) -> StoresConfig:
        m = self.mapping(value, "stores", line, ["redis", "redis_timeout"])
        d = StoresConfig()
        if m is None:
            return d
        return StoresConfig(
            redis=self.get(m, "redis", "stores", _redisURL, None),
            redis_timeout=self.get(m, "redis_timeout", "stores", duration, d.redis_timeout),
        )

    def access(self, value: Any, line: int | None, path: str) -> AccessConfig:
        m = self.mapping(value, path, line, ["ip_allow", "ip_deny"])
        if m is None:
            return AccessConfig()
        return AccessConfig(self.seq(m, "ip_allow", path, network), self.seq(m, "ip_deny", path, network))

    def authPolicies(self, value: Any, line: int | None) -> dict[str, AuthPolicy]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem("auth_policies", line, "must be a mapping of policy name to policy")
            return {}
        out = {}
        for name, body in value.items():
            policy = self.authPolicy(body, f"auth_policies.{name}", _lines(value).get(name), str(name))
            if policy is not None:
                out[str(name)] = policy
        return out

    def authPolicy(self, value: Any, path: str, line: int | None, name: str) -> AuthPolicy | None:
        m = self.mapping(value, path, line, ["api_key", "jwt", "basic", "forward_identity", "keep_credentials",
                                             "allowed_identities"])
        if m is None:
            return None
        policy = AuthPolicy(
            name=name,
            api_key=self.apiKey(*self.child(m, "api_key"), f"{path}.api_key") if "api_key" in m else None,
            jwt=self.jwt(*self.child(m, "jwt"), f"{path}.jwt") if "jwt" in m else None,
            basic=self.basic(*self.child(m, "basic"), f"{path}.basic") if "basic" in m else None,
            forward_identity=self.get(m, "forward_identity", path, headerName, None),
            keep_credentials=self.get(m, "keep_credentials", path, boolean, False),
            allowed_identities=self.seq(m, "allowed_identities", path, string),
        )
        if not (policy.api_key or policy.jwt or policy.basic):
            self.problem(path, line, "names no method: give api_key, jwt or basic")
        return policy

    def authReference(self, value: Any, path: str, line: int | None,
                      policies: Mapping[str, AuthPolicy]) -> AuthPolicy | None:
        """C{auth: {policy: NAME, keep_credentials: true}}: a named policy with per-route overrides."""
        m = self.mapping(value, path, line, ["policy", "keep_credentials", "forward_identity", "allowed_identities"])
        if m is None:
            return None
        ref = str(m["policy"])
        base = policies.get(ref)
        if base is None:
            self.problem(f"{path}.policy", m.lines.get("policy"), f"no auth policy named {ref!r}")
            return None
        return replace(
            base,
            keep_credentials=self.get(m, "keep_credentials", path, boolean, base.keep_credentials),
            forward_identity=self.get(m, "forward_identity", path, headerName, base.forward_identity),
            allowed_identities=(self.seq(m, "allowed_identities", path, string) if "allowed_identities" in m
                                else base.allowed_identities),
        )

    def apiKey(self, value: Any, line: int | None, path: str) -> ApiKeyAuth | None:
        m = self.mapping(value, path, line, ["header", "query_param", "keys", "keys_file"])
        if m is None:
            return None
        keys: dict[str, str] = {}
        km = m.get("keys")
        if km is not None:
            if not isinstance(km, dict):
                self.problem(f"{path}.keys", m.lines.get("keys"), "must map a name to sha256:<hex digest>")
            else:
                keys.update({str(k): v for k, v in km.items()})
        raw = self.readFile(m, "keys_file", path)
        if raw is not None:
            for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                text = text.strip()
                if not text or text.startswith("#"):
                    continue
                kname, sep, digest = text.partition(":")
                if not sep:
                    self.problem(f"{path}.keys_file", m.lines.get("keys_file"), f"line {n}: expected name:sha256:<hex>")
                    continue
                keys[kname.strip()] = digest.strip()
        parsed = []
        for kname, spec in keys.items():
            algo, sep, digest = str(spec).partition(":")
            if not sep or algo != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
                self.problem(f"{path}.keys.{kname}", getattr(km, "lines", {}).get(kname), "must be sha256:<64 hex digits> (the key is stored hashed)")
                continue
            parsed.append((kname, algo, digest.lower()))
        if not parsed:
            self.problem(f"{path}.keys", m.line, "no keys configured")
        return ApiKeyAuth(
            header=self.get(m, "header", path, headerName, "X-API-Key"),
            query_param=self.get(m, "query_param", path, headerName, None),
            keys=tuple(parsed),
        )

    def jwt(self, value: Any, line: int | None, path: str) -> JwtAuth | None:
        m = self.mapping(value, path, line, ["algorithms", "secret", "secret_file", "public_key_file", "jwks_url",
                                             "jwks_refresh", "jwks_timeout", "jwks_min_refresh", "issuer",
                                             "audience", "identity_claim",
                                             "required_claims", "leeway", "header"])
        if m is None:
            return None
        algorithms = self.seq(m, "algorithms", path, oneOf("HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                                                          "ES256", "ES384", "ES512", "PS256", "EdDSA"))
        secret = None
        if m.get("secret") is not None:
            secret = str(m["secret"]).encode()
        fileSecret = self.readFile(m, "secret_file", path)
        if fileSecret is not None:
            secret = fileSecret.rstrip(b"\r\n")
        publicKey = self.readFile(m, "public_key_file", path)
        if publicKey is not None and not _isPublicKeyPEM(publicKey):
            self.problem(f"{path}.public_key_file", m.lines.get("public_key_file"),
                         "is not a PEM public key (-----BEGIN PUBLIC KEY-----)")
            publicKey = None
        jwksURL = self.get(m, "jwks_url", path, _httpURL, None)
        symmetric = [a for a in algorithms if a.startswith("HS")]
        asymmetric = [a for a in algorithms if not a.startswith("HS")]
        if symmetric and asymmetric:
            self.problem(f"{path}.algorithms", m.lines.get("algorithms"),
                         "mixes HMAC and public-key algorithms (that invites algorithm confusion); use two policies")
        if symmetric and secret is None:
            self.problem(path, line, "HS* algorithms need secret or secret_file")
        if asymmetric and publicKey is None and jwksURL is None:
            self.problem(path, line, "public-key algorithms need public_key_file or jwks_url")
        return JwtAuth(
            algorithms=algorithms or ("RS256",),
            secret=secret,
            public_key=publicKey,
            jwks_url=jwksURL,
            jwks_refresh=self.get(m, "jwks_refresh", path, _positive(duration), 300.0),
            jwks_timeout=self.get(m, "jwks_timeout", path, _positive(duration), 5.0),
            jwks_min_refresh=self.get(m, "jwks_min_refresh", path, duration, 30.0),
            issuer=self.get(m, "issuer", path, string, None),
            audience=self.get(m, "audience", path, string, None),
            identity_claim=self.get(m, "identity_claim", path, string, "sub"),
            required_claims=self.seq(m, "required_claims", path, string),
            leeway=self.get(m, "leeway", path, duration, 30.0),
            header=self.get(m, "header", path, headerName, "Authorization"),
        )

    def basic(self, value: Any, line: int | None, path: str) -> BasicAuth | None:
        m = self.mapping(value, path, line, ["htpasswd", "users", "realm", "cache_ttl"])
        if m is None:
            return None
        users: dict[str, str] = {}
        um = m.get("users")
        if um is not None:
            if not isinstance(um, dict):
                self.problem(f"{path}.users", m.lines.get("users"), "must map a user name to a password hash")
            else:
                users.update({str(k): str(v) for k, v in um.items()})
        raw = self.readFile(m, "htpasswd", path)
        if raw is not None:
            for n, text in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
                text = text.strip()
                if not text or text.startswith("#"):
                    continue
                user, sep, hashed = text.partition(":")
                if not sep:
                    self.problem(f"{path}.htpasswd", m.lines.get("htpasswd"), f"line {n}: expected user:hash")
                    continue
                users[user] = hashed
        for user, hashed in users.items():
            if not (hashed.startswith(("$2a$", "$2b$", "$2y$", "$argon2"))):
                self.problem(f"{path}.users.{user}", m.lines.get("users", m.lines.get("htpasswd")),
                             "only bcrypt ($2b$...) or argon2 ($argon2id$...) hashes are accepted")
        if any(h.startswith("$argon2") for h in users.values()) and not _haveArgon2():
            self.problem(path, line, "argon2 hashes need the argon2-cffi package (pip install argon2-cffi)")
        if not users:
            self.problem(path, line, "no users configured (give htpasswd or users)")
        realm = self.get(m, "realm", path, headerValue, "txgateway")
        if '"' in realm or "\\" in realm:
            self.problem(f"{path}.realm", m.lines.get("realm"), "must not contain quotes or backslashes")
            realm = "txgateway"
        return BasicAuth(users=tuple(users.items()), realm=realm,
                         cache_ttl=self.get(m, "cache_ttl", path, duration, 60.0))

    def upstreams(self, value: Any, line: int | None) -> dict[str, UpstreamConfig]:
        if value is None:
            self.problem("upstreams", line, "is required: at least one upstream")
            return {}
        if not isinstance(value, dict):
            self.problem("upstreams", line, "must be a mapping of upstream name to upstream")
            return {}
        out = {}
        for name, body in value.items():
            u = self.upstream(body, f"upstreams.{name}", _lines(value).get(name), str(name))
            if u is not None:
                out[str(name)] = u
        return out

    def upstream(self, value: Any, path: str, line: int | None, name: str) -> UpstreamConfig | None:
        m = self.mapping(value, path, line, ["balancer", "hash_on", "targets", "timeouts", "pool", "health",
                                             "circuit_breaker", "retries"])
        if m is None:
            return None
        raw = self.required(m, "targets", path, m.line)
        targets: list[Target] = []
        if raw is not None and not isinstance(raw, list):
            self.problem(f"{path}.targets", m.lines.get("targets"), "must be a list of URLs")
        elif raw is not None:
            for i, t in enumerate(raw):
                tline = raw.lines[i] if isinstance(raw, _Seq) else None
                target = self.target(t, f"{path}.targets[{i}]", tline)
                if target is not None:
                    targets.append(target)
            if not raw:
                self.problem(f"{path}.targets", m.lines.get("targets"), "needs at least one target")
        urls = [t.url for t in targets]
        if len(set(urls)) != len(urls):
            self.problem(f"{path}.targets", m.lines.get("targets"), "lists the same target twice")
        d = UpstreamConfig(name=name, targets=())
        tm = self.mapping(m.get("timeouts"), f"{path}.timeouts", m.lines.get("timeouts"), ["connect", "response"])
        timeouts = d.timeouts
        if tm is not None:
            timeouts = UpstreamTimeouts(
                connect=self.get(tm, "connect", f"{path}.timeouts", _positive(duration), timeouts.connect),
                response=self.get(tm, "response", f"{path}.timeouts", _positive(duration), timeouts.response),
            )
        pm = self.mapping(m.get("pool"), f"{path}.pool", m.lines.get("pool"), ["max_per_target", "idle_timeout"])
        pool = d.pool
        if pm is not None:
            pool = PoolConfig(
                max_per_target=self.get(pm, "max_per_target", f"{path}.pool", integer(1), pool.max_per_target),
                idle_timeout=self.get(pm, "idle_timeout", f"{path}.pool", duration, pool.idle_timeout),
            )
        breaker = None
        if m.get("circuit_breaker") not in (None, False):
            bp = f"{path}.circuit_breaker"
            bm = self.mapping(m["circuit_breaker"], bp, m.lines.get("circuit_breaker"), ["failures", "open_for", "half_open_probes"])
            if bm is not None:
                bd = BreakerConfig()
                breaker = BreakerConfig(
                    failures=self.get(bm, "failures", bp, integer(1), bd.failures),
                    open_for=self.get(bm, "open_for", bp, duration, bd.open_for),
                    half_open_probes=self.get(bm, "half_open_probes", bp, integer(1), bd.half_open_probes),
                )
        balancer = self.get(m, "balancer", path, _balancerName, d.balancer)
        hashOn = self.get(m, "hash_on", path, _hashOn, d.hash_on)
        return UpstreamConfig(
            name=name,
            targets=tuple(targets),
            balancer=balancer,
            hash_on=hashOn,
            timeouts=timeouts,
            pool=pool,
            health=self.health(m.get("health"), f"{path}.health", m.lines.get("health")),
            circuit_breaker=breaker,
            retries=self.retries(m.get("retries"), f"{path}.retries", m.lines.get("retries")),
        )

    def target(self, value: Any, path: str, line: int | None) -> Target | None:
        weight = 1
        if isinstance(value, dict):
            m = self.mapping(value, path, line, ["url", "weight"])
            if m is None:
                return None
            url = self.required(m, "url", path, line)
            weight = self.get(m, "weight", path, integer(1), 1)
            path = f"{path}.url"
            line = m.lines.get("url", line)
        else:
            url = value
        if url is None:
            return None
        try:
            return replace(_targetURL(url), weight=weight)
        except _Invalid as e:
            self.problem(path, line, str(e))
            return None

    def health(self, value: Any, path: str, line: int | None) -> HealthConfig:
        m = self.mapping(value, path, line, ["active", "passive", "when_all_unhealthy"])
        if m is None:
            return HealthConfig()
        active = passive = None
        if m.get("active") not in (None, False):
            ap = f"{path}.active"
            am = self.mapping(m["active"], ap, m.lines.get("active"), ["path", "interval", "timeout", "healthy_after", "unhealthy_after"])
            if am is not None:
                ad = ActiveHealth()
                active = ActiveHealth(
                    path=self.get(am, "path", ap, urlPath, ad.path),
                    interval=self.get(am, "interval", ap, _positive(duration), ad.interval),
                    timeout=self.get(am, "timeout", ap, _positive(duration), ad.timeout),
                    healthy_after=self.get(am, "healthy_after", ap, integer(1), ad.healthy_after),
                    unhealthy_after=self.get(am, "unhealthy_after", ap, integer(1), ad.unhealthy_after),
                )
        if m.get("passive") not in (None, False):
            pp = f"{path}.passive"
            pm = self.mapping(m["passive"], pp, m.lines.get("passive"), ["window", "min_requests", "max_error_rate", "eject_for"])
            if pm is not None:
                pd = PassiveHealth()
                passive = PassiveHealth(
                    window=self.get(pm, "window", pp, _positive(duration), pd.window),
                    min_requests=self.get(pm, "min_requests", pp, integer(1), pd.min_requests),
                    max_error_rate=self.get(pm, "max_error_rate", pp, fraction, pd.max_error_rate),
                    eject_for=self.get(pm, "eject_for", pp, _positive(duration), pd.eject_for),
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
            on=self.seq(m, "on", path, _retryCondition) if "on" in m else d.on,
            methods=self.seq(m, "methods", path, method) if "methods" in m else d.methods,
            backoff=self.get(m, "backoff", path, duration, d.backoff),
            max_backoff=self.get(m, "max_backoff", path, duration, d.max_backoff),
            budget=self.get(m, "budget", path, fraction, d.budget),
            budget_window=self.get(m, "budget_window", path, _positive(duration), d.budget_window),
            min_retries_per_second=self.get(m, "min_retries_per_second", path, lambda v: float(duration(v)), d.min_retries_per_second),
            total_timeout=self.get(m, "total_timeout", path, _positive(duration), d.total_timeout),
        )

    def routes(self, value: Any, line: int | None, upstreams: Mapping[str, UpstreamConfig],
               policies: Mapping[str, AuthPolicy], stores: StoresConfig) -> tuple[RouteConfig, ...]:
        if value is None:
            self.problem("routes", line, "is required: at least one route")
            return ()
        if not isinstance(value, list):
            self.problem("routes", line, "must be a list of routes")
            return ()
        out: list[RouteConfig] = []
        names: set[str] = set()
        for i, body in enumerate(value):
            rline = value.lines[i] if isinstance(value, _Seq) else line
            r = self.route(body, f"routes[{i}]", rline, i, upstreams, policies, stores)
            if r is None:
                continue
            if r.name in names:
                self.problem(f"routes[{i}].name", rline, f"route name {r.name!r} is used twice")
            names.add(r.name)
            out.append(r)
        return tuple(out)

    def route(self, value: Any, path: str, line: int | None, index: int, upstreams: Mapping[str, UpstreamConfig],
              policies: Mapping[str, AuthPolicy], stores: StoresConfig) -> RouteConfig | None:
        m = self.mapping(value, path, line, ["name", "match", "upstream", "strip_prefix", "rewrite_prefix",
                                             "preserve_host", "headers", "auth", "rate_limit", "cache", "cors",
                                             "ip_allow", "ip_deny", "allow_encoded_slash"])
        if m is None:
            return None
        name = self.get(m, "name", path, string, f"route-{index}")
        if "name" in m:
            path = f"routes[{index}]({name})"
        upstream = self.required(m, "upstream", path, m.line)
        if upstream is not None and str(upstream) not in upstreams:
            self.problem(f"{path}.upstream", m.lines.get("upstream"), f"no upstream named {upstream!r}")
        match = self.match(m.get("match"), f"{path}.match", m.lines.get("match", m.line))
        auth = None
        if m.get("auth") is not None:
            ref = m["auth"]
            if isinstance(ref, dict) and "policy" in ref:
                auth = self.authReference(ref, f"{path}.auth", m.lines.get("auth"), policies)
            elif isinstance(ref, str):
                auth = policies.get(ref)
                if auth is None:
                    self.problem(f"{path}.auth", m.lines.get("auth"), f"no auth policy named {ref!r}")
            else:
                auth = self.authPolicy(ref, f"{path}.auth", m.lines.get("auth"), f"{name}.auth")
        rl = None
        if m.get("rate_limit") is not None:
            rl = self.rateLimit(m["rate_limit"], f"{path}.rate_limit", m.lines.get("rate_limit"))
            if rl is not None and rl.shared and stores.redis is None:
                self.problem(f"{path}.rate_limit.shared", m.lines.get("rate_limit"), "needs stores.redis")
        cache = None
        if m.get("cache") not in (None, False):
            cache = self.cache(m["cache"], f"{path}.cache", m.lines.get("cache"))
            if cache is not None and cache.store == "redis" and stores.redis is None:
                self.problem(f"{path}.cache.store", m.lines.get("cache"), "redis needs stores.redis")
        cors = None
        if m.get("cors") is not None:
            cors = self.cors(m["cors"], f"{path}.cors", m.lines.get("cors"))
        hm = self.mapping(m.get("headers"), f"{path}.headers", m.lines.get("headers"), ["request", "response"])
        rules = HeaderRules()
        if hm is not None:
            rules = HeaderRules(self.headerOps(hm.get("request"), f"{path}.headers.request", hm.lines.get("request")),
                                self.headerOps(hm.get("response"), f"{path}.headers.response", hm.lines.get("response")))
        strip = self.get(m, "strip_prefix", path, _routePath, None)
        rewrite = self.get(m, "rewrite_prefix", path, _routePath, None)
        if strip is not None and rewrite is not None:
            self.problem(path, m.lines.get("rewrite_prefix"),
                         "give strip_prefix or rewrite_prefix, not both (rewrite_prefix already replaces the matched prefix)")
        return RouteConfig(
            name=name,
            index=index,
            match=match,
            upstream=str(upstream) if upstream is not None else "",
            strip_prefix=strip.rstrip("/") or None if strip else None,
            rewrite_prefix=rewrite,
            preserve_host=self.get(m, "preserve_host", path, boolean, True),
            headers=rules,
            auth=auth,
            rate_limit=rl,
            cache=cache,
            cors=cors,
            ip_allow=self.seq(m, "ip_allow", path, network),
            ip_deny=self.seq(m, "ip_deny", path, network),
            allow_encoded_slash=self.get(m, "allow_encoded_slash", path, boolean, False),
        )

    def match(self, value: Any, path: str, line: int | None) -> MatchConfig:
        m = self.mapping(value, path, line, ["host", "path", "path_prefix", "methods", "headers"])
        if m is None:
            return MatchConfig()
        headers: list[tuple[str, str]] = []
        hv = m.get("headers")
        if hv is not None:
            if not isinstance(hv, dict):
                self.problem(f"{path}.headers", m.lines.get("headers"), "must map a header name to a value (or \"*\")")
            else:
                for k, v in hv.items():
                    try:
                        headers.append((headerName(k), headerValue(_yamlText(v))))
                    except _Invalid as e:
                        self.problem(f"{path}.headers.{k}", _lines(hv).get(k), str(e))
        mc = MatchConfig(
            host=self.get(m, "host", path, _hostPattern, None),
            path=self.get(m, "path", path, _routePath, None),
            path_prefix=self.get(m, "path_prefix", path, _routePath, None),
            methods=self.seq(m, "methods", path, method),
            headers=tuple(headers),
        )
        if mc.path is not None and mc.path_prefix is not None:
            self.problem(path, line, "give path or path_prefix, not both")
        return mc

    def headerOps(self, value: Any, path: str, line: int | None) -> HeaderOps:
        m = self.mapping(value, path, line, ["set", "remove"])
        if m is None:
            return HeaderOps()
        sets: list[tuple[str, str]] = []
        sv = m.get("set")
        if sv is not None:
            if not isinstance(sv, dict):
                self.problem(f"{path}.set", m.lines.get("set"), "must map a header name to a value")
            else:
                for k, v in sv.items():
                    try:
                        sets.append((headerName(k), headerValue(v)))
                    except _Invalid as e:
                        self.problem(f"{path}.set.{k}", _lines(sv).get(k), str(e))
        return HeaderOps(tuple(sets), self.seq(m, "remove", path, headerName))

    def rateLimit(self, value: Any, path: str, line: int | None) -> RateLimitConfig | None:
        m = self.mapping(value, path, line, ["algorithm", "rate", "burst", "key", "shared", "max_keys"])
        if m is None:
            return None
        r = self.required(m, "rate", path, m.line)
        parsed = None
        if r is not None:
            try:
                parsed = rate(r)
            except _Invalid as e:
                self.problem(f"{path}.rate", m.lines.get("rate"), str(e))
        if parsed is None:
            return None
        keys: tuple[str, ...] = ("client_ip",)
        if m.get("key") is not None:
            raw = m["key"]
            items = re.split(r"\s*[+,]\s*", raw) if isinstance(raw, str) else list(raw)
            try:
                keys = tuple(_limitKey(k) for k in items)
            except _Invalid as e:
                self.problem(f"{path}.key", m.lines.get("key"), str(e))
        return RateLimitConfig(
            algorithm=self.get(m, "algorithm", path, oneOf("token_bucket", "sliding_window"), "token_bucket"),
            rate=parsed,
            burst=self.get(m, "burst", path, integer(1), max(1, parsed.count)),
            key=keys,
            shared=self.get(m, "shared", path, boolean, False),
            max_keys=self.get(m, "max_keys", path, integer(1), 100_000),
        )

    def cache(self, value: Any, path: str, line: int | None) -> CacheConfig | None:
        if value is True:
            return CacheConfig()
        m = self.mapping(value, path, line, ["max_ttl", "max_bytes", "max_object_size", "store", "collapse_timeout"])
        if m is None:
            return None
        d = CacheConfig()
        return CacheConfig(
            max_ttl=self.get(m, "max_ttl", path, duration, None),
            max_bytes=self.get(m, "max_bytes", path, size, d.max_bytes),
            max_object_size=self.get(m, "max_object_size", path, size, d.max_object_size),
            store=self.get(m, "store", path, oneOf("memory", "redis"), d.store),
            collapse_timeout=self.get(m, "collapse_timeout", path, duration, d.collapse_timeout),
        )

    def cors(self, value: Any, path: str, line: int | None) -> CorsConfig | None:
        m = self.mapping(value, path, line, ["allow_origins", "allow_methods", "allow_headers", "expose_headers",
                                             "allow_credentials", "max_age"])
        if m is None:
            return None
        d = CorsConfig()
        c = CorsConfig(
            allow_origins=self.seq(m, "allow_origins", path, _origin),
            allow_methods=self.seq(m, "allow_methods", path, method) if "allow_methods" in m else d.allow_methods,
            allow_headers=self.seq(m, "allow_headers", path, headerName),
            expose_headers=self.seq(m, "expose_headers", path, headerName),
            allow_credentials=self.get(m, "allow_credentials", path, boolean, False),
            max_age=self.get(m, "max_age", path, duration, None),
        )
        if c.allow_credentials and "*" in c.allow_origins:
            self.problem(f"{path}.allow_origins", m.lines.get("allow_origins"),
                         "\"*\" cannot be combined with allow_credentials (browsers refuse it)")
        return c


# --------------------------------------------------------------------------
# Small converters used above.


def _lines(value: Any) -> dict[Any, int]:
    return getattr(value, "lines", {})


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _positive(conv: Callable[[Any], float]) -> Callable[[Any], float]:
    def wrapped(value: Any) -> float:
        v = conv(value)
        if v <= 0:
            raise _Invalid("must be greater than zero")
        return v

    return wrapped


def workers(value: Any) -> int:
    if value == "auto":
        return 0  # resolved to the core count when the service starts
    return integer(1)(value)


def _viaPseudonym(value: Any) -> str:
    text = string(value)
    if not _TOKEN.match(text):
        raise _Invalid("must be a single token")
    return text


def _level(value: Any) -> str:
    text = string(value).lower()
    if text == "warning":
        text = "warn"
    return oneOf("debug", "info", "warn", "error")(text)


def _redisURL(value: Any) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix") or (parts.scheme != "unix" and not parts.hostname):
        raise _Invalid(f"not a Redis URL: {text!r} (write e.g. redis://127.0.0.1:6379/0)")
    return text


def _httpURL(value: Any) -> str:
    text = string(value)
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"not an http(s) URL: {text!r}")
    return text


def _targetURL(value: Any) -> Target:
    text = string(value).strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise _Invalid(f"not a URL: {text!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"not a URL: {text!r} (write e.g. http://10.0.0.5:8000)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise _Invalid(f"a target is scheme://host:port only, without path, query or credentials: {text!r}")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    host = parts.hostname.lower()
    hostInURL = f"[{host}]" if ":" in host else host
    return Target(url=f"{parts.scheme}://{hostInURL}:{port}", scheme=parts.scheme, host=host, port=port)


_BALANCERS = ("round_robin", "weighted_round_robin", "least_connections", "consistent_hash", "p2c")


def _balancerName(value: Any) -> str:
    text = string(value)
    if text in _BALANCERS or re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", text):
        return text
    raise _Invalid(f"{text!r} is not one of: {', '.join(_BALANCERS)} (or a dotted name of an IBalancer class)")


def _hashOn(value: Any) -> str:
    text = string(value)
    if text in ("client_ip", "path") or re.fullmatch(r"(header|cookie):[!#$%&'*+\-.^_`|~0-9A-Za-z]+", text):
        return text
    raise _Invalid(f"{text!r} is not one of: client_ip, path, header:NAME, cookie:NAME")


def _retryCondition(value: Any) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if 500 <= value <= 599 or value == 429:
            return value
        raise _Invalid(f"status {value} is not retryable (use 429 or a 5xx)")
    return oneOf("connect_failure", "timeout", "reset", "5xx")(value)


def _limitKey(value: Any) -> str:
    text = string(value).strip()
    if text in ("client_ip", "route", "consumer") or re.fullmatch(r"header:[!#$%&'*+\-.^_`|~0-9A-Za-z]+", text):
        return text
    raise _Invalid(f"{text!r} is not one of: client_ip, route, consumer, header:NAME (or several joined with +)")


def _watchInterval(value: Any) -> float:
    """C{2s}; C{false} or C{0} turns the config file watcher off."""
    if value is False:
        return 0.0
    seconds = duration(value)
    if 0 < seconds < 0.1:
        raise _Invalid("check the file at most every 100ms (or write false to turn the watcher off)")
    return seconds


def _routePath(value: Any) -> str:
    """A route's path, normalised as request paths are, so that it can match at all."""
    from txgateway.http.paths import PathError, normalizeConfigPath

    text = urlPath(value)
    try:
        return normalizeConfigPath(text)
    except PathError as e:
        raise _Invalid(f"{e}: {text!r}") from None


def _yamlText(value: Any) -> Any:
    """YAML reads C{true} as a boolean; a header value means the text C{true}, not C{True}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _hostPattern(value: Any) -> str:
    text = string(value).strip().lower().rstrip(".")
    if text.startswith("*."):
        rest = text[2:]
    else:
        rest = text
    hostname = re.fullmatch(r"[a-z0-9]([a-z0-9\-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]*[a-z0-9])?)*", rest)
    if not rest or (not hostname and not _isIP(rest)):
        raise _Invalid(f"not a host name or *.wildcard: {value!r}")
    return text


def _isIP(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False


def _origin(value: Any) -> str:
    text = string(value).strip()
    if text == "*":
        return text
    parts = urlsplit(text.replace("*.", "wildcard-placeholder.", 1))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("",):
        raise _Invalid(f"not an origin: {text!r} (write e.g. https://app.example.com or https://*.example.com)")
    return text.lower()


def _isPublicKeyPEM(data: bytes) -> bool:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        load_pem_public_key(data)
    except (ValueError, TypeError):
        return False
    return True


def _haveArgon2() -> bool:
    try:
        import argon2  # noqa: F401
    except ImportError:
        return False
    return True


def _loopbackOnly(description: str) -> bool:
    if description.startswith("unix:"):
        return True
    m = re.search(r"interface=([^:]+)", description)
    if not m:
        return False
    iface = m.group(1).replace("\\", "").strip("[]")
    try:
        return ipaddress.ip_address(iface).is_loopback
    except ValueError:
        return iface == "localhost"


# --------------------------------------------------------------------------
# Entry points.


def parseConfig(text: str, source: str = "<config>", baseDir: Path | None = None) -> GatewayConfig:
    """Parse YAML text; raise L{ConfigError} naming every problem."""
    doc = _loadYAML(text, source)
    parser = _Parser(baseDir or Path.cwd())
    config = parser.gateway(doc, source)
    if parser.problems:
        raise ConfigError(parser.problems, source)
    return config


def loadConfig(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a config file, apply the environment's overrides, and validate."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem("", None, f"cannot read config file: {e}")], str(p)) from None
    config = parseConfig(text, str(p), p.resolve().parent)
    return applyEnvironment(config, os.environ if environ is None else environ)


def configFromEnvironment(environ: Mapping[str, str]) -> GatewayConfig:
    """
    The one-upstream gateway of the first seed: everything to BACKEND_URL.

    Built as YAML-shaped data and parsed by the same code as a file, so the
    environment cannot produce a config a file could not.
    """
    backend = environ.get("BACKEND_URL", "http://localhost:3000")
    doc: dict[str, Any] = {
        "server": {"listen": f"tcp:{environ.get('GATEWAY_PORT', '8080')}"},
        "logging": {"level": environ.get("LOG_LEVEL", "info")},
        "upstreams": {"backend": {
            "targets": [backend],
            "health": {"active": {"path": "/health", "interval": "10s", "timeout": "2s",
                                  "healthy_after": 1, "unhealthy_after": 2}},
        }},
        "routes": [{"name": "default", "match": {"path_prefix": "/"}, "upstream": "backend"}],
    }
    if "REQUEST_TIMEOUT" in environ:
        doc["upstreams"]["backend"]["timeouts"] = {"response": environ["REQUEST_TIMEOUT"]}
    parser = _Parser(Path.cwd())
    source = "environment"
    config = parser.gateway(_plain(doc), source)
    if parser.problems:
        raise ConfigError([_envProblem(p) for p in parser.problems], source)
    return config


_ENV_NAMES = {"server.listen": "GATEWAY_PORT", "logging.level": "LOG_LEVEL", "upstreams.backend.targets[0]": "BACKEND_URL",
              "upstreams.backend.timeouts.response": "REQUEST_TIMEOUT"}


def _envProblem(p: Problem) -> Problem:
    return Problem(_ENV_NAMES.get(p.path, p.path), None, p.message)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        m = _Map({k: _plain(v) for k, v in value.items()})
        m.lines = {}
        return m
    if isinstance(value, list):
        s = _Seq(_plain(v) for v in value)
        s.lines = [0] * len(s)
        return s
    return value


def applyEnvironment(config: GatewayConfig, environ: Mapping[str, str]) -> GatewayConfig:
    """GATEWAY_PORT, LOG_LEVEL and REQUEST_TIMEOUT override a file's values."""
    problems = []
    server, logging_, upstreams = config.server, config.logging, dict(config.upstreams)
    if "GATEWAY_PORT" in environ:
        port = environ["GATEWAY_PORT"]
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(Problem("GATEWAY_PORT", None, f"not a port number: {port!r}"))
        else:
            server = replace(server, listen=_withPort(server.listen, int(port)))
    if "LOG_LEVEL" in environ:
        try:
            logging_ = replace(logging_, level=_level(environ["LOG_LEVEL"]))
        except _Invalid as e:
            problems.append(Problem("LOG_LEVEL", None, str(e)))
    if "REQUEST_TIMEOUT" in environ:
        try:
            t = duration(environ["REQUEST_TIMEOUT"])
            upstreams = {n: replace(u, timeouts=replace(u.timeouts, response=t)) for n, u in upstreams.items()}
        except _Invalid as e:
            problems.append(Problem("REQUEST_TIMEOUT", None, str(e)))
    if problems:
        raise ConfigError(problems, "environment")
    return replace(config, server=server, logging=logging_, upstreams=upstreams)


def _withPort(description: str, port: int) -> str:
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "ssl", "tcp6"):
        return description
    fields = rest.split(":") if rest else []
    if fields and "=" not in fields[0]:
        fields[0] = str(port)
    else:
        fields.insert(0, str(port))
    return f"{kind}:{':'.join(fields)}"
