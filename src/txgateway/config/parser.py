# -*- test-case-name: tests.test_config -*-
"""
The whole file: each section parsed by its own module, joined into one L{GatewayConfig}.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from txgateway.config.errors import ConfigError, keyPath
from txgateway.config.parser_concurrency import checkPriorityRoutes
from txgateway.config.parser_routes import RouteSections
from txgateway.config.parser_server import ServerSections
from txgateway.config.parser_upstreams import UpstreamSections
from txgateway.config.schema import GatewayConfig, RouteConfig, UpstreamConfig
from txgateway.config.seeds import environmentDocument, seedDocument, seeds
from txgateway.config.source import loadYAML

__all__ = ["Parser", "parseConfig"]


class Parser(RouteSections, UpstreamSections, ServerSections):
    """
    Walks a YAML tree into a L{GatewayConfig}, collecting every problem.

    Sections that others refer to by name (stores, auth policies, upstreams)
    are parsed before the routes that name them.
    """

    def gateway(self, doc: Any, source: str | None) -> GatewayConfig:
        top = self.mapping(doc, "", 1, ["server", "admin", "logging", "stores", "access", "auth_policies",
                                        "upstreams", "routes", "tracing", "discovery"])
        if top is None:
            raise ConfigError(self.problems, source or "")
        server = self.server(*self.child(top, "server"))
        admin = self.admin(*self.child(top, "admin"))
        logging_ = self.logging(*self.child(top, "logging"))
        stores = self.stores(*self.child(top, "stores"))
        access = self.access(*self.child(top, "access"), "access")
        policies = self.authPolicies(*self.child(top, "auth_policies"))
        # A gateway whose every route answers itself (redirect / respond: an HTTPS redirector, a
        # maintenance page) needs no upstream.
        routesDoc = top.get("routes")
        selfAnswering = isinstance(routesDoc, list) and bool(routesDoc) and all(
            isinstance(r, dict) and (r.get("redirect") is not None or r.get("respond") is not None) for r in routesDoc)
        upstreams = self.upstreams(*self.child(top, "upstreams"), required=not selfAnswering)
        routes = self.routes(*self.child(top, "routes"), upstreams, policies, stores)
        self.checkConcurrency(top, upstreams, routes)
        discovery = self.discovery(*self.child(top, "discovery"))
        tracing = self.tracing(*self.child(top, "tracing"))
        return GatewayConfig(server, admin, logging_, stores, access, policies, upstreams, routes, source,
                             tracing=tracing, discovery=discovery)

    def checkConcurrency(self, top: Any, upstreams: Mapping[str, UpstreamConfig],
                         routes: tuple[RouteConfig, ...]) -> None:
        """Names in C{priority.route} must be routes (issue 24): known only once both sections are read."""
        names = [r.name for r in routes]
        raw = top.get("upstreams")
        for name, u in upstreams.items():
            if u.concurrency is None:
                continue
            uline = raw.lines.get(name) if hasattr(raw, "lines") else None
            for p, ln, msg in checkPriorityRoutes(u.concurrency, names, keyPath(keyPath("upstreams", name),
                                                                                "concurrency"), uline):
                self.problem(p, ln, msg)


def parseConfig(text: str, source: str = "<config>", baseDir: Path | None = None,
                environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """Parse YAML text; raise L{ConfigError} naming every problem (repeated keys included)."""
    doc, repeated = loadYAML(text, source)
    env = environ or {}  # the seeds' variables and files, as txgateway's document (see txgateway.config.seeds)
    doc = seeds(lambda: environmentDocument(seedDocument(doc, env), env), source)
    parser = Parser(baseDir or Path.cwd())
    parser.problems.extend(repeated)
    try:
        config = parser.gateway(doc, source)
    except ConfigError:
        raise ConfigError(parser.problems, source) from None
    if parser.problems:
        raise ConfigError(parser.problems, source)
    return config


