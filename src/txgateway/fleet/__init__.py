# -*- test-case-name: tests.test_fleet_hub,tests.e2e.test_fleet -*-
"""
Workers that behave as one gateway (issue 26).

With C{server.workers: N} the supervisor runs a hub (L{txgateway.fleet.hub})
on a Unix socket and every worker joins it (L{txgateway.fleet.member}).
Through the hub the workers share one config generation, one active
prober, their breaker and passive-health evidence, local rate-limit
counters and the admin API's runtime changes.  See docs/operations.md,
"Workers".

Nothing is imported here: the supervisor loads only the hub side, which
must stay small (no request path, no clients).
"""

__all__: list[str] = []
