# -*- test-case-name: tests.test_config -*-
"""
Loading a config file: read it, parse it, apply the environment's overrides.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from txgateway.config.environment import applyEnvironment
from txgateway.config.errors import ConfigError, Problem
from txgateway.config.parser import parseConfig
from txgateway.config.schema import GatewayConfig

__all__ = ["loadConfig"]


def loadConfig(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Read a config file, apply the environment's overrides, and validate."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem("", None, f"cannot read config file: {e}")], str(p)) from None
    config = parseConfig(text, str(p), p.resolve().parent)
    return applyEnvironment(config, os.environ if environ is None else environ)
