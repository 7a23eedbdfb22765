# -*- test-case-name: tests.test_config -*-
"""
Configuration from the environment: a whole gateway without a file, or overrides of a file's values.

C{BACKEND_URL}, C{GATEWAY_PORT}, C{LOG_LEVEL} and C{REQUEST_TIMEOUT} are
checked as strictly as the keys they stand for, and a problem names the
variable, so C{txgateway check} refuses exactly what start-up would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from txgateway.config.errors import ConfigError, Invalid, Problem
from txgateway.config.fields import level, port
from txgateway.config.parser import Parser
from txgateway.config.schema import GatewayConfig
from txgateway.config.seeds import environmentDocument, seeds
from txgateway.config.source import positioned
from txgateway.config.values import duration

__all__ = ["applyEnvironment", "gatewayFromEnvironment"]

# The key each variable stands for, so that a problem found there is reported under the variable's name.
_ENV_NAMES = {"server.listen": "GATEWAY_PORT", "logging.level": "LOG_LEVEL",
              "upstreams.backend.targets[0]": "BACKEND_URL", "upstreams.backend.timeouts.response": "REQUEST_TIMEOUT"}


def gatewayFromEnvironment(environ: Mapping[str, str]) -> GatewayConfig:
    """
    The one-upstream gateway of the first seed: everything to BACKEND_URL.

    Built as YAML-shaped data and parsed by the same code as a file, so the
    environment cannot produce a config a file could not.
    """
    problems = []
    listenPort = environ.get("GATEWAY_PORT", "8080")
    try:
        port(listenPort)
    except Invalid as e:
        problems.append(Problem("GATEWAY_PORT", None, str(e)))
        listenPort = "8080"
    backend = environ.get("BACKEND_URL", "http://localhost:3000")
    doc: dict[str, Any] = {
        "server": {"listen": f"tcp:{listenPort.strip()}"},
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
    parser = Parser(Path.cwd())
    source = "environment"
    doc = seeds(lambda: environmentDocument(doc, environ, envOnly=True), source)
    config = parser.gateway(positioned(doc), source)
    problems += [_envProblem(p) for p in parser.problems]
    if problems:
        raise ConfigError(problems, source)
    return config


def _envProblem(p: Problem) -> Problem:
    return Problem(_ENV_NAMES.get(p.path, p.path), None, p.message)


def applyEnvironment(config: GatewayConfig, environ: Mapping[str, str]) -> GatewayConfig:
    """GATEWAY_PORT, LOG_LEVEL and REQUEST_TIMEOUT override a file's values."""
    problems = []
    server, logging_, upstreams = config.server, config.logging, dict(config.upstreams)
    if "GATEWAY_PORT" in environ:
        try:
            server = replace(server, listen=_withPort(server.listen, port(environ["GATEWAY_PORT"])))
        except Invalid as e:
            problems.append(Problem("GATEWAY_PORT", None, str(e)))
    if "LOG_LEVEL" in environ:
        try:
            logging_ = replace(logging_, level=level(environ["LOG_LEVEL"]))
        except Invalid as e:
            problems.append(Problem("LOG_LEVEL", None, str(e)))
    if "REQUEST_TIMEOUT" in environ:
        try:
            t = duration(environ["REQUEST_TIMEOUT"])
            upstreams = {n: replace(u, timeouts=replace(u.timeouts, response=t)) for n, u in upstreams.items()}
        except Invalid as e:
            problems.append(Problem("REQUEST_TIMEOUT", None, str(e)))
    if problems:
        raise ConfigError(problems, "environment")
    return replace(config, server=server, logging=logging_, upstreams=upstreams)


def _withPort(description: str, number: int) -> str:
    """C{description} listening on C{number}, its other options (interface, backlog, TLS) kept."""
    kind, _, rest = description.partition(":")
    if kind not in ("tcp", "ssl", "tcp6"):
        return description
    fields = rest.split(":") if rest else []
    if fields and "=" not in fields[0]:
        fields[0] = str(number)
    else:
        fields.insert(0, str(number))
    return f"{kind}:{':'.join(fields)}"
