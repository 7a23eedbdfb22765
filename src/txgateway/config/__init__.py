# -*- test-case-name: tests.test_config -*-
"""
Configuration: YAML in, frozen typed objects out.

The file is parsed exactly once per load.  Everything the request path needs
is converted here (durations to seconds, sizes to bytes, CIDRs to networks,
secret files to bytes) so that no request ever re-parses a string, and so
that every mistake a user can make is reported up front, all at once, with
the key path and the line it sits on.  A config that fails here never
replaces a running one.

The parts, each one concern:

  - L{errors}: L{Problem}, L{ConfigError}, and how key paths are written
  - L{values}, L{fields}: converters from YAML values to typed ones
  - L{schema}: the frozen dataclasses
  - L{source}: YAML with the line of every key; repeated keys refused
  - L{parser} (with C{parser_server}, C{parser_auth}, C{parser_upstreams},
    C{parser_routes}): the tree to a L{GatewayConfig}
  - L{environment}: a gateway from environment variables, and their overrides
  - L{loading}: a file, read, parsed and overridden

This package imports nothing else from txgateway but the route path
normaliser (lazily, in L{fields.routePath}).
"""

from txgateway.config.environment import applyEnvironment
from txgateway.config.errors import ConfigError, Problem
from txgateway.config.loading import configFromEnvironment, loadConfig
from txgateway.config.parser import parseConfig
from txgateway.config.schema import (
    AccessConfig,
    ActiveHealth,
    AdminConfig,
    ApiKeyAuth,
    AuthPolicy,
    BasicAuth,
    BreakerConfig,
    CacheConfig,
    CorsConfig,
    Endpoints,
    GatewayConfig,
    HeaderOps,
    HeaderRules,
    HealthConfig,
    JwtAuth,
    LoggingConfig,
    MatchConfig,
    PassiveHealth,
    PoolConfig,
    RateLimitConfig,
    RetryConfig,
    RouteConfig,
    ServerConfig,
    ServerTimeouts,
    StoresConfig,
    Target,
    TracingConfig,
    TracingOTLP,
    UpstreamConfig,
    UpstreamTimeouts,
    UpstreamTLS,
)
from txgateway.config.values import (
    IPNetwork,
    Rate,
    boolean,
    duration,
    fraction,
    headerName,
    headerValue,
    integer,
    method,
    network,
    oneOf,
    rate,
    size,
    string,
    urlPath,
)

__all__ = [
    "AccessConfig",
    "ActiveHealth",
    "AdminConfig",
    "ApiKeyAuth",
    "AuthPolicy",
    "BasicAuth",
    "BreakerConfig",
    "CacheConfig",
    "ConfigError",
    "CorsConfig",
    "Endpoints",
    "GatewayConfig",
    "HeaderOps",
    "HeaderRules",
    "HealthConfig",
    "IPNetwork",
    "JwtAuth",
    "LoggingConfig",
    "MatchConfig",
    "PassiveHealth",
    "PoolConfig",
    "Problem",
    "Rate",
    "RateLimitConfig",
    "RetryConfig",
    "RouteConfig",
    "ServerConfig",
    "ServerTimeouts",
    "StoresConfig",
    "TracingConfig",
    "TracingOTLP",
    "Target",
    "UpstreamConfig",
    "UpstreamTLS",
    "UpstreamTimeouts",
    "applyEnvironment",
    "boolean",
    "configFromEnvironment",
    "duration",
    "fraction",
    "headerName",
    "headerValue",
    "integer",
    "loadConfig",
    "method",
    "network",
    "oneOf",
    "parseConfig",
    "rate",
    "size",
    "string",
    "urlPath",
]
