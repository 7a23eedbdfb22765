# -*- test-case-name: tests.test_discovery_config,tests.test_discovery_dns,tests.test_discovery_files -*-
"""
Target discovery: upstream targets that come and go (issue 22).

What is here is self-contained and tested on its own; nothing in the core
imports it yet.  It was built while cluster.py, config/, gateway.py,
admin.py and health.py were being restructured, so this docstring is the
plan for wiring it in once that work is merged.

Modules
=======
  interfaces.py  L{ITargetSource} (an IService: C{targets}, C{counters},
                 C{subscribe(listener)}, C{whenReady()}, C{refresh()}) and
                 the value it delivers, L{DiscoveredTarget} (scheme, host,
                 port, weight, source; C{.url}, C{.hostPort}), plus
                 L{SourceCounters}.
  base.py        shared by every source: sort and dedupe an answer, compare
                 with the current set (an unchanged answer calls no
                 listener), C{on_empty: keep | drop}, counters, logging, the
                 C{observe(outcome)} hook (changed / unchanged / empty /
                 failed) that metrics plug into.
  dns.py         L{AddressSource} (C{{dns: NAME, port: P}}: every A/AAAA
                 address) and L{ServiceSource} (C{{dns_srv: _svc._tcp.NAME}}:
                 SRV ports and weights, lowest priority group), on
                 C{twisted.names}; re-resolved after the smallest TTL, at
                 most C{refresh}, at least 1s; failures keep the last good
                 set and back off 1s, 2s, 4s ... up to C{refresh}.
                 L{makeResolver} builds the one resolver a gateway shares
                 (C{discovery.nameservers}, else resolv.conf + hosts file).
  files.py       L{FileSource} (C{{file: PATH}}): a YAML list of URLs or
                 C{url:}/C{weight:} mappings, polled like the config file; a
                 bad edit keeps the last good set and logs its line.
  slowstart.py   the C{slow_start} ramp as pure functions of elapsed time.
  config.py      pure parsing of the new keys into frozen specs, returning
                 C{(key path, line, message)} problems; imports nothing of
                 L{txgateway.config}.
  build.py       L{makeSource}: spec -> not yet started source.

Dependency direction: C{config/} and C{cluster.py} may import
C{txgateway.discovery.*}; nothing here imports them (keep it so: an
import-linter contract "discovery is below config, cluster, service").


1. Config (config/ package, after the split)
============================================
- C{UpstreamConfig} gains C{sources: tuple[SourceSpec, ...] = ()} and
  C{slow_start: float = 0.0}; C{GatewayConfig} gains
  C{discovery: DiscoveryConfig = DiscoveryConfig()}.
- In the upstream parser, C{"slow_start"} joins the known keys, and the
  C{targets} loop becomes::

      if discovery.config.isSourceItem(t):
          spec, found = discovery.config.parseSourceItem(t, ipath, tline, self.baseDir)
          for p, l, m in found:
              self.problem(p, l, m)
          if spec is not None:
              sources.append(spec)
      else:
          ...the existing URL / {url, weight} branch...

  and C{slow_start, found = parseSlowStart(m.get("slow_start"), path + ".slow_start",
  m.lines.get("slow_start"))}.  "needs at least one target" counts
  sources too; "lists the same target twice" stays about static URLs (a
  discovered target that equals a static one is merged at run time, below).
- At the top level, C{"discovery"} joins the known keys and
  C{parseDiscovery(*self.child(top, "discovery"))} fills it.
- docs/config/*.md: C{discovery.nameservers}, the three item forms with
  their keys (dns: port, scheme, refresh, on_empty, family; dns_srv:
  scheme, refresh, on_empty, family; file: watch, on_empty) and
  C{upstreams.NAME.slow_start}; then scripts/build-config-doc.py.
  tests/test_docs.py will insist.


2. Who owns the sources (service.py)
====================================
- C{GatewayService} owns a C{DiscoveryService} (a MultiService child
  started before the listeners) holding the resolver
  (C{makeResolver(reactor, config.discovery.nameservers)}) and the
  sources, keyed by C{(upstream name, item index, spec)}.  Specs are frozen
  dataclasses, so on reload the key comparison is the buildbot reconfig
  diff: a source whose key is unchanged is kept running (no re-resolution,
  no gap), a new one is started, a gone one is stopped.  A change of
  C{discovery.nameservers} rebuilds every DNS source.
- C{buildRuntime} hands each C{Cluster} its sources; the cluster
  subscribes (keeping the unsubscribe function) and reads C{source.targets}
  at once, so a reload never starts from an empty set.  The old cluster
  unsubscribes when the new runtime is swapped in.
- Start-up: listening does not wait for DNS (a DNS outage must not keep
  the gateway down), but C{/ready} stays 503 until every source's
  C{whenReady()} fired, bounded by e.g. 2x the query timeout.  An upstream
  whose sources have found nothing yet answers 503 "no target discovered
  yet" from C{choose()}, with C{Retry-After: 1}.
- Module size: C{DiscoveryService} should live here in
  C{discovery/service.py} (it only needs ITargetSource and a callback per
  upstream), keeping service.py small.


3. What the cluster does with a changed list (cluster.py, balancing.py)
========================================================================
The listener is C{cluster.updateSource(index, targets)}; it recomputes the
merged list synchronously and swaps it in one assignment.

- Merge: static targets (source C{static}), then each source's latest
  tuple in item order.  Keyed by URL; the first occurrence wins (its weight
  and source), a duplicate is logged once per change.  Runtime overrides
  (section 4) are applied last.
- Keep Endpoint state for targets that stay: look each URL up in the
  current endpoints (as C{building._buildCluster} does across reloads) and
  reuse the object, updating only C{weight}; health, breaker, in-flight
  count, balancer state (WRR current weight, rotation) and metric label
  children carry over.  C{Endpoint} gains slots C{source}, C{state}
  (C{active} / C{draining} / C{disabled}), C{configuredWeight},
  C{addedAt} and C{rampUntil}; its constructor should take a
  L{DiscoveredTarget} (config.Target converts trivially: same fields,
  source C{static}).
- New targets: C{addedAt = clock.seconds()}.  If the upstream has active
  health checks, a target added at run time (not at start-up) starts with
  C{activeHealthy = False} and the checker's C{_sync()} (called through a
  cluster C{onTargetsChanged} hook) probes it at once (C{now=True}); it
  takes traffic after C{healthy_after} passes.  Without active checks it
  is eligible at once.  With C{slow_start}, C{rampUntil = addedAt +
  slow_start}.
- Removed targets: taken out of C{cluster.endpoints} (so neither
  C{choose()} nor a retry can pick them) and moved to
  C{cluster.retiring}.  Requests already holding their lease finish
  normally; when the lease release brings C{inFlight} to 0, the cluster
  closes that target's idle pooled connections (the pool needs a
  C{closeIdle(key)} in http/proxy.py's C{_Pool}, the only place its
  private C{_connections} may be touched), removes its metric label
  children, and forgets it.  A target that comes back while retiring is
  revived with its state.
- Balancers: C{balancer.setTargets(newEndpoints)} after every change.
  ConsistentHash already derives ring points from the URL only, so only
  the keys of added/removed targets move; it should update the ring
  incrementally (insert/remove that URL's points) instead of rebuilding,
  since with pod churn changes are frequent.  WRR keeps its current
  weights per Endpoint object (already so).  An endpoint whose
  C{state != "active"} is filtered out before C{pick()} just like an
  unhealthy one (the fast path in C{choose()} adds C{e.state is ACTIVE}
  to its all-eligible check), so consistent-hash keys of a drained target
  go to the next owner and come back on enable.
- Slow start, computed lazily from the clock (no timer): while
  C{now < cluster.rampUntil} (the latest C{rampUntil} of any endpoint; a
  single float compare in the fast path otherwise), weight-reading
  balancers use C{weight * slowStartFraction(now - addedAt, slow_start)}
  (WRR and p2c work with float weights; least_connections compares
  C{inFlight / effective weight}).  ConsistentHash must not rebuild its
  ring as the weight ramps: it admits a key to a ramping owner when
  C{hash(key) / 2**64 < fraction} and otherwise passes it to the next
  owner, which is deterministic per key and moves keys in gradually.
  Targets present at start-up and on a reload that keeps them are not
  ramped.


4. Runtime control (admin.py, cluster.py)
=========================================
Endpoints (admin token and same-origin rule as C{/api/config/reload}):
C{POST /api/upstreams/{u}/targets/{host:port}/drain}, C{.../disable},
C{.../enable}, C{PUT .../weight} with C{{"weight": N}} (N >= 1).  The
admin resource needs a small pattern dispatch beside its exact-path
tables; C{{host:port}} is C{DiscoveredTarget.hostPort} (IPv6 in brackets,
percent-decoded).  Answers: 200 with the target's JSON; 404 unknown
upstream or target; 400 bad weight; 405 wrong method; 409 when
C{host:port} matches both an http and an https target.

What cluster.py must provide:
- C{targetByHostPort(hostPort) -> list[Endpoint]} (over current and
  retiring endpoints).
- C{drain(e)}: C{state = draining}; no new requests, in-flight finish,
  health checks continue, pooled connections close when idle.
  C{disable(e)}: as drain, and active probes pause.  C{enable(e)}:
  C{state = active} (ramped again if C{slow_start}).  C{setWeight(e, n)}:
  C{e.weight = n}, then C{balancer.setTargets}.  Each records
  C{overrides[url] = Override(state, weight, at)}, re-applied when
  discovery re-delivers that URL, so a drained pod stays drained across
  DNS refreshes.
- C{whenIdle(e) -> Deferred}: fires when a non-active target's
  C{inFlight} reaches 0 (the e2e "drain under load, no failed request"
  test waits on it through C{GET /api/upstreams}).
- C{report()} for C{GET /api/upstreams}: per target C{url},
  C{host_port}, C{source} (C{static}, C{dns}, C{file}; C{runtime} is kept
  for targets added through the API, an endpoint not in this issue),
  C{state}, C{weight}, C{configured_weight}, C{in_flight}, C{ramp_until},
  and per upstream its sources' C{description}, C{counters}
  (refreshes, failures, last_error, last_success_at).
- Overrides last until the next config reload: C{GatewayService.reload}
  collects C{cluster.overrides} of the old runtime and, when non-empty,
  says so in its log line ("reloaded; 2 runtime target changes
  (admin API) dropped: api 10.0.0.5:8000 draining, ...") and in
  C{/api/reloads}.  The status page shows C{source} and C{state} per
  target, with drain / enable buttons posting to the endpoints above.


5. Metrics (observe/)
=====================
- C{txgateway_upstream_targets{upstream, state}} (gauge): targets by
  state (active, draining, disabled, unhealthy, retiring), set on every
  change and health transition.
- C{txgateway_discovery_refreshes{upstream, source, outcome}} (counter;
  outcome changed / unchanged / empty / failed), fed by the sources'
  C{observe} callback passed to L{makeSource}.  The failures the issue
  asks for are C{outcome="failed"}.
- C{txgateway_discovery_targets{upstream, source}} (gauge) and
  C{txgateway_discovery_last_success_timestamp_seconds{upstream, source}}
  from C{SourceCounters.lastSuccessAt} (a collector may read
  C{source.counters} at scrape time instead of a callback).
- C{source} label: C{dns:NAME:PORT}, C{dns_srv:NAME}, C{file:PATH}.
- Label children of a retired target (target_healthy, circuit_state,
  per-target request counters) are removed when it is forgotten, so pod
  churn does not grow /metrics without bound.


6. Tests still to write after integration
=========================================
- tests/test_discovery_realdns.py's C{Zone} + C{DNSServerFactory} setup
  moves to a fixture module (like tests/redisserver.py) for the e2e
  harness: the real C{twistd -n txgateway} with C{discovery.nameservers}
  pointed at it; records added, removed, TTL expiry, SRV weights, server
  down; a discovery file rewritten; drain / disable / weight through the
  admin API under load with no failed request.
- cluster: Endpoint identity kept across updateSource; a removed target
  with in-flight requests is not chosen and its pool closes when idle;
  consistent hash moves only the changed targets' keys (property test
  with hypothesis); slow start shares over time with a Clock.
- docs: docs/operations.md Kubernetes walkthrough (headless Service,
  C{dns: api.default.svc.cluster.local}) with the manifest under deploy/.
"""

__all__: list[str] = []
