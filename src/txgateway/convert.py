# -*- test-case-name: tests.test_seedcompat -*-
"""
C{txgateway convert FILE}: go-reverse-proxy's configuration file as a
txgateway config, printed as YAML with comments, so its users move over in
one step and then grow the config txgateway's way.

The translation itself (and what go-reverse-proxy did) is in
L{txgateway.config.seeds}; this module only writes it out, and checks that
what it writes loads, before anyone runs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import yaml

from txgateway.config import ConfigError, parseConfig
from txgateway.config.seeds import (
    PROXY_PREFIX,
    RETRY_ON,
    GoProxyConfig,
    GoSettings,
    SeedError,
    goSettings,
    isGoReverseProxy,
    parseGoProxy,
    serverListen,
    targets,
)

__all__ = ["convert", "main", "toYAML"]


def _q(value: str) -> str:
    """A YAML double-quoted scalar (JSON's string syntax is a subset of it)."""
    return json.dumps(value)


def toYAML(config: GoProxyConfig, settings: GoSettings, source: str = "proxyConfig.yaml") -> str:
    """
    L{toDocument} as YAML text with comments saying where each part came
    from and what to grow next: what C{txgateway convert} prints.
    """
    out = [
        f"# txgateway config converted from go-reverse-proxy's {source}",
        f"# (MAX_HTTP_RETRIES={settings.httpRetries}, MAX_FORWARD_RETRIES={settings.forwardRetries}, "
        f"HTTP_CACHE_TTL_SECONDS={settings.cacheTTL}).",
        "# Run it with:  twistd -n txgateway --config gw.yaml",
        "# Every key: docs/configuration.md; moving over: docs/migrating.md.",
        "",
        "server:",
        "  # proxy.listen (address and port)",
        f"  listen: {_q(serverListen(config.address, config.port))}",
        "  # /health, /ready and /metrics are answered on this listener too.",
    ]
    if settings.metricsAddr is not None:
        out += [
            "",
            "# METRICS_ADDR: the admin listener serves /metrics (and the status page).",
            "admin:",
            f"  listen: {_q(settings.metricsAddr)}",
        ]
    out += ["", "upstreams:"]
    for s in config.services:
        out += [
            f"  # service {s.name}: its hosts, round robin",
            f"  {_q(s.name)}:",
            "    balancer: round_robin",
            "    targets:",
            *(f"      - {_q(t)}" for t in targets(s)),
            "    # MAX_HTTP_RETRIES + MAX_FORWARD_RETRIES: each retry goes to a host not tried yet",
            "    retries:",
            f"      attempts: {settings.attempts}",
            f"      \"on\": [{', '.join(RETRY_ON)}]",
            "    # grow: health: {active: {path: /health}} takes a dead host out before a request finds it",
            "",
        ]
    out += ["routes:"]
    for s in config.services:
        out += [
            f"  # service {s.name}: Host {s.domain}, under /proxy/ (removed before forwarding)",
            f"  - name: {_q(s.name)}",
            "    match:",
            f"      host: {_q(s.domain)}",
            f"      path_prefix: {PROXY_PREFIX}",
            f"    strip_prefix: {PROXY_PREFIX}",
            "    # go-reverse-proxy sent each host its own address as Host",
            "    preserve_host: false",
            f"    upstream: {_q(s.name)}",
        ]
        if settings.cacheTTL > 0:
            out += [
                "    # HTTP_CACHE_TTL_SECONDS: responses without Cache-Control or Expires are kept this long;",
                "    # no-store, private and requests with Authorization are still never served from the cache",
                "    cache:",
                f"      default_ttl: {settings.cacheTTL}s",
            ]
        out += ["    # grow: rate_limit, auth, cors, headers (docs/configuration.md)", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def convert(text: str, source: str, environ: Mapping[str, str]) -> str:
    """
    The txgateway config for go-reverse-proxy's file C{text}, with the
    environment's go-reverse-proxy variables (their defaults when unset).
    Raises L{SeedError} for anything that is not such a file, or that would
    not load.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SeedError([("", mark.line + 1 if mark else None, f"not valid YAML: {getattr(e, 'problem', e)}")]) from None
    if not isGoReverseProxy(doc):
        raise SeedError([("", 1, "not a go-reverse-proxy configuration (expected a top-level `proxy:` "
                                 "with `listen` and `services`)")])
    out = toYAML(parseGoProxy(doc), goSettings(environ), Path(source).name)
    try:
        parseConfig(out, "converted config")
    except ConfigError as e:
        raise SeedError([(p.path, None, f"converts to a config txgateway refuses: {p.message}")
                         for p in e.problems]) from None
    return out


def main(path: str, out: TextIO, err: TextIO, environ: Mapping[str, str] | None = None) -> int:
    """The C{convert} subcommand: 0 and the YAML on C{out}, or 1 and every problem on C{err}."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        err.write(f"txgateway convert: cannot read {path}: {getattr(e, 'strerror', None) or e}\n")
        return 1
    try:
        result = convert(text, path, os.environ if environ is None else environ)
    except SeedError as e:
        err.write(e.render(path) + "\n")
        err.write(f"txgateway convert: {path} was not converted ({len(e.problems)} problem(s)).\n")
        return 1
    out.write(result)
    return 0
