# -*- test-case-name: tests.test_cli -*-
"""
The C{txgateway} command: check a config (and explain routing) without starting anything.

Exit 0 and a one-screen summary for a valid config; exit 1 and every problem,
each with its key path and line, for an invalid one: the same problems
start-up would refuse, environment variables included.  C{--version} prints
C{txgateway X.Y.Z}.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO
from urllib.parse import urlsplit

from txgateway import __version__, convert
from txgateway.config import ConfigError, GatewayConfig, configFromEnvironment, loadConfig

__all__ = ["explain", "main", "summary"]


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
            n = u.circuit_breaker.failures
            extras.append(f"breaker after {n} failure{'' if n == 1 else 's'}")
        if u.retries.attempts:
            n = u.retries.attempts
            extras.append(f"{n} retr{'y' if n == 1 else 'ies'}")
        targets = ", ".join(t.url + (f" (w{t.weight})" if t.weight != 1 else "") for t in u.targets)
        lines.append(f"  {name:<16} {u.balancer:<22} {targets}")
        if extras:
            lines.append(f"  {'':<16} {'; '.join(extras)}")
    lines += ["", "routes (most specific first):"]
    from txgateway.routing import RouteTable, compileRoutes

    for r in RouteTable(compileRoutes(config.routes)).routes:
        c = r.config
        extras = [x for x, on in (("auth", c.auth), ("rate_limit", c.rate_limit), ("cache", c.cache),
                                  ("cors", c.cors), ("ip rules", c.ip_allow or c.ip_deny)) if on]
        lines.append(f"  {r.name:<16} {r.describe():<50} -> {c.upstream}" + (f"  [{', '.join(extras)}]" if extras else ""))
    return "\n".join(lines)


def explain(config: GatewayConfig, url: str, method: str, headers: Sequence[str], out: TextIO) -> int:
    """
    Print which route C{url} takes and why each other route does not; exit 0
    when a route matches, 1 when the gateway would answer 400, 404 or 405.
    """
    from twisted.web.http_headers import Headers

    from txgateway.http.paths import PathError, normalizeHost, normalizePath
    from txgateway.routing import RouteTable, compileRoutes

    if "://" not in url and not url.startswith("/"):
        url = "http://" + url
    parts = urlsplit(url)
    h = Headers()
    for item in headers:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            out.write(f"not a header (write 'Name: value'): {item!r}\n")
            return 1
        h.addRawHeader(name.strip().encode("latin-1"), value.strip().encode("utf-8"))
    if parts.netloc:
        h.setRawHeaders(b"host", [parts.netloc.rsplit("@", 1)[-1].encode("idna")])
    host = normalizeHost(h.getRawHeaders(b"host", [b""])[0])
    m = method.upper().encode("latin-1")
    try:
        path = normalizePath((parts.path or "/").encode("utf-8"))
    except PathError as bad:
        out.write(f"{method.upper()} host={host or '(none)'} path={parts.path or '/'}\n\n=> 400 bad request path: {bad}\n")
        return 1
    query = f"?{parts.query}" if parts.query or url.endswith("?") else ""
    out.write(f"{method.upper()} host={host or '(none)'} path={path}{query}\n")
    ep = config.server.endpoints
    own = {p: k for p, k in ((ep.health, "health"), (ep.ready, "ready"), (ep.metrics, "metrics")) if p}
    if path in own:
        out.write(f"\n=> answered by the gateway itself (server.endpoints.{own[path]}), before any route\n")
        return 0
    table = RouteTable(compileRoutes(config.routes))
    out.write("\nroutes, most specific first:\n")
    rawQuery = parts.query.encode("latin-1") if parts.query else None  # for match.query (client_ip sees no client)
    for route, why in table.explain(m, host, path, h, rawQuery):
        out.write(f"  {route.name:<16} {route.describe():<50} {why}\n")
    match = table.match(m, host, path, h, rawQuery)
    if match.route is None:
        if match.allowed:
            allow = ", ".join(sorted(x.decode() for x in match.allowed))
            out.write(f"\n=> 405 method not allowed (Allow: {allow})\n")
        else:
            out.write(f"\n=> 404 no route for host {host or '(none)'} and path {path}\n")
        return 1
    if "%2F" in path and not match.route.allowEncodedSlash:
        out.write(f"\n=> 400: route {match.route.name} does not allow an encoded slash (%2F) "
                  "(set allow_encoded_slash: true)\n")
        return 1
    out.write(f"\n=> route {match.route.name}, upstream {match.route.upstreamName}, "
              f"backend path {match.route.upstreamPath(path)}{query}\n")
    return 0


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
         environ: Mapping[str, str] | None = None) -> int:
    """Run one command; return the exit status. C{environ} stands for C{os.environ}, as start-up reads it."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="txgateway", description="txgateway tools (run the gateway with twistd)")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    check = sub.add_parser("check", help="validate a config file and print a summary")
    check.add_argument("config", nargs="?", help="the YAML config (omitted: from the environment)")
    check.add_argument("--explain", metavar="URL", help="show which route URL would take, and why not the others")
    check.add_argument("-X", "--method", default="GET", help="method for --explain")
    check.add_argument("-H", "--header", action="append", default=[], help="'Name: value' header for --explain")
    conv = sub.add_parser("convert", help="print go-reverse-proxy's config FILE as a txgateway config (YAML)")
    conv.add_argument("file", help="go-reverse-proxy's proxyConfig.yaml")
    args = parser.parse_args(argv)
    if args.version:
        out.write(f"txgateway {__version__}\n")
        return 0
    if args.command is None:
        parser.print_usage(err)
        err.write("txgateway: name a command (check, convert), or --version\n")
        return 2
    if args.command == "convert":
        return convert.main(args.file, out, err)
    try:
        config = loadConfig(args.config, environ) if args.config else configFromEnvironment(environ)
    except ConfigError as e:
        err.write(e.render() + "\n")
        err.write(f"{len(e.problems)} problem(s); the config was rejected.\n")
        return 1
    if args.explain:
        return explain(config, args.explain, args.method, args.header, out)
    out.write(summary(config) + "\n")
    return 0
