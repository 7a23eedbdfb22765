# -*- test-case-name: tests.test_seedcompat -*-
"""
The configuration interfaces of the gateways txgateway was specified from,
translated into txgateway's own, so their users move over in one step.

go-reverse-proxy (the third seed) is configured by a YAML file of services
(C{proxy: {listen, services: [{name, domain, hosts}]}}) and five environment
variables.  Its behaviour, which the translation reproduces:

  - a request reaches a service when its C{Host} is the service's
    C{domain}, under the path prefix C{/proxy/}; the prefix is removed
    (C{/proxy/api/v1/users?par1=foo} reaches the instance as
    C{/api/v1/users?par1=foo}); any other host gets 404;
  - the instances of a service take requests round robin; a failed request
    is retried (C{MAX_HTTP_RETRIES} on the same instance, C{MAX_FORWARD_RETRIES}
    moving on to the next one, both 2 by default); the request reaches the
    instance with the instance's own C{Host};
  - responses are cached C{HTTP_CACHE_TTL_SECONDS} (60 by default) seconds;
  - Prometheus metrics are served on a second listener, C{METRICS_ADDR}
    (C{:8090} by default).

The Go workshop gateway (the first seed) labels itself with C{ENVIRONMENT}
(C{production}, C{staging}...); here that is C{server.environment}.

Everything here works on plain YAML-shaped data (mappings, lists, scalars)
and imports nothing of txgateway, so the config parser can call it without
an import cycle: the document it returns goes through the same parser as a
file, and a problem is reported as (key path or variable, line, message).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from txgateway.config.errors import ConfigError
from txgateway.config.errors import Problem as ConfigProblem

__all__ = ["DEFAULT_CACHE_TTL", "DEFAULT_FORWARD_RETRIES", "DEFAULT_HTTP_RETRIES", "GoHost", "GoProxyConfig",
           "GoService", "GoSettings", "PROXY_PREFIX", "Problem", "RETRY_ON", "SEED_VARIABLES", "SeedError",
           "environmentDocument", "goSettings", "isGoReverseProxy", "metricsListen", "parseGoProxy", "seedDocument",
           "seeds", "serverListen", "targets", "toDocument"]

# go-reverse-proxy's defaults for its environment variables (its README).
DEFAULT_HTTP_RETRIES = 2
DEFAULT_FORWARD_RETRIES = 2
DEFAULT_CACHE_TTL = 60
# Its one route: everything under /proxy/ is forwarded, without the prefix.
PROXY_PREFIX = "/proxy"
# What go-retryablehttp retries: connection errors and 5xx answers.
RETRY_ON = ("connect_failure", "reset", "timeout", "5xx")

SEED_VARIABLES = ("CONFIGURATION_FILENAME", "MAX_HTTP_RETRIES", "MAX_FORWARD_RETRIES", "HTTP_CACHE_TTL_SECONDS",
                  "METRICS_ADDR", "ENVIRONMENT")

Problem = tuple[str, "int | None", str]


class SeedError(Exception):
    """A seed's config that cannot be translated: every problem, each with its key path (or variable) and line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(f"{p}: {m}" for p, _, m in problems))
        self.problems = problems

    def render(self, source: str) -> str:
        return "\n".join(f"{source}{f':{line}' if line else ''}: {f'{path}: ' if path else ''}{message}"
                         for path, line, message in self.problems)


@dataclass(frozen=True)
class GoHost:
    address: str
    port: int


@dataclass(frozen=True)
class GoService:
    name: str
    domain: str
    hosts: tuple[GoHost, ...]


@dataclass(frozen=True)
class GoProxyConfig:
    """go-reverse-proxy's C{proxy:} document, checked."""

    address: str
    port: int
    services: tuple[GoService, ...]


@dataclass(frozen=True)
class GoSettings:
    """go-reverse-proxy's environment variables, with its defaults for the ones not set."""

    httpRetries: int = DEFAULT_HTTP_RETRIES
    forwardRetries: int = DEFAULT_FORWARD_RETRIES
    cacheTTL: int = DEFAULT_CACHE_TTL
    metricsAddr: str | None = None

    @property
    def attempts(self) -> int:
        """
        txgateway's C{retries.attempts}.  go-reverse-proxy retried the same
        instance C{MAX_HTTP_RETRIES} times and then moved on, up to
        C{MAX_FORWARD_RETRIES} times; txgateway sends every retry to a target
        not tried yet (an instance that just failed is the least likely to
        answer), so the two budgets become one.
        """
        return self.httpRetries + self.forwardRetries


# --------------------------------------------------------------------------
# Detection and checking.


def isGoReverseProxy(doc: Any) -> bool:
    """go-reverse-proxy's file has one top-level key, C{proxy}, which txgateway's never has."""
    return isinstance(doc, Mapping) and "proxy" in doc


def _line(container: Any, key: Any) -> int | None:
    lines = getattr(container, "lines", None)
    if isinstance(lines, Mapping):
        return lines.get(key)
    if isinstance(lines, list) and isinstance(key, int) and key < len(lines):
        return lines[key] or None
    return None


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def problem(self, path: str, line: int | None, message: str) -> None:
        self.problems.append((path, line, message))

    def mapping(self, value: Any, path: str, line: int | None, known: tuple[str, ...]) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.problem(path, line, "must be a mapping" if value is not None else "is required")
            return None
        for key in value:
            if key not in known:
                self.problem(f"{path}.{key}", _line(value, key),
                             f"not a go-reverse-proxy key (expected one of: {', '.join(known)})")
        return value

    def text(self, m: Mapping[str, Any], key: str, path: str, line: int | None) -> str:
        value = m.get(key)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
            self.problem(f"{path}.{key}", _line(m, key) or line, "is required (a non-empty string)")
            return ""
        return str(value).strip()

    def port(self, m: Mapping[str, Any], key: str, path: str, line: int | None, listening: bool = False) -> int:
        """A port number; a listening one may be 0 (the OS picks, as txgateway's own C{listen} allows)."""
        value = m.get(key)
        if isinstance(value, str) and value.isdigit():
            value = int(value)
        lowest = 0 if listening else 1
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < 65536:
            self.problem(f"{path}.{key}", _line(m, key) or line,
                         f"must be a port number ({lowest}-65535), not {value!r}")
            return 0
        return value

    def items(self, m: Mapping[str, Any], key: str, path: str, line: int | None) -> list[tuple[Any, int | None]]:
        value = m.get(key)
        if not isinstance(value, list) or not value:
            self.problem(f"{path}.{key}", _line(m, key) or line, "must be a non-empty list")
            return []
        return [(item, _line(value, i) or _line(m, key)) for i, item in enumerate(value)]


def parseGoProxy(doc: Any) -> GoProxyConfig:
    """Check go-reverse-proxy's document; raise L{SeedError} naming every problem."""
    c = _Checker()
    if not isinstance(doc, Mapping):
        raise SeedError([("", 1, "must be a mapping")])
    extra = [k for k in doc if k != "proxy"]
    for key in extra:
        c.problem(str(key), _line(doc, key),
                  "go-reverse-proxy's file has only `proxy:`; convert it first (`txgateway convert FILE`) "
                  "and then add txgateway keys")
    proxy = c.mapping(doc.get("proxy"), "proxy", _line(doc, "proxy"), ("listen", "services"))
    if proxy is None:
        raise SeedError(c.problems)
    pl = _line(doc, "proxy")
    address, port = "0.0.0.0", 8080
    if proxy.get("listen") is not None:
        listen = c.mapping(proxy["listen"], "proxy.listen", _line(proxy, "listen"), ("address", "port"))
        if listen is not None:
            address = c.text(listen, "address", "proxy.listen", _line(proxy, "listen"))
            port = c.port(listen, "port", "proxy.listen", _line(proxy, "listen"), listening=True)
    services: list[GoService] = []
    seen: dict[str, str] = {}
    for i, (item, line) in enumerate(c.items(proxy, "services", "proxy", pl)):
        path = f"proxy.services[{i}]"
        s = c.mapping(item, path, line, ("name", "domain", "hosts"))
        if s is None:
            continue
        domain = c.text(s, "domain", path, line).lower()
        name = str(s.get("name") or domain).strip()
        hosts = []
        for j, (h, hl) in enumerate(c.items(s, "hosts", path, line)):
            hm = c.mapping(h, f"{path}.hosts[{j}]", hl, ("address", "port"))
            if hm is not None:
                hosts.append(GoHost(c.text(hm, "address", f"{path}.hosts[{j}]", hl),
                                    c.port(hm, "port", f"{path}.hosts[{j}]", hl)))
        for what, value in (("name", name), ("domain", domain)):
            if value and f"{what}:{value}" in seen:
                c.problem(f"{path}.{what}", _line(s, what) or line,
                          f"{value!r} is also the {what} of {seen[f'{what}:{value}']}")
            seen[f"{what}:{value}"] = path
        services.append(GoService(name, domain, tuple(hosts)))
    if c.problems:
        raise SeedError(c.problems)
    return GoProxyConfig(address, port, tuple(services))


def _count(environ: Mapping[str, str], name: str, default: int) -> tuple[int, Problem | None]:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return default, None
    if not raw.strip().isdigit():
        return default, (name, None, f"must be a whole number of 0 or more, not {raw!r}")
    return int(raw.strip()), None


def goSettings(environ: Mapping[str, str]) -> GoSettings:
    """go-reverse-proxy's environment variables (unset ones take its defaults); raise L{SeedError} on bad values."""
    http, p1 = _count(environ, "MAX_HTTP_RETRIES", DEFAULT_HTTP_RETRIES)
    forward, p2 = _count(environ, "MAX_FORWARD_RETRIES", DEFAULT_FORWARD_RETRIES)
    ttl, p3 = _count(environ, "HTTP_CACHE_TTL_SECONDS", DEFAULT_CACHE_TTL)
    metrics: str | None = None
    p4: Problem | None = None
    if environ.get("METRICS_ADDR", "").strip():
        try:
            metrics = metricsListen(environ["METRICS_ADDR"])
        except ValueError as e:
            p4 = ("METRICS_ADDR", None, str(e))
    problems = [p for p in (p1, p2, p3, p4) if p is not None]
    if problems:
        raise SeedError(problems)
    return GoSettings(http, forward, ttl, metrics)


def _escape(address: str) -> str:
    """A host for a Twisted endpoint string: its colons (an IPv6 literal) escaped."""
    return address.strip("[]").replace(":", "\\:")


def metricsListen(addr: str) -> str:
    """
    Go's C{host:port} (C{:8090} meaning every interface) as the admin
    listener's endpoint.  An empty host becomes loopback: the admin listener
    also serves the status page and the reload API, which the config refuses
    to open beyond loopback without C{admin.token}.
    """
    host, sep, port = addr.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a Go listen address (host:port or :port): {addr!r}")
    return f"tcp:{int(port)}:interface={_escape(host) or '127.0.0.1'}"


def serverListen(address: str, port: int) -> str:
    return f"tcp:{port}" + (f":interface={_escape(address)}" if address else "")


# --------------------------------------------------------------------------
# The txgateway document.


def targets(service: GoService) -> list[str]:
    return [f"http://{'[' + h.address + ']' if ':' in h.address else h.address}:{h.port}" for h in service.hosts]


def toDocument(config: GoProxyConfig, settings: GoSettings) -> dict[str, Any]:
    """The txgateway document equivalent to go-reverse-proxy's config and environment."""
    doc: dict[str, Any] = {"server": {"listen": serverListen(config.address, config.port)}}
    if settings.metricsAddr is not None:
        doc["admin"] = {"listen": settings.metricsAddr}
    doc["upstreams"] = {
        s.name: {
            "balancer": "round_robin",
            "targets": targets(s),
            "retries": {"attempts": settings.attempts, "on": list(RETRY_ON)},
        }
        for s in config.services
    }
    routes = []
    for s in config.services:
        route: dict[str, Any] = {
            "name": s.name,
            "match": {"host": s.domain, "path_prefix": PROXY_PREFIX},
            "strip_prefix": PROXY_PREFIX,
            "preserve_host": False,
            "upstream": s.name,
        }
        if settings.cacheTTL > 0:
            route["cache"] = {"default_ttl": f"{settings.cacheTTL}s"}
        routes.append(route)
    doc["routes"] = routes
    return doc


# --------------------------------------------------------------------------
# The config parser's hooks.


def seedDocument(doc: Any, environ: Mapping[str, str]) -> Any:
    """
    go-reverse-proxy's document as txgateway's (with go-reverse-proxy's
    environment variables); any other document unchanged.  Raises
    L{SeedError}.
    """
    if not isGoReverseProxy(doc):
        return doc
    return toDocument(parseGoProxy(doc), goSettings(environ))


def _section(doc: Any, key: str) -> Any:
    """doc[key] as a mapping to write into (created when absent); None when it is something else."""
    value = doc.get(key)
    if value is None or value is True:
        value = doc[key] = {}
    return value if isinstance(value, dict) else None


def environmentDocument(doc: Any, environ: Mapping[str, str], envOnly: bool = False) -> Any:
    """
    The seeds' environment variables applied onto a txgateway document, in
    place; the document is returned.

    C{MAX_HTTP_RETRIES} / C{MAX_FORWARD_RETRIES} set every upstream's
    C{retries.attempts} (to their sum, an unset one counting as its default
    2); C{HTTP_CACHE_TTL_SECONDS} sets C{cache.default_ttl} of every route
    that caches (with C{envOnly}, the environment-made gateway, its route
    starts caching; C{0} leaves headers alone); C{METRICS_ADDR} opens the
    admin listener; C{ENVIRONMENT} is C{server.environment}.  A document
    that is not a mapping is left for the parser to reject.
    """
    if not isinstance(doc, dict):
        return doc
    present = {name for name in SEED_VARIABLES if environ.get(name, "").strip()}
    if not present - {"CONFIGURATION_FILENAME"}:
        return doc
    settings = goSettings(environ)
    if present & {"MAX_HTTP_RETRIES", "MAX_FORWARD_RETRIES"}:
        upstreams = doc.get("upstreams")
        for body in (upstreams.values() if isinstance(upstreams, dict) else ()):
            if isinstance(body, dict):
                retries = body.get("retries")
                if not isinstance(retries, dict):
                    retries = body["retries"] = {}
                retries["attempts"] = settings.attempts
    if "HTTP_CACHE_TTL_SECONDS" in present:
        routes = doc.get("routes")
        for route in (routes if isinstance(routes, list) else ()):
            if not isinstance(route, dict):
                continue
            cache = route.get("cache")
            if cache is None or cache is False:
                if not envOnly:
                    continue
                cache = route["cache"] = {}
            elif cache is True:
                cache = route["cache"] = {}
            if isinstance(cache, dict):
                if settings.cacheTTL > 0:
                    cache["default_ttl"] = f"{settings.cacheTTL}s"
                else:
                    cache.pop("default_ttl", None)
    if "METRICS_ADDR" in present and settings.metricsAddr is not None:
        admin = _section(doc, "admin")
        if admin is not None:
            admin["listen"] = settings.metricsAddr
    if "ENVIRONMENT" in present:
        server = _section(doc, "server")
        if server is not None:
            server["environment"] = environ["ENVIRONMENT"].strip()
    return doc


def seeds(translate: Callable[[], Any], source: str) -> Any:
    """Run a translation of this module, its problems as a L{ConfigError}."""
    try:
        return translate()
    except SeedError as e:
        raise ConfigError([ConfigProblem(path, line, message) for path, line, message in e.problems], source) from None
