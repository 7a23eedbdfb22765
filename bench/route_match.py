"""
The cost of routing one request: normalise its path and host, match 1,000 routes.

python bench/route_match.py [--routes 1000] [--rounds 5] [--number 20000]

Three route sets, each of N routes, each timed on a mix of requests that hit
the first, middle and last routes and miss entirely:

  prefixes   N services under /svc-I/ (some with header or method matchers)
  hosts      N virtual hosts, host-only routes (the "Host header picks the
             service" shape), plus a wildcard and a default
  mixed      N/2 exact paths and N/2 prefixes at several depths

It reports microseconds per match (best of the rounds, the usual way to take
timing noise out), the same for the full per-request routing step
(normalizePath + normalizeHost + match), and for contrast a linear scan of
the routes in precedence order (what the index saves).  Nothing here
asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from twisted.web.http_headers import Headers  # noqa: E402

from txgateway.config import MatchConfig, RouteConfig  # noqa: E402
from txgateway.http.paths import normalizeHost, normalizePath  # noqa: E402
from txgateway.routing import RouteTable, compileRoutes  # noqa: E402

Request = tuple[bytes, bytes, bytes, Headers]  # method, raw host, raw path, headers


def _route(i: int, **match: object) -> RouteConfig:
    return RouteConfig(name=f"r{i}", index=i, match=MatchConfig(**match), upstream="u")  # type: ignore[arg-type]


def prefixes(n: int) -> tuple[list[RouteConfig], list[Request]]:
    routes = []
    for i in range(n):
        if i % 10 == 0:
            routes.append(_route(i, path_prefix=f"/svc-{i}/", headers=(("X-Canary", "1"),)))
        elif i % 10 == 1:
            routes.append(_route(i, path_prefix=f"/svc-{i}/", methods=("POST",)))
        else:
            routes.append(_route(i, path_prefix=f"/svc-{i}/"))
    routes.append(_route(n, path_prefix="/"))
    h = Headers({b"X-Canary": [b"1"]})
    reqs = [(b"GET", b"api.test", f"/svc-{i}/v1/items/42".encode(), h) for i in (0, 2, n // 2, n - 1)]
    reqs.append((b"GET", b"api.test", b"/nothing/here/at/all", Headers()))
    return routes, reqs


def hosts(n: int) -> tuple[list[RouteConfig], list[Request]]:
    routes = [_route(i, host=f"svc{i}.example.com") for i in range(n)]
    routes.append(_route(n, host="*.example.com"))
    routes.append(_route(n + 1, path_prefix="/"))
    reqs = [(b"GET", f"svc{i}.example.com:8080".encode(), b"/api/v1/users?x=1", Headers()) for i in (0, n // 2, n - 1)]
    reqs.append((b"GET", b"other.example.com", b"/api/v1/users", Headers()))
    reqs.append((b"GET", b"elsewhere.test", b"/api/v1/users", Headers()))
    return routes, reqs


def mixed(n: int) -> tuple[list[RouteConfig], list[Request]]:
    routes = []
    for i in range(n // 2):
        routes.append(_route(i, path=f"/v1/things/{i}"))
    for i in range(n // 2, n):
        depth = i % 4
        routes.append(_route(i, path_prefix="/p" + "".join(f"/{i}-{d}" for d in range(depth + 1))))
    h = Headers()
    reqs = [(b"GET", b"h.test", f"/v1/things/{n // 4}".encode(), h),
            (b"GET", b"h.test", f"/p/{n - 1}-0/{n - 1}-1/{n - 1}-2/{n - 1}-3/deep/er/path".encode(), h),
            (b"GET", b"h.test", f"/p/{n // 2}-0/x".encode(), h),
            (b"GET", b"h.test", b"/v1/things/none", h)]
    return routes, reqs


def timeOne(fn: Callable[[], object], rounds: int, number: int) -> float:
    """Best-of-rounds microseconds per call."""
    return min(timeit.repeat(fn, repeat=rounds, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args(argv)

    print(f"{'route set':<10} {'routes':>7} {'match µs':>9} {'route step µs':>14} {'linear scan µs':>15}"
          f"  (best of {args.rounds} x {args.number})")
    for name, build in (("prefixes", prefixes), ("hosts", hosts), ("mixed", mixed)):
        configs, reqs = build(args.routes)
        table = RouteTable(compileRoutes(configs))
        prepared = [(m, normalizeHost(h), normalizePath(p.split(b"?")[0]), hd) for m, h, p, hd in reqs]
        for m, host, path, hd in prepared:  # every request routes where the set means it to
            table.match(m, host, path, hd)

        def matchAll(prepared: list[tuple[bytes, str, str, Headers]] = prepared, table: RouteTable = table) -> None:
            for m, host, path, hd in prepared:
                table.match(m, host, path, hd)

        def stepAll(reqs: list[Request] = reqs, table: RouteTable = table) -> None:
            for m, h, p, hd in reqs:
                table.match(m, normalizeHost(h), normalizePath(p.split(b"?")[0]), hd)

        def scanAll(prepared: list[tuple[bytes, str, str, Headers]] = prepared, table: RouteTable = table) -> None:
            for m, host, path, hd in prepared:
                for r in table.routes:
                    if r.matchesPath(path) and r.matchesHost(host) and r.matchesHeaders(hd) and r.allowsMethod(m, hd):
                        break

        per = len(reqs)
        matchUs = timeOne(matchAll, args.rounds, args.number // per) / per
        stepUs = timeOne(stepAll, args.rounds, args.number // per) / per
        scanUs = timeOne(scanAll, 1, max(1, args.number // per // 100)) / per
        print(f"{name:<10} {len(configs):>7} {matchUs:>9.2f} {stepUs:>14.2f} {scanUs:>15.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
