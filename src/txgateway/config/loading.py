# -*- test-case-name: tests.test_config -*-
"""
Loading a config file: read it, parse it, apply the environment's overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from txgateway.config.environment import applyEnvironment, gatewayFromEnvironment
from txgateway.config.errors import ConfigError, Problem
from txgateway.config.parser import parseConfig
from txgateway.config.schema import GatewayConfig

__all__ = ["configFromEnvironment", "loadConfig"]


def loadConfig(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a config file, apply the environment's overrides, and validate."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem("", None, f"cannot read config file: {e}")], str(p)) from None
    environ = os.environ if environ is None else environ
    config = parseConfig(text, str(p), p.resolve().parent, environ)
    return applyEnvironment(config, environ)


def configFromEnvironment(environ: Mapping[str, str]) -> GatewayConfig:
    """
    A gateway with no config file: the file C{CONFIGURATION_FILENAME} names
    (go-reverse-proxy's variable) when it is set, else the one-upstream
    gateway of the first seed built from C{BACKEND_URL} and the rest.
    """
    if environ.get("CONFIGURATION_FILENAME"):
        return loadConfig(environ["CONFIGURATION_FILENAME"], environ)
    return gatewayFromEnvironment(environ)
