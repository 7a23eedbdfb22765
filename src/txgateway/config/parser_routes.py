# -*- test-case-name: tests.test_config -*-
"""
Parsing routes: matchers, rewrites, headers, and each route's auth, limit, cache and CORS.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from txgateway.config.errors import Invalid, itemPath, keyPath
from txgateway.config.fields import hostPattern, limitKey, origin, routePath
from txgateway.config.parser_auth import AuthSections
from txgateway.config.parser_canary import CANARY_ROUTE_KEYS, parseRouteCanary
from txgateway.config.parser_concurrency import ROUTE_KEYS, parseRouteConcurrency
from txgateway.config.parser_edge import EdgeSections
from txgateway.config.parser_websocket import WEBSOCKET_ROUTE_KEYS, parseRouteWebSocket
from txgateway.config.schema import (
    AuthPolicy,
    CacheConfig,
    CorsConfig,
    HeaderOps,
    HeaderRules,
    MatchConfig,
    RateLimitConfig,
    RouteConfig,
    StoresConfig,
    UpstreamConfig,
)
from txgateway.config.source import YAMLSeq, lines
from txgateway.config.values import (
    boolean,
    duration,
    headerName,
    headerValue,
    integer,
    method,
    network,
    oneOf,
    rate,
    size,
    string,
)

__all__ = ["RouteSections"]


class RouteSections(AuthSections, EdgeSections):
    """C{routes}: a route refers to upstreams and auth policies by name, so it is parsed after them."""

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
            rline = value.lines[i] if isinstance(value, YAMLSeq) else line
            # The name goes into the path before the route is read, so every problem in it carries the name.
            rpath = itemPath("routes", i, body.get("name") if isinstance(body, dict) else None)
            r = self.route(body, rpath, rline, i, upstreams, policies, stores)
            if r is None:
                continue
            if r.name in names:
                self.problem(keyPath(rpath, "name"), lines(body).get("name", rline), f"route name {r.name!r} is used twice")
            names.add(r.name)
            out.append(r)
        return tuple(out)

    def route(self, value: Any, path: str, line: int | None, index: int, upstreams: Mapping[str, UpstreamConfig],
              policies: Mapping[str, AuthPolicy], stores: StoresConfig) -> RouteConfig | None:
        m = self.mapping(value, path, line, ["name", "match", "upstream", "strip_prefix", "rewrite_prefix",
                                             "preserve_host", "headers", "auth", "rate_limit", "cache", "cors",
                                             "ip_allow", "ip_deny", "allow_encoded_slash", *ROUTE_KEYS, *CANARY_ROUTE_KEYS,
                                             *WEBSOCKET_ROUTE_KEYS, "redirect", "respond", "rewrite_regex", "compress"])
        if m is None:
            return None
        name = self.get(m, "name", path, string, f"route-{index}")
        # A weighted split (routes[].upstreams, issue 23) stands instead of upstream.
        canary, found = parseRouteCanary(m, path, m.line, upstreams.keys())
        self.problems.extend(found)
        upstream = canary.upstreams[0].name if canary.upstreams else None
        # A route that answers itself (redirect / respond) needs no upstream.
        answers = m.get("redirect") is not None or m.get("respond") is not None
        if upstream is None and m.get("upstreams") is None and (not answers or "upstream" in m):
            upstream = self.required(m, "upstream", path, m.line)
            if upstream is not None and str(upstream) not in upstreams:
                self.problem(keyPath(path, "upstream"), m.lines.get("upstream"), f"no upstream named {upstream!r}")
        match = self.match(m.get("match"), keyPath(path, "match"), m.lines.get("match", m.line))
        auth = None
        if m.get("auth") is not None:
            ref = m["auth"]
            if isinstance(ref, dict) and "policy" in ref:
                auth = self.authReference(ref, keyPath(path, "auth"), m.lines.get("auth"), policies)
            elif isinstance(ref, str):
                auth = policies.get(ref)
                if auth is None:
                    self.problem(keyPath(path, "auth"), m.lines.get("auth"), f"no auth policy named {ref!r}")
            else:
                auth = self.authPolicy(ref, keyPath(path, "auth"), m.lines.get("auth"), f"{name}.auth")
        rl = None
        if m.get("rate_limit") is not None:
            rl = self.rateLimit(m["rate_limit"], keyPath(path, "rate_limit"), m.lines.get("rate_limit"))
            if rl is not None and rl.shared and stores.redis is None:
                self.problem(keyPath(keyPath(path, "rate_limit"), "shared"), m.lines.get("rate_limit"), "needs stores.redis")
        cache = None
        if m.get("cache") not in (None, False):
            cache = self.cache(m["cache"], keyPath(path, "cache"), m.lines.get("cache"))
            if cache is not None and cache.store == "redis" and stores.redis is None:
                self.problem(keyPath(keyPath(path, "cache"), "store"), m.lines.get("cache"), "redis needs stores.redis")
        if cache is not None and canary.upstreams:
            # The cache is looked up before the split chooses: one version's answers would reach the other's clients.
            self.problem(keyPath(path, "cache"), m.lines.get("cache"),
                         "cannot be used on a route with upstreams (a weighted split) yet")
        cors = None
        if m.get("cors") is not None:
            cors = self.cors(m["cors"], keyPath(path, "cors"), m.lines.get("cors"))
        hm = self.mapping(m.get("headers"), keyPath(path, "headers"), m.lines.get("headers"), ["request", "response"])
        rules = HeaderRules()
        if hm is not None:
            rules = HeaderRules(self.headerOps(hm.get("request"), keyPath(keyPath(path, "headers"), "request"), hm.lines.get("request")),
                                self.headerOps(hm.get("response"), keyPath(keyPath(path, "headers"), "response"), hm.lines.get("response")))
        strip = self.get(m, "strip_prefix", path, routePath, None)
        rewrite = self.get(m, "rewrite_prefix", path, routePath, None)
        if strip is not None and rewrite is not None:
            self.problem(path, m.lines.get("rewrite_prefix"),
                         "give strip_prefix or rewrite_prefix, not both (rewrite_prefix already replaces the matched prefix)")
        concurrency, concurrencyProblems = parseRouteConcurrency(m, path, m.line)
        for p, ln, msg in concurrencyProblems:
            self.problem(p, ln, msg)
        if concurrency.batch is not None and match.methods and "POST" not in match.methods:
            self.problem(keyPath(path, "batch"), m.lines.get("batch"),
                         "a batching route must admit POST (its match.methods leave POST out)")
        edge = self.routeEdge(m, path)
        if edge["rewrite_regex"] is not None and (strip is not None or rewrite is not None):
            self.problem(path, m.lines.get("rewrite_regex"), "give rewrite_regex or strip_prefix/rewrite_prefix, not both")
        return RouteConfig(
            **edge,
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
            canary=canary,
            ip_allow=self.seq(m, "ip_allow", path, network),
            ip_deny=self.seq(m, "ip_deny", path, network),
            allow_encoded_slash=self.get(m, "allow_encoded_slash", path, boolean, False),
            concurrency=concurrency,
            websocket=parseRouteWebSocket(self, m, path),
        )

    def match(self, value: Any, path: str, line: int | None) -> MatchConfig:
        m = self.mapping(value, path, line, ["host", "path", "path_prefix", "methods", "headers", "path_regex",
                                             "query", "client_ip"])
        if m is None:
            return MatchConfig()
        headers = self.headerPairs(m, path, "must map a header name to a value (or \"*\")")
        mc = MatchConfig(
            host=self.get(m, "host", path, hostPattern, None),
            path=self.get(m, "path", path, routePath, None),
            path_prefix=self.get(m, "path_prefix", path, routePath, None),
            methods=self.seq(m, "methods", path, method),
            headers=tuple(headers),
            path_regex=self.pattern(m["path_regex"], keyPath(path, "path_regex"), m.lines.get("path_regex"))
            if m.get("path_regex") is not None else None,
            query=self.queryMatch(m.get("query"), keyPath(path, "query"), m.lines.get("query", line)),
            client_ip=self.seq(m, "client_ip", path, network),
        )
        if mc.path_regex is not None and mc.path is not None:
            self.problem(path, line, "give path or path_regex, not both (path_prefix may narrow a path_regex)")
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
                self.problem(keyPath(path, "set"), m.lines.get("set"), "must map a header name to a value")
            else:
                for k, v in sv.items():
                    try:
                        sets.append((headerName(k), headerValue(v)))
                    except Invalid as e:
                        self.problem(keyPath(keyPath(path, "set"), k), lines(sv).get(k), str(e))
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
            except Invalid as e:
                self.problem(keyPath(path, "rate"), m.lines.get("rate"), str(e))
        if parsed is None:
            return None
        keys: tuple[str, ...] = ("client_ip",)
        if m.get("key") is not None:
            raw = m["key"]
            items = re.split(r"\s*[+,]\s*", raw) if isinstance(raw, str) else list(raw)
            try:
                keys = tuple(limitKey(k) for k in items)
            except Invalid as e:
                self.problem(keyPath(path, "key"), m.lines.get("key"), str(e))
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
        m = self.mapping(value, path, line, ["max_ttl", "max_bytes", "max_object_size", "store", "collapse_timeout",
                                             "default_ttl", "targeted_fields", "serve_stale_on_error", "tag_field",
                                             "store_set_cookie"])
        if m is None:
            return None
        d = CacheConfig()
        return CacheConfig(
            max_ttl=self.get(m, "max_ttl", path, duration, None),
            max_bytes=self.get(m, "max_bytes", path, size, d.max_bytes),
            max_object_size=self.get(m, "max_object_size", path, size, d.max_object_size),
            store=self.get(m, "store", path, oneOf("memory", "redis"), d.store),
            collapse_timeout=self.get(m, "collapse_timeout", path, duration, d.collapse_timeout),
            default_ttl=self.get(m, "default_ttl", path, duration, None),
            targeted_fields=(self.seq(m, "targeted_fields", path, headerName) if "targeted_fields" in m
                             else d.targeted_fields),
            serve_stale_on_error=self.get(m, "serve_stale_on_error", path, duration, d.serve_stale_on_error),
            tag_field=self.get(m, "tag_field", path, headerName, d.tag_field),
            store_set_cookie=self.get(m, "store_set_cookie", path, boolean, d.store_set_cookie),
        )

    def cors(self, value: Any, path: str, line: int | None) -> CorsConfig | None:
        m = self.mapping(value, path, line, ["allow_origins", "allow_methods", "allow_headers", "expose_headers",
                                             "allow_credentials", "max_age"])
        if m is None:
            return None
        d = CorsConfig()
        c = CorsConfig(
            allow_origins=self.seq(m, "allow_origins", path, origin),
            allow_methods=self.seq(m, "allow_methods", path, method) if "allow_methods" in m else d.allow_methods,
            allow_headers=self.seq(m, "allow_headers", path, headerName),
            expose_headers=self.seq(m, "expose_headers", path, headerName),
            allow_credentials=self.get(m, "allow_credentials", path, boolean, False),
            max_age=self.get(m, "max_age", path, duration, None),
        )
        if c.allow_credentials and "*" in c.allow_origins:
            self.problem(keyPath(path, "allow_origins"), m.lines.get("allow_origins"),
                         "\"*\" cannot be combined with allow_credentials (browsers refuse it)")
        return c
