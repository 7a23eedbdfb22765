"""
The C{txgateway} command: check a config (and explain routing) without starting anything.

Exit 0 and a one-screen summary for a valid config; exit 1 and every problem,
each with its key path and line, for an invalid one.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TextIO
from urllib.parse import urlsplit

from .config import ConfigError, GatewayConfig, configFromEnvironment, loadConfig


def summary(config: GatewayConfig) -> str:
    s = config.server
    lines = [f"config OK: {config.source}", "", "listeners:"]
    lines.append(f"  main   {s.listen}  (body <= {s.max_request_body} B, head <= {s.max_header_bytes} B, "
                 f"workers {s.workers or 'auto'})")
    if config.admin is not None:
        lines.append(f"  admin  {config.admin.listen}" + ("  (token required)" if config.admin.token else ""))
    e = s.endpoints
    own = ", ".join(p for p in (e.health, e.ready, e.metrics) if p)
    if own:
        lines.append(f"  own endpoints: {own}")
    lines += ["", "upstreams:"]
    for name, u in config.upstreams.items():
        extras = []
        if u.health.active:
            extras.append(f"active health {u.health.active.path} every {u.health.active.interval:g}s")
        if u.health.passive:
            extras.append("passive health")
        if u.circuit_breaker:
            extras.append(f"breaker after {u.circuit_breaker.failures} failures")
        if u.retries.attempts:
            extras.append(f"{u.retries.attempts} retries")
        targets = ", ".join(t.url + (f" (w{t.weight})" if t.weight != 1 else "") for t in u.targets)
        lines.append(f"  {name:<16} {u.balancer:<22} {targets}")
        if extras:
            lines.append(f"  {'':<16} {'; '.join(extras)}")
    lines += ["", "routes (most specific first):"]
    from .routing import RouteTable, compileRoutes

    for r in RouteTable(compileRoutes(config.routes)).routes:
        c = r.config
        extras = [x for x, on in (("auth", c.auth), ("rate_limit", c.rate_limit), ("cache", c.cache),
                                  ("cors", c.cors), ("ip rules", c.ip_allow or c.ip_deny)) if on]
        lines.append(f"  {r.name:<16} {r.describe():<50} -> {c.upstream}" + (f"  [{', '.join(extras)}]" if extras else ""))
    return "\n".join(lines)


def explain(config: GatewayConfig, url: str, method: str, headers: Sequence[str], out: TextIO) -> int:
    from twisted.web.http_headers import Headers

    from .routing import PathError, RouteTable, compileRoutes, normalizeHost, normalizePath

    parts = urlsplit(url)
    h = Headers()
    for item in headers:
        name, _, value = item.partition(":")
        h.addRawHeader(name.strip().encode(), value.strip().encode())
    host = normalizeHost(parts.netloc.rsplit("@", 1)[-1])
    try:
        path = normalizePath((parts.path or "/").encode())
    except PathError as e:
        out.write(f"400: {e}\n")
        return 1
    table = RouteTable(compileRoutes(config.routes))
    out.write(f"{method} host={host!r} path={path!r}\n\n")
    for route, why in table.explain(method.upper().encode(), host, path, h):
        out.write(f"  {route.name:<16} {route.describe():<50} {why}\n")
    match = table.match(method.upper().encode(), host, path, h)
    if match.route is None:
        out.write("\n=> 405 method not allowed\n" if match.allowed else "\n=> 404 no route\n")
        return 1
    out.write(f"\n=> route {match.route.name}, upstream {match.route.upstreamName}, "
              f"backend path {match.route.upstreamPath(path)}\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = argparse.ArgumentParser(prog="txgateway", description="txgateway tools (run the gateway with twistd)")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("config", nargs="?", help="the YAML config (omitted: from the environment)")
    check.add_argument("--explain", metavar="URL", help="show which route URL would take, and why not the others")
    check.add_argument("-X", "--method", default="GET", help="method for --explain")
    check.add_argument("-H", "--header", action="append", default=[], help="'Name: value' header for --explain")
    args = parser.parse_args(argv)
    try:
        config = loadConfig(args.config) if args.config else configFromEnvironment(os.environ)
    except ConfigError as e:
        err.write(e.render() + "\n")
        err.write(f"{len(e.problems)} problem(s); the config was rejected.\n")
        return 1
    if args.explain:
        return explain(config, args.explain, args.method, args.header, out)
    out.write(summary(config) + "\n")
    return 0
